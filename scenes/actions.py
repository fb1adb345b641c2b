"""Panel actions as the app reads them: what a panel's owner declares it can compute.

A panel's content source (untrusted: any member can write one) may list `actions`
and `unavailable` ones (see /tmp/dr/actions-contract.md, docs/scenes.md). This
module validates them at the boundary into `ActionSpec`/`ParamSpec`, turns a
parameter into the rows of a picker (`param_options`), walks the pickers of one
action (`ActionFlow`) and reads the engine's progress reports (`parse_progress`).
Pure Python: the menus that draw all this live in `action_menus.py`. The app knows
no analysis by name; everything here comes from the source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NAME = re.compile(r"[a-z0-9_]{1,32}\Z")
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
ROLES = ("viewer", "member", "presenter", "host")  # least powerful first
PARAM_TYPES = ("layer", "class", "choice", "int", "float", "bool", "tile", "selection")
GIVEN_BY_CLICK = ("tile", "selection")
"""Parameter types the right-click (or tile click) fills, never a picker."""
ON = (None, "layer", "selection", "tile")
STATES = ("queued", "running", "done", "failed", "refused", "cancelled")
MAX_ACTIONS = 64
MAX_PARAMS = 16
MAX_CHOICES = 256
MAX_TEXT = 200
PICKER_ROWS = 10
"""Rows a picker shows at once (keys 1-0); longer lists page with a "more" row."""


class ActionError(ValueError):
    """A declared action (or a progress report) that cannot be used, with why."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    label: str
    optional: bool = False
    choices: tuple[Any, ...] = ()
    default: Any = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class ActionSpec:
    name: str
    label: str
    group: str = ""
    role: str = "member"
    on: str | None = None
    params: tuple[ParamSpec, ...] = ()

    def param(self, type_: str) -> ParamSpec | None:
        return next((p for p in self.params if p.type == type_), None)


@dataclass(frozen=True)
class Unavailable:
    name: str
    label: str
    reason: str


def _text(v: Any, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ActionError(f"{what} must be a non-empty string")
    return v[:limit]


def _number(v: Any, what: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or abs(v) > 1e12:
        raise ActionError(f"{what} must be a finite number")
    return float(v)


def _integral(v: Any) -> Any:
    """A whole float back to an int: numbers that went through the room document come back
    as floats (2 -> 2.0), and an engine checks an "int" parameter for an int."""
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**53 else v


def _scalar(v: Any, what: str) -> Any:
    if isinstance(v, bool | int | str) or (isinstance(v, float) and v == v):
        return v[:MAX_TEXT] if isinstance(v, str) else v
    raise ActionError(f"{what} must be a string, number or bool")


def parse_param(d: Any) -> ParamSpec:
    if not isinstance(d, Mapping):
        raise ActionError("a parameter must be an object")
    name = d.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ActionError(f"parameter name {name!r} must match [a-z0-9_]{{1,32}}")
    typ = d.get("type")
    if typ not in PARAM_TYPES:
        raise ActionError(f"parameter {name}: type {typ!r} is not one of {', '.join(PARAM_TYPES)}")
    choices: tuple[Any, ...] = ()
    if typ == "choice":
        raw = d.get("choices")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_CHOICES:
            raise ActionError(f"parameter {name}: a choice needs 1..{MAX_CHOICES} choices")
        choices = tuple(_integral(_scalar(c, f"parameter {name}: a choice")) for c in raw)
    lo, hi = _number(d.get("min"), f"parameter {name}: min"), _number(d.get("max"), f"parameter {name}: max")
    if typ in ("int", "float") and (lo is None or hi is None or lo > hi):
        raise ActionError(f"parameter {name}: {typ} needs min <= max")
    default = d.get("default")
    if default is not None:
        default = _scalar(default, f"parameter {name}: default")
        if typ != "float":
            default = _integral(default)
    label = d.get("label", name)
    return ParamSpec(name, typ, _text(label, f"parameter {name}: label", 40), bool(d.get("optional", False)),
                     choices, default, lo, hi)


def parse_action(d: Any) -> ActionSpec:
    if not isinstance(d, Mapping):
        raise ActionError("an action must be an object")
    name = d.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ActionError(f"action name {name!r} must match [a-z0-9_]{{1,32}}")
    role = d.get("role", "member")
    if role not in ROLES:
        raise ActionError(f"action {name}: role {role!r} is not one of {', '.join(ROLES)}")
    on = d.get("on")
    if on not in ON:
        raise ActionError(f"action {name}: on {on!r} is not layer, selection or tile")
    raw = d.get("params", [])
    if not isinstance(raw, list) or len(raw) > MAX_PARAMS:
        raise ActionError(f"action {name}: params must be a list of at most {MAX_PARAMS}")
    params = tuple(parse_param(p) for p in raw)
    if len({p.name for p in params}) != len(params):
        raise ActionError(f"action {name}: two parameters share a name")
    group = d.get("group", "")
    return ActionSpec(name, _text(d.get("label", name), f"action {name}: label", 48),
                      group[:40] if isinstance(group, str) else "", role, on, params)


def parse_actions(source: Mapping[str, Any]) -> tuple[list[ActionSpec], list[Unavailable], list[str]]:
    """The actions and unavailable ones a source declares, and what was wrong with the rest
    (a bad entry is skipped and said, never fatal)."""
    actions: list[ActionSpec] = []
    unavailable: list[Unavailable] = []
    problems: list[str] = []
    raw = source.get("actions", [])
    if not isinstance(raw, list):
        return [], [], ["actions must be a list"]
    seen: set[str] = set()
    for d in raw[:MAX_ACTIONS]:
        try:
            a = parse_action(d)
        except ActionError as exc:
            problems.append(str(exc))
            continue
        if a.name in seen:
            problems.append(f"action {a.name} is declared twice")
            continue
        seen.add(a.name)
        actions.append(a)
    raw_u = source.get("unavailable", [])
    for d in raw_u[:MAX_ACTIONS] if isinstance(raw_u, list) else []:
        if isinstance(d, Mapping) and isinstance(d.get("name"), str) and isinstance(d.get("reason"), str):
            label = d.get("label") if isinstance(d.get("label"), str) else d["name"]
            unavailable.append(Unavailable(d["name"][:32], str(label)[:48], d["reason"][:MAX_TEXT]))
        else:
            problems.append("an unavailable entry needs a name and a reason")
    return actions, unavailable, problems


def role_allows(have: str, need: str) -> bool:
    return have in ROLES and need in ROLES and ROLES.index(have) >= ROLES.index(need)


def menu_entries(source: Mapping[str, Any], on: str | None, role: str) -> tuple[list[ActionSpec], list[tuple[str, str]]]:
    """What an action menu offers for a right-click on `on` (None: the panel itself,
    "layer", "selection", "tile") to someone with `role`: the actions they can pick, sorted
    by group, and the greyed ones as (label, why). Unavailable ones show on the panel's menu."""
    actions, unavailable, _problems = parse_actions(source)
    ok: list[ActionSpec] = []
    greyed: list[tuple[str, str]] = []
    for a in actions:
        if a.on != on:
            continue
        if role_allows(role, a.role):
            ok.append(a)
        else:
            greyed.append((a.label, f"{a.label} needs the {a.role} role (you are {role})"))
    if on is None:
        greyed += [(u.label, f"{u.label}: {u.reason}") for u in unavailable]
    ok.sort(key=lambda a: a.group)
    return ok, greyed


def class_names(source: Mapping[str, Any], meta: Mapping[str, Any] | None) -> list[str]:
    """Class names for "class" pickers and titles: the source's short list, else the blob's."""
    for where in (source, meta or {}):
        names = where.get("classes")
        if isinstance(names, list) and names and all(isinstance(n, str | int) for n in names):
            return [str(n)[:40] for n in names[:100_000]]
    return []


def param_options(p: ParamSpec, *, classes: Sequence[str] = (), layers: Sequence[str] = (),
                  n_classes: int = 0) -> list[tuple[str, Any]]:
    """The rows (label, value) a picker for `p` offers; the default first when there is one."""
    rows: list[tuple[str, Any]]
    if p.type == "choice":
        rows = [(str(c), c) for c in p.choices]
    elif p.type == "bool":
        rows = [("yes", True), ("no", False)]
    elif p.type == "class":
        names = list(classes) or [str(i) for i in range(n_classes)]
        rows = [(f"{i} {n}" if n != str(i) else n, i) for i, n in enumerate(names)]
        if p.optional:
            rows.insert(0, ("predicted class", None))
    elif p.type == "layer":
        rows = [(name, name) for name in layers]
    elif p.type in ("int", "float"):
        assert p.min is not None and p.max is not None
        if p.type == "int":
            lo, hi = int(p.min), int(p.max)
            if hi - lo < PICKER_ROWS:
                values: list[Any] = list(range(lo, hi + 1))
            else:  # a geometric-ish spread from min to max
                values = sorted({lo, hi, *(round(lo + (hi - lo) * (k / 8) ** 2) for k in range(1, 8))})
        else:
            values = [round(p.min + (p.max - p.min) * k / 4, 6) for k in range(5)]
        if p.default is not None and p.default not in values:
            values = sorted([*values, p.default])
        rows = [(str(v), v) for v in values]
    else:  # "tile", "selection": given by the click, never picked
        rows = []
    if p.default is not None:
        for i, (label, value) in enumerate(rows):
            if value == p.default:
                rows.insert(0, rows.pop(i))
                rows[0] = (f"{label} (default)", value)
                break
    return rows


@dataclass
class ActionFlow:
    """One action being set up: the pickers still to show, the values chosen so far."""

    panel_id: str
    engine: str
    action: ActionSpec
    values: dict[str, Any] = field(default_factory=dict)
    page: int = 0

    def next_param(self) -> ParamSpec | None:
        for p in self.action.params:
            if p.name not in self.values and p.type not in GIVEN_BY_CLICK:
                return p
        return None

    def choose(self, p: ParamSpec, value: Any) -> None:
        self.values[p.name] = value
        self.page = 0

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if v is not None}


@dataclass(frozen=True)
class Progress:
    panel_id: str
    request_id: str
    action: str
    by: str
    state: str
    progress: float
    message: str
    result_panel: str | None

    @property
    def pending(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def failed(self) -> bool:
        return self.state in ("failed", "refused")


def parse_progress(payload: Mapping[str, Any]) -> Progress | None:
    """An action progress report from a "stream" event, or None if it is not one.
    Raises ActionError for a report that claims to be one but is malformed."""
    if payload.get("channel") != "action":
        return None
    pid, rid, state = payload.get("panel_id"), payload.get("request_id"), payload.get("state")
    if not isinstance(pid, str) or not pid or len(pid) > 128:
        raise ActionError("an action report needs a panel_id")
    if not isinstance(rid, str) or not REQUEST_ID.match(rid):
        raise ActionError("an action report needs a request_id")
    if state not in STATES:
        raise ActionError(f"action report state {state!r} is not one of {', '.join(STATES)}")
    prog = payload.get("progress", 0.0)
    p = float(prog) if isinstance(prog, int | float) and not isinstance(prog, bool) and prog == prog else 0.0
    msg = payload.get("message", "")
    result = payload.get("result_panel")
    return Progress(pid, rid, str(payload.get("action", ""))[:32], str(payload.get("by", ""))[:128], state,
                    min(max(p, 0.0), 1.0), msg[:MAX_TEXT] if isinstance(msg, str) else "",
                    result if isinstance(result, str) and 0 < len(result) <= 128 else None)


def _fitted(image_shape: tuple[int, int], face_px: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    """Where an image drawn to fit a panel face (aspect kept, centred, `margin` pixels clear)
    lands on it: (x0, y0, width, height) in face pixels from the top-left."""
    ih, iw = image_shape
    fw, fh = face_px
    bw, bh = fw - 2 * margin, fh - 2 * margin
    s = min(bw / max(iw, 1), bh / max(ih, 1))
    w, h = max(1, int(iw * s)), max(1, int(ih * s))
    return margin + (bw - w) // 2, margin + (bh - h) // 2, w, h


def tile_at(tiles: Mapping[str, Any], image_shape: tuple[int, int], face_px: tuple[int, int],
            x: float, y: float, margin: int = 4) -> int | None:
    """Which tile of an input strip a point on the painted face is over.

    The image (`image_shape` = (h, w) pixels) is painted fit into the face (`face_px` =
    (w, h)) inside a `margin` (scenes.painting.paint_image); (x, y) are face pixels from the
    top-left. The strip's meta says where its tiles are: `tile` [h, w] pixels each, `pad`
    pixels before and between them, so col = (ix - pad) // (w + pad), row likewise
    (the contract); a strip without `tile` is an even grid of rows x cols."""
    try:
        rows, cols, count = int(tiles["rows"]), int(tiles["cols"]), int(tiles["count"])
    except (KeyError, TypeError, ValueError):
        return None
    if rows < 1 or cols < 1 or count < 1:
        return None
    ih, iw = image_shape
    x0, y0, w, h = _fitted(image_shape, face_px, margin)
    fx, fy = (x - x0) / w, (y - y0) / h
    if not (0 <= fx < 1 and 0 <= fy < 1):
        return None
    tile, pad = tiles.get("tile"), tiles.get("pad", 0)
    if (isinstance(tile, list | tuple) and len(tile) == 2 and all(isinstance(v, int) and v > 0 for v in tile)
            and isinstance(pad, int) and not isinstance(pad, bool) and 0 <= pad < 10_000):
        th, tw = int(tile[0]), int(tile[1])
        px, py = fx * iw, fy * ih  # image pixels
        if px < pad or py < pad:
            return None
        col, row = int((px - pad) // (tw + pad)), int((py - pad) // (th + pad))
        if col >= cols or row >= rows:
            return None
    else:
        col, row = int(fx * cols), int(fy * rows)
    i = row * cols + col
    return i if i < count else None


def tile_centre(tiles: Mapping[str, Any], image_shape: tuple[int, int], face_px: tuple[int, int],
                index: int, margin: int = 4) -> tuple[float, float] | None:
    """The face pixel (x, y from the top-left) at the middle of tile `index` of an input
    strip (the inverse of `tile_at`), or None when there is no such tile."""
    try:
        rows, cols, count = int(tiles["rows"]), int(tiles["cols"]), int(tiles["count"])
    except (KeyError, TypeError, ValueError):
        return None
    if not 0 <= index < count or cols < 1 or rows < 1:
        return None
    ih, iw = image_shape
    x0, y0, w, h = _fitted(image_shape, face_px, margin)
    row, col = divmod(index, cols)
    tile, pad = tiles.get("tile"), tiles.get("pad", 0)
    if isinstance(tile, list | tuple) and len(tile) == 2 and isinstance(pad, int):
        th, tw = float(tile[0]), float(tile[1])
        px, py = pad + col * (tw + pad) + tw / 2, pad + row * (th + pad) + th / 2
    else:
        px, py = (col + 0.5) * iw / cols, (row + 0.5) * ih / rows
    return x0 + px / iw * w, y0 + py / ih * h
