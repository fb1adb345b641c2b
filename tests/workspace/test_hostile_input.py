"""Hostile operations are refused whole with a DeepRoomError and leave the document as it was.

Every string field gets a lone surrogate, a NUL, a trailing newline; nested values get
deep nesting and huge numbers. Each refusal is checked against the real pycrdt document:
the state vector and the snapshot are unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest

from deeproom.document import _DELETE, RoomDocument, WriteUndone, _Entry, _Write, new_room
from deeproom.errors import DeepRoomError, ValidationError
from deeproom.ops import SYSTEM, parse_operation
from deeproom.state import Role

SHA = "ab" * 32


def room() -> RoomDocument:
    doc = new_room("r", name="Hostile", host_id="host", host_name="Hana")
    doc.apply({"op": "join", "participant_id": "mem", "display_name": "Mo", "role": "member"}, SYSTEM)
    doc.apply({"op": "add_panel", "panel_id": "p1", "kind": "note", "title": "one"}, "host")
    return doc


def refused_without_change(doc: RoomDocument, op: Any, actor: str = "host") -> DeepRoomError:
    sv, snap, full = doc.state_vector(), doc.snapshot().to_dict(), doc.update_since(None)
    with pytest.raises(DeepRoomError) as info:
        doc.apply(op, actor)
    assert str(info.value)
    assert doc.state_vector() == sv
    assert doc.update_since(None) == full
    fresh = RoomDocument("r", update=doc.update_since(None))
    assert fresh.snapshot().to_dict() == snap == doc.snapshot().to_dict()
    return info.value


BAD_TEXT = ["\ud800", "a\udfffb", "\x00", "x\x07y", "\x7f", "\x85"]

# (operation with a "{}" where the hostile text goes, actor)
STRING_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"op": "add_panel", "panel_id": "p2", "kind": "note", "title": "{}"}, "host"),
    ({"op": "retitle_panel", "panel_id": "p1", "title": "{}"}, "host"),
    ({"op": "rename_room", "room_name": "{}"}, "host"),
    ({"op": "set_profile", "participant_id": "mem", "display_name": "{}", "colour": "#123456"}, "mem"),
    ({"op": "join", "participant_id": "new", "display_name": "{}"}, SYSTEM),
    ({"op": "set_content", "panel_id": "p1", "content": {"source": {"model": "{}"}}}, "host"),
    ({"op": "set_content", "panel_id": "p1", "content": {"source": {"{}": 1}}}, "host"),
    ({"op": "set_content", "panel_id": "p1", "content": {"source": {"a": [{"b": ["ok", "{}"]}]}}}, "host"),
    ({"op": "add_panel", "panel_id": "p3", "kind": "note", "title": "t", "content": {"source": {"deep": {"k": "{}"}}}},
     "host"),
]


def fill(template: Any, text: str) -> Any:
    if isinstance(template, dict):
        return {fill(k, text): fill(v, text) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, text) for v in template]
    if template == "{}":
        return text
    return template


@pytest.mark.parametrize(("template", "actor"), STRING_FIELDS)
@pytest.mark.parametrize("bad", BAD_TEXT)
def test_a_bad_string_in_any_field_is_refused_and_changes_nothing(template: dict[str, Any], actor: str, bad: str) -> None:
    doc = room()
    exc = refused_without_change(doc, fill(template, bad), actor)
    assert isinstance(exc, ValidationError)
    doc.apply(fill(template, "fine"), actor)  # the same operation with good text applies


@pytest.mark.parametrize(
    "op",
    [
        {"op": "move_panel", "panel_id": "p1\n", "transform": {"position": [0, 0, 0]}},
        {"op": "set_role", "participant_id": "mem\n", "role": "viewer"},
        {"op": "set_profile", "participant_id": "mem", "display_name": "M", "colour": "#123456\n"},
        {"op": "set_content", "panel_id": "p1", "content": {"refs": [SHA + "\n"]}},
        {"op": "set_follow", "mode": "off", "presenter": "host\n"},
    ],
)
def test_a_trailing_newline_does_not_pass_a_pattern(op: dict[str, Any]) -> None:
    actor = "mem" if op["op"] == "set_profile" else "host"
    refused_without_change(room(), op, actor)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "op",
    [
        {"op": "set_content", "panel_id": "p1", "content": {"source": {"a": nested(33)}}},
        {"op": "set_content", "panel_id": "p1", "content": {"source": {"a": nested(5000)}}},
        {"op": "set_content", "panel_id": "p1", "content": {"source": {"a": nested(200_000)}}},
        {"op": "move_panel", "panel_id": "p1", "transform": nested(100_000)},
        {"op": "set_content", "panel_id": "p1", "content": {"source": {"n": 10**400}}},
        {"op": "set_content", "panel_id": "p1", "content": {"source": {"n": 2**63}}},
        {"op": "set_content", "panel_id": "p1", "content": {"source": {"n": float("inf")}}},
        {"op": "set_content", "panel_id": "p1", "content": {"source": {"n": b"bytes"}}},
        {"op": "set_content", "panel_id": "p1", "content": {"source": {1.5: "float key"}}},
        {"op": "set_content", "panel_id": "p1", "content": {"source": {"k" * 300: 1}}},
        {"op": "set_content", "panel_id": "p1", "content": {"source": {"a": list(range(30_000))}}},
        {"op": "move_panel", "panel_id": "p1", "transform": {"position": [10**400, 0, 0]}},
        {"op": "resize_panel", "panel_id": "p1", "size": [10**5000, 1]},
        {"op": "set_capacity", "capacity": 10**400},
        {"op": "move_panel", "panel_id": "p1", "transform": {"position": [0, 0, 0]}, 10**5000: 1},
        {"op": 10**5000},
        {"op": "set_voice", "mode": nested(50_000)},
        {"op": "set_role", "participant_id": "mem", "role": {"x": 1}},
    ],
    ids=lambda op: str(op.get("op"))[:20] if isinstance(op.get("op"), str) else "huge-op-name",
)
def test_deep_huge_and_strange_values_are_refused_cleanly(op: dict[str, Any]) -> None:
    exc = refused_without_change(room(), op)
    assert isinstance(exc, ValidationError)
    assert len(str(exc)) < 500  # the message names the problem, it does not echo the input


def test_parse_operation_never_recurses() -> None:
    for depth in (40, 1000, 300_000):
        with pytest.raises(ValidationError, match="nested"):
            parse_operation({"op": "set_content", "panel_id": "p1", "content": {"source": {"a": nested(depth)}}})


def test_plain_json_within_the_caps_is_kept() -> None:
    doc = room()
    source = {"a": nested(30, "leaf\twith tab\nand newline"), "n": 2**53, "f": -1.5e300, "1": None, 7: True}
    doc.apply({"op": "set_content", "panel_id": "p1", "content": {"source": source}}, "host")
    kept = doc.snapshot().panels["p1"].content.source
    assert kept["n"] == 2**53 and kept["7"] is True and kept["f"] == -1.5e300


def test_a_typed_operation_is_checked_like_a_parsed_one() -> None:
    from deeproom.ops import Join, RetitlePanel

    doc = room()
    refused_without_change(doc, RetitlePanel("p1", "\ud800"))
    refused_without_change(doc, Join("x", "Lone \udc00", "#123456", Role.MEMBER), SYSTEM)


def test_a_write_the_crdt_refuses_half_way_is_undone() -> None:
    """The last line of defence: should pycrdt fail in the middle of the real write (here
    a lone surrogate slipped past the checks on purpose), what was written is undone and
    the undoing travels as an update, so other copies stay equal."""
    doc = room()
    doc.apply({"op": "lock_panel", "panel_id": "p1"}, "mem")
    doc.apply({"op": "set_role", "participant_id": "mem", "role": "presenter"}, "host")
    doc.apply({"op": "set_follow", "mode": "presenter", "presenter": "mem"}, "host")
    other = RoomDocument("r", update=doc.update_since(None))
    before = doc.snapshot().to_dict()
    for raw in (
        {"op": "add_panel", "panel_id": "p9", "kind": "note", "title": "new"},
        {"op": "remove_panel", "panel_id": "p1"},
        {"op": "leave", "participant_id": "mem"},
    ):
        op = parse_operation(raw)
        # What the operation writes (a participant removed, their lock released, follow
        # stopped ...), then a value that slipped past the checks on purpose.
        writes = doc._plan(op, SYSTEM, doc.snapshot(), 5.0)
        writes.append(_Write(doc._settings, "name", "\ud800", "Hostile"))
        with pytest.raises(WriteUndone) as info:
            doc._commit(op, writes)
        assert doc.snapshot().to_dict() == before
        other.apply_update(info.value.update)
        assert other.snapshot().to_dict() == before
        assert other.state_vector() == doc.state_vector()
    op = parse_operation({"op": "retitle_panel", "panel_id": "p1", "title": "x"})
    # A nested map that fails half-filled.
    writes = [_Write(doc._panels["p1"], "title", "half", "one"), _Write(doc._panels, "p8", _Entry({"kind": "note", "title": "\ud800"}), _DELETE)]
    with pytest.raises(WriteUndone) as info:
        doc._commit(op, writes)
    assert doc.snapshot().to_dict() == before
    other.apply_update(info.value.update)
    assert other.snapshot().to_dict() == before
    assert other.state_vector() == doc.state_vector()
    doc.apply({"op": "retitle_panel", "panel_id": "p1", "title": "after"}, "mem")  # still usable
    other.apply_update(doc.update_since(other.state_vector()))
    assert other.snapshot().panels["p1"].title == "after"
