"""Every change to a room is one of these named, validated operations.

An operation is parsed from a plain dict at the boundary (`parse_operation`), checked
against the room and the actor's role (`check_allowed`), and applied in exactly one
place (`RoomDocument.apply`). The same dict form travels over the relay.

Permissions, in short:
- nobody joins or leaves by operation: `join` and `leave` are applied only by the room
  itself (actor SYSTEM: the relay on admission, disconnect and kick); roles change only
  through the host's `set_role`;
- viewers change nothing but their own hand, their own name and colour, and muting
  themselves;
- members add panels and move, resize, retitle, lock and remove their own or unlocked
  panels, unless the layout is locked;
- in a locked layout only host and presenters add, move, resize or remove panels;
- a panel locked by one participant cannot be changed by anyone else (the host may
  unlock it);
- host and presenters run the room (follow, layout lock, mute all); only the host
  changes roles, capacity, voice mode and the room's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from deeproom.errors import NotFound, PermissionDenied, ValidationError
from deeproom.state import (
    MAX_JSON_DEPTH,
    MAX_JSON_NODES,
    MAX_NAME,
    MAX_PANELS,
    MAX_TITLE,
    SYSTEM,
    FollowMode,
    PanelContent,
    PanelKind,
    Participant,
    Role,
    Room,
    Transform,
    VoiceMode,
    brief,
    check_bool,
    check_capacity,
    check_colour,
    check_id,
    check_participant_id,
    check_size,
    check_text,
    field_names,
    parse_enum,
)

_RUNS_ROOM = (Role.HOST, Role.PRESENTER)


class Operation:
    """Base of all operations. Subclasses are frozen dataclasses with a unique `name`."""

    name: ClassVar[str]

    @classmethod
    def parse(cls, payload: Mapping[str, Any]) -> Operation:
        raise NotImplementedError  # every subclass defines it; the registry checks

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.name}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if hasattr(v, "to_dict"):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Role | PanelKind | FollowMode | VoiceMode):
                v = v.value
            out[f.name] = v
        return out

    def check(self, room: Room, actor: str) -> None:
        """Raise PermissionDenied / NotFound / ValidationError if `actor` may not do this now."""
        raise NotImplementedError


OPERATIONS: dict[str, type[Operation]] = {}


def _register(cls: type[Operation]) -> type[Operation]:
    OPERATIONS[cls.name] = cls
    return cls


MAX_OP_DEPTH = MAX_JSON_DEPTH + 4
"""Deepest nesting in an operation: a content source's levels plus the operation's own."""
MAX_OP_NODES = MAX_JSON_NODES + 100
"""Most values (objects, lists, scalars) in one operation."""


def parse_operation(data: Any) -> Operation:
    """Turn a dict from a user, the wire or a file into an Operation, or raise ValidationError.

    Nothing here recurses on the input or prints it whole, so no input, however deep,
    large or strange, raises anything but ValidationError.
    """
    if not isinstance(data, Mapping):
        raise ValidationError(f"an operation must be an object with an 'op' field; got {brief(data, 40)}")
    _check_shape(data)
    name = data.get("op")
    cls = OPERATIONS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValidationError(f"unknown operation {brief(name, 40)}; allowed: {', '.join(sorted(OPERATIONS))}")
    expected = {f.name for f in fields(cls)} | {"op"}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in expected]
    if unknown:
        raise ValidationError(f"{name} has unknown fields {field_names(unknown)}; allowed: {', '.join(sorted(expected - {'op'}))}")
    try:
        return cls.parse(data)
    except KeyError as exc:
        raise ValidationError(f"{name} is missing field {exc.args[0]!r}") from None


def _check_shape(data: Mapping[str, Any]) -> None:
    """Refuse operations nested too deep or holding too much, without recursing."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if isinstance(value, Mapping | list | tuple):
            if depth >= MAX_OP_DEPTH:
                raise ValidationError(f"an operation is nested at most {MAX_OP_DEPTH} levels deep")
            nodes += len(value)
            if nodes > MAX_OP_NODES:
                raise ValidationError(f"an operation holds at most {MAX_OP_NODES} values")
            items = value.values() if isinstance(value, Mapping) else value
            stack.extend((v, depth + 1) for v in items if isinstance(v, Mapping | list | tuple))


# --- who may do what ------------------------------------------------------------------


def _role(room: Room, actor: str) -> Role:
    if actor == SYSTEM:
        return Role.HOST
    p = room.participants.get(actor)
    if p is None:
        raise PermissionDenied(f"{actor!r} is not a participant of room {room.id!r}")
    return p.role


def _require(room: Room, actor: str, roles: tuple[Role, ...], what: str) -> Role:
    role = _role(room, actor)
    if role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise PermissionDenied(f"only {allowed} may {what}; {actor!r} is {role.value}")
    return role


def _edit_layout(room: Room, actor: str, what: str) -> Role:
    role = _role(room, actor)
    if role is Role.VIEWER:
        raise PermissionDenied(f"viewers cannot {what}")
    if room.settings.layout_locked and role not in _RUNS_ROOM:
        raise PermissionDenied(f"the layout is locked: only host or presenter may {what}")
    return role


def _panel_for_edit(room: Room, actor: str, panel_id: str, what: str) -> None:
    _edit_layout(room, actor, what)
    panel = room.panels.get(panel_id)
    if panel is None:
        raise NotFound(f"no panel {panel_id!r} in room {room.id!r}")
    if panel.lock_holder is not None and panel.lock_holder != actor and actor != SYSTEM:
        raise PermissionDenied(f"panel {panel_id!r} is locked by {panel.lock_holder!r}")


def _participant(room: Room, pid: str) -> Participant:
    p = room.participants.get(pid)
    if p is None:
        raise NotFound(f"no participant {pid!r} in room {room.id!r}")
    return p


# --- panels ---------------------------------------------------------------------------


@_register
@dataclass(frozen=True, slots=True)
class AddPanel(Operation):
    name: ClassVar[str] = "add_panel"
    panel_id: str
    kind: PanelKind
    title: str
    transform: Transform
    size: tuple[float, float]
    content: PanelContent

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> AddPanel:
        return cls(
            panel_id=check_id(p["panel_id"], "panel id"),
            kind=parse_enum(PanelKind, p["kind"], "panel kind"),
            title=check_text(p["title"], "panel title", MAX_TITLE, multiline=True),
            transform=Transform.from_dict(p.get("transform", {})),
            size=check_size(p.get("size", (1.0, 0.75))),
            content=PanelContent.from_dict(p.get("content")),
        )

    def check(self, room: Room, actor: str) -> None:
        _edit_layout(room, actor, "add panels")
        if self.panel_id in room.panels:
            raise ValidationError(f"a panel with id {self.panel_id!r} already exists")
        if len(room.panels) >= MAX_PANELS:
            raise ValidationError(f"a room holds at most {MAX_PANELS} panels")


@_register
@dataclass(frozen=True, slots=True)
class MovePanel(Operation):
    name: ClassVar[str] = "move_panel"
    panel_id: str
    transform: Transform

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> MovePanel:
        return cls(check_id(p["panel_id"], "panel id"), Transform.from_dict(p["transform"]))

    def check(self, room: Room, actor: str) -> None:
        _panel_for_edit(room, actor, self.panel_id, "move panels")


@_register
@dataclass(frozen=True, slots=True)
class ResizePanel(Operation):
    name: ClassVar[str] = "resize_panel"
    panel_id: str
    size: tuple[float, float]

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> ResizePanel:
        return cls(check_id(p["panel_id"], "panel id"), check_size(p["size"]))

    def check(self, room: Room, actor: str) -> None:
        _panel_for_edit(room, actor, self.panel_id, "resize panels")


@_register
@dataclass(frozen=True, slots=True)
class RetitlePanel(Operation):
    name: ClassVar[str] = "retitle_panel"
    panel_id: str
    title: str

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> RetitlePanel:
        return cls(check_id(p["panel_id"], "panel id"), check_text(p["title"], "panel title", MAX_TITLE, multiline=True))

    def check(self, room: Room, actor: str) -> None:
        _panel_for_edit(room, actor, self.panel_id, "retitle panels")


@_register
@dataclass(frozen=True, slots=True)
class SetPanelContent(Operation):
    name: ClassVar[str] = "set_content"
    panel_id: str
    content: PanelContent

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> SetPanelContent:
        return cls(check_id(p["panel_id"], "panel id"), PanelContent.from_dict(p["content"]))

    def check(self, room: Room, actor: str) -> None:
        # Content is what the panel's engine computed: changing it is not moving the layout,
        # so a locked layout does not stop it, but a panel lock and the viewer role do.
        role = _role(room, actor)
        if role is Role.VIEWER:
            raise PermissionDenied("viewers cannot change what a panel shows")
        panel = room.panels.get(self.panel_id)
        if panel is None:
            raise NotFound(f"no panel {self.panel_id!r} in room {room.id!r}")
        if panel.lock_holder not in (None, actor) and actor != SYSTEM:
            raise PermissionDenied(f"panel {self.panel_id!r} is locked by {panel.lock_holder!r}")


@_register
@dataclass(frozen=True, slots=True)
class RemovePanel(Operation):
    name: ClassVar[str] = "remove_panel"
    panel_id: str

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> RemovePanel:
        return cls(check_id(p["panel_id"], "panel id"))

    def check(self, room: Room, actor: str) -> None:
        _panel_for_edit(room, actor, self.panel_id, "remove panels")
        role = _role(room, actor)
        panel = room.panels[self.panel_id]
        if role not in _RUNS_ROOM and panel.owner != actor:
            raise PermissionDenied(f"members remove only their own panels; {self.panel_id!r} belongs to {panel.owner!r}")


@_register
@dataclass(frozen=True, slots=True)
class LockPanel(Operation):
    name: ClassVar[str] = "lock_panel"
    panel_id: str

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> LockPanel:
        return cls(check_id(p["panel_id"], "panel id"))

    def check(self, room: Room, actor: str) -> None:
        _panel_for_edit(room, actor, self.panel_id, "lock panels")


@_register
@dataclass(frozen=True, slots=True)
class UnlockPanel(Operation):
    name: ClassVar[str] = "unlock_panel"
    panel_id: str

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> UnlockPanel:
        return cls(check_id(p["panel_id"], "panel id"))

    def check(self, room: Room, actor: str) -> None:
        role = _role(room, actor)
        if role is Role.VIEWER:
            raise PermissionDenied("viewers cannot unlock panels")
        panel = room.panels.get(self.panel_id)
        if panel is None:
            raise NotFound(f"no panel {self.panel_id!r} in room {room.id!r}")
        if panel.lock_holder not in (None, actor) and role is not Role.HOST:
            raise PermissionDenied(f"panel {self.panel_id!r} is locked by {panel.lock_holder!r}; only they or the host may unlock it")


# --- participants ---------------------------------------------------------------------


def _only_the_room(op: Operation, actor: str) -> None:
    if actor != SYSTEM:
        raise PermissionDenied(
            f"{op.name} is applied only by the room itself (the relay admits, disconnects and kicks "
            f"participants; the host changes roles with set_role); {actor!r} may not send it"
        )


@_register
@dataclass(frozen=True, slots=True)
class Join(Operation):
    """A participant enters, with the role the room gave them.

    Only the room itself applies it (actor SYSTEM): the relay on admission, a local
    session for its one user. A participant who could send it could rejoin as anyone
    with any role."""

    name: ClassVar[str] = "join"
    participant_id: str
    display_name: str
    colour: str
    role: Role

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> Join:
        return cls(
            check_participant_id(p["participant_id"]),
            check_text(p["display_name"], "display name", MAX_NAME),
            check_colour(p.get("colour", "#888888")),
            parse_enum(Role, p.get("role", "member"), "role"),
        )

    def check(self, room: Room, actor: str) -> None:
        _only_the_room(self, actor)
        rejoin = self.participant_id in room.participants
        if not rejoin and len(room.participants) >= room.settings.capacity:
            raise PermissionDenied(f"room {room.id!r} is full ({room.settings.capacity} participants)")


@_register
@dataclass(frozen=True, slots=True)
class Leave(Operation):
    """A participant goes: the relay applies it (actor SYSTEM) when they disconnect for
    good or the host kicks them (after the relay checked that the kicker is host)."""

    name: ClassVar[str] = "leave"
    participant_id: str

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> Leave:
        return cls(check_participant_id(p["participant_id"]))

    def check(self, room: Room, actor: str) -> None:
        _only_the_room(self, actor)
        _participant(room, self.participant_id)


@_register
@dataclass(frozen=True, slots=True)
class SetRole(Operation):
    name: ClassVar[str] = "set_role"
    participant_id: str
    role: Role

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> SetRole:
        return cls(check_participant_id(p["participant_id"]), parse_enum(Role, p["role"], "role"))

    def check(self, room: Room, actor: str) -> None:
        _require(room, actor, (Role.HOST,), "change roles")
        target = _participant(room, self.participant_id)
        if target.role is Role.HOST and self.role is not Role.HOST:
            hosts = [p for p in room.participants.values() if p.role is Role.HOST]
            if len(hosts) <= 1:
                raise ValidationError("a room keeps at least one host; promote another host first")


@_register
@dataclass(frozen=True, slots=True)
class SetProfile(Operation):
    """A participant changes their own display name and colour."""

    name: ClassVar[str] = "set_profile"
    participant_id: str
    display_name: str
    colour: str

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> SetProfile:
        return cls(
            check_participant_id(p["participant_id"]),
            check_text(p["display_name"], "display name", MAX_NAME),
            check_colour(p["colour"]),
        )

    def check(self, room: Room, actor: str) -> None:
        _participant(room, self.participant_id)
        if actor not in (self.participant_id, SYSTEM):
            raise PermissionDenied("participants change only their own name and colour")


@_register
@dataclass(frozen=True, slots=True)
class RaiseHand(Operation):
    name: ClassVar[str] = "raise_hand"
    participant_id: str
    raised: bool

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> RaiseHand:
        return cls(check_participant_id(p["participant_id"]), check_bool(p["raised"], "raised"))

    def check(self, room: Room, actor: str) -> None:
        _participant(room, self.participant_id)
        if actor != self.participant_id:
            # Lowering someone else's hand is how a teacher answers it.
            if self.raised:
                raise PermissionDenied("participants raise only their own hand")
            _require(room, actor, _RUNS_ROOM, "lower others' hands")


@_register
@dataclass(frozen=True, slots=True)
class MuteParticipant(Operation):
    name: ClassVar[str] = "mute_participant"
    participant_id: str
    muted: bool

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> MuteParticipant:
        return cls(check_participant_id(p["participant_id"]), check_bool(p["muted"], "muted"))

    def check(self, room: Room, actor: str) -> None:
        _participant(room, self.participant_id)
        if actor == self.participant_id and self.muted:
            return  # anyone may mute themselves
        _require(room, actor, (Role.HOST,), "mute or unmute others")


# --- room settings --------------------------------------------------------------------


@_register
@dataclass(frozen=True, slots=True)
class LockLayout(Operation):
    name: ClassVar[str] = "lock_layout"
    locked: bool

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> LockLayout:
        return cls(check_bool(p["locked"], "locked"))

    def check(self, room: Room, actor: str) -> None:
        _require(room, actor, _RUNS_ROOM, "lock or unlock the layout")


@_register
@dataclass(frozen=True, slots=True)
class SetFollow(Operation):
    """Turn "follow me" on (everyone's view follows `presenter`) or off."""

    name: ClassVar[str] = "set_follow"
    mode: FollowMode
    presenter: str | None

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> SetFollow:
        presenter = p.get("presenter")
        return cls(
            parse_enum(FollowMode, p["mode"], "follow mode"),
            None if presenter is None else check_participant_id(presenter, "presenter"),
        )

    def check(self, room: Room, actor: str) -> None:
        _require(room, actor, _RUNS_ROOM, "start or stop follow mode")
        if self.mode is FollowMode.PRESENTER:
            if self.presenter is None:
                raise ValidationError("set_follow with mode 'presenter' needs a presenter id")
            leader = _participant(room, self.presenter)
            if leader.role not in _RUNS_ROOM:
                raise ValidationError(f"only a host or presenter can be followed; {leader.id!r} is {leader.role.value}")


@_register
@dataclass(frozen=True, slots=True)
class MuteAll(Operation):
    name: ClassVar[str] = "mute_all"
    muted: bool

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> MuteAll:
        return cls(check_bool(p["muted"], "muted"))

    def check(self, room: Room, actor: str) -> None:
        _require(room, actor, _RUNS_ROOM, "mute the room")


@_register
@dataclass(frozen=True, slots=True)
class SetRecording(Operation):
    """Start or stop the relay's recording of the room (the host's consent, visible to all)."""

    name: ClassVar[str] = "set_recording"
    recording: bool

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> SetRecording:
        return cls(check_bool(p["recording"], "recording"))

    def check(self, room: Room, actor: str) -> None:
        _require(room, actor, (Role.HOST,), "start or stop recording")


@_register
@dataclass(frozen=True, slots=True)
class SetVoiceMode(Operation):
    name: ClassVar[str] = "set_voice"
    mode: VoiceMode

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> SetVoiceMode:
        return cls(parse_enum(VoiceMode, p["mode"], "voice mode"))

    def check(self, room: Room, actor: str) -> None:
        _require(room, actor, (Role.HOST,), "change the voice mode")


@_register
@dataclass(frozen=True, slots=True)
class RenameRoom(Operation):
    name: ClassVar[str] = "rename_room"
    room_name: str

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> RenameRoom:
        return cls(check_text(p["room_name"], "room name", MAX_NAME))

    def check(self, room: Room, actor: str) -> None:
        _require(room, actor, (Role.HOST,), "rename the room")


@_register
@dataclass(frozen=True, slots=True)
class SetCapacity(Operation):
    name: ClassVar[str] = "set_capacity"
    capacity: int

    @classmethod
    def parse(cls, p: Mapping[str, Any]) -> SetCapacity:
        return cls(check_capacity(p["capacity"]))

    def check(self, room: Room, actor: str) -> None:
        _require(room, actor, (Role.HOST,), "change the capacity")
        if self.capacity < len(room.participants):
            raise ValidationError(f"capacity {self.capacity} is below the {len(room.participants)} participants present")


def check_allowed(op: Operation, room: Room, actor: str) -> None:
    """Raise if `actor` may not apply `op` to `room` as it is now."""
    op.check(room, actor)
