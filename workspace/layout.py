"""Layouts: where a room's panels are, saved by name and exchanged as versioned JSON files.

A layout is the room's name and layout lock plus its panels (kind, title, transform,
size, what they show). Participants and who holds which lock are not part of it.
The file format is documented in docs/layout-format.md; `read_layout_file` migrates
files of older schema versions and refuses newer ones with a clear message.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeproom.errors import LayoutFileError, ValidationError
from deeproom.state import (
    MAX_JSON_DEPTH,
    MAX_NAME,
    MAX_PANELS,
    Panel,
    Room,
    brief,
    check_bool,
    check_number,
    check_text,
    field_names,
)

if TYPE_CHECKING:
    from deeproom.document import RoomDocument

FORMAT = "deeproom-layout"
SCHEMA_VERSION = 2
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_NESTING = MAX_JSON_DEPTH + 8
"""Deepest nesting of a layout file: a content source's levels plus the layout's own."""


@dataclass(frozen=True, slots=True)
class Layout:
    """A saved arrangement of panels."""

    name: str
    """The room name it was saved from."""
    layout_locked: bool
    """Whether the layout was locked."""
    panels: tuple[Panel, ...]
    """The panels, in creation order."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": SCHEMA_VERSION,
            "room": {"name": self.name, "layout_locked": self.layout_locked},
            "panels": [_panel_entry(p) for p in self.panels],
        }


def _panel_entry(p: Panel) -> dict[str, Any]:
    d = p.to_dict()
    d.pop("lock_holder")  # who held a lock is not part of a layout
    return d


def layout_of(room: Room) -> Layout:
    panels = tuple(sorted(room.panels.values(), key=lambda p: (p.created, p.id)))
    return Layout(room.settings.name, room.settings.layout_locked, panels)


def layout_from_dict(data: Any) -> Layout:
    """Validate a layout document (any supported schema version) and return it."""
    if not isinstance(data, Mapping):
        raise LayoutFileError(f"a layout must be a JSON object; got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise LayoutFileError(f"not a DeepRoom layout: 'format' must be {FORMAT!r}; got {brief(data.get('format'), 60)}")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise LayoutFileError(f"layout 'version' must be a whole number; got {brief(version, 40)}")
    if version > SCHEMA_VERSION:
        raise LayoutFileError(
            f"this layout uses schema version {brief(version)}, newer than this DeepRoom reads "
            f"(1 to {SCHEMA_VERSION}); upgrade DeepRoom to open it"
        )
    if version < 1:
        raise LayoutFileError(f"layout schema version must be 1 to {SCHEMA_VERSION}; got {brief(version)}")
    if version == 1:
        data = _migrate_v1(data)
    return _parse_v2(data)


def _parse_v2(data: Mapping[str, Any]) -> Layout:
    unknown = set(data) - {"format", "version", "room", "panels"}
    if unknown:
        raise LayoutFileError(f"layout has unknown fields {field_names(unknown)}; allowed: format, version, room, panels")
    room = data.get("room", {})
    if not isinstance(room, Mapping):
        raise LayoutFileError("layout 'room' must be an object with name and layout_locked")
    panels_raw = data.get("panels")
    if not isinstance(panels_raw, list):
        raise LayoutFileError("layout 'panels' must be a list of panels")
    if len(panels_raw) > MAX_PANELS:
        raise LayoutFileError(f"a layout holds at most {MAX_PANELS} panels; this one has {len(panels_raw)}")
    panels: list[Panel] = []
    seen: set[str] = set()
    try:
        name = check_text(room.get("name", "Untitled room"), "room name", MAX_NAME)
        locked = check_bool(room.get("layout_locked", False), "room.layout_locked")
        for i, raw in enumerate(panels_raw):
            try:
                panel = Panel.from_dict(raw)
            except ValidationError as exc:
                raise LayoutFileError(f"panel #{i}: {exc}") from None
            if panel.id in seen:
                raise LayoutFileError(f"panel #{i}: id {panel.id!r} appears twice")
            seen.add(panel.id)
            panels.append(panel)
    except LayoutFileError:
        raise
    except ValidationError as exc:
        raise LayoutFileError(str(exc)) from None
    return Layout(name, locked, tuple(panels))


def _migrate_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """Schema 1 (DeepRoom 0.0.x): rotation as Euler degrees [x, y, z], a single scale
    number, room name at the top level as 'room_name'. Converted to schema 2."""
    unknown = set(data) - {"format", "version", "room_name", "panels"}
    if unknown:
        raise LayoutFileError(f"schema-1 layout has unknown fields {field_names(unknown)}")
    panels_raw = data.get("panels")
    if not isinstance(panels_raw, list):
        raise LayoutFileError("layout 'panels' must be a list of panels")
    panels = []
    for i, raw in enumerate(panels_raw):
        if not isinstance(raw, Mapping):
            raise LayoutFileError(f"panel #{i}: must be an object")
        p = dict(raw)
        t = p.pop("transform", {}) or {}
        if not isinstance(t, Mapping):
            raise LayoutFileError(f"panel #{i}: transform must be an object")
        new_t: dict[str, Any] = {"position": t.get("position", [0.0, 1.5, 2.0])}
        euler = t.get("rotation", [0.0, 0.0, 0.0])
        try:
            if not isinstance(euler, list) or len(euler) != 3:
                raise ValueError
            angles = [check_number(a, "angle", -1e6, 1e6) for a in euler]
            new_t["rotation"] = euler_to_quaternion(*angles)
        except ValueError:  # ValidationError is one
            raise LayoutFileError(f"panel #{i}: schema-1 rotation must be three angles in degrees, each within ±1e6") from None
        scale = t.get("scale", 1.0)
        new_t["scale"] = [scale, scale, scale] if isinstance(scale, int | float) else scale
        p["transform"] = new_t
        panels.append(p)
    return {
        "format": FORMAT,
        "version": 2,
        "room": {"name": data.get("room_name", "Untitled room"), "layout_locked": False},
        "panels": panels,
    }


def euler_to_quaternion(x_deg: float, y_deg: float, z_deg: float) -> list[float]:
    """Quaternion (w, x, y, z) for rotations about x, then y, then z, in degrees."""
    hx, hy, hz = (math.radians(a) / 2 for a in (x_deg, y_deg, z_deg))
    cx, sx, cy, sy, cz, sz = math.cos(hx), math.sin(hx), math.cos(hy), math.sin(hy), math.cos(hz), math.sin(hz)
    return [
        cx * cy * cz + sx * sy * sz,
        sx * cy * cz - cx * sy * sz,
        cx * sy * cz + sx * cy * sz,
        cx * cy * sz - sx * sy * cz,
    ]


def dumps_layout(layout: Layout) -> str:
    return json.dumps(layout.to_dict(), indent=2, allow_nan=False) + "\n"


def loads_layout(text: str | bytes, *, source: str = "layout") -> Layout:
    """Parse a layout file's text; every problem becomes a LayoutFileError naming `source`."""
    if len(text) > MAX_FILE_BYTES:
        raise LayoutFileError(f"{source} is {len(text)} bytes; layout files are at most {MAX_FILE_BYTES} bytes")
    depth = _max_nesting(text)
    if depth > MAX_NESTING:
        # json.loads recurses once per level: refuse before it can exhaust the stack.
        raise LayoutFileError(f"{source} is nested {depth} levels deep; a layout is nested at most {MAX_NESTING}")
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        hint = " (the file looks truncated)" if "Expecting" in str(exc) and str(exc).endswith(f"char {len(text)})") else ""
        raise LayoutFileError(f"{source} is not valid JSON: {exc}{hint}") from None
    except RecursionError:
        raise LayoutFileError(f"{source} is nested too deep") from None
    except ValueError as exc:  # NaN, Infinity, or a number of more than 4300 digits
        raise LayoutFileError(f"{source}: {str(exc)[:200]}") from None
    try:
        return layout_from_dict(data)
    except LayoutFileError as exc:
        raise LayoutFileError(f"{source}: {exc}") from None


def _max_nesting(text: str | bytes) -> int:
    """How deep brackets nest in JSON text (brackets inside strings ignored), in one pass."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    # Drop string literals (with their escapes), then count what is left.
    stripped = _STRINGS.sub(b"", raw)
    brackets = stripped.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    import numpy as np

    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"NaN and Infinity are not allowed in a layout file (found {name})")


def write_layout_file(layout: Layout, path: str | os.PathLike[str]) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(dumps_layout(layout), encoding="utf-8")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def read_layout_file(path: str | os.PathLike[str]) -> Layout:
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise LayoutFileError(f"no such layout file: {p}") from None
    if size > MAX_FILE_BYTES:
        raise LayoutFileError(f"{p} is {size} bytes; layout files are at most {MAX_FILE_BYTES} bytes")
    return loads_layout(p.read_bytes(), source=str(p))


def layout_operations(room: Room, layout: Layout) -> list[dict[str, Any]]:
    """The operations that turn `room`'s panels into `layout`'s (as operation dicts)."""
    ops: list[dict[str, Any]] = []
    wanted = {p.id: p for p in layout.panels}
    for pid in sorted(set(room.panels) - set(wanted)):
        ops.append({"op": "remove_panel", "panel_id": pid})
    for p in layout.panels:
        have = room.panels.get(p.id)
        if have is None:
            ops.append(
                {
                    "op": "add_panel",
                    "panel_id": p.id,
                    "kind": p.kind.value,
                    "title": p.title,
                    "transform": p.transform.to_dict(),
                    "size": list(p.size),
                    "content": p.content.to_dict(),
                }
            )
            continue
        if have.kind is not p.kind:
            raise LayoutFileError(
                f"panel {p.id!r} is a {have.kind.value} in the room but a {p.kind.value} in the layout"
            )
        if have.transform != p.transform:
            ops.append({"op": "move_panel", "panel_id": p.id, "transform": p.transform.to_dict()})
        if have.size != p.size:
            ops.append({"op": "resize_panel", "panel_id": p.id, "size": list(p.size)})
        if have.title != p.title:
            ops.append({"op": "retitle_panel", "panel_id": p.id, "title": p.title})
        if have.content != p.content:
            ops.append({"op": "set_content", "panel_id": p.id, "content": p.content.to_dict()})
    if room.settings.layout_locked != layout.layout_locked:
        ops.append({"op": "lock_layout", "locked": layout.layout_locked})
    return ops


def apply_layout(doc: RoomDocument, layout: Layout, actor: str) -> int:
    """Make `doc`'s panels match `layout`, as `actor`; all or nothing. Returns operations applied.

    The operations are first tried on a scratch copy, so a refused one (a locked panel,
    a viewer) leaves the room untouched.
    """
    from deeproom.document import RoomDocument as _Doc

    ops = layout_operations(doc.snapshot(), layout)
    scratch = _Doc(doc.room_id, update=doc.update_since(None))
    for op in ops:
        scratch.apply(op, actor)
    for op in ops:
        doc.apply(op, actor)
    return len(ops)


# --- loading into a live room ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotLoaded:
    """A panel of a layout that a live load could not place."""

    panel_id: str
    """The panel's id in the layout."""
    reason: str
    """Why, in words ("its content is gone: blob 3f2a... is not on the relay")."""


@dataclass(frozen=True, slots=True)
class LayoutLoaded:
    """What loading a saved layout into a live room did."""

    name: str
    """The layout's name."""
    version: int
    """The version loaded."""
    changed: int
    """Operations applied (0 when the room already matched)."""
    not_loaded: tuple[NotLoaded, ...]
    """Panels of the layout left out, each with its reason."""


@dataclass(frozen=True, slots=True)
class LayoutFit:
    """The operations that bring a live room to a layout, and the panels that do not fit."""

    operations: list[dict[str, Any]]
    not_loaded: tuple[NotLoaded, ...]


def fit_layout(room: Room, layout: Layout, has_blob: Callable[[str], bool], *, prune: bool = False) -> LayoutFit:
    """How a live room takes `layout`: its panels go where the layout has them.

    Unlike `layout_operations` (which makes a stored room equal to a layout), a live room
    keeps what its engines feed: a panel that is in the room keeps its content and is only
    moved, resized and retitled; a panel the room no longer has is added back with its
    saved content when every blob it refers to is still there (`has_blob`), and listed as
    not loaded otherwise; a panel whose id is now another kind is listed, not changed. The
    layout lock is not touched. With `prune`, room panels the layout lacks are removed.
    """
    ops: list[dict[str, Any]] = []
    skipped: list[NotLoaded] = []
    for p in layout.panels:
        have = room.panels.get(p.id)
        if have is None:
            gone = [ref for ref in p.content.refs if not has_blob(ref)]
            if gone:
                more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
                skipped.append(NotLoaded(p.id, f"its content is gone: blob {gone[0][:12]}{more} is not on the relay"))
                continue
            ops.append({"op": "add_panel", "panel_id": p.id, "kind": p.kind.value, "title": p.title,
                        "transform": p.transform.to_dict(), "size": list(p.size), "content": p.content.to_dict()})
            continue
        if have.kind is not p.kind:
            skipped.append(NotLoaded(p.id, f"the room's panel {p.id!r} is a {have.kind.value} now; "
                                           f"the layout has a {p.kind.value}"))
            continue
        if have.transform != p.transform:
            ops.append({"op": "move_panel", "panel_id": p.id, "transform": p.transform.to_dict()})
        if have.size != p.size:
            ops.append({"op": "resize_panel", "panel_id": p.id, "size": list(p.size)})
        if have.title != p.title:
            ops.append({"op": "retitle_panel", "panel_id": p.id, "title": p.title})
    if prune:
        wanted = {p.id for p in layout.panels}
        ops.extend({"op": "remove_panel", "panel_id": pid} for pid in sorted(set(room.panels) - wanted))
    return LayoutFit(ops, tuple(skipped))
