"""Rooms in use: load them, apply operations (checked by the core), persist, broadcast,
and merge what other relay nodes wrote.

An operation is applied under its room's lock, its update and its `op_key` are written
to the store in one transaction, and only then is it acknowledged and broadcast. An id
is remembered per sender, so a replay after a lost ack is answered `duplicate` and
another participant's op that happens to reuse the id is applied normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from deeproom.document import RoomDocument, WriteUndone
from deeproom.errors import DeepRoomError, NotFound, PermissionDenied
from deeproom.net import protocol as P
from deeproom.net.backend import RoomBackend, RoomMeta, op_key
from deeproom.net.errors import NetError, TooLarge
from deeproom.net.recording import hooks as recording_hooks
from deeproom.net.relay import heap
from deeproom.net.relay.settings import RelaySettings
from deeproom.net.relay.state import LiveRoom, Session
from deeproom.net.relay.wire import RelaySocketServer
from deeproom.ops import Join, Leave, Operation, parse_operation

log = logging.getLogger(__name__)

TRIM_EVERY_S = 30.0
"""How often housekeeping hands freed heap memory back (`heap.trim`)."""
RECENT_OPS = 4096
"""Op keys per room remembered in memory (older ones are looked up in the store)."""


def is_fatal(exc: BaseException) -> bool:
    """Exceptions that must stop the relay's work; everything else (a pyo3 panic included) is one refusal."""
    return isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit | GeneratorExit)


class RoomHub:
    """The rooms this relay node holds live copies of."""

    def __init__(self, settings: RelaySettings, backend: RoomBackend, sio: RelaySocketServer,
                 stats: dict[str, int], on_loaded: Callable[[LiveRoom], None]) -> None:
        self.settings = settings
        self.backend = backend
        self.sio = sio
        self.stats = stats
        self.rooms: dict[str, LiveRoom] = {}
        self._on_loaded = on_loaded
        self._loads: dict[str, asyncio.Future[LiveRoom | None]] = {}
        self._pending_remote: dict[str, list[bytes]] = {}

    # --- loading ----------------------------------------------------------------------

    async def get(self, room_id: str) -> LiveRoom | None:
        """The live room, loaded from the store on first use; None if no node has it."""
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        pending = self._loads.get(room_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[LiveRoom | None] = asyncio.get_running_loop().create_future()
        self._loads[room_id] = fut
        self._pending_remote[room_id] = []
        try:
            found = await self.backend.load(room_id)
            if found is None:
                fut.set_result(None)  # waiters learn "no such room" too (a cancel would kill their handler)
                return None
            updates, meta = found
            doc = RoomDocument(room_id)
            for u in updates:
                doc.apply_update(u)
            room = self.install(room_id, doc, meta, len(updates))
            fut.set_result(room)
            return room
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved
            raise
        finally:
            self._loads.pop(room_id, None)
            self._pending_remote.pop(room_id, None)

    def install(self, room_id: str, doc: RoomDocument, meta: RoomMeta, log_len: int) -> LiveRoom:
        room = LiveRoom(room_id, doc, meta, log_seen=log_len)
        for u in self._pending_remote.get(room_id, []):
            doc.apply_update(u)  # updates other nodes announced while we were loading
        self.rooms[room_id] = room
        self._on_loaded(room)
        return room

    async def create(self, room_id: str, doc: RoomDocument, meta: RoomMeta) -> LiveRoom | None:
        """Store a new room and hold it live; None when it exists already (another node made it first)."""
        if room_id in self.rooms:
            return None
        if await self.backend.create(room_id, doc.update_since(None), meta):
            return self.install(room_id, doc, meta, 1)
        return None

    # --- changing ---------------------------------------------------------------------

    async def apply(self, room: LiveRoom, op: Operation, actor: str, key: str | None, skip_sid: str | None) -> bytes:
        """Apply (checked by the core), persist, then broadcast. Caller holds room.lock."""
        try:
            update = room.doc.apply(op, actor)
        except WriteUndone as exc:
            # Nothing of the op remains, but the undoing is an update later ones build on:
            # store and send it like any other (without the op id: the op was not applied).
            await self._persist(room, exc.update, None, skip_sid=None)
            raise
        except DeepRoomError:
            raise
        except BaseException as exc:
            if is_fatal(exc):
                raise
            # The core or pycrdt broke half-way (a pyo3 panic is a BaseException): the
            # live copy may be damaged, so rebuild it from the store.
            log.error("relay: applying %s in %s failed; reloading the room", op.name, room.id, exc_info=exc)
            await self.evict(room)
            raise NetError(f"the relay could not apply {op.name!r} ({type(exc).__name__}); the room was reloaded") from None
        await self._persist(room, update, key, skip_sid)
        return update

    async def _persist(self, room: LiveRoom, update: bytes, key: str | None, skip_sid: str | None) -> None:
        try:
            await self.backend.append(room.id, update, key)
        except Exception:
            # The live copy is ahead of what is stored: drop it and make everyone resync
            # from the store rather than keep a change nobody was told about.
            log.exception("relay: could not persist an update of %s; reloading it", room.id)
            await self.evict(room)
            raise
        room.log_seen += 1
        self.stats["ops"] += 1
        recording_hooks.on_update(self, room, update)
        if key is not None:
            room.recent_ops[key] = None
            while len(room.recent_ops) > RECENT_OPS:
                room.recent_ops.popitem(last=False)
        await self.sio.emit_local("update", update, room=room.id, skip_sid=[skip_sid] if skip_sid else None)

    async def handle_op(self, sess: Session, room: LiveRoom, data: Any) -> dict[str, Any]:
        """One `op` message from a joined client."""
        d = P.require_mapping(data, "op message")
        op_id = P.require_str(d, "id", "operation id", 128)
        assert op_id is not None
        raw = d.get("op")
        size = P.payload_size(raw)
        if size > P.MAX_OP_BYTES:
            raise TooLarge(f"an operation is at most {P.MAX_OP_BYTES} bytes; got about {size}")
        op = parse_operation(raw)
        if isinstance(op, Join | Leave):
            raise PermissionDenied(
                f"{op.name!r} is the relay's own operation: join with the join event, leave by disconnecting"
            )
        pid = sess.participant_id
        assert pid is not None
        key = op_key(pid, op_id)
        async with room.lock:
            if not self.is_live(room) or sess.room_id != room.id:
                raise NetError(f"room {room.id!r} was reloaded; the client rejoins and sends this again")
            if key in room.recent_ops or await self.backend.op_applied(room.id, key):
                return {"ok": True, "duplicate": True}
            update = await self.apply(room, op, pid, key, sess.sid)
        return {"ok": True, "update": update}

    async def sync(self, room: LiveRoom, data: Any) -> dict[str, Any]:
        """What the client's state vector lacks (clients may ask at any time)."""
        sv = P.require_bytes(P.require_mapping(data, "sync"), "sv", "state vector", P.MAX_STATE_VECTOR)
        async with room.lock:
            return {"ok": True, "update": room.doc.update_since(sv)}

    # --- other nodes ------------------------------------------------------------------

    async def on_remote_update(self, room_id: str, update: bytes) -> None:
        if room_id in self._pending_remote:
            self._pending_remote[room_id].append(update)
            return
        room = self.rooms.get(room_id)
        if room is None:
            return
        async with room.lock:
            await self._merge_remote(room, update)

    async def _merge_remote(self, room: LiveRoom, update: bytes) -> None:
        room.doc.apply_update(update)
        room.log_seen += 1
        recording_hooks.on_update(self, room, update, merged=True)
        await self.sio.emit_local("update", update, room=room.id)

    async def reconcile_loop(self) -> None:
        """Pub/sub may drop a message; every few seconds, read what the log has beyond what we saw."""
        while True:
            await asyncio.sleep(2.0)
            for room in list(self.rooms.values()):
                try:
                    length = await self.backend.log_length(room.id)
                    if length <= room.log_seen:
                        continue
                    async with room.lock:
                        missing = await self.backend.log_range(room.id, room.log_seen)
                        for u in missing:
                            await self._merge_remote(room, u)
                        room.log_seen = length
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("relay: reconciling %s with the shared store failed", room.id)

    # --- unloading --------------------------------------------------------------------

    async def evict(self, room: LiveRoom) -> None:
        """Forget the live copy and disconnect its clients: they rejoin and resync from the store."""
        self.rooms.pop(room.id, None)
        for t in room.leave_tasks.values():
            t.cancel()
        for sid in list(room.sessions):
            with contextlib.suppress(Exception):
                await self.sio.disconnect(sid, ignore_queue=True)

    async def evict_idle(self) -> None:
        """Forget rooms nobody is in (their log is compacted first), so memory stays flat."""
        for room in list(self.rooms.values()):
            if room.sessions:
                room.idle_since = time.monotonic()
                continue
            if room.leave_tasks or room.lock.locked() or room.id in self._loads:
                continue
            if time.monotonic() - room.idle_since < self.settings.idle_room_s:
                continue
            self.rooms.pop(room.id, None)
            try:
                await self.backend.compact(room.id)
            except Exception:
                log.exception("relay: compacting %s failed (its log stays as it is)", room.id)

    async def housekeeping_loop(self) -> None:
        period = max(0.5, min(10.0, self.settings.idle_room_s / 2))
        trimmed = time.monotonic()
        while True:
            await asyncio.sleep(period)
            try:
                await self.evict_idle()
                if time.monotonic() - trimmed >= TRIM_EVERY_S:
                    trimmed = time.monotonic()
                    heap.trim()  # what bursts of large messages or password hashes freed goes back
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("relay: housekeeping failed")

    def is_live(self, room: LiveRoom) -> bool:
        """Whether `room` is still the copy this node holds (not unloaded or reloaded meanwhile)."""
        return self.rooms.get(room.id) is room

    def require(self, room_id: str) -> LiveRoom:
        room = self.rooms.get(room_id)
        if room is None:
            raise NotFound(f"room {room_id!r} is not loaded; join again")
        return room
