"""Replicated room documents converge: two and three copies, one edited offline, any order."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from deeproom.document import RoomDocument, new_room
from deeproom.errors import DeepRoomError
from deeproom.ops import SYSTEM, Join
from deeproom.state import Role


def base_room() -> RoomDocument:
    doc = new_room("r", name="Sync", host_id="host", host_name="Hana")
    for pid in ("a", "b", "c"):
        doc.apply(Join(pid, pid.upper(), "#336699", Role.MEMBER), SYSTEM)
    for i in range(3):
        doc.apply({"op": "add_panel", "panel_id": f"p{i}", "kind": "note", "title": f"n{i}"}, "host")
    return doc


def fork(doc: RoomDocument) -> RoomDocument:
    return RoomDocument(doc.room_id, update=doc.update_since(None))


def sync(*docs: RoomDocument) -> None:
    """Each copy sends every other copy what that copy lacks (state-vector exchange)."""
    for src in docs:
        for dst in docs:
            if src is not dst:
                dst.apply_update(src.update_since(dst.state_vector()))


def same(*docs: RoomDocument) -> bool:
    first = docs[0].snapshot().to_dict()
    return all(d.snapshot().to_dict() == first for d in docs[1:])


def test_two_copies_concurrent_edits_converge_and_keep_both() -> None:
    a = base_room()
    b = fork(a)
    a.apply({"op": "move_panel", "panel_id": "p0", "transform": {"position": [1, 1, 1]}}, "a")
    b.apply({"op": "retitle_panel", "panel_id": "p0", "title": "renamed by b"}, "b")
    b.apply({"op": "add_panel", "panel_id": "pb", "kind": "metrics", "title": "b's"}, "b")
    a.apply({"op": "add_panel", "panel_id": "pa", "kind": "metrics", "title": "a's"}, "a")
    sync(a, b)
    assert same(a, b)
    p0 = a.snapshot().panels["p0"]
    assert p0.transform.position == (1.0, 1.0, 1.0) and p0.title == "renamed by b"  # both edits kept
    assert {"pa", "pb"} <= set(a.snapshot().panels)


def test_offline_copy_catches_up_with_only_what_it_lacks() -> None:
    online = base_room()
    offline = fork(online)
    third = fork(online)
    for i in range(200):  # the online copies keep editing
        online.apply({"op": "move_panel", "panel_id": "p1", "transform": {"position": [i, 1, 1]}}, "a")
    sync(online, third)
    offline.apply({"op": "add_panel", "panel_id": "off", "kind": "note", "title": "written offline"}, "c")
    offline.apply({"op": "retitle_panel", "panel_id": "p2", "title": "offline title"}, "c")
    missing = online.update_since(offline.state_vector())
    everything = online.update_since(None)
    assert len(missing) < len(everything)
    sync(offline, online, third)
    assert same(online, offline, third)
    room = third.snapshot()
    assert room.panels["off"].title == "written offline"
    assert room.panels["p2"].title == "offline title"
    assert room.panels["p1"].transform.position[0] == 199.0


def test_same_field_conflict_resolves_identically_everywhere() -> None:
    a = base_room()
    b, c = fork(a), fork(a)
    for doc, x in ((a, 1.0), (b, 2.0), (c, 3.0)):
        doc.apply({"op": "move_panel", "panel_id": "p0", "transform": {"position": [x, 0, 0]}}, "a")
    sync(c, a, b)
    sync(b, c, a)
    assert same(a, b, c)
    assert a.snapshot().panels["p0"].transform.position[0] in (1.0, 2.0, 3.0)


def test_updates_applied_twice_or_out_of_order_are_harmless() -> None:
    a = base_room()
    b = fork(a)
    updates: list[bytes] = []
    a.observe(lambda ch: updates.append(ch.update))
    for i in range(5):
        a.apply({"op": "add_panel", "panel_id": f"q{i}", "kind": "note", "title": f"q{i}"}, "a")
    for u in reversed(updates):
        b.apply_update(u)
    for u in updates:
        b.apply_update(u)
    assert same(a, b)
    assert len(b.snapshot().panels) == 8


OPS = st.one_of(
    st.builds(
        lambda p, x: {"op": "move_panel", "panel_id": p, "transform": {"position": [x, 1.0, 0.0]}},
        st.sampled_from(["p0", "p1", "p2", "new0", "new1"]),
        st.floats(-50, 50, allow_nan=False),
    ),
    st.builds(
        lambda p: {"op": "add_panel", "panel_id": p, "kind": "note", "title": "added"},
        st.sampled_from(["new0", "new1", "new2"]),
    ),
    st.builds(lambda p: {"op": "remove_panel", "panel_id": p}, st.sampled_from(["p0", "p1", "new0"])),
    st.builds(
        lambda p, t: {"op": "retitle_panel", "panel_id": p, "title": t},
        st.sampled_from(["p0", "p1", "p2", "new1"]),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=20).filter(str.strip),
    ),
    st.builds(lambda p: {"op": "lock_panel", "panel_id": p}, st.sampled_from(["p0", "p2"])),
    st.builds(lambda p: {"op": "unlock_panel", "panel_id": p}, st.sampled_from(["p0", "p2"])),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["a", "b", "c"]), OPS), max_size=40),
    st.lists(st.integers(0, 2), max_size=10),
    st.randoms(use_true_random=False),
)
def test_any_operation_sequence_converges(steps: list, sync_points: list[int], rnd: random.Random) -> None:
    copies = [base_room()]
    copies += [fork(copies[0]), fork(copies[0])]
    for i, (which, actor, op) in enumerate(steps):
        try:
            copies[which].apply(op, actor)
        except DeepRoomError:
            pass  # refused operations change nothing; the property is about the rest
        if i in sync_points:  # occasional partial syncs between two copies
            x, y = rnd.sample(range(3), 2)
            copies[y].apply_update(copies[x].update_since(copies[y].state_vector()))
    order = list(copies)
    rnd.shuffle(order)
    sync(*order)
    assert same(*copies)
    # The incrementally maintained snapshot equals one read from scratch.
    fresh = RoomDocument("r", update=copies[0].update_since(None))
    assert fresh.snapshot().to_dict() == copies[0].snapshot().to_dict()


def test_apply_returns_the_update_another_copy_needs() -> None:
    doc = base_room()
    other = fork(doc)
    seen: list[bytes] = []
    with doc.observe(lambda change: seen.append(change.update)):
        update = doc.apply({"op": "retitle_panel", "panel_id": "p1", "title": "from apply"}, "host")
    assert isinstance(update, bytes) and seen == [update]  # observers see the same bytes
    other.apply_update(update)
    assert other.snapshot().panels["p1"].title == "from apply"
    assert same(doc, other)
