"""Training runs in the room, live: their curves move with the run's stream deltas, their
panels show the run's status, what is frozen and who steered last.

A `watch()` run (docs/training.md) sends "stream" events with `run` and `type`: `metrics`
(rows logged since the last one, every ~0.5 s), `layer_stats` (per-filter activation and
gradient magnitudes), `status`, `steered` (`by`, the command and its result, e.g. the new
`frozen`), `error` (a command the run could not apply). Its full blobs come only every few
seconds. `LiveTable` (pure) appends the deltas to the last blob of a run's metrics panel; the
content worker repaints it off the render thread (`pump.ContentWorker.live`), so a logged
step reaches the pixels of everyone's panel without refetching the blob. `LiveRuns` keeps each
run's status, frozen layers and last steering, tints frozen layers on the run's graph and
writes a badge on the title bar of each of its panels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp
    from deeproom.scenes.views import PanelView

MAX_ROWS = 20_000
"""Rows a live table keeps (the oldest go first; the run's next blob has its own thinning)."""
RUN_TYPES = ("metrics", "layer_stats", "status", "steered", "error", "embedding", "filter_embedding",
             "checkpoint_diff", "latent_frame", "labelled", "label_accuracy")
"""The "type"s of a run's stream events (docs/training.md, "stream formats")."""
DELTA_TYPES = ("metrics", "layer_stats", "status", "steered")
"""Those that change what a run's metrics panel draws."""
FRAME_TYPES = {"embedding": ("latent_cloud", None), "latent_frame": ("latent_cloud", None),
               "filter_embedding": ("filter_embedding",)}
"""Stream events that move a run's cloud, and the source "what" of the clouds they move."""
MAX_POINTS = 200_000
TRAIL_FRAMES = 5
MAX_FILTERS = 4096


def is_run_event(payload: Mapping[str, Any]) -> bool:
    return isinstance(payload.get("run"), str) and payload.get("type") in RUN_TYPES and "channel" not in payload


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) or math.isnan(f) else None


@dataclass
class LiveTable:
    """A run's metrics blob (meta + arrays) that stream deltas are appended to."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    last_step: float = -math.inf
    changed: bool = False

    @classmethod
    def of(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> LiveTable:
        t = cls(dict(meta), {k: np.asarray(v) for k, v in arrays.items()})
        steps = t.arrays.get("step")
        if steps is not None and np.asarray(steps).size:
            t.last_step = float(np.nanmax(np.asarray(steps, np.float64)))
        return t

    @property
    def series(self) -> list[str]:
        return [str(n) for n in self.meta.get("series", []) if str(n) in self.arrays]

    def add_rows(self, rows: Sequence[Any]) -> int:
        """Append rows ({"step": s, name: value, ...}) newer than the last step; a row for the last
        step fills in its values. Returns how many rows were taken; bad or older rows are skipped."""
        steps = np.asarray(self.arrays.get("step", np.zeros(0, np.float32)), np.float32).ravel()
        n_old = len(steps)
        new_steps: list[float] = []
        new_vals: list[dict[str, float]] = []
        taken = 0
        for row in rows[-2000:]:
            if not isinstance(row, Mapping):
                continue
            step = _finite(row.get("step"))
            if step is None or math.isnan(step):
                continue
            values = {str(k)[:80]: f for k, v in row.items() if k != "step" and (f := _finite(v)) is not None}
            last = new_steps[-1] if new_steps else (float(steps[-1]) if n_old else -math.inf)
            if step == last:
                if new_vals:
                    new_vals[-1].update(values)
                else:
                    for k, v in values.items():
                        self._column(k, n_old)[-1] = v
            elif step > last:
                new_steps.append(step)
                new_vals.append(values)
            else:
                continue
            taken += 1
        if new_steps:
            names = dict.fromkeys([*self.series, *(k for d in new_vals for k in d)])
            for k in names:
                col = self._column(k, n_old)
                self.arrays[k] = np.concatenate([col, np.array([d.get(k, np.nan) for d in new_vals], np.float32)])
            self.arrays["step"] = np.concatenate([steps, np.array(new_steps, np.float32)])
            if len(self.arrays["step"]) > MAX_ROWS:
                for k in ["step", *self.series]:
                    self.arrays[k] = self.arrays[k][-MAX_ROWS:]
            self.last_step = new_steps[-1]
        self.changed = self.changed or taken > 0
        return taken

    def _column(self, name: str, n: int) -> np.ndarray:
        """The series `name` (created as NaN for the `n` existing steps, and listed in meta)."""
        col = self.arrays.get(name)
        if col is None or len(col) != n:
            fresh = np.full(n, np.nan, np.float32)
            if col is not None:
                k = min(len(col), n)
                fresh[n - k:] = np.asarray(col, np.float32).ravel()[len(col) - k:]
            self.arrays[name] = fresh
        elif col.dtype != np.float32:
            self.arrays[name] = col.astype(np.float32)
        series = list(self.meta.get("series", []))
        if name not in series:
            series.append(name)
            self.meta["series"] = series
        return self.arrays[name]

    def add_layer_stats(self, layers: Any) -> int:
        """Per-filter activation/gradient magnitudes ({layer: {"act": [...], "grad": [...]}})."""
        if not isinstance(layers, Mapping):
            return 0
        taken = 0
        for name, entry in list(layers.items())[:200]:
            if not isinstance(name, str) or not isinstance(entry, Mapping):
                continue
            for key, prefix in (("act", "filter_act:"), ("grad", "filter_grad:")):
                values = entry.get(key)
                if isinstance(values, list) and 0 < len(values) <= MAX_FILTERS and all(_finite(v) is not None for v in values):
                    self.arrays[prefix + name[:80]] = np.asarray(values, np.float32)
                    taken += 1
        self.changed = self.changed or bool(taken)
        return taken

    def set_meta(self, key: str, value: Any) -> None:
        if self.meta.get(key) != value:
            self.meta[key] = value
            self.changed = True

    def apply(self, event: Mapping[str, Any]) -> None:
        """One stream event of the table's run."""
        kind = event.get("type")
        if kind == "metrics" and isinstance(event.get("rows"), list):
            self.add_rows(event["rows"])
        elif kind == "layer_stats":
            self.add_layer_stats(event.get("layers"))
        elif kind == "status" and isinstance(event.get("state"), str):
            self.set_meta("status", event["state"][:20])
        elif kind == "steered":
            if isinstance(event.get("frozen"), Mapping):
                self.set_meta("frozen", dict(event["frozen"]))
            if isinstance(event.get("state"), str):
                self.set_meta("status", event["state"][:20])


def decode_frame(event: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions float32 [n, dims] and predictions int16 [n] (or None) of an `embedding`,
    `filter_embedding` or `latent_frame` event (base64 little-endian float16 / int16)."""
    import base64

    n, dims = event.get("n"), event.get("dims")
    if not isinstance(n, int) or not isinstance(dims, int) or not 0 < n <= MAX_POINTS or dims not in (2, 3):
        raise ValueError(f"a cloud frame needs 0 < n <= {MAX_POINTS} and dims 2 or 3; got n={n!r}, dims={dims!r}")
    raw = base64.b64decode(str(event.get("positions", "")), validate=True)
    if len(raw) != n * dims * 2:
        raise ValueError(f"a cloud frame of {n}x{dims} needs {n * dims * 2} bytes of positions; got {len(raw)}")
    pos = np.nan_to_num(np.frombuffer(raw, "<f2").reshape(n, dims).astype(np.float32))
    preds = None
    if isinstance(event.get("predictions"), str):
        p = base64.b64decode(event["predictions"], validate=True)
        if len(p) == n * 2:
            preds = np.frombuffer(p, "<i2").astype(np.int16)
    return pos, preds


def moved_cloud(content: Any, event: Mapping[str, Any]) -> Any:
    """A cloud's prepared content with a frame's positions (and predictions), its trail
    extended (the last TRAIL_FRAMES positions); the same content when the frame does not fit."""
    from dataclasses import replace

    pos, preds = decode_frame(event)
    if pos.shape != content.positions.shape:
        return content  # another layer or probe size: the next blob brings it
    old = content.trails if content.trails is not None and content.trails.shape[1:] == pos.shape else \
        content.positions[None]
    trails = np.concatenate([old, pos[None]])[-TRAIL_FRAMES:]
    return replace(content, positions=pos, predictions=preds if preds is not None else content.predictions,
                   trails=trails.astype(np.float32))


@dataclass
class RunState:
    """What the app knows of one run, from its panels' sources and its stream events."""

    name: str
    status: str = ""
    frozen: set[str] = field(default_factory=set)
    frozen_filters: dict[str, list[int]] = field(default_factory=dict)
    steered_by: str | None = None
    steered: str = ""
    """What the last steering did ("freeze conv1")."""
    steered_at: float = 0.0
    error: str = ""
    step: int | None = None
    version: int = 0
    """Bumped on every change (views redraw when it moves)."""

    def take_frozen(self, frozen: Any) -> None:
        from deeproom.scenes.painting import frozen_layers

        layers, filters = frozen_layers({"frozen": frozen})
        if (layers, filters) != (self.frozen, self.frozen_filters):
            self.frozen, self.frozen_filters = layers, filters
            self.version += 1


def steer_text(event: Mapping[str, Any]) -> str:
    """A steered event in a few words ("freeze conv1", "set_lr 0.01")."""
    cmd = str(event.get("cmd", "?"))[:24]
    for key in ("layer", "lr", "name", "state"):
        v = event.get(key)
        if isinstance(v, str | int | float) and not isinstance(v, bool):
            return f"{cmd} {str(v)[:24]}" if key != "state" or cmd not in ("pause", "resume", "stop") else cmd
    return cmd


FROZEN_COLOUR = (150, 225, 255)
"""Frozen layers on a run's graph (an ice-blue shell over the box)."""


class LiveRuns:
    """Every run the room shows: state, frozen marks on graphs, badges on the runs' panels."""

    def __init__(self, app: RoomApp) -> None:
        self.app = app
        self.runs: dict[str, RunState] = {}
        self.drawn: dict[str, tuple[float, float]] = {}  # panel id -> (newest step drawn, when it was shown)
        self.arrived: dict[str, tuple[float, float]] = {}  # run -> (newest step a delta brought, when it was drained)
        self._badges: dict[str, tuple[Any, str]] = {}  # panel id -> (Text, what it says)
        self._marked: dict[str, tuple[int, int]] = {}  # graph panel id -> (run version, content id) marked

    def run_of(self, panel_id: str) -> str | None:
        view = self.app.panels.get(panel_id)
        if view is None:
            return None
        run = view.panel.content.source.get("run")
        return run if isinstance(run, str) else None

    def state(self, run: str) -> RunState:
        st = self.runs.get(run)
        if st is None:
            st = self.runs[run] = RunState(run)
        return st

    # --- what arrives ----------------------------------------------------------------------

    def on_stream(self, sender: str, payload: Mapping[str, Any]) -> bool:
        """A "stream" event: True when it was a run's (and has been taken care of)."""
        if not is_run_event(payload):
            return False
        run = str(payload["run"])[:64]
        if sender not in self.speakers_for(run):
            return True  # only the run itself speaks for its panels (anyone else's claims are dropped)
        st = self.state(run)
        kind = payload.get("type")
        if kind == "status" and isinstance(payload.get("state"), str):
            if st.status != payload["state"]:
                st.status = str(payload["state"])[:20]
                st.version += 1
        elif kind == "steered":
            by = payload.get("by")
            st.steered_by = by if isinstance(by, str) else sender
            st.steered = steer_text(payload)
            st.steered_at = time.monotonic()
            st.error = ""
            if isinstance(payload.get("frozen"), Mapping):
                before = set(st.frozen) | {f"{k}[{i}]" for k, v in st.frozen_filters.items() for i in v}
                st.take_frozen(payload["frozen"])
                after = set(st.frozen) | {f"{k}[{i}]" for k, v in st.frozen_filters.items() for i in v}
                changed = sorted(after ^ before)  # the event says what is frozen now, not what changed
                if changed and "layer" not in payload:
                    st.steered = f"{st.steered} {', '.join(changed)[:40]}"
            if isinstance(payload.get("state"), str):
                st.status = str(payload["state"])[:20]
            st.version += 1
        elif kind == "error":
            message = str(payload.get("message", "error"))[:300]
            st.error = message
            st.version += 1
            self.show_error(run, payload, message)
        elif kind == "metrics" and isinstance(payload.get("rows"), list) and payload["rows"]:
            last = payload["rows"][-1]
            if isinstance(last, Mapping) and isinstance(last.get("step"), int | float):
                st.step = int(last["step"])
                self.arrived[run] = (float(last["step"]), time.monotonic())
        if kind in DELTA_TYPES or kind in FRAME_TYPES:
            self.app.pump.worker.live(run, dict(payload))
        return True

    def speakers_for(self, run: str) -> set[str]:
        """Who may send a run's stream events: the owner and engine its panels' sources name."""
        out: set[str] = set()
        for v in self.app.panels.values():
            src = v.panel.content.source
            if src.get("run") == run:
                out.update(x for x in (src.get("owner"), src.get("engine"), v.panel.owner) if isinstance(x, str))
        return out

    def show_error(self, run: str, payload: Mapping[str, Any], message: str) -> None:
        """A command the run could not apply (or any run error): on the run's metrics panel (and
        its graph, for a layer command), as a red strip; training goes on."""
        from deeproom.scenes import actions as act

        where = str(payload.get("where", ""))
        targets = [pid for pid in self.panels_of(run) if pid.endswith(".metrics")]
        if where in ("steer", "engine", "graph"):
            targets += [pid for pid in self.panels_of(run) if pid.endswith(".graph")]
        for pid in targets or self.panels_of(run)[:1]:
            self.app.menus.show_report(act.Progress(pid, f"run-error:{run}", str(payload.get("cmd", where))[:32],
                                                    "", "failed", 0.0, f"{run}: {message}"[:200], None))

    def panels_of(self, run: str) -> list[str]:
        return [pid for pid, v in self.app.panels.items() if v.panel.content.source.get("run") == run]

    def sync_sources(self) -> None:
        """Take status and frozen layers from the runs' panel sources (they follow each publish)."""
        for view in self.app.panels.values():
            src = view.panel.content.source
            run = src.get("run")
            if not isinstance(run, str) or src.get("kind") != "live_training" or "frozen" not in src:
                continue
            st = self.state(run)
            st.take_frozen(src.get("frozen"))
            status = src.get("status")
            if isinstance(status, str) and status != st.status and not st.status:
                st.status = status[:20]
                st.version += 1

    # --- per frame (no I/O) -----------------------------------------------------------------

    def tick(self) -> None:
        app = self.app
        for pid in list(self._badges):
            if pid not in app.panels or self.run_of(pid) is None:
                self._drop_badge(pid)
        for pid, view in app.panels.items():
            run = self.run_of(pid)
            if run is None:
                continue
            st = self.state(run)
            self._badge(view, self.badge_text(st))
            if view.panel.kind.value == "model_graph":
                self._mark_graph(pid, view, st)

    def badge_text(self, st: RunState) -> str:
        parts = [st.status] if st.status else []
        if st.steered_by is not None:
            parts.append(f"{self.app.name_of(st.steered_by)}: {st.steered}")
        return " · ".join(parts)[:60]

    def _badge(self, view: PanelView, text: str) -> None:
        from ursina import Text, color

        from deeproom.scenes.views import TITLE_BAR

        pid = view.panel.id
        old = self._badges.get(pid)
        if old is not None and old[1] == text and old[0].parent is view.root:
            return
        if old is not None:
            self._drop_badge(pid)
        if not text:
            return
        w, h = view.size
        # A tag just above the title bar, so it hides neither the title nor the content.
        t = Text(text, parent=view.root, origin=(-0.5, -0.5), scale=2.2,
                 position=(-w / 2 + 0.01, h / 2 + TITLE_BAR + 0.012, -0.003),
                 color=color.rgb(1.0, 0.86, 0.45), background=True)
        self._badges[pid] = (t, text)

    def _drop_badge(self, pid: str) -> None:
        from ursina import destroy

        old = self._badges.pop(pid, None)
        if old is not None:
            destroy(old[0])

    def badge(self, panel_id: str) -> str:
        """What the badge on a run's panel says ("" when none)."""
        old = self._badges.get(panel_id)
        return old[1] if old is not None else ""

    def _mark_graph(self, pid: str, view: PanelView, st: RunState) -> None:
        from deeproom.scenes.views import GraphView

        content = view.content
        if not isinstance(content, GraphView):
            return
        key = (st.version, id(content))
        if self._marked.get(pid) == key and content.frozen_marked == st.frozen:
            return
        self._marked[pid] = key
        content.mark_frozen(st.frozen)

    def shown(self, panel_id: str, steps: float | None) -> None:
        """The worker's repaint of a live panel was put on screen."""
        if steps is not None:
            self.drawn[panel_id] = (float(steps), time.monotonic())


def measure_step_to_pixels(app: RoomApp, panel_id: str, log_step: Any, *, timeout: float = 10.0,
                           region: tuple[int, int, int, int] | None = None) -> dict[str, Any]:
    """How long a logged step takes to reach this app's pixels: `log_step()` logs one step (in
    a run of this process, or sends it from another participant) and returns its step number;
    the app's frames run until its panel `panel_id` draws that step and the pixels in `region`
    (x0, y0, x1, y1; default: the whole frame) differ from before. Returns {"step_to_pixels_ms",
    "pixels_changed", "step"}; the ms is None if it did not happen within `timeout` seconds.
    (`deeproom bench teach` calls this with a real run and a second app's relay session.)"""
    app.step(2)
    before = app.screenshot()
    t0 = time.monotonic()
    step = float(log_step())
    end = t0 + timeout
    drawn_at = None
    changed = False
    while time.monotonic() < end:
        app.step()
        got = app.runs.drawn.get(panel_id)
        if got is not None and got[0] >= step:
            if drawn_at is None:
                drawn_at = time.monotonic()
            now_img = app.screenshot()
            a, b = before, now_img
            if region is not None:
                x0, y0, x1, y1 = region
                a, b = a[y0:y1, x0:x1], b[y0:y1, x0:x1]
            changed = bool((np.abs(a[..., :3].astype(int) - b[..., :3].astype(int)) > 8).any())
            if changed:
                return {"step_to_pixels_ms": (time.monotonic() - t0) * 1000.0, "pixels_changed": True, "step": step}
        time.sleep(0.002)
    return {"step_to_pixels_ms": None, "pixels_changed": changed, "step": step}
