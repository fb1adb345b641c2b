"""The `layout` event's answers on the wire, both ways (pure functions, no I/O).

The relay encodes saved versions (`LayoutInfo`) and what a load did (`LayoutLoaded`) as
plain JSON; the client decodes them, checking every field, since they come from the
network.
"""

from __future__ import annotations

from typing import Any

from deeproom.errors import ValidationError
from deeproom.layout import LayoutLoaded, NotLoaded
from deeproom.net import protocol as P
from deeproom.state import MAX_NAME, check_id, check_text
from deeproom.storage import LayoutInfo

ACTIONS = ("save", "list", "load", "export", "import")
"""What a `layout` message may ask for."""
MAX_VERSION = 1 << 31
MAX_REASON = 300


def info_to_wire(info: LayoutInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "created": info.created, "panels": info.panels}


def info_from_wire(data: Any, room_id: str) -> LayoutInfo:
    d = P.require_mapping(data, "layout version")
    name = check_text(d.get("name"), "layout name", MAX_NAME)
    version = P.require_int(d, "version", "layout version", 1, MAX_VERSION)
    created = d.get("created")
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise ValidationError(f"layout 'created' must be a number; got {type(created).__name__}")
    panels = P.require_int(d, "panels", "panel count", -1, MAX_VERSION)
    return LayoutInfo(room_id, name, version, float(created), panels)


def loaded_to_wire(loaded: LayoutLoaded) -> dict[str, Any]:
    return {
        "name": loaded.name,
        "version": loaded.version,
        "changed": loaded.changed,
        "not_loaded": [{"panel_id": n.panel_id, "reason": n.reason} for n in loaded.not_loaded],
    }


def loaded_from_wire(data: Any) -> LayoutLoaded:
    d = P.require_mapping(data, "layout load answer")
    name = check_text(d.get("name"), "layout name", MAX_NAME)
    version = P.require_int(d, "version", "layout version", 1, MAX_VERSION)
    changed = P.require_int(d, "changed", "operations applied", 0, MAX_VERSION)
    raw = d.get("not_loaded", [])
    if not isinstance(raw, list):
        raise ValidationError("layout 'not_loaded' must be a list")
    skipped = []
    for item in raw:
        m = P.require_mapping(item, "panel not loaded")
        reason = check_text(m.get("reason"), "reason", MAX_REASON)
        skipped.append(NotLoaded(check_id(m.get("panel_id"), "panel id"), reason))
    return LayoutLoaded(name, version, changed, tuple(skipped))
