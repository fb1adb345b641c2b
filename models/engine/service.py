"""The engine service: hosts models (and their data) in a room and serves the panels' actions.

Whoever brings a model, a dataset or a run into the room hosts it here. For each panel
it owns, the service declares in the panel's source what it can compute (`actions`,
and `unavailable` with reasons: `deeproom.models.tasks.declared_actions`). Requests
arrive as "steer" events (`{"action", "panel_id", "params", "request_id"}`, see
docs/engine.md); the sender's role is checked against the action's; every analysis runs
through the one registry (`deeproom.models.tasks`) on the job runner (progress, cancel,
cache by model digest + input + parameters, seed), and its progress goes to the room
as "stream" events on channel "action" (queued, running, done, failed, refused,
cancelled). The result is a blob and a panel, placed with `deeproom.placement.free_slot`
beside the panel the action was picked on. A new request for the same result panel
supersedes the running one; removing the source or result panel cancels it; a
cancelled job publishes nothing; a failed one sets "error" on its panel when that panel
exists (the app draws an error card there only).
"""

from __future__ import annotations

import logging
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deeproom.models.engine.link import EngineLink

log = logging.getLogger(__name__)

ROLE_RANK = {"viewer": 0, "member": 1, "presenter": 2, "host": 3}
_NAME_RE = re.compile(r"[a-z0-9_]{1,32}")
_RID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PER_IMAGE = ("feature_maps", "gradcam", "gradcam_pp", "scorecam", "layercam", "saliency", "integrated_gradients",
             "occlusion", "attention")
"""Analyses computed on the chosen input (recomputed when another input is chosen)."""
PROGRESS_INTERVAL_S = 0.1
BUILTIN_NOTE = "built-in digit: no --data given"
STRIP_COUNT = 24
BOTH = "_both"
"""Suffix of an analysis action run on two models side by side ("gradcam_both")."""


def _pid(*parts: str) -> str:
    text = "-".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", text)[:64]


@dataclass
class Hosted:
    """A model the service hosts, with the data it was given (or the built-in digit)."""

    key: str
    model: Any
    """deeproom.models.loading.LoadedModel"""
    dataset: Any = None
    """The user's ImageDataset, or None: per-image analyses then run on the built-in digit."""
    title: str = ""
    graph_panel: str | None = None
    strip_panel: str | None = None
    input_index: int = 0
    classes: tuple[str, ...] = ()
    extra_source: dict[str, Any] = field(default_factory=dict)
    """Keys its host adds to its graph panel's source (a run's name, say)."""
    live: Callable[[Callable[[Any], None]], None] | None = None
    """A model being trained (a watched run): `live(done)` calls `done(loaded)` with a fresh copy of its
    weights, taken between two training steps; analyses run on that copy, never on the live model."""
    _builtin: Any = None

    def input_data(self) -> tuple[Any, int]:
        """(dataset, index) of the chosen input for per-image analyses."""
        if self.dataset is not None and len(self.dataset):
            return self.dataset, self.input_index
        if self._builtin is None:
            self._builtin = builtin_input(self.model)
        return self._builtin, 0

    def input_info(self) -> dict[str, Any]:
        if self.dataset is not None and len(self.dataset):
            i = self.input_index
            y = int(self.dataset.y[i])
            label = self.dataset.classes[y] if 0 <= y < len(self.dataset.classes) else ""
            return {"index": i, "label": label, "from": "data"}
        return {"index": 0, "label": "", "from": "builtin", "text": BUILTIN_NOTE}


def _same_input(a: Hosted, b: Hosted) -> bool:
    sa, sb = a.model.input_shape, b.model.input_shape
    return sa is not None and sb is not None and tuple(sa[1:]) == tuple(sb[1:])


def both_reason(name: str, a: Hosted, b: Hosted) -> str | None:
    """None when analysis `name` can run on both models with the same input (a's) and params, else why not."""
    from deeproom.models.tasks import IMAGE, LAYER, SPECS, applies, model_facts

    spec = SPECS[name]
    for m in (a, b):
        reason = applies(name, m.model, None, a.dataset)
        if reason is not None:
            return f"{m.title}: {reason}"
    if IMAGE in spec.needs and not _same_input(a, b):
        return (f"the models take different inputs ({a.title} {list(a.model.input_shape or [])}, "
                f"{b.title} {list(b.model.input_shape or [])})")
    if LAYER in spec.needs:
        fa, fb = model_facts(a.model).layers, model_facts(b.model).layers
        if not any(applies(name, a.model, n, a.dataset) is None and applies(name, b.model, n, a.dataset) is None
                   for n in fa if n in fb):
            return f"the models share no layer {spec.label} applies to"
    return None


def builtin_input(model: Any) -> Any:
    """A one-sample dataset: the built-in digit 3 resized to the model's image input (1, C, H, W)."""
    import torch
    import torch.nn.functional as F

    from deeproom.models.datasets import ImageDataset, load_digits
    from deeproom.models.errors import AnalysisError

    shape = model.input_shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise AnalysisError(f"per-image analyses need an image input (1, C, H, W); {model.name} takes {shape}")
    _, c, h, w = shape
    digit = torch.as_tensor(load_digits().x[3], dtype=torch.float32).reshape(1, 1, 8, 8)
    x = F.interpolate(digit, size=(h, w), mode="bilinear", align_corners=False).repeat(1, c, 1, 1)
    return ImageDataset(x, torch.full((1,), -1, dtype=torch.long), (), "builtin-digit")


@dataclass
class Request:
    request_id: str
    action: str
    panel_id: str
    sender: str
    params: dict[str, Any]
    hosted: Hosted | None = None
    result_panel: str | None = None
    job: Any = None
    started: float = field(default_factory=time.monotonic)
    last_stream: float = 0.0
    on_done: Callable[[bytes | None, str | None], None] | None = None
    kind: str = ""
    """The panel kind of the result."""
    label: str = ""
    beside: str | None = None
    """Where a new result panel goes (default: beside the panel the action was picked on)."""
    data_from: Hosted | None = None
    """Whose input and data to compute on (default: the request's own model): the same input for both
    models of a side-by-side request."""
    source_extra: dict[str, Any] = field(default_factory=dict)
    group: Group | None = None
    progress: float = 0.0


@dataclass
class Group:
    """One request computed as several jobs (an analysis on both models): reported as one request,
    published together when all are done (nothing when one was cancelled)."""

    request_id: str
    action: str
    panel_id: str
    sender: str
    members: list[Request] = field(default_factory=list)
    ended: dict[str, tuple[str, str, bytes | None]] = field(default_factory=dict)
    """member request id -> (state, message, blob)."""

    def report(self) -> Request:
        r = Request(self.request_id, self.action, self.panel_id, self.sender, {})
        r.result_panel = self.members[0].result_panel if self.members else None
        return r


@dataclass
class ExtraAction:
    """An action a host adds (the demo's label and retrain, a run's steering): declared, role-checked,
    run on the service's thread by `handler(request)`. The handler returns the done message, or
    DEFERRED when the work finishes later (it then calls `EngineService.answer`); it raises
    `Refused` to refuse."""

    declaration: dict[str, Any]
    handler: Callable[[Request], str | None]


class Refused(Exception):
    pass


DEFERRED = "\x00deferred"
"""An ExtraAction handler's answer when its work is done later (at a training run's next step)."""


class EngineService:
    """Hosts models in a room; serves panel actions through the registry and the job runner."""

    def __init__(self, link: EngineLink, *, seed: int = 0, cache_dir: str | None = None,
                 notify: Callable[[str, bool], None] | None = None, workers: int = 1) -> None:
        from deeproom.models.jobs import JobRunner, ResultCache

        self.link = link
        self.seed = seed
        self.notify = notify or (lambda text, error: None)
        self._tmp = None if cache_dir else tempfile.TemporaryDirectory(prefix="deeproom-engine-cache-")
        self.runner = JobRunner(workers, ResultCache(cache_dir or self._tmp.name))  # type: ignore[union-attr]
        self.hosted: dict[str, Hosted] = {}
        self.panels: dict[str, tuple[str, str, dict[str, Any]]] = {}
        """Analysis panels it owns: panel id -> (hosted key, action, params)."""
        self.extra: dict[str, dict[str, ExtraAction]] = {}
        """Host actions per panel id."""
        self.running: dict[str, Request] = {}
        self.groups: dict[str, Group] = {}
        self._input_of: dict[str, tuple[str, dict[str, Any]]] = {}
        """Result panel -> (key of the model whose input it was computed on, its extra source keys)."""
        """Side-by-side requests by their request id."""
        self._by_result: dict[str, str] = {}
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._lock = threading.RLock()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="deeproom-engine-service", daemon=True)
        self._thread.start()
        link.on_steer(self.steer)

    # --- hosting ------------------------------------------------------------------------

    @property
    def engine_id(self) -> str:
        return self.link.participant_id

    def host_model(self, key: str, model: Any, dataset: Any = None, *, title: str | None = None,
                   graph_panel: str | None = None, transform: dict[str, Any] | None = None,
                   size: tuple[float, float] = (2.4, 1.1), strip: bool = True, graph: bool = True,
                   extra_source: dict[str, Any] | None = None,
                   live: Callable[[Callable[[Any], None]], None] | None = None,
                   graph_content: tuple[bytes, int] | None = None) -> Hosted:
        """Host `model` (a LoadedModel): publish its graph panel with its actions (unless `graph`
        is False) and, with a dataset, an input strip beside it. `graph_content` is the graph's
        (blob, node count) when it was extracted already (a live model's: torch.fx patches
        `nn.Module.__call__` for every thread while it traces, so a run extracts before training)."""
        h = Hosted(key, model, dataset, title or model.name,
                   classes=tuple(getattr(dataset, "classes", ()) or ()), extra_source=dict(extra_source or {}),
                   live=live)
        old = self.hosted.get(key)
        if old is not None:  # hosted again (new weights): keep its panels and chosen input
            h.graph_panel, h.strip_panel, h.input_index = old.graph_panel, old.strip_panel, old.input_index
            for r in self.running.values():
                if r.hosted is old:
                    r.hosted = h
        self.hosted[key] = h
        if graph:
            from deeproom.models.graph import extract_graph, graph_blob

            if graph_content is None:
                g = extract_graph(model)
                graph_content = (graph_blob(g), len(g.nodes))
            pid = graph_panel or _pid("graph", key)
            h.graph_panel = pid
            self.put_panel(pid, graph_content[0], kind="model_graph", title=f"{h.title} — {graph_content[1]} ops",
                           source=self.model_source(h), size=size, transform=transform)
        if strip and dataset is not None and len(dataset) and h.graph_panel is not None:
            self.publish_strip(h)
        return h

    def model_source(self, h: Hosted, **extra: Any) -> dict[str, Any]:
        from deeproom.models.tasks import declared_actions

        actions, unavailable = declared_actions(h.model, h.dataset)
        self._two_model_actions(h, actions, unavailable)
        if h.live is None:
            actions.append({"name": "close_model", "label": "Close this model", "group": "Model", "role": "host",
                            "params": []})
        if h.graph_panel:  # what its host adds (a run's freeze, say)
            actions += [dict(a.declaration) for a in self.extra.get(h.graph_panel, {}).values()]
        src: dict[str, Any] = {**h.extra_source, "model": h.title, "model_key": h.key, "engine": self.engine_id,
                               "actions": actions, "unavailable": unavailable, "input": h.input_info(), **extra}
        if h.classes and len(h.classes) <= 64:
            src["classes"] = list(h.classes)
        return src

    def _two_model_actions(self, h: Hosted, actions: list[dict[str, Any]], unavailable: list[dict[str, str]]) -> None:
        """With other models open: each analysis "on both models" (declared when it applies to both with
        this model's input), and the weight difference to another state of the same architecture."""
        from deeproom.models.tasks import SPECS, comparable

        others = [o for o in self.hosted.values() if o is not h and o.graph_panel]  # the ones people see
        if not others:
            return
        single = {a["name"]: a for a in actions}

        def other_param(keys: list[str]) -> list[dict[str, Any]]:
            return [{"name": "other", "type": "choice", "label": "other model", "choices": keys, "default": keys[0]}]

        for name, spec in SPECS.items():
            reasons = {o.key: both_reason(name, h, o) for o in others}
            ok = [k for k, r in reasons.items() if r is None]
            label = f"{spec.label} on both models"
            if ok and name in single:
                a = {**single[name], "name": name + BOTH, "label": label, "group": "Both models"}
                a["params"] = [*single[name]["params"], *(other_param(ok) if len(others) > 1 else [])]
                actions.append(a)
            else:
                unavailable.append({"name": name + BOTH, "label": label,
                                    "reason": next((r for r in reasons.values() if r), "it does not apply")})
        reasons = {o.key: comparable(h.model, o.model) for o in others}
        ok = [k for k, r in reasons.items() if r is None]
        if ok:
            actions.append({"name": "compare_weights", "label": "Weight difference to…", "group": "Compare",
                            "role": "member", "params": other_param(ok), "kind": "metrics"})
        else:
            unavailable.append({"name": "compare_weights", "label": "Weight difference",
                                "reason": f"no other open model has the same parameters: {next(iter(reasons.values()))}"})

    def refresh_sources(self) -> None:
        """Declare again on every graph panel (another model was opened or closed)."""
        room = self.link.current_room()
        for h in list(self.hosted.values()):
            if h.graph_panel and room is not None and h.graph_panel in room.panels:
                self.put_panel(h.graph_panel, None, kind="model_graph", title=h.title, source=self.model_source(h))

    def publish_strip(self, h: Hosted) -> None:
        from deeproom.models.blobs import strip_blob

        ds = h.dataset
        n = min(STRIP_COUNT, len(ds))
        labels = [ds.classes[int(v)] if 0 <= int(v) < len(ds.classes) else "?" for v in ds.y[:n]]
        thumbs = _thumbnails(ds, n)
        skipped = dict(getattr(ds, "skipped", {}) or {})
        blob = strip_blob(thumbs, labels, cols=8, skipped=skipped,
                          text=f"{getattr(ds, 'name', 'data')}: {len(ds)} images" +
                               (f", {sum(skipped.values())} skipped" if skipped else ""))
        pid = h.strip_panel or _pid("inputs", h.key)
        h.strip_panel = pid
        source = {"model": h.title, "model_key": h.key, "engine": self.engine_id, "input": h.input_info(),
                  "actions": [{"name": "choose_input", "label": "Use as input", "role": "member", "on": "tile",
                               "params": [{"name": "index", "type": "tile"}]}]}
        self.put_panel(pid, blob, kind="image", title=f"Inputs · {h.title}", source=source, size=(1.6, 0.7),
                       beside=h.graph_panel)

    def add_action(self, panel_id: str, declaration: dict[str, Any], handler: Callable[[Request], str | None]) -> None:
        """A host's own action on one of its panels (declared in that panel's source by the host)."""
        self.extra.setdefault(panel_id, {})[declaration["name"]] = ExtraAction(declaration, handler)

    # --- publishing ---------------------------------------------------------------------

    def put_panel(self, panel_id: str, blob: bytes | None, *, kind: str, title: str, source: dict[str, Any],
                  size: tuple[float, float] = (1.05, 0.8), transform: dict[str, Any] | None = None,
                  beside: str | None = None) -> None:
        """Store `blob` and show it: new content for an existing panel, else a new panel at a free
        place beside `beside` (or at `transform`)."""
        from deeproom.placement import free_slot

        refs: list[str] = []
        if blob is not None:
            refs = [self.link.put_blob(blob).result(60)]
        room = self.link.current_room()
        content = {"source": source, "refs": refs}
        if room is not None and panel_id in room.panels:
            if blob is None:
                content["refs"] = list(room.panels[panel_id].content.refs)
            self.link.apply({"op": "set_content", "panel_id": panel_id, "content": content}).result(30)
            return
        if transform is None:
            transform = free_slot(room, beside, size)
        self.link.apply({"op": "add_panel", "panel_id": panel_id, "kind": kind, "title": title[:120],
                         "transform": transform, "size": list(size), "content": content}).result(30)

    def stream(self, req: Request, state: str, progress: float = 0.0, message: str = "") -> None:
        if req.group is not None:
            self._stream_group(req, state, progress, message)
            return
        self._send_stream(self._payload(req, state, progress, message))

    def _send_stream(self, payload: dict[str, Any]) -> None:
        try:
            fut = self.link.send_event("stream", payload)
            fut.add_done_callback(_quiet)
        except Exception as exc:  # the room is gone; nothing to tell
            log.debug("stream not sent: %s", exc)

    def _stream_group(self, req: Request, state: str, progress: float, message: str) -> None:
        g = req.group
        assert g is not None
        base = {"panel_id": g.panel_id, "channel": "action", "request_id": g.request_id, "action": g.action,
                "by": g.sender, "result_panel": g.members[0].result_panel if g.members else None,
                "result_panels": [m.result_panel for m in g.members]}
        if state in ("queued", "running"):
            req.progress = progress
            if state == "running" or req is g.members[0]:
                total = sum(m.progress for m in g.members) / max(1, len(g.members))
                self._send_stream({**base, "state": state, "progress": round(total, 3), "message": message[:500]})
            return
        g.ended.setdefault(req.request_id, (state, message, None))
        self._group_done(g)

    def answer(self, req: Request, state: str, message: str = "") -> None:
        """Finish a DEFERRED host action (any thread): "done" or "failed" with a message."""
        self.stream(req, state, 1.0 if state == "done" else 0.0, message)

        # --- requests -----------------------------------------------------------------------

    def steer(self, sender: str, payload: dict[str, Any]) -> None:
        """A "steer" event from the relay (any thread): queued for the service's thread."""
        if not self._closed:
            self._queue.put(("steer", (sender, payload)))

    def request(self, action: str, payload: Mapping[str, Any]) -> None:
        """The app's direct call (ContentProvider): `open_layer`, `fill_panel`, or any action
        with the steer payload's fields; runs as the engine's own participant."""
        if not self._closed:
            self._queue.put(("local", (action, dict(payload))))

    def run_on_thread(self, fn: Callable[[], None]) -> None:
        self._queue.put(("call", fn))

    def _main(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.25)
            except queue.Empty:
                self._cancel_orphans()
                continue
            if item is None:
                return
            what, data = item
            try:
                if what == "steer":
                    self._steer(*data)
                elif what == "local":
                    self._local(*data)
                elif what == "call":
                    data()
                elif what == "finished":
                    self._finished(data)
            except Exception as exc:  # one bad request must not end the service
                log.exception("engine request failed")
                self.notify(f"engine: {type(exc).__name__}: {exc}", True)
            self._cancel_orphans()

    def _role(self, sender: str) -> str:
        room = self.link.current_room()
        p = room.participants.get(sender) if room is not None else None
        return p.role.value if p is not None else "viewer"

    def _steer(self, sender: str, payload: dict[str, Any]) -> None:
        rid = payload.get("request_id")
        action = payload.get("action")
        if not isinstance(rid, str) or not _RID_RE.fullmatch(rid) or not isinstance(action, str):
            return  # not an action request (a training run's steer command): nothing to answer to
        panel = payload.get("panel_id")
        params = payload.get("params", {})
        req = Request(rid, action, panel if isinstance(panel, str) else "", sender,
                      dict(params) if isinstance(params, Mapping) else {})
        try:
            if not _NAME_RE.fullmatch(action):
                raise Refused(f"unknown action {action[:40]!r}")
            if action == "cancel":
                self._cancel(rid, "cancelled by request")
                return
            if not isinstance(params, Mapping):
                raise Refused("params must be an object")
            self._dispatch(req, check_role=True)
        except Refused as exc:
            self.stream(req, "refused", 0.0, str(exc))

    def _dispatch(self, req: Request, *, check_role: bool) -> None:
        from deeproom.models.tasks import SPECS

        extra = self.extra.get(req.panel_id, {}).get(req.action)
        h = self._hosted_for(req.panel_id)
        if extra is not None:
            need = str(extra.declaration.get("role", "member"))
        elif req.action in SPECS:
            need = SPECS[req.action].role
        elif req.action == "choose_input":
            need = "member"
        elif req.action == "close_model":
            need = "host"
        elif req.action == "compare_weights":
            need = "member"
        elif req.action.endswith(BOTH) and req.action[: -len(BOTH)] in SPECS:
            need = SPECS[req.action[: -len(BOTH)]].role
        else:
            raise Refused(f"this panel has no action {req.action!r}")
        if check_role:
            role = self._role(req.sender)
            if ROLE_RANK.get(role, 0) < ROLE_RANK[need]:
                raise Refused(f"{req.action} needs role {need}; you are {role}")
        if extra is not None:
            msg = extra.handler(req)
            if msg == DEFERRED:
                self.stream(req, "queued", 0.0, f"{extra.declaration.get('label', req.action)}: at the next step")
            else:
                self.stream(req, "done", 1.0, msg or "")
            return
        if h is None:
            raise Refused(f"panel {req.panel_id!r} is not one of this engine's models")
        req.hosted = h
        if req.action == "choose_input":
            self._choose_input(req)
        elif req.action == "close_model":
            self._close_model(req)
        elif req.action == "compare_weights":
            self._fresh([h, self._other(req)], req, lambda: self.submit_compare(req))
        elif req.action.endswith(BOTH):
            self._fresh([h, self._other(req)], req, lambda: self.submit_both(req))
        else:
            self._fresh([h], req, lambda: self.submit(req))

    def _fresh(self, hosts: list[Hosted], req: Request | None, then: Callable[[], None]) -> None:
        """Run `then` on the service's thread once every live model among `hosts` has fresh weights
        (a watched run hands a copy over between two steps); at once when none is live."""
        live = [h for h in hosts if h.live is not None]
        if not live:
            then()
            return
        if req is not None:
            self.stream(req, "queued", 0.0, "waiting for the run's next step")
        left = {h.key for h in live}

        def refreshed(h: Hosted, loaded: Any) -> None:
            h.model = loaded
            left.discard(h.key)
            if left:
                return
            try:
                then()
            except Refused as exc:
                if req is not None:
                    self.stream(req, "refused", 0.0, str(exc))
                else:
                    self.notify(str(exc), True)

        for h in live:
            assert h.live is not None

            def hand_over(loaded: Any, h: Hosted = h) -> None:  # on the training thread: back to ours
                self.run_on_thread(lambda: refreshed(h, loaded))

            h.live(hand_over)

    def _other(self, req: Request) -> Hosted:
        """The other model of a two-model action: params["other"] (a model key), or the only other one."""
        h = req.hosted
        others = [o for o in self.hosted.values() if o is not h and o.graph_panel]
        key = req.params.get("other")
        if key is None and len(others) == 1:
            return others[0]
        for o in others:
            if o.key == key:
                return o
        raise Refused(f"other must be one of {[o.key for o in others]}" if others else "only one model is open")

    def _hosted_for(self, panel_id: str) -> Hosted | None:
        if panel_id in self.panels:
            return self.hosted.get(self.panels[panel_id][0])
        for h in self.hosted.values():
            if panel_id in (h.graph_panel, h.strip_panel):
                return h
        return None

    def _layer(self, h: Hosted, layer: Any) -> str:
        from deeproom.models.tasks import model_facts

        if not isinstance(layer, str) or not layer:
            raise Refused("pick a layer")
        names = model_facts(h.model).layers
        parts = layer.split(".")
        for n in range(len(parts), 0, -1):  # a graph node may be an op inside a module: try its parents
            if ".".join(parts[:n]) in names:
                return ".".join(parts[:n])
        raise Refused(f"layer {layer[:60]!r} has no module to analyse")

    def _params(self, req: Request) -> dict[str, Any]:
        """Check the request's params against the action's declaration; defaults filled in."""
        from deeproom.models.tasks import SPECS, applies

        h = req.hosted
        assert h is not None
        spec = SPECS[req.action]
        reason = applies(req.action, h.model, None, h.dataset)  # what the model lacks comes first
        if reason is not None:
            raise Refused(reason)
        out: dict[str, Any] = {}
        given = req.params
        unknown = set(given) - {p["name"] for p in spec.params}
        if unknown:
            raise Refused(f"{req.action} takes no parameter {sorted(unknown)[0]!r}")
        for p in spec.params:
            name, typ = p["name"], p["type"]
            v = given.get(name, p.get("default"))
            if v is None:
                if typ == "layer" and not p.get("optional"):
                    raise Refused(f"{spec.label} needs a layer")
                continue
            if typ == "layer":
                out[name] = self._layer(h, v)
            elif typ == "class":
                if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (h.classes and v >= len(h.classes)):
                    raise Refused(f"class must be a class index{f' below {len(h.classes)}' if h.classes else ''}")
                out[name] = v
            elif typ == "choice":
                choices = p.get("choices", [])
                if v not in choices:
                    raise Refused(f"{name} must be one of {choices}")
                out[name] = v
            elif typ == "int":
                if isinstance(v, bool) or not isinstance(v, int) or not p.get("min", v) <= v <= p.get("max", v):
                    raise Refused(f"{name} must be an integer in [{p.get('min')}, {p.get('max')}]")
                out[name] = v
        reason = applies(req.action, h.model, out.get("layer") if spec.on == "layer" else None, h.dataset)
        if reason is not None:
            raise Refused(reason)
        return out

    def submit(self, req: Request, *, result_panel: str | None = None, title: str | None = None) -> None:
        """Run an analysis request on the job runner; its result panel is published when it is done."""
        job, key = self._prepare(req, result_panel=result_panel, title=title)
        self._launch(req, job, key)

    def _prepare(self, req: Request, *, result_panel: str | None = None,
                 title: str | None = None) -> tuple[Callable[[Any], bytes], str]:
        """Check an analysis request and make its job (nothing starts yet)."""
        from deeproom.models.tasks import SPECS, analysis_key, run_analysis

        h = req.hosted
        assert h is not None
        src = req.data_from or h
        spec = SPECS[req.action]
        params = self._params(req)
        if spec.needs & {"image"} and req.action in PER_IMAGE:
            data, index = src.input_data()
            params["index"] = index
        elif req.action in ("confusion_matrix", "embedding"):
            data = src.dataset
        else:
            data, _ = (src.input_data() if "image" in spec.needs else (None, 0))
        layer = params.get("layer", "")
        req.result_panel = result_panel or _pid(req.action.replace("_", "-"), str(layer), h.key)
        req.params = params
        req.kind = spec.kind
        req.label = f"{spec.label}{f' · {layer}' if layer else ''}"
        req.params["_title"] = title or f"{req.label} · {h.title}"
        model = h.model
        run_params = {k: v for k, v in params.items() if k != "_title"}

        def job(ctx: Any) -> bytes:
            self.stream(req, "running", 0.0, f"{req.label}…")
            return run_analysis(model, req.action, run_params, dataset=data, ctx=ctx)

        return job, analysis_key(model, req.action, run_params, data, self.seed)

    def _launch(self, req: Request, job: Callable[[Any], bytes], key: str) -> None:
        assert req.result_panel is not None
        old = self._by_result.get(req.result_panel)
        if old is not None and old in self.running:
            self._cancel(old, "superseded by a newer request")
        self.running[req.request_id] = req
        self._by_result[req.result_panel] = req.request_id
        self.stream(req, "queued", 0.0, f"{req.label} queued")

        def progress(fraction: float, message: str) -> None:
            now = time.monotonic()
            first = fraction > 0 and req.progress == 0  # the first real progress is always told
            if now - req.last_stream >= PROGRESS_INTERVAL_S or first:
                req.last_stream = now
                req.progress = fraction
                self.stream(req, "running", fraction, message or req.label)

        req.job = self.runner.submit(job, key=key, seed=self.seed, on_progress=progress)
        req.job.future.add_done_callback(lambda _f: self._queue.put(("finished", req)))

    def submit_both(self, req: Request) -> None:
        """The same analysis, same params, on the same input (this model's), for this model and the
        other: two result panels side by side, reported as one request."""
        h = req.hosted
        assert h is not None
        other = self._other(req)
        base = req.action[: -len(BOTH)]
        params = {k: v for k, v in req.params.items() if k != "other"}
        reason = both_reason(base, h, other)
        if reason is not None:
            raise Refused(reason)
        g = Group(req.request_id, req.action, req.panel_id, req.sender)
        jobs = []
        for i, model in enumerate((h, other)):
            sub = Request(f"{req.request_id}#{i + 1}", base, req.panel_id, req.sender, dict(params), model,
                          data_from=h, group=g)
            g.members.append(sub)
        for i, sub in enumerate(g.members):
            m = sub.hosted
            assert m is not None
            pid = _pid("both", base.replace("_", "-"), str(params.get("layer", "")), m.key, "vs",
                       (other if i == 0 else h).key)
            jobs.append(self._prepare(sub, result_panel=pid, title=""))  # refused before anything starts
            sub.params["_title"] = f"{sub.label} · {m.title}" + (f" (input of {h.title})" if i else "")
            sub.source_extra = {"both": [h.key, other.key], "from_request": req.request_id}
        g.members[1].beside = g.members[0].result_panel
        self.groups[g.request_id] = g
        for sub, (job, key) in zip(g.members, jobs, strict=True):
            self._launch(sub, job, key)

    def submit_compare(self, req: Request) -> None:
        """The weight difference of this model and the other (same parameter names and shapes), and,
        with data, what each predicts on it: one metrics panel."""
        from deeproom.models.jobs import cache_key
        from deeproom.models.tasks import checkpoint_difference, comparable

        h = req.hosted
        assert h is not None
        other = self._other(req)
        reason = comparable(h.model, other.model)
        if reason is not None:
            raise Refused(f"{h.title} and {other.title} cannot be compared: {reason}")
        a, b = h.model, other.model
        ds = h.dataset if h.dataset is not None and len(h.dataset) else None
        x = ds.x if ds is not None and _same_input(h, other) else None
        y = ds.y if ds is not None and x is not None else None
        req.params = {"other": other.key}
        req.kind, req.label = "metrics", f"Weight difference · {h.title} → {other.title}"
        req.result_panel = _pid("diff", h.key, other.key)
        req.params["_title"] = req.label
        req.source_extra = {"compared": [h.key, other.key]}
        names = (h.title, other.title)

        def job(ctx: Any) -> bytes:
            self.stream(req, "running", 0.0, f"{req.label}…")
            return checkpoint_difference(a, b, x=x, y=y, names=names, ctx=ctx)

        key = cache_key(a.digest, "compare_weights", {"other": b.digest, "data": getattr(ds, "name", None),
                                                      "n": 0 if x is None else len(x)})
        self._launch(req, job, key)

    def _finished(self, req: Request) -> None:
        from deeproom.models.errors import JobCancelled

        if self.running.get(req.request_id) is not req:
            return  # cancelled or superseded: already answered, nothing published
        del self.running[req.request_id]
        if self._by_result.get(req.result_panel or "") == req.request_id:
            del self._by_result[req.result_panel or ""]
        fut = req.job.future
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or isinstance(exc, JobCancelled):
            self.stream(req, "cancelled", 0.0, "cancelled")
            return
        if exc is not None:
            message = f"{req.label or req.action} failed: {type(exc).__name__}: {exc}"
            if req.group is not None:
                req.group.ended[req.request_id] = ("failed", message, None)
                self._group_done(req.group)
                return
            self._publish_failure(req, message)
            return
        blob: bytes = fut.result()
        done = f"{req.label or req.action} done{' (cached)' if req.job.cached else ''}"
        if req.group is not None:
            req.group.ended[req.request_id] = ("done", done, blob)
            self._group_done(req.group)
            return
        self._publish_result(req, blob)
        self.stream(req, "done", 1.0, done)
        if req.on_done is not None:
            req.on_done(blob, None)

    def _result_source(self, req: Request) -> dict[str, Any]:
        from deeproom.models.tasks import SPECS

        h = req.hosted
        assert h is not None
        params = {k: v for k, v in req.params.items() if k not in ("_title", "index")}
        spec = SPECS.get(req.action)
        source = {"model": h.title, "model_key": h.key, "engine": self.engine_id, "analysis": req.action,
                  "params": params, "actions": self._panel_actions(spec) if spec is not None else [],
                  "from": req.panel_id, **req.source_extra}
        if "layer" in params:
            source["layer"] = params["layer"]
        if req.action in PER_IMAGE:
            source["input"] = (req.data_from or h).input_info()
        if h.classes and len(h.classes) <= 64:
            source["classes"] = list(h.classes)
        if h.live is not None:
            source["step"] = getattr(h.model, "extra", {}).get("step")
        return source

    def _publish_failure(self, req: Request, message: str) -> None:
        room = self.link.current_room()
        assert req.result_panel is not None
        if room is not None and req.result_panel in room.panels:
            self.put_panel(req.result_panel, None, kind=req.kind, title=str(req.params.get("_title", req.action)),
                           source={**self._result_source(req), "error": message[:1000]})
        self.stream(req, "failed", 0.0, message)
        if req.on_done is not None:
            req.on_done(None, message)

    def _publish_result(self, req: Request, blob: bytes) -> None:
        h = req.hosted
        assert h is not None and req.result_panel is not None
        params = {k: v for k, v in req.params.items() if k not in ("_title", "index")}
        self.put_panel(req.result_panel, blob, kind=req.kind, title=str(req.params.get("_title", req.action)),
                       source=self._result_source(req), beside=req.beside or req.panel_id)
        self.panels[req.result_panel] = (h.key, req.action, params)
        self._input_of[req.result_panel] = ((req.data_from or h).key, dict(req.source_extra))

    def _group_done(self, g: Group) -> None:
        """Once every job of a group ended: publish all (in order, each beside the one before) or,
        when one was cancelled, nothing."""
        if len(g.ended) < len(g.members):
            return
        self.groups.pop(g.request_id, None)
        report = g.report()
        states = [g.ended[m.request_id][0] for m in g.members]
        extra = {"result_panels": [m.result_panel for m in g.members]}
        if "cancelled" in states:
            self._send_stream({**self._payload(report, "cancelled", 0.0, "cancelled"), **extra})
            return
        failures = []
        for m in g.members:
            _, message, blob = g.ended[m.request_id]
            if blob is not None:
                self._publish_result(m, blob)
            else:
                failures.append(message)
                room = self.link.current_room()
                if room is not None and m.result_panel in room.panels:
                    self.put_panel(m.result_panel or "", None, kind=m.kind, title=str(m.params.get("_title", "")),
                                   source={**self._result_source(m), "error": message[:1000]})
        if failures:
            self._send_stream({**self._payload(report, "failed", 0.0, "; ".join(failures)), **extra})
        else:
            self._send_stream({**self._payload(report, "done", 1.0, f"{g.members[0].label} on both models done"),
                               **extra})

    def _payload(self, req: Request, state: str, progress: float, message: str) -> dict[str, Any]:
        return {"panel_id": req.panel_id, "channel": "action", "request_id": req.request_id,
                "action": req.action, "by": req.sender, "state": state, "progress": round(float(progress), 3),
                "message": message[:500], "result_panel": req.result_panel}

    def _panel_actions(self, spec: Any) -> list[dict[str, Any]]:
        """What a result panel offers: the analyses of its group with the same panel kind (recompute
        with another method, layer or class)."""
        from deeproom.models.tasks import SPECS

        return [s.action() for s in SPECS.values() if s.kind == spec.kind and s.group == spec.group][:8]

    def _cancel(self, request_id: str, why: str) -> bool:
        g = self.groups.get(request_id)
        if g is not None:  # the whole side-by-side request
            return any([self._cancel(m.request_id, why) for m in g.members])
        req = self.running.pop(request_id, None)
        if req is None:
            return False
        if req.result_panel and self._by_result.get(req.result_panel) == request_id:
            del self._by_result[req.result_panel]
        if req.job is not None:
            req.job.cancel()
        if req.group is not None:
            req.group.ended[req.request_id] = ("cancelled", why, None)
            for sibling in req.group.members:
                if sibling.request_id in self.running:
                    self._cancel(sibling.request_id, why)
            self._group_done(req.group)
            return True
        self.stream(req, "cancelled", 0.0, why)
        return True

    def _cancel_orphans(self) -> None:
        """Cancel jobs whose source or result panel was removed."""
        if not self.running:
            return
        room = self.link.current_room()
        if room is None:
            return
        for rid, req in list(self.running.items()):
            gone = req.panel_id not in room.panels
            if not gone and req.result_panel and req.result_panel in self.panels:
                gone = req.result_panel not in room.panels
            if gone:
                self._cancel(rid, "its panel was closed")
        for pid in [p for p in self.panels if p not in room.panels]:
            del self.panels[pid]

    def _choose_input(self, req: Request) -> None:
        h = req.hosted
        assert h is not None
        i = req.params.get("index")
        n = len(h.dataset) if h.dataset is not None else 0
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise Refused(f"index must be a tile of the input strip (0–{max(0, n - 1)})" if n else
                          "this model has no data to choose from: give --data")
        h.input_index = i
        if h.strip_panel:
            self.publish_strip_source(h)
        if h.graph_panel:
            self.put_panel(h.graph_panel, None, kind="model_graph", title=h.title, source=self.model_source(h))
        # every per-image panel computed on this model's input: its own, and the other model's of a
        # side-by-side pair (both keep showing the same input)
        again = [(pid, k, a, p) for pid, (k, a, p) in self.panels.items()
                 if a in PER_IMAGE and self._input_of.get(pid, (k, {}))[0] == h.key and k in self.hosted]
        for n_, (pid, key, action, params) in enumerate(again):
            sub = Request(f"{req.request_id}.{n_}"[:64], action, req.panel_id, req.sender, dict(params),
                          self.hosted[key], data_from=h, source_extra=self._input_of.get(pid, (key, {}))[1],
                          beside=req.panel_id)
            self.submit(sub, result_panel=pid)
        self.stream(req, "done", 1.0, f"input {i} ({h.input_info()['label']}); recomputing {len(again)} panels")

    def publish_strip_source(self, h: Hosted) -> None:
        room = self.link.current_room()
        if room is None or h.strip_panel is None or h.strip_panel not in room.panels:
            return
        src = dict(room.panels[h.strip_panel].content.source)
        src["input"] = h.input_info()
        self.put_panel(h.strip_panel, None, kind="image", title="", source=src)

    def _close_model(self, req: Request) -> None:
        h = req.hosted
        assert h is not None
        for rid, r in list(self.running.items()):
            if r.hosted is h:
                self._cancel(rid, "the model was closed")
        room = self.link.current_room()
        mine = [pid for pid, (k, _, _) in self.panels.items() if k == h.key] + [h.graph_panel, h.strip_panel]
        for pid in mine:
            if pid and room is not None and pid in room.panels:
                self.link.apply({"op": "remove_panel", "panel_id": pid}).result(30)
            self.panels.pop(pid or "", None)
        self.hosted.pop(h.key, None)
        self.refresh_sources()
        self.stream(req, "done", 1.0, f"closed {h.title}")

    # --- the app's direct calls (the old provider path) ------------------------------------

    def _local(self, action: str, payload: dict[str, Any]) -> None:
        if action == "open_layer":
            self.open_layer(payload)
            return
        if action == "fill_panel" and payload.get("kind") == "note":
            from deeproom.content import encode_content

            self.put_panel(str(payload.get("panel_id")), encode_content({"kind": "note", "text": "New note"}, {}),
                           kind="note", title="Note", source={})
            return
        if "request_id" not in payload:
            payload = {**payload, "request_id": f"local-{time.monotonic_ns() % 10**12}"}
        req = Request(str(payload["request_id"]), action, str(payload.get("panel_id", "")), self.engine_id,
                      dict(payload.get("params") or {k: v for k, v in payload.items()
                                                     if k not in ("panel_id", "request_id", "source", "transform")}))
        try:
            self._dispatch(req, check_role=False)
        except Refused as exc:
            self.notify(f"{action}: {exc}", True)

    def open_layer(self, payload: Mapping[str, Any]) -> None:
        """A clicked layer: its feature maps, filters (when it has weights) and Grad-CAM (when it is
        spatial), each beside the graph panel that was clicked, through the registry and runner."""
        from deeproom.models.tasks import applies

        panel_id = str(payload.get("panel_id", ""))
        h = self._hosted_for(panel_id)
        if h is None:
            self.notify("that graph's model was not opened by this engine", True)
            return
        try:
            layer = self._layer(h, payload.get("layer"))
        except Refused as exc:
            self.notify(str(exc), True)
            return
        todo = [a for a in ("feature_maps", "filters", "gradcam") if applies(a, h.model, layer, h.dataset) is None]
        if not todo:
            self.notify(f"nothing to show for {layer}: {applies('feature_maps', h.model, layer, h.dataset)}", True)
            return
        self._fresh([h], None, lambda: self._open_layer(h, panel_id, layer, todo))

    def _open_layer(self, h: Hosted, panel_id: str, layer: str, todo: list[str]) -> None:
        left = set(todo)
        names = {"feature_maps": "feature-maps", "filters": "filters", "gradcam": "grad-cam"}
        titles = {"feature_maps": "Feature maps", "filters": "Filters", "gradcam": "Grad-CAM"}
        errors: list[str] = []
        for a in todo:
            req = Request(f"open-{a}-{time.monotonic_ns() % 10**9}", a, panel_id, self.engine_id, {"layer": layer}, h)

            def done(blob: bytes | None, err: str | None, a: str = a) -> None:
                left.discard(a)
                if err:
                    errors.append(err)
                if not left:
                    self.notify(f"opened {layer}" if not errors else "; ".join(errors), bool(errors))

            req.on_done = done
            try:
                self.submit(req, result_panel=_pid(names[a], layer.replace(".", "-").replace("/", "-")),
                            title=f"{titles[a]} · {layer}")
            except Refused as exc:
                done(None, str(exc))

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for rid in list(self.running):
            req = self.running.pop(rid)
            if req.job is not None:
                req.job.cancel()
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.runner.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _thumbnails(ds: Any, n: int) -> Any:
    try:  # the data engineer's: mean/std undone, aspect kept
        from deeproom.models.datasets import thumbnails

        return thumbnails(ds, n, 48)
    except ImportError:
        return ds.subset(range(n)).thumbnails(size=48)


def _quiet(fut: Any) -> None:
    try:
        fut.result()
    except Exception as exc:
        log.debug("stream event refused: %s", exc)
