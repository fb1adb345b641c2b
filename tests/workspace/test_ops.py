"""Operations: validation at the boundary and permission checks by role and lock."""

from __future__ import annotations

import math

import pytest

from deeproom.document import RoomDocument, new_room
from deeproom.errors import NotFound, PermissionDenied, ValidationError
from deeproom.ops import SYSTEM, Join, parse_operation
from deeproom.state import PanelKind, Role


def add(panel_id: str = "p1", **extra: object) -> dict[str, object]:
    op: dict[str, object] = {"op": "add_panel", "panel_id": panel_id, "kind": "metrics", "title": "Loss"}
    op.update(extra)
    return op


def move(panel_id: str = "p1", x: float = 1.0) -> dict[str, object]:
    return {"op": "move_panel", "panel_id": panel_id, "transform": {"position": [x, 1.0, 2.0]}}


@pytest.fixture
def room() -> RoomDocument:
    doc = new_room("r", name="Review", host_id="host", host_name="Hana")
    doc.apply(Join("pres", "Pia", "#00aa00", Role.PRESENTER), SYSTEM)
    doc.apply(Join("mem", "Mo", "#0000aa", Role.MEMBER), SYSTEM)
    doc.apply(Join("mem2", "Max", "#0000ab", Role.MEMBER), SYSTEM)
    doc.apply(Join("view", "Vi", "#aa0000", Role.VIEWER), SYSTEM)
    return doc


def test_add_move_resize_retitle_remove(room: RoomDocument) -> None:
    room.apply(add(), "mem", now=10.0)
    p = room.snapshot().panels["p1"]
    assert (p.kind, p.title, p.owner, p.created) == (PanelKind.METRICS, "Loss", "mem", 10.0)
    room.apply(move(x=3.5), "mem", now=11.0)
    room.apply({"op": "resize_panel", "panel_id": "p1", "size": [2.0, 1.0]}, "mem")
    room.apply({"op": "retitle_panel", "panel_id": "p1", "title": "Val loss"}, "mem")
    p = room.snapshot().panels["p1"]
    assert p.transform.position == (3.5, 1.0, 2.0)
    assert p.size == (2.0, 1.0)
    assert p.title == "Val loss"
    assert p.updated >= 11.0
    room.apply({"op": "remove_panel", "panel_id": "p1"}, "mem")
    assert "p1" not in room.snapshot().panels


def test_rotation_is_normalised(room: RoomDocument) -> None:
    room.apply(add(transform={"rotation": [2.0, 0.0, 0.0, 0.0]}), "mem")
    assert room.snapshot().panels["p1"].transform.rotation == (1.0, 0.0, 0.0, 0.0)


def test_viewers_change_nothing(room: RoomDocument) -> None:
    room.apply(add(), "mem")
    before = room.snapshot()
    for op in (add("p2"), move(), {"op": "lock_panel", "panel_id": "p1"}, {"op": "lock_layout", "locked": True}):
        with pytest.raises(PermissionDenied):
            room.apply(op, "view")
    assert room.snapshot() == before


def test_locked_layout_only_host_and_presenter_move(room: RoomDocument) -> None:
    room.apply(add(), "mem")
    room.apply({"op": "lock_layout", "locked": True}, "pres")
    with pytest.raises(PermissionDenied, match="layout is locked"):
        room.apply(move(x=5.0), "mem")
    with pytest.raises(PermissionDenied, match="layout is locked"):
        room.apply(add("p2"), "mem")
    room.apply(move(x=5.0), "pres")
    room.apply(move(x=6.0), "host")
    assert room.snapshot().panels["p1"].transform.position[0] == 6.0
    with pytest.raises(PermissionDenied):
        room.apply({"op": "lock_layout", "locked": False}, "mem")


def test_panel_lock_stops_others(room: RoomDocument) -> None:
    room.apply(add(), "mem")
    room.apply({"op": "lock_panel", "panel_id": "p1"}, "mem")
    assert room.snapshot().panels["p1"].lock_holder == "mem"
    for actor in ("mem2", "pres", "host"):
        with pytest.raises(PermissionDenied, match="locked by 'mem'"):
            room.apply(move(x=9.0), actor)
    room.apply(move(x=9.0), "mem")  # the holder still can
    with pytest.raises(PermissionDenied):
        room.apply({"op": "unlock_panel", "panel_id": "p1"}, "mem2")
    room.apply({"op": "unlock_panel", "panel_id": "p1"}, "host")  # the host may break a lock
    room.apply(move(x=1.0), "mem2")


def test_members_remove_only_their_own(room: RoomDocument) -> None:
    room.apply(add(), "mem")
    with pytest.raises(PermissionDenied, match="own panels"):
        room.apply({"op": "remove_panel", "panel_id": "p1"}, "mem2")
    room.apply({"op": "remove_panel", "panel_id": "p1"}, "pres")


def test_roles_follow_and_teaching(room: RoomDocument) -> None:
    with pytest.raises(PermissionDenied):
        room.apply({"op": "set_role", "participant_id": "mem", "role": "presenter"}, "pres")
    room.apply({"op": "set_role", "participant_id": "mem", "role": "presenter"}, "host")
    room.apply({"op": "set_follow", "mode": "presenter", "presenter": "mem"}, "mem")
    assert room.snapshot().settings.presenter == "mem"
    room.apply({"op": "set_role", "participant_id": "mem", "role": "member"}, "host")
    assert room.snapshot().settings.follow.value == "off"  # a demoted presenter is no longer followed
    with pytest.raises(ValidationError, match="only a host or presenter"):
        room.apply({"op": "set_follow", "mode": "presenter", "presenter": "mem"}, "host")
    room.apply({"op": "raise_hand", "participant_id": "view", "raised": True}, "view")
    with pytest.raises(PermissionDenied):
        room.apply({"op": "raise_hand", "participant_id": "view", "raised": False}, "mem")
    room.apply({"op": "raise_hand", "participant_id": "view", "raised": False}, "pres")
    room.apply({"op": "mute_all", "muted": True}, "pres")
    assert room.snapshot().settings.muted_all
    with pytest.raises(ValidationError, match="at least one host"):
        room.apply({"op": "set_role", "participant_id": "host", "role": "member"}, "host")


def test_capacity_is_enforced(room: RoomDocument) -> None:
    room.apply({"op": "set_capacity", "capacity": 5}, "host")
    with pytest.raises(PermissionDenied, match="full"):
        room.apply(Join("late", "Lee", "#123456", Role.MEMBER), SYSTEM)
    room.apply(Join("mem", "Mo again", "#0000aa", Role.MEMBER), SYSTEM)  # a rejoin is not a new seat
    with pytest.raises(ValidationError, match="below"):
        room.apply({"op": "set_capacity", "capacity": 2}, "host")


def test_self_join_cannot_claim_host(room: RoomDocument) -> None:
    with pytest.raises(PermissionDenied):
        room.apply({"op": "join", "participant_id": "x", "display_name": "X", "role": "host"}, "x")


@pytest.mark.parametrize("actor", ["view", "mem", "pres", "host"])
def test_participants_cannot_join_or_leave_by_operation(room: RoomDocument, actor: str) -> None:
    """The viewer's climb: leave, then rejoin as a member. Only the room (SYSTEM) applies
    join and leave; everyone, the host included, is refused, and nothing changes."""
    before = room.state_vector()
    for op in (
        {"op": "leave", "participant_id": actor},
        {"op": "join", "participant_id": actor, "display_name": "Me", "role": "member"},
        {"op": "join", "participant_id": "newcomer", "display_name": "New", "role": "viewer"},
        {"op": "leave", "participant_id": "view"},
    ):
        with pytest.raises(PermissionDenied, match="only by the room itself"):
            room.apply(op, actor)
    assert room.state_vector() == before
    assert room.snapshot().participants["view"].role is Role.VIEWER


def test_viewer_cannot_climb_by_any_operation(room: RoomDocument) -> None:
    room.apply(add(), "host")
    climbs = [
        {"op": "set_role", "participant_id": "view", "role": "member"},
        {"op": "set_profile", "participant_id": "mem", "display_name": "Hijacked", "colour": "#000000"},
        {"op": "raise_hand", "participant_id": "mem", "raised": True},
        {"op": "raise_hand", "participant_id": "pres", "raised": False},
        {"op": "mute_participant", "participant_id": "host", "muted": True},
        {"op": "mute_all", "muted": True},
        {"op": "lock_layout", "locked": True},
        {"op": "lock_panel", "panel_id": "p1"},
        {"op": "unlock_panel", "panel_id": "p1"},
        {"op": "move_panel", "panel_id": "p1", "transform": {"position": [0, 0, 0]}},
        {"op": "set_content", "panel_id": "p1", "content": {}},
        {"op": "set_follow", "mode": "presenter", "presenter": "host"},
        {"op": "set_capacity", "capacity": 100},
        {"op": "rename_room", "room_name": "mine"},
        {"op": "set_voice", "mode": "off"},
    ]
    before = room.state_vector()
    for op in climbs:
        with pytest.raises(PermissionDenied):
            room.apply(op, "view")
    assert room.state_vector() == before


def test_presenter_cannot_make_anyone_host(room: RoomDocument) -> None:
    for target in ("pres", "mem"):
        with pytest.raises(PermissionDenied, match="only host may change roles"):
            room.apply({"op": "set_role", "participant_id": target, "role": "host"}, "pres")
    with pytest.raises(PermissionDenied):
        room.apply({"op": "set_capacity", "capacity": 40}, "pres")
    with pytest.raises(PermissionDenied):
        room.apply({"op": "mute_participant", "participant_id": "mem", "muted": True}, "pres")


def test_muted_participant_cannot_unmute_themselves(room: RoomDocument) -> None:
    room.apply({"op": "mute_participant", "participant_id": "mem", "muted": True}, "host")
    with pytest.raises(PermissionDenied):
        room.apply({"op": "mute_participant", "participant_id": "mem", "muted": False}, "mem")
    room.apply({"op": "mute_participant", "participant_id": "mem2", "muted": True}, "mem2")  # muting oneself is fine


def test_the_system_id_is_reserved(room: RoomDocument) -> None:
    """A participant called "system" would act with the room's own powers."""
    for op in (
        {"op": "join", "participant_id": "system", "display_name": "S"},
        {"op": "set_role", "participant_id": "system", "role": "host"},
    ):
        with pytest.raises(ValidationError, match="reserved"):
            room.apply(op, SYSTEM)


def test_leave_releases_locks(room: RoomDocument) -> None:
    room.apply(add(), "mem")
    room.apply({"op": "lock_panel", "panel_id": "p1"}, "mem")
    room.apply({"op": "leave", "participant_id": "mem"}, SYSTEM)
    assert room.snapshot().panels["p1"].lock_holder is None
    assert "mem" not in room.snapshot().participants


@pytest.mark.parametrize(
    ("op", "message"),
    [
        ({"op": "move_panel", "panel_id": "nope", "transform": {"position": [0, 0, 0]}}, "no panel 'nope'"),
        ({"op": "move_panel", "panel_id": "p1", "transform": {"position": [math.nan, 0, 0]}}, "must be finite"),
        ({"op": "move_panel", "panel_id": "p1", "transform": {"position": [math.inf, 0, 0]}}, "must be finite"),
        ({"op": "move_panel", "panel_id": "p1", "transform": {"scale": [0, 1, 1]}}, r"scale\[0\] must be in \(0.05, 50\]; got 0"),
        ({"op": "move_panel", "panel_id": "p1", "transform": {"scale": [1, 1, 51]}}, r"must be in \(0.05, 50\]"),
        ({"op": "move_panel", "panel_id": "p1", "transform": {"position": [0, 0]}}, "list of 3 numbers"),
        ({"op": "move_panel", "panel_id": "p1", "transform": {"rotation": [0, 0, 0, 0]}}, "non-zero quaternion"),
        ({"op": "move_panel", "panel_id": "p1", "transform": {"position": ["a", 0, 0]}}, "must be a number"),
        ({"op": "retitle_panel", "panel_id": "p1", "title": "x" * 121}, "at most 120 characters"),
        ({"op": "retitle_panel", "panel_id": "p1", "title": "  "}, "must not be empty"),
        ({"op": "add_panel", "panel_id": "p9", "kind": "hologram", "title": "x"}, "panel kind must be one of model_graph"),
        ({"op": "add_panel", "panel_id": "p 9", "kind": "note", "title": "x"}, "panel id must be"),
        ({"op": "add_panel", "panel_id": "p1", "kind": "note", "title": "x"}, "already exists"),
        ({"op": "teleport_everyone"}, "unknown operation 'teleport_everyone'; allowed: add_panel"),
        ({"op": "move_panel", "panel_id": "p1"}, "missing field 'transform'"),
        ({"op": "move_panel", "panel_id": "p1", "transform": {}, "evil": 1}, "unknown fields"),
        ({"op": "resize_panel", "panel_id": "p1", "size": [0.01, 1]}, "panel size"),
        ({"op": "set_content", "panel_id": "p1", "content": {"refs": ["abc"]}}, "sha256"),
        ("move", "must be an object"),
    ],
)
def test_bad_operations_are_refused_and_change_nothing(room: RoomDocument, op: object, message: str) -> None:
    room.apply(add(), "mem")
    before = room.snapshot()
    with pytest.raises((ValidationError, NotFound)) as info:
        room.apply(op, "mem")  # type: ignore[arg-type]
    assert info.match(message)
    assert room.snapshot() == before


def test_operation_dicts_round_trip() -> None:
    for data in [
        {"op": "add_panel", "panel_id": "a", "kind": "note", "title": "t", "transform": {"position": [1, 2, 3]},
         "size": [1, 1], "content": {"source": {"text": "hi"}, "refs": ["0" * 64]}},
        {"op": "set_follow", "mode": "presenter", "presenter": "pres"},
        {"op": "set_role", "participant_id": "mem", "role": "viewer"},
    ]:
        op = parse_operation(data)
        assert parse_operation(op.to_dict()) == op


def test_observers_are_told_and_can_unsubscribe(room: RoomDocument) -> None:
    seen: list[str] = []
    sub = room.observe(lambda change: seen.append(change.operation.name if change.operation else "remote"))
    room.apply(add(), "mem")
    room.apply(move(), "mem")
    other = RoomDocument("r", update=room.update_since(None))
    other.apply(move(x=7.0), "mem")
    room.apply_update(other.update_since(room.state_vector()))
    sub.unsubscribe()
    room.apply(move(x=2.0), "mem")
    assert seen == ["add_panel", "move_panel", "remote"]
    sub.unsubscribe()  # twice is harmless
