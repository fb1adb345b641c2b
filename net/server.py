"""The relay: one python-socketio AsyncServer (aiohttp, websocket only) serving many rooms.

For each room the relay holds the authoritative `RoomDocument`. An operation from a
client is parsed and checked by the core (`RoomDocument.apply(op, actor)`), written to
the room's update log together with its operation id, and only then acknowledged and
broadcast as a CRDT update, so an acknowledged change survives the relay being
killed. Operation ids make replays harmless: a client that lost an ack sends the
operation again and is told it was already applied.

Presence is kept apart from state: the relay remembers only each participant's latest
pose and sends one binary batch per room per tick; a client whose socket is backed
up is skipped for that tick rather than queued for. Blobs are uploaded in chunks,
checked against their sha256 and stored whole or not at all.

With a Redis URL, several relays serve the same rooms: room logs live in Redis
(`RedisBackend`), each node merges the others' updates from a Redis channel and sends
them to its own clients, events between participants on different nodes go through
python-socketio's `AsyncRedisManager`, and poses are exchanged once per tick per room.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web

from deeproom.document import RoomChange, RoomDocument, new_room
from deeproom.errors import DeepRoomError, NotFound, PermissionDenied, ValidationError
from deeproom.net import protocol as P
from deeproom.net.auth import (
    check_password,
    hash_password,
    make_invite,
    token_from_link,
    verify_invite,
)
from deeproom.net.backend import RedisBackend, RoomBackend, RoomMeta, SqliteBackend
from deeproom.net.errors import JoinRefused, NetError, ProtocolError, RateLimited, error_to_wire
from deeproom.net.ratelimit import TokenBucket
from deeproom.ops import SYSTEM, Join, Leave, parse_operation
from deeproom.presence import decode_pose, encode_batch, split_batch
from deeproom.state import MAX_NAME, Role, check_colour, check_id, check_text
from deeproom.storage import BlobStore, BlobUpload, check_blob_id

log = logging.getLogger(__name__)

_MEMBER_UP = (Role.HOST, Role.PRESENTER, Role.MEMBER)
_RUNS_ROOM = (Role.HOST, Role.PRESENTER)


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """How a relay runs; built from the command line or by `EmbeddedRelay`."""

    data_dir: Path
    """Room store (SQLite), blobs and the invite-signing secret live here."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 0
    """Port to listen on; 0 picks a free one."""
    db_path: Path | None = None
    """SQLite store (default: data_dir/deeproom.sqlite3)."""
    redis_url: str | None = None
    """With a Redis URL, rooms live in Redis and several relays serve them together."""
    tick_hz: float = 30.0
    """Presence batches per second per room."""
    stale_pose_s: float = 2.0
    """A participant whose last pose is older than this is left out of batches."""
    keyframe_s: float = 1.0
    """How often a batch carries every live pose, not only those that changed."""
    backed_up_packets: int = 4
    max_unacked_batches: int = 6
    """A client that has not confirmed the batches sent to it more than this many ticks ago is
    skipped until it catches up (the backlog may sit in kernel buffers the relay cannot see)."""
    """A client with more packets than this waiting to be sent is skipped for a tick."""
    leave_grace_s: float = 10.0
    """A participant who disconnects stays in the room this long, for reconnects."""
    pose_rate: tuple[float, float] = (60.0, 120.0)
    """Poses per second and burst accepted per client (about twice the 30 Hz clients send)."""
    op_rate: tuple[float, float] = (200.0, 400.0)
    """Operations per second and burst accepted per client."""
    event_rate: tuple[float, float] = (100.0, 200.0)
    """Events per second and burst per client (voice signalling sends bursts of candidates)."""
    blob_max_bytes: int = 64 * 1024 * 1024
    """Largest blob accepted."""
    store_max_bytes: int = 4 * 1024 * 1024 * 1024
    """Total size of the relay's blob store."""
    blob_cache_bytes: int = 64 * 1024 * 1024
    """Recently served blobs kept in memory."""
    capacity: int = 32
    """Capacity of rooms created here."""
    idle_room_s: float = 60.0
    """A room nobody has been in for this long is dropped from memory (and its log compacted)."""

    @property
    def store_path(self) -> Path:
        return self.db_path or self.data_dir / "deeproom.sqlite3"


@dataclass(eq=False)
class Session:
    """One connected socket."""

    sid: str
    pose_bucket: TokenBucket
    op_bucket: TokenBucket
    event_bucket: TokenBucket
    room_id: str | None = None
    participant_id: str | None = None
    uploads: dict[str, BlobUpload] = field(default_factory=dict)
    warned_at: float = 0.0
    join_bucket: TokenBucket = field(default_factory=lambda: TokenBucket(0.5, 3))
    """Join attempts (each may cost a password hash): bursts of 3, then one per 2 s."""
    batches_sent: int = 0
    batches_acked: int = 0


@dataclass(eq=False)
class LiveRoom:
    """A room some client is in: its authoritative document and presence."""

    id: str
    doc: RoomDocument
    meta: RoomMeta
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sessions: dict[str, Session] = field(default_factory=dict)
    poses: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    remote_poses: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    streams: OrderedDict[tuple[str, str], dict[str, Any]] = field(default_factory=OrderedDict)
    captured: list[bytes] = field(default_factory=list)
    leave_tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    recent_ops: OrderedDict[str, None] = field(default_factory=OrderedDict)
    log_seen: int = 0
    last_keyframe: float = 0.0
    idle_since: float = field(default_factory=time.monotonic)

    def role_of(self, pid: str) -> Role | None:
        p = self.doc.snapshot().participants.get(pid)
        return p.role if p else None


MAX_STREAMS_PER_ROOM = 256
RECENT_OPS = 4096
Handler = Callable[..., Awaitable[Any]]


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class RelayServer:
    """The relay. `async with RelayServer(settings) as relay: relay.url` (closing twice is safe)."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.rooms: dict[str, LiveRoom] = {}
        self.sessions: dict[str, Session] = {}
        self.blobs = BlobStore(
            settings.data_dir / "blobs", max_blob_bytes=settings.blob_max_bytes, max_total_bytes=settings.store_max_bytes
        )
        self._blob_cache: OrderedDict[str, bytes] = OrderedDict()
        self._blob_cache_bytes = 0
        self._redis: RedisBackend | None = None
        self.backend: RoomBackend
        manager = None
        if settings.redis_url:
            self._redis = RedisBackend(settings.redis_url)
            self.backend = self._redis
            manager = socketio.AsyncRedisManager(settings.redis_url, channel="deeproom-socketio")
        else:
            self.backend = SqliteBackend(settings.store_path, settings.data_dir / "relay-secret")
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            transports=["websocket"],
            client_manager=manager,
            # Each client's events run one after another, in the order sent: a client's
            # operations reach its room in order without a queue of our own.
            async_handlers=False,
            max_http_buffer_size=P.MAX_MESSAGE_BYTES,
            cors_allowed_origins="*",
            ping_interval=5,
            ping_timeout=10,
        )
        self._room_loads: dict[str, asyncio.Future[LiveRoom | None]] = {}
        self._creating: dict[str, asyncio.Lock] = {}
        self._pending_remote: dict[str, list[bytes]] = {}
        self._secret = b""
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self._ticks = 0
        self.port = 0
        self.stats = {"poses_in": 0, "batches_out": 0, "entries_scheduled": 0, "skipped_backed_up": 0, "ops": 0, "refused": 0}
        self._register()

    # --- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    async def start(self) -> RelayServer:
        if self._started:
            return self
        self._started = True
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self._redis is not None:
            await self._redis.start(self._on_remote_update, self._on_remote_message, channels=("poses",))
        self._secret = await self.backend.secret()
        app = web.Application(client_max_size=P.MAX_MESSAGE_BYTES)
        self.sio.attach(app)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, self.settings.port))
        sock.listen(512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._tasks.append(asyncio.create_task(self._presence_loop(), name="relay-presence"))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="relay-reconcile"))
        log.info("relay listening on %s (%s)", self.url, "redis " + str(self.settings.redis_url) if self._redis else self.settings.store_path)
        return self

    async def close(self) -> None:
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for room in self.rooms.values():
            for t in room.leave_tasks.values():
                t.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sess in self.sessions.values():
            for up in sess.uploads.values():
                up.abort()
        # Say goodbye to every client first; otherwise aiohttp waits for open websockets.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.shutdown(), 5)
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
        mgr = self.sio.manager
        if isinstance(mgr, socketio.AsyncRedisManager):
            with contextlib.suppress(Exception):
                if mgr.thread is not None:
                    mgr.thread.cancel()
        await self.backend.close()

    async def __aenter__(self) -> RelayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "time": time.time(), "rooms": len(self.rooms), "clients": len(self.sessions), **self.stats}
        )

    # --- helpers ----------------------------------------------------------------------

    def _register(self) -> None:
        sio = self.sio
        sio.on("connect", self._on_connect)
        sio.on("disconnect", self._on_disconnect)
        for name, handler in (
            ("join", self._on_join),
            ("op", self._on_op),
            ("event", self._on_event),
            ("blob_begin", self._on_blob_begin),
            ("blob_chunk", self._on_blob_chunk),
            ("blob_end", self._on_blob_end),
            ("blob_get", self._on_blob_get),
            ("invite", self._on_invite),
            ("kick", self._on_kick),
            ("set_password", self._on_set_password),
            ("sync", self._on_sync),
        ):
            sio.on(name, self._guard(name, handler))
        sio.on("pose", self._on_pose)
        sio.on("pa", self._on_pose_ack)
        sio.on("*", self._on_unknown)

    def _guard(self, name: str, handler: Handler) -> Handler:
        """Turn whatever a handler raises into a refusal ack for that client alone."""

        async def guarded(sid: str, data: Any = None, *extra: Any) -> dict[str, Any]:
            if extra:
                return {"ok": False, "error": error_to_wire(ProtocolError(f"{name} takes one argument"))}
            try:
                result: dict[str, Any] = await handler(sid, data)
                return result
            except DeepRoomError as exc:
                self.stats["refused"] += 1
                return {"ok": False, "error": error_to_wire(exc)}
            except Exception as exc:  # a bug must cost one refusal, not the relay
                log.exception("relay: %s from %s failed", name, sid)
                return {"ok": False, "error": {"type": "DeepRoomError", "message": f"relay error in {name}: {type(exc).__name__}"}}

        return guarded

    def _joined(self, sid: str) -> tuple[Session, LiveRoom]:
        sess = self.sessions.get(sid)
        if sess is None or sess.room_id is None or sess.participant_id is None:
            raise PermissionDenied("join a room first")
        room = self.rooms.get(sess.room_id)
        if room is None:
            raise NotFound(f"room {sess.room_id!r} is not loaded; join again")
        return sess, room

    async def _warn(self, sess: Session, exc: DeepRoomError) -> None:
        """An error event for things that have no ack (poses), at most a few per second."""
        now = time.monotonic()
        if now - sess.warned_at < 0.5:
            return
        sess.warned_at = now
        await self.sio.emit("error", error_to_wire(exc), to=sess.sid, ignore_queue=True)

    # --- connection -------------------------------------------------------------------

    async def _on_connect(self, sid: str, environ: Any, auth: Any = None) -> bool:
        s = self.settings
        self.sessions[sid] = Session(
            sid, TokenBucket(*s.pose_rate), TokenBucket(*s.op_rate), TokenBucket(*s.event_rate)
        )
        return True

    async def _on_disconnect(self, sid: str, *reason: Any) -> None:
        sess = self.sessions.pop(sid, None)
        if sess is None:
            return
        for up in sess.uploads.values():
            up.abort()  # a half-received blob never reaches the store
        sess.uploads.clear()
        if sess.room_id is None or sess.participant_id is None:
            return
        room = self.rooms.get(sess.room_id)
        if room is None:
            return
        room.sessions.pop(sid, None)
        pid = sess.participant_id
        try:
            remaining = await self.backend.connections(room.id, pid, -1)
        except Exception:
            log.exception("relay: could not count connections of %s", pid)
            remaining = 0
        if remaining <= 0 and not any(x.participant_id == pid for x in room.sessions.values()):
            room.poses.pop(pid, None)
            self._schedule_leave(room, pid)

    def _schedule_leave(self, room: LiveRoom, pid: str) -> None:
        old = room.leave_tasks.pop(pid, None)
        if old is not None:
            old.cancel()
        if self._closed:
            return
        room.leave_tasks[pid] = asyncio.create_task(self._leave_later(room, pid))

    async def _leave_later(self, room: LiveRoom, pid: str) -> None:
        await asyncio.sleep(self.settings.leave_grace_s)
        room.leave_tasks.pop(pid, None)
        try:
            if any(s.participant_id == pid for s in room.sessions.values()):
                return
            if await self.backend.connections(room.id, pid, 0) > 0:
                return  # connected to another node
            async with room.lock:
                current = room.doc.snapshot().participants.get(pid)
                if current is None:
                    return
                room.meta.roles[pid] = current.role.value
                await self.backend.save_meta(room.id, room.meta)
                await self._apply_and_send(room, Leave(pid), SYSTEM, None, None)
        except Exception:
            log.exception("relay: removing %s from %s failed", pid, room.id)

    # --- rooms ------------------------------------------------------------------------

    def _capture(self, room: LiveRoom) -> Callable[[RoomChange], None]:
        def on_change(change: RoomChange) -> None:
            room.captured.append(change.update)

        return on_change

    async def _get_room(self, room_id: str) -> LiveRoom | None:
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        pending = self._room_loads.get(room_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[LiveRoom | None] = asyncio.get_running_loop().create_future()
        self._room_loads[room_id] = fut
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
            room = self._install(room_id, doc, meta, len(updates))
            fut.set_result(room)
            return room
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved
            raise
        finally:
            self._room_loads.pop(room_id, None)
            self._pending_remote.pop(room_id, None)

    def _install(self, room_id: str, doc: RoomDocument, meta: RoomMeta, log_len: int) -> LiveRoom:
        room = LiveRoom(room_id, doc, meta, log_seen=log_len)
        for u in self._pending_remote.get(room_id, []):
            doc.apply_update(u)  # updates other nodes announced while we were loading
        doc.observe(self._capture(room))
        self.rooms[room_id] = room
        # Participants who were in the room when a relay stopped leave unless they reconnect.
        for pid in doc.snapshot().participants:
            self._schedule_leave(room, pid)
        return room

    async def _apply_and_send(
        self, room: LiveRoom, op: Any, actor: str, op_id: str | None, skip_sid: str | None
    ) -> bytes:
        """Apply (checked by the core), persist, then broadcast. Caller holds room.lock."""
        room.captured.clear()
        room.doc.apply(op, actor)
        update = b"".join(room.captured) if len(room.captured) == 1 else self._merge(room)
        room.captured.clear()
        try:
            await self.backend.append(room.id, update, op_id)
        except Exception:
            # The live copy is ahead of what is stored: drop it and make everyone resync
            # from the store rather than keep a change nobody was told about.
            log.exception("relay: could not persist an update of %s; reloading it", room.id)
            await self._evict(room)
            raise
        room.log_seen += 1
        self.stats["ops"] += 1
        if op_id is not None:
            room.recent_ops[op_id] = None
            while len(room.recent_ops) > RECENT_OPS:
                room.recent_ops.popitem(last=False)
        await self.sio.emit("update", update, room=room.id, skip_sid=skip_sid, ignore_queue=True)
        return update

    @staticmethod
    def _merge(room: LiveRoom) -> bytes:
        from pycrdt import merge_updates

        return bytes(merge_updates(*room.captured))

    async def _evict(self, room: LiveRoom) -> None:
        self.rooms.pop(room.id, None)
        for t in room.leave_tasks.values():
            t.cancel()
        for sid in list(room.sessions):
            with contextlib.suppress(Exception):
                await self.sio.disconnect(sid, ignore_queue=True)

    async def _on_remote_update(self, room_id: str, update: bytes) -> None:
        if room_id in self._pending_remote:
            self._pending_remote[room_id].append(update)
            return
        room = self.rooms.get(room_id)
        if room is None:
            return
        async with room.lock:
            await self._merge_remote(room, update)

    async def _merge_remote(self, room: LiveRoom, update: bytes) -> None:
        room.captured.clear()
        room.doc.apply_update(update)
        room.captured.clear()
        room.log_seen += 1
        await self.sio.emit("update", update, room=room.id, ignore_queue=True)

    async def _reconcile_loop(self) -> None:
        """Redis pub/sub may drop a message; every few seconds, read what the log has beyond what we saw."""
        assert self._redis is not None
        while True:
            await asyncio.sleep(2.0)
            for room in list(self.rooms.values()):
                try:
                    length = await self._redis.log_length(room.id)
                    if length <= room.log_seen:
                        continue
                    async with room.lock:
                        missing = await self._redis.log_range(room.id, room.log_seen)
                        for u in missing:
                            await self._merge_remote(room, u)
                        room.log_seen = length
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("relay: reconciling %s with redis failed", room.id)

    # --- joining ----------------------------------------------------------------------

    async def _on_join(self, sid: str, data: Any) -> dict[str, Any]:
        sess = self.sessions.get(sid)
        if sess is None:
            raise ProtocolError("not connected")
        if sess.room_id is not None:
            raise ProtocolError(f"this connection already joined room {sess.room_id!r}; open another to join more")
        if not sess.join_bucket.take():
            raise RateLimited("too many join attempts on this connection; wait a few seconds")
        d = P.require_mapping(data, "join")
        room_id = check_id(d.get("room"), "room id")
        name = check_text(d.get("name"), "display name", MAX_NAME)
        pid = check_id(d.get("participant_id"), "participant id")
        key = P.require_str(d, "key", "participant key", 256, optional=True)
        colour = check_colour(d.get("colour") or "#888888")
        password = P.require_str(d, "password", "password", 256, optional=True)
        invite = P.require_str(d, "invite", "invite", 2048, optional=True)
        sv = P.require_bytes(d, "sv", "state vector", P.MAX_STATE_VECTOR, optional=True)

        # One join at a time may create a given room in this process; the others wait and join it.
        creating = self._creating.setdefault(room_id, asyncio.Lock())
        async with creating:
            room = await self._create_or_get(room_id, pid, name, colour, key, password)
        if self._creating.get(room_id) is creating and not creating.locked():
            del self._creating[room_id]  # later joins find the room loaded
        async with room.lock:
            role = Role.HOST
            meta = RoomMeta()
            if password:
                meta.password = await asyncio.to_thread(hash_password, password)
            if key:
                meta.keys[pid] = _key_hash(key)
        async with room.lock:
            if self.rooms.get(room.id) is not room:
                raise NetError(f"room {room.id!r} was being unloaded; join again")
            await self._admit(room, pid, name, colour, key, password, invite)
            sess.room_id = room.id
            sess.participant_id = pid
            room.sessions[sid] = sess
            task = room.leave_tasks.pop(pid, None)
            if task is not None:
                task.cancel()
            await self.sio.enter_room(sid, room.id)
            await self.sio.enter_room(sid, f"p:{room.id}:{pid}")
            await self.backend.connections(room.id, pid, +1)
            try:
                update = room.doc.update_since(sv) if sv else room.doc.update_since(None)
            except ValidationError:
                update = room.doc.update_since(None)
            role = room.role_of(pid) or Role.MEMBER
        return {
            "ok": True,
            "protocol": P.PROTOCOL_VERSION,
            "participant_id": pid,
            "role": role.value,
            "update": update,
            "sv": room.doc.state_vector(),
            "streams": list(room.streams.values()),
            "tick_hz": self.settings.tick_hz,
        }

    async def _create_or_get(
        self, room_id: str, pid: str, name: str, colour: str, key: str | None, password: str | None
    ) -> LiveRoom:
        """The live room, creating it (with the joiner as host) when no node has it."""
        room = await self._get_room(room_id)
        if room is not None:
            return room
        meta = RoomMeta()
        if password:
            meta.password = await asyncio.to_thread(hash_password, password)
        if key:
            meta.keys[pid] = _key_hash(key)
        doc = new_room(room_id, name=room_id, host_id=pid, host_name=name, colour=colour,
                       capacity=self.settings.capacity)
        if room_id in self.rooms:  # loaded meanwhile (another node's update arrived)
            return self.rooms[room_id]
        if await self.backend.create(room_id, doc.update_since(None), meta):
            return self._install(room_id, doc, meta, 1)
        room = await self._get_room(room_id)  # another node created it first
        if room is None:
            raise NotFound(f"room {room_id!r} could not be created or loaded")
        return room

    async def _admit(
        self, room: LiveRoom, pid: str, name: str, colour: str, key: str | None, password: str | None, invite: str | None
    ) -> None:
        """Check the joiner's right to enter, then apply their Join (caller holds room.lock)."""
        meta = room.meta
        if pid in meta.kicked:
            raise JoinRefused(f"you were removed from room {room.id!r} by its host")
        known_key = meta.keys.get(pid)
        if known_key is not None and (key is None or _key_hash(key) != known_key):
            raise JoinRefused(f"participant id {pid!r} is already taken in room {room.id!r}")
        existing = room.doc.snapshot().participants.get(pid)
        returning = known_key is not None or existing is not None or pid in meta.roles
        granted: Role = Role.MEMBER
        if invite:
            granted = verify_invite(self._secret, token_from_link(invite), room.id).role
        elif meta.password is not None and not (returning and known_key is not None):
            if not password:
                raise JoinRefused(f"room {room.id!r} needs a password or an invite")
            if not await asyncio.to_thread(check_password, password, meta.password):
                raise JoinRefused(f"wrong password for room {room.id!r}")
        if existing is not None:
            role = existing.role
        elif pid in meta.roles:
            role = Role(meta.roles[pid])
        else:
            role = granted
        try:
            if existing is None or existing.name != name or existing.colour != colour:
                await self._apply_and_send(room, Join(pid, name, colour, role), SYSTEM, None, None)
        except PermissionDenied as exc:
            raise JoinRefused(str(exc)) from None
        if key and known_key is None:
            meta.keys[pid] = _key_hash(key)
            await self.backend.save_meta(room.id, meta)

    async def _on_sync(self, sid: str, data: Any) -> dict[str, Any]:
        """What the client's state vector lacks (clients may ask at any time)."""
        _, room = self._joined(sid)
        sv = P.require_bytes(P.require_mapping(data, "sync"), "sv", "state vector", P.MAX_STATE_VECTOR)
        async with room.lock:
            return {"ok": True, "update": room.doc.update_since(sv)}

    # --- operations -------------------------------------------------------------------

    async def _on_op(self, sid: str, data: Any) -> dict[str, Any]:
        sess, room = self._joined(sid)
        if not sess.op_bucket.take():
            raise RateLimited(
                f"too many operations: at most {self.settings.op_rate[0]:g}/s (bursts of {self.settings.op_rate[1]:g})"
            )
        d = P.require_mapping(data, "op message")
        op_id = P.require_str(d, "id", "operation id", 128)
        assert op_id is not None
        raw = d.get("op")
        if P.payload_size(raw) > P.MAX_OP_BYTES:
            raise ProtocolError(f"an operation is at most {P.MAX_OP_BYTES} bytes")
        op = parse_operation(raw)
        pid = sess.participant_id
        assert pid is not None
        async with room.lock:
            if op_id in room.recent_ops or await self.backend.op_applied(room.id, op_id):
                return {"ok": True, "duplicate": True}
            update = await self._apply_and_send(room, op, pid, op_id, sid)
        return {"ok": True, "update": update}

    # --- presence ---------------------------------------------------------------------

    async def _on_pose_ack(self, sid: str, count: Any = None, *extra: Any) -> None:
        sess = self.sessions.get(sid)
        if sess is not None:
            self._ack_batches(sess, count)

    @staticmethod
    def _ack_batches(sess: Session, count: Any) -> None:
        # Cumulative count of batches the client has read; never beyond what was sent.
        if isinstance(count, int) and not isinstance(count, bool) and sess.batches_acked < count <= sess.batches_sent:
            sess.batches_acked = count

    async def _on_pose(self, sid: str, data: Any = None, *extra: Any) -> None:
        sess = self.sessions.get(sid)
        if sess is None or sess.room_id is None or sess.participant_id is None:
            return
        if extra:
            self._ack_batches(sess, extra[0])
        room = self.rooms.get(sess.room_id)
        if room is None:
            return
        if not sess.pose_bucket.take():
            await self._warn(sess, RateLimited(f"too many poses: at most {self.settings.pose_rate[0]:g}/s; extra poses are dropped"))
            return
        try:
            data = P.unpack_binary(data, P.MAX_POSE_BYTES, "a pose (deeproom.presence encoding)")
            decode_pose(data)
        except ValidationError as exc:
            await self._warn(sess, exc)
            return
        self.stats["poses_in"] += 1
        room.poses[sess.participant_id] = (bytes(data), time.monotonic())
        room.changed.add(sess.participant_id)

    def _backed_up(self, sid: str) -> bool:
        try:
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
            sock = self.sio.eio.sockets.get(eio_sid)
            return sock is not None and sock.queue.qsize() > self.settings.backed_up_packets
        except Exception:
            return False

    async def _presence_loop(self) -> None:
        period = 1.0 / self.settings.tick_hz
        next_tick = time.monotonic()
        while True:
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_tick = time.monotonic()  # fell behind: do not burst to catch up
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("relay: presence tick failed")

    async def _evict_idle_rooms(self) -> None:
        """Forget rooms nobody is in (their log is compacted first), so memory stays flat."""
        for room in list(self.rooms.values()):
            if room.sessions or room.leave_tasks or room.lock.locked() or room.id in self._room_loads:
                continue
            if time.monotonic() - room.idle_since < self.settings.idle_room_s:
                continue
            self.rooms.pop(room.id, None)
            try:
                await self.backend.compact(room.id)
            except Exception:
                log.exception("relay: compacting %s failed (its log stays as it is)", room.id)

    async def _tick(self) -> None:
        now = time.monotonic()
        self._ticks += 1
        if self._ticks % max(1, int(self.settings.tick_hz * min(10.0, self.settings.idle_room_s))) == 0:
            await self._evict_idle_rooms()
        stale = now - self.settings.stale_pose_s
        wall = time.time()
        for room in list(self.rooms.values()):
            if room.sessions:
                room.idle_since = now
            if not room.sessions and not room.poses:
                continue
            for table in (room.poses, room.remote_poses):
                for pid in [p for p, (_, t) in table.items() if t < stale]:
                    del table[pid]
            keyframe = now - room.last_keyframe >= self.settings.keyframe_s
            if keyframe:
                room.last_keyframe = now
            local = {pid: room.poses[pid][0] for pid in room.changed if pid in room.poses}
            room.changed.clear()
            if self._redis is not None and local:
                await self._redis.publish("poses", room.id.encode() + b"|" + encode_batch(local, wall))
            if keyframe:
                batch_poses = {pid: raw for pid, (raw, _) in room.remote_poses.items()}
                batch_poses.update({pid: raw for pid, (raw, _) in room.poses.items()})
            else:
                batch_poses = {pid: raw for pid, (raw, t) in room.remote_poses.items() if t >= now - 1.5 / self.settings.tick_hz}
                batch_poses.update(local)
            if not batch_poses or not room.sessions:
                continue
            limit = self.settings.max_unacked_batches
            skip = [
                sid for sid, sess in room.sessions.items()
                if sess.batches_sent - sess.batches_acked > limit or self._backed_up(sid)
            ]
            for sid, sess in room.sessions.items():
                if sid not in skip:
                    sess.batches_sent += 1
            # What every recipient should get this tick (others' poses), skipped ones included:
            # the benchmark's delivered ratio is measured against this.
            self.stats["entries_scheduled"] += sum(
                len(batch_poses) - (s.participant_id in batch_poses) for s in room.sessions.values()
            )
            self.stats["skipped_backed_up"] += len(skip)
            batch = encode_batch(batch_poses, wall)
            self.stats["batches_out"] += len(room.sessions) - len(skip)
            await self.sio.emit("poses", batch, room=room.id, skip_sid=skip or None, ignore_queue=True)

    async def _on_remote_message(self, channel: str, data: bytes) -> None:
        if channel != "poses":
            return
        room_id, batch = data.split(b"|", 1)
        room = self.rooms.get(room_id.decode())
        if room is None:
            return
        now = time.monotonic()
        for pid, raw in split_batch(batch).items():
            room.remote_poses[pid] = (raw, now)

    # --- events -----------------------------------------------------------------------

    async def _on_event(self, sid: str, data: Any) -> dict[str, Any]:
        sess, room = self._joined(sid)
        if not sess.event_bucket.take():
            raise RateLimited(f"too many events: at most {self.settings.event_rate[0]:g}/s")
        d = P.require_mapping(data, "event")
        kind = P.require_str(d, "kind", "event kind", 32)
        if kind not in P.EVENT_KINDS:
            raise ProtocolError(f"unknown event kind {kind!r}; allowed: {', '.join(P.EVENT_KINDS)}")
        payload = P.check_payload(d.get("payload"), P.MAX_EVENT_BYTES[kind], kind)
        to = d.get("to")
        pid = sess.participant_id
        assert pid is not None
        role = room.role_of(pid)
        if role is None:
            raise PermissionDenied(f"{pid!r} is not in room {room.id!r}")
        message = {"kind": kind, "sender": pid, "payload": payload}
        if kind in ("signal", "steer"):
            target = check_id(to, "event target (participant id)")
            if kind == "steer" and role not in _MEMBER_UP:
                raise PermissionDenied("viewers cannot steer training; members, presenters and hosts can")
            if target not in room.doc.snapshot().participants:
                raise NotFound(f"no participant {target!r} in room {room.id!r}")
            await self.sio.emit("event", message, room=f"p:{room.id}:{target}")
        elif kind == "stream":
            if role not in _MEMBER_UP:
                raise PermissionDenied("viewers cannot stream into panels; members, presenters and hosts can")
            panel, channel = payload.get("panel_id"), payload.get("channel", "")
            if isinstance(panel, str) and isinstance(channel, str):
                k = (panel, channel)
                room.streams.pop(k, None)
                room.streams[k] = message
                while len(room.streams) > MAX_STREAMS_PER_ROOM:
                    room.streams.popitem(last=False)
            await self.sio.emit("event", message, room=room.id, skip_sid=sid)
        else:  # summon
            if role not in _RUNS_ROOM:
                raise PermissionDenied(f"only host or presenter may summon; {pid!r} is {role.value}")
            await self.sio.emit("event", message, room=room.id, skip_sid=sid)
        return {"ok": True}

    async def _on_unknown(self, event: str, sid: str, *data: Any) -> dict[str, Any]:
        sess = self.sessions.get(sid)
        err = ProtocolError(f"unknown event {str(event)[:40]!r}")
        if sess is not None:
            await self._warn(sess, err)
        return {"ok": False, "error": error_to_wire(err)}

    # --- host actions -----------------------------------------------------------------

    async def _on_invite(self, sid: str, data: Any) -> dict[str, Any]:
        sess, room = self._joined(sid)
        assert sess.participant_id is not None
        if room.role_of(sess.participant_id) is not Role.HOST:
            raise PermissionDenied("only the host creates invites")
        d = P.require_mapping(data or {}, "invite")
        role_raw = d.get("role", "member")
        try:
            role = Role(role_raw)
        except ValueError:
            raise ValidationError(f"invite role must be presenter, member or viewer; got {role_raw!r:.40}") from None
        ttl = d.get("ttl", 7 * 86400)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise ValidationError("invite ttl is a number of seconds")
        return {"ok": True, "token": make_invite(self._secret, room.id, role, float(ttl))}

    async def _on_kick(self, sid: str, data: Any) -> dict[str, Any]:
        sess, room = self._joined(sid)
        host = sess.participant_id
        assert host is not None
        target = check_id(P.require_mapping(data, "kick").get("participant_id"), "participant id")
        async with room.lock:
            if room.role_of(host) is not Role.HOST:
                raise PermissionDenied("only the host may kick participants")
            if target == host:
                raise ValidationError("the host cannot kick themselves")
            if target not in room.doc.snapshot().participants:
                raise NotFound(f"no participant {target!r} in room {room.id!r}")
            if target not in room.meta.kicked:
                room.meta.kicked.append(target)
                await self.backend.save_meta(room.id, room.meta)
            await self._apply_and_send(room, Leave(target), host, None, None)
        await self.sio.emit("kicked", {"message": f"the host removed you from room {room.id!r}"}, room=f"p:{room.id}:{target}")
        for other in [s for s in room.sessions.values() if s.participant_id == target]:
            room.sessions.pop(other.sid, None)
            other.room_id = other.participant_id = None
            with contextlib.suppress(Exception):
                await self.sio.disconnect(other.sid)
        room.poses.pop(target, None)
        return {"ok": True}

    async def _on_set_password(self, sid: str, data: Any) -> dict[str, Any]:
        sess, room = self._joined(sid)
        assert sess.participant_id is not None
        if room.role_of(sess.participant_id) is not Role.HOST:
            raise PermissionDenied("only the host sets the room password")
        password = P.require_str(P.require_mapping(data, "set_password"), "password", "password", 256, optional=True)
        record = await asyncio.to_thread(hash_password, password) if password else None
        async with room.lock:
            room.meta.password = record
            await self.backend.save_meta(room.id, room.meta)
        return {"ok": True}

    # --- blobs ------------------------------------------------------------------------

    async def _on_blob_begin(self, sid: str, data: Any) -> dict[str, Any]:
        sess, _ = self._joined(sid)
        d = P.require_mapping(data, "blob_begin")
        sha = check_blob_id(d.get("sha"))
        size = P.require_int(d, "size", "blob size", 0, 1 << 40)
        if await self._have_blob(sha):
            return {"ok": True, "have": True}
        if sha in sess.uploads:
            sess.uploads.pop(sha).abort()
        if len(sess.uploads) >= P.MAX_UPLOADS_PER_CLIENT:
            raise RateLimited(f"at most {P.MAX_UPLOADS_PER_CLIENT} uploads at once per client")
        sess.uploads[sha] = self.blobs.begin_upload(sha, size)
        return {"ok": True, "have": False, "chunk": P.BLOB_CHUNK}

    async def _on_blob_chunk(self, sid: str, data: Any) -> dict[str, Any]:
        sess, _ = self._joined(sid)
        d = P.require_mapping(data, "blob_chunk")
        sha = check_blob_id(d.get("sha"))
        up = sess.uploads.get(sha)
        if up is None:
            raise NotFound(f"no upload of blob {sha[:12]} in progress; send blob_begin first")
        offset = P.require_int(d, "offset", "chunk offset", 0, up.size)
        chunk = P.require_bytes(d, "data", "chunk", P.MAX_BLOB_CHUNK)
        assert chunk is not None
        if offset != up.received:
            raise ValidationError(f"blob {sha[:12]}: expected the chunk at offset {up.received}, got {offset}")
        try:
            up.write(chunk)
        except ValidationError:
            sess.uploads.pop(sha, None)
            up.abort()
            raise
        return {"ok": True, "received": up.received}

    async def _on_blob_end(self, sid: str, data: Any) -> dict[str, Any]:
        sess, _ = self._joined(sid)
        sha = check_blob_id(P.require_mapping(data, "blob_end").get("sha"))
        up = sess.uploads.pop(sha, None)
        if up is None:
            raise NotFound(f"no upload of blob {sha[:12]} in progress")
        try:
            await asyncio.to_thread(up.commit)
        finally:
            up.abort()
        if self._redis is not None:
            await self._share_blob(sha)
        return {"ok": True}

    async def _have_blob(self, sha: str) -> bool:
        if self.blobs.has(sha):
            return True
        if self._redis is not None:
            return bool(await self._redis.client.exists(self._redis.prefix + "blob:" + sha))
        return False

    async def _share_blob(self, sha: str) -> None:
        """Put a blob where other nodes can fetch it (Redis mode)."""
        assert self._redis is not None
        data = await asyncio.to_thread(self.blobs.get, sha)
        await self._redis.client.set(self._redis.prefix + "blob:" + sha, data, nx=True)

    async def _blob_bytes(self, sha: str) -> bytes:
        cached = self._blob_cache.get(sha)
        if cached is not None:
            self._blob_cache.move_to_end(sha)
            return cached
        try:
            data = await asyncio.to_thread(self.blobs.get, sha)
        except NotFound:
            if self._redis is None:
                raise
            found = await self._redis.client.get(self._redis.prefix + "blob:" + sha)
            if found is None:
                raise
            data = bytes(found)
            await asyncio.to_thread(self.blobs.put, data, sha)
        if len(data) <= self.settings.blob_cache_bytes // 4:
            self._blob_cache[sha] = data
            self._blob_cache_bytes += len(data)
            while self._blob_cache_bytes > self.settings.blob_cache_bytes:
                _, old = self._blob_cache.popitem(last=False)
                self._blob_cache_bytes -= len(old)
        return data

    async def _on_blob_get(self, sid: str, data: Any) -> dict[str, Any]:
        self._joined(sid)
        d = P.require_mapping(data, "blob_get")
        sha = check_blob_id(d.get("sha"))
        offset = P.require_int(d, "offset", "offset", 0, 1 << 40)
        length = P.require_int(d, "length", "length", 1, P.MAX_BLOB_CHUNK)
        blob = await self._blob_bytes(sha)
        return {"ok": True, "size": len(blob), "data": blob[offset : offset + length]}


async def serve_forever(settings: RelaySettings, ready: Callable[[RelayServer], None] | None = None) -> None:
    """Run a relay until cancelled (the `deeproom serve` command)."""
    async with RelayServer(settings) as relay:
        if ready is not None:
            ready(relay)
        await asyncio.Event().wait()
