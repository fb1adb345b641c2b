"""Arbitrary JSON thrown at the operation boundary is refused cleanly, never crashes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from deeproom.demo_room import DEMO_HOST, build_demo_room
from deeproom.errors import DeepRoomError
from deeproom.ops import OPERATIONS

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
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


@settings(max_examples=400, deadline=None)
@given(operation_like(), st.sampled_from([DEMO_HOST, "stranger", "system"]))
def test_any_input_is_applied_or_refused_with_a_deeproom_error(data: Any, actor: str) -> None:
    doc = DOC if actor != "system" else build_demo_room()
    try:
        doc.apply(data, actor)
    except DeepRoomError as exc:
        assert str(exc)  # every refusal says something
    # Whatever happened, the document can still be read and replicated.
    doc.snapshot().to_dict()
    assert doc.update_since(None)
