"""Arbitrary JSON thrown at the operation boundary is refused cleanly, never crashes."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from deeproom.demo_room import DEMO_HOST, build_demo_room
from deeproom.errors import DeepRoomError
from deeproom.ops import OPERATIONS

# Text with lone surrogates and control characters, whole numbers far past 64 bits.
HOSTILE_TEXT = st.text(alphabet=st.characters(codec=None, categories=None), max_size=30) | st.sampled_from(
    ["\ud800", "a\udfff", "\x00", "p1\n", "#ffffff\n", "\x85"]
)
HUGE_INT = st.integers(min_value=2**63 - 2, max_value=2**64) | st.sampled_from([10**400, -(10**400), 2**53 + 1])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | HUGE_INT | st.floats() | st.text(max_size=30) | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
FIELDS = ["panel_id", "kind", "title", "transform", "size", "content", "participant_id", "role", "locked",
          "mode", "presenter", "display_name", "colour", "capacity", "room_name", "muted", "raised"]


@st.composite
def operation_like(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(JSON)
    op: dict[str, Any] = {"op": draw(st.sampled_from(sorted(OPERATIONS)) | st.text(max_size=12))}
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        op[key] = draw(JSON | st.sampled_from(["metrics", "p1", "metrics", "host", "#ffffff", "presenter"]))
    return op


DOC = build_demo_room()


def deep(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@settings(max_examples=400, deadline=None)
@given(operation_like(), st.sampled_from([DEMO_HOST, "stranger", "system"]))
# Cases found or reported, pinned:
@example({"op": "retitle_panel", "panel_id": "metrics", "title": "\ud800"}, DEMO_HOST)
@example({"op": "set_content", "panel_id": "metrics", "content": {"source": {"\ud800": 1}}}, DEMO_HOST)
@example({"op": "set_content", "panel_id": "metrics", "content": {"source": {"n": 10**400}}}, DEMO_HOST)
@example({"op": "set_content", "panel_id": "metrics", "content": {"source": {"a": deep(100)}}}, DEMO_HOST)
@example({"op": "join", "participant_id": "system", "display_name": "x\udc00"}, "system")
@example({"op": "move_panel", "panel_id": "metrics\n", "transform": {"position": [10**400, 0, 0]}}, DEMO_HOST)
@example({"op": "rename_room", "room_name": "\x00"}, DEMO_HOST)
@example({"op": "leave", 10**400: 1, "x": 2}, DEMO_HOST)
def test_any_input_is_applied_or_refused_with_a_deeproom_error(data: Any, actor: str) -> None:
    doc = DOC if actor != "system" else build_demo_room()
    before = doc.update_since(None)
    try:
        doc.apply(data, actor)
    except DeepRoomError as exc:
        assert str(exc)  # every refusal says something
        assert len(str(exc)) < 1000
        assert doc.update_since(None) == before  # a refusal leaves nothing behind
    # Whatever happened, the document can still be read and replicated.
    doc.snapshot().to_dict()
    assert doc.update_since(None)
