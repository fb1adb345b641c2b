"""The replicated room document: a pycrdt (Yjs) document holding a room's state.

`RoomDocument.apply` is the one place an operation changes a room: it checks the
operation against the current state and the actor's role, then writes it into the
CRDT. Copies of a document exchange binary updates (`update_since`, `apply_update`)
and converge whatever order the updates arrive in; a copy that was offline catches
up by sending its state vector and receiving only what it lacks.

Layout of the CRDT: three root maps, `settings` (scalar fields), `panels` (panel id ->
map of fields) and `participants` (participant id -> map of fields). Panels are
nested maps so concurrent edits to different fields of one panel (a move and a
retitle) both survive; a transform is written as one value so a concurrent move
never mixes two positions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Map, merge_updates

from deeproom.errors import ValidationError
from deeproom.ops import (
    SYSTEM,
    AddPanel,
    Join,
    Leave,
    LockLayout,
    LockPanel,
    MovePanel,
    MuteAll,
    MuteParticipant,
    Operation,
    RaiseHand,
    RemovePanel,
    RenameRoom,
    ResizePanel,
    RetitlePanel,
    SetCapacity,
    SetFollow,
    SetPanelContent,
    SetProfile,
    SetRecording,
    SetRole,
    SetVoiceMode,
    UnlockPanel,
    parse_operation,
)
from deeproom.state import (
    FollowMode,
    Panel,
    Participant,
    Role,
    Room,
    RoomSettings,
)

log = logging.getLogger(__name__)

LOCAL = "local"
REMOTE = "remote"
EMPTY_UPDATE = b"\x00\x00"
"""A CRDT update that changes nothing (what `apply` returns if an operation wrote nothing)."""


@dataclass(frozen=True, slots=True)
class RoomChange:
    """What observers are told after every change."""

    room: Room
    """The room as it is now."""
    operation: Operation | None
    """The operation applied here, or None for an update that came from another copy."""
    actor: str | None
    """Who applied the operation (None for remote updates)."""
    update: bytes
    """The CRDT update this change produced (what another copy needs to apply)."""
    origin: str
    """LOCAL for an operation applied on this copy, REMOTE for an applied update."""


class Subscription:
    """Returned by `observe`; call `unsubscribe()` (or use as a context manager) to stop."""

    def __init__(self, owner: RoomDocument, callback: Callable[[RoomChange], None]) -> None:
        self._owner: RoomDocument | None = owner
        self.callback = callback

    def unsubscribe(self) -> None:
        if self._owner is not None:
            self._owner._observers.remove(self)
            self._owner = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()


class RoomDocument:
    """One copy of a room's replicated state."""

    def __init__(self, room_id: str, *, update: bytes | None = None, client_id: int | None = None) -> None:
        self.room_id = room_id
        self._doc: Doc = Doc(client_id=client_id) if client_id is not None else Doc()
        self._settings: Map = self._doc.get("settings", type=Map)
        self._panels: Map = self._doc.get("panels", type=Map)
        self._participants: Map = self._doc.get("participants", type=Map)
        self._observers: list[Subscription] = []
        self._scratch = _Scratch()
        self._snapshot: Room | None = None
        self._updates: list[bytes] = []
        # Parsed panels and participants, re-read only where a transaction touched them,
        # so a change costs O(what changed), not O(room).
        self._panel_cache: dict[str, Panel] = {}
        self._people_cache: dict[str, Participant] = {}
        self._settings_cache = RoomSettings()
        self._dirty_panels: set[str] = set()
        self._dirty_people: set[str] = set()
        self._dirty_settings = False
        self._doc.observe(self._on_transaction)
        self._panels.observe_deep(lambda events: self._mark(events, self._dirty_panels))
        self._participants.observe_deep(lambda events: self._mark(events, self._dirty_people))
        self._settings.observe(self._mark_settings)
        if update:
            self.apply_update(update)

    @staticmethod
    def _mark(events: Any, dirty: set[str]) -> None:
        for event in events:
            path = list(event.path)
            if path:
                dirty.add(str(path[0]))  # a field of one entry changed
            else:
                dirty.update(str(k) for k in event.keys)  # entries added or removed

    def _mark_settings(self, event: Any) -> None:
        self._dirty_settings = True

    # --- reading -------------------------------------------------------------------

    @property
    def client_id(self) -> int:
        return int(self._doc.client_id)

    def snapshot(self) -> Room:
        """The room as it is now (cached until the next change)."""
        if self._snapshot is None:
            self._snapshot = self._read()
        return self._snapshot

    def _read(self) -> Room:
        if self._dirty_settings:
            self._dirty_settings = False
            try:
                self._settings_cache = RoomSettings.from_dict(self._settings.to_py() or {})
            except ValidationError as exc:  # only a foreign writer could put this here
                log.warning("room %s: ignoring invalid settings: %s", self.room_id, exc)
                self._settings_cache = RoomSettings()
        self._refresh(self._panels, self._dirty_panels, self._panel_cache, Panel.from_dict, "panel")
        self._refresh(self._participants, self._dirty_people, self._people_cache, Participant.from_dict, "participant")
        return Room(self.room_id, self._settings_cache, dict(self._panel_cache), dict(self._people_cache))

    def _refresh(self, root: Map, dirty: set[str], cache: dict[str, Any], parse: Any, what: str) -> None:
        for key in sorted(dirty):
            cache.pop(key, None)
            if key not in root:
                continue
            entry = root[key]
            raw = entry.to_py() if isinstance(entry, Map) else entry
            if not isinstance(raw, dict):
                log.warning("room %s: ignoring %s %r that is not a map", self.room_id, what, key)
                continue
            try:
                cache[key] = parse({"id": key, **raw})
            except (ValidationError, TypeError, KeyError) as exc:
                log.warning("room %s: ignoring invalid %s %r: %s", self.room_id, what, key, exc)
        dirty.clear()

    # --- changing ------------------------------------------------------------------

    def apply(self, op: Operation | dict[str, Any], actor: str, *, now: float | None = None) -> bytes:
        """Check `op` against the room and `actor`'s role, then apply it, whole or not at all.

        Returns the CRDT update this operation produced: what another copy needs
        (`apply_update`) to see the change, and what a relay persists and broadcasts.
        The room as it is now is `snapshot()`.

        Raises ValidationError, PermissionDenied or NotFound and changes nothing when
        the operation is not allowed. An Operation built in Python is checked exactly
        like one parsed from the wire.
        """
        # Re-parsing a built Operation costs little and means no value reaches the CRDT
        # unchecked, whoever constructed it.
        op = parse_operation(op.to_dict() if isinstance(op, Operation) else op)
        room = self.snapshot()
        op.check(room, actor)
        stamp = time.time() if now is None else now
        writes = self._plan(op, actor, room, stamp)
        self._scratch.probe(op, writes)
        self._commit(op, writes)
        return self._notify(op, actor, LOCAL)

    def _plan(self, op: Operation, actor: str, room: Room, now: float) -> list[_Write]:
        """Every write `op` makes, as plain values, before anything is written."""
        panels, people, settings = self._panels, self._participants, self._settings
        writes: list[_Write] = []

        # Each write carries what it replaces, read from the snapshot (no CRDT reads), so
        # that a write failing half-way can be undone.
        def panel(panel_id: str, key: str, value: Any) -> None:
            entry, old = panels[panel_id], room.panels[panel_id].to_dict()
            writes.append(_Write(entry, key, value, old.get(key)))
            writes.append(_Write(entry, "updated", now, old["updated"]))

        def person(pid: str, key: str, value: Any) -> None:
            writes.append(_Write(people[pid], key, value, room.participants[pid].to_dict()[key]))

        old_settings = room.settings.to_dict()

        def setting(key: str, value: Any) -> None:
            writes.append(_Write(settings, key, value, old_settings[key]))

        def entry_of(thing: Panel | Participant | None) -> Any:
            if thing is None:
                return _DELETE
            fields = thing.to_dict()
            del fields["id"]
            return _Entry(fields)

        match op:
            case AddPanel():
                fields = {
                    "kind": op.kind.value,
                    "title": op.title,
                    "transform": op.transform.to_dict(),
                    "size": list(op.size),
                    "owner": actor,
                    "lock_holder": None,
                    "content": op.content.to_dict(),
                    "created": now,
                    "updated": now,
                }
                writes.append(_Write(panels, op.panel_id, _Entry(fields), _DELETE))
            case MovePanel():
                panel(op.panel_id, "transform", op.transform.to_dict())
            case ResizePanel():
                panel(op.panel_id, "size", list(op.size))
            case RetitlePanel():
                panel(op.panel_id, "title", op.title)
            case SetPanelContent():
                panel(op.panel_id, "content", op.content.to_dict())
            case LockPanel():
                panel(op.panel_id, "lock_holder", actor if actor != SYSTEM else None)
            case UnlockPanel():
                panel(op.panel_id, "lock_holder", None)
            case RemovePanel():
                writes.append(_Write(panels, op.panel_id, _DELETE, entry_of(room.panels[op.panel_id])))
            case Join():
                existing = room.participants.get(op.participant_id)  # a rejoin keeps hand and mute
                fields = {
                    "name": op.display_name,
                    "colour": op.colour,
                    "role": op.role.value,
                    "hand_raised": existing.hand_raised if existing else False,
                    "muted": existing.muted if existing else False,
                }
                writes.append(_Write(people, op.participant_id, _Entry(fields), entry_of(existing)))
            case Leave():
                writes.append(
                    _Write(people, op.participant_id, _DELETE, entry_of(room.participants[op.participant_id]))
                )
                for p in room.panels.values():  # their locks go with them
                    if p.lock_holder == op.participant_id:
                        panel(p.id, "lock_holder", None)
                if room.settings.presenter == op.participant_id:
                    setting("follow", FollowMode.OFF.value)
                    setting("presenter", None)
            case SetRole():
                person(op.participant_id, "role", op.role.value)
                if room.settings.presenter == op.participant_id and op.role not in (Role.HOST, Role.PRESENTER):
                    setting("follow", FollowMode.OFF.value)
                    setting("presenter", None)
            case SetProfile():
                person(op.participant_id, "name", op.display_name)
                person(op.participant_id, "colour", op.colour)
            case RaiseHand():
                person(op.participant_id, "hand_raised", op.raised)
            case MuteParticipant():
                person(op.participant_id, "muted", op.muted)
            case LockLayout():
                setting("layout_locked", op.locked)
            case SetFollow():
                setting("follow", op.mode.value)
                setting("presenter", op.presenter if op.mode is FollowMode.PRESENTER else None)
            case MuteAll():
                setting("muted_all", op.muted)
            case SetRecording():
                setting("recording", op.recording)
            case SetVoiceMode():
                setting("voice", op.mode.value)
            case RenameRoom():
                setting("name", op.room_name)
            case SetCapacity():
                setting("capacity", op.capacity)
            case _:
                raise ValidationError(f"operation {op.name!r} has no writer")  # a programming error
        return writes

    def _commit(self, op: Operation, writes: list[_Write]) -> None:
        """Write everything in one transaction; should the CRDT fail half-way anyway, undo
        what was written, so that nothing of `op` remains."""
        try:
            with self._doc.transaction(origin=LOCAL):
                for w in writes:
                    _put(w.target, w.key, w.value)
        except BaseException as exc:
            if not _is_crdt_failure(exc):
                raise
            with self._doc.transaction(origin=LOCAL):
                for w in reversed(writes):
                    _put(w.target, w.key, w.old)
            # The undone half is part of this copy's history now: others must get it too,
            # or a later update that builds on it would wait for it for ever.
            update = self._notify(None, None, LOCAL)
            raise WriteUndone(f"{op.name} could not be stored and was undone: {_describe(exc)}", update) from None

    # --- replication ---------------------------------------------------------------

    def state_vector(self) -> bytes:
        """What this copy has seen, to send to another copy that will answer with what it lacks."""
        return bytes(self._doc.get_state())

    def update_since(self, state_vector: bytes | None = None) -> bytes:
        """Everything this copy has that a copy with `state_vector` lacks (all of it for None)."""
        if state_vector is None:
            return bytes(self._doc.get_update())
        try:
            return bytes(self._doc.get_update(state_vector))
        except BaseException as exc:  # pycrdt raises plain exceptions (or panics) on garbage
            if not _is_crdt_failure(exc):
                raise
            raise ValidationError(f"not a valid state vector: {_describe(exc)}") from None

    def apply_update(self, update: bytes) -> Room:
        """Merge an update from another copy. Applying one twice, or out of order, is harmless."""
        if not isinstance(update, bytes | bytearray | memoryview):
            raise ValidationError(f"a room update must be bytes; got {type(update).__name__}")
        try:
            self._doc.apply_update(bytes(update))
        except BaseException as exc:
            if not _is_crdt_failure(exc):
                raise
            self._updates.clear()
            raise ValidationError(f"not a valid room update: {_describe(exc)}") from None
        self._notify(None, None, REMOTE)
        return self.snapshot()

    # --- observing -----------------------------------------------------------------

    def observe(self, callback: Callable[[RoomChange], None]) -> Subscription:
        """Call `callback` after every change; returns a Subscription to drop later."""
        sub = Subscription(self, callback)
        self._observers.append(sub)
        return sub

    def _on_transaction(self, event: Any) -> None:
        # Called inside pycrdt's transaction, where the document cannot be read yet:
        # keep the update and tell observers once the transaction is over (_notify).
        self._snapshot = None
        update = bytes(event.update)
        if update and update != EMPTY_UPDATE:  # an empty transaction changed nothing
            self._updates.append(update)

    def _notify(self, op: Operation | None, actor: str | None, origin: str) -> bytes:
        """Tell observers about what the last transaction(s) wrote; returns that update."""
        updates, self._updates = self._updates, []
        if not updates:
            return EMPTY_UPDATE
        update = updates[0] if len(updates) == 1 else bytes(merge_updates(*updates))
        if self._observers:
            change = RoomChange(self.snapshot(), op, actor, update, origin)
            for sub in list(self._observers):
                try:
                    sub.callback(change)
                except Exception:  # one broken observer must not stop the others
                    log.exception("room %s: observer failed", self.room_id)
        return update

# --- writing safely ---------------------------------------------------------------------


class _Deleted:
    def __repr__(self) -> str:
        return "<deleted>"


_DELETE: Any = _Deleted()
"""A write's value that removes the key."""


@dataclass(frozen=True, slots=True)
class _Entry:
    """A write's value that puts a fresh nested map (a panel's or participant's fields)."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Write:
    target: Map
    key: str
    value: Any
    """A plain value, an _Entry, or _DELETE."""
    old: Any
    """What it replaces, in the same forms (to undo it)."""


class WriteUndone(ValidationError):
    """The CRDT refused a value half-way through an operation; what was written is undone.

    Nothing of the operation remains, but the undoing is itself an update: `update`
    must still reach the other copies (persist and broadcast it like an applied one).
    """

    def __init__(self, message: str, update: bytes) -> None:
        super().__init__(message)
        self.update = update


def _is_crdt_failure(exc: BaseException) -> bool:
    # pycrdt's Rust code panics on values it cannot convert (a lone surrogate, an int
    # over 64 bits, a non-text key); pyo3 raises that as PanicException, a BaseException
    # that cannot be imported. Anything else that is not an Exception (KeyboardInterrupt,
    # SystemExit, a cancelled task) must pass through untouched.
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _put(target: Map, key: str, value: Any) -> None:
    if value is _DELETE:
        if key in target:
            del target[key]
    elif isinstance(value, _Entry):
        target[key] = Map(value.fields)
    else:
        target[key] = value


class _Scratch:
    """A throwaway document to try values in (renewed now and then so it stays small)."""

    def __init__(self) -> None:
        self.uses = 0
        self.doc: Doc = Doc()
        self.map = self.doc.get("probe", type=Map)

    def probe(self, op: Operation, writes: list[_Write]) -> None:
        """Write every value here first: a value the CRDT cannot hold is refused before
        the room's document is touched."""
        self.uses += 1
        if self.uses > 1000:
            self.__init__()  # type: ignore[misc]
        try:
            with self.doc.transaction():
                for i, w in enumerate(writes):
                    _put(self.map, str(i), w.value)
        except BaseException as exc:
            if not _is_crdt_failure(exc):
                raise
            self.__init__()  # type: ignore[misc]  # a half-written scratch is not reused
            raise ValidationError(f"{op.name} holds a value the room document cannot store: {_describe(exc)}") from None



def new_room(room_id: str, *, name: str, host_id: str, host_name: str, colour: str = "#e0a030", capacity: int = 32) -> RoomDocument:
    """A fresh room with its creator as host."""
    doc = RoomDocument(room_id)
    doc.apply(RenameRoom(name), SYSTEM)
    doc.apply(SetCapacity(capacity), SYSTEM)
    doc.apply(Join(host_id, host_name, colour, Role.HOST), SYSTEM)
    return doc
