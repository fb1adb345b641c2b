"""`RoomClient`: what scenes and user scripts use to be in a room on a relay.

The client's `doc` mirrors the relay's copy of the room exactly: it applies only
updates that come from the relay, never its own edits directly. `apply(op)` sends the
operation with an id (`<client>:<seq>`) and returns when the relay has checked,
stored and acknowledged it (with the update, already merged into `doc`), or raises the
relay's refusal (`PermissionDenied`, `ValidationError`, `NotFound`, ...).

Connections drop: the client reconnects by itself with growing, jittered delays,
sends its state vector and receives only what it lacks, then resends, in order,
every operation not yet acknowledged. The relay recognises ids it already applied,
so nothing is applied twice and nothing made offline is lost; an operation the
room no longer allows is refused with a reason (its `apply` raises, and
`on_refused` callbacks hear about it).

Poses are fire-and-forget, latest wins; blobs are uploaded once (the relay answers
"have it" for content it already stores) and cached after the first fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import socketio

from deeproom.document import RoomChange, RoomDocument, Subscription
from deeproom.errors import DeepRoomError, NotFound, ValidationError
from deeproom.layout import (
    Layout,
    LayoutLoaded,
    dumps_layout,
    loads_layout,
    read_layout_file,
    write_layout_file,
)
from deeproom.net import protocol as P
from deeproom.net.auth import token_from_link
from deeproom.net.errors import (
    ClientClosed,
    ConnectionLost,
    JoinRefused,
    NetError,
    ProtocolError,
    error_from_wire,
)
from deeproom.net.layout_wire import info_from_wire, loaded_from_wire
from deeproom.net.lru import ByteLRU
from deeproom.net.ratelimit import TokenBucket
from deeproom.net.sio_client import RelaySocketClient
from deeproom.ops import parse_operation
from deeproom.presence import Pose, decode_batch, encode_pose
from deeproom.state import Role, Room, check_id
from deeproom.storage import BlobStore, LayoutInfo, check_blob_id, sha256_hex

_COMPACT_POSE = bytes((P.COMPACT_POSE,))

log = logging.getLogger(__name__)

PoseCallback = Callable[[dict[str, Pose]], None]
EventCallback = Callable[[str, dict[str, Any]], None]


@dataclass(slots=True)
class _PendingOp:
    op_id: str
    op: dict[str, Any]
    future: asyncio.Future[Room]


class _Listeners:
    """Callbacks with unsubscribe handles; one failing callback does not stop the others."""

    def __init__(self) -> None:
        self._items: list[Callable[..., None]] = []

    def add(self, cb: Callable[..., None]) -> Callable[[], None]:
        self._items.append(cb)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._items.remove(cb)

        return remove

    def __call__(self, *args: Any) -> None:
        for cb in list(self._items):
            try:
                cb(*args)
            except Exception:
                log.exception("room client callback failed")


class RoomClient:
    """A participant in one room on a relay. `async with RoomClient(url, room=..., name=...) as c:`."""

    def __init__(
        self,
        url: str,
        room: str,
        name: str,
        password: str | None = None,
        invite: str | None = None,
        participant_id: str | None = None,
        *,
        participant_key: str | None = None,
        colour: str | None = None,
        create_token: str | None = None,
        cache_dir: str | Path | None = None,
        cache_bytes: int = 256 * 1024 * 1024,
        connect_timeout: float = 15.0,
        backoff: tuple[float, float] = (0.2, 5.0),
        op_rate: tuple[float, float] = (150.0, 300.0),
        pose_hz_max: float = 50.0,
    ) -> None:
        self.url = url
        self.room_id = check_id(room, "room id")
        self.name = name
        self.password = password
        self.invite = token_from_link(invite) if invite else None
        if participant_id is None:
            participant_id = "p-" + secrets.token_hex(6)
            participant_key = participant_key or secrets.token_urlsafe(24)
        self.participant_id = check_id(participant_id, "participant id")
        self.participant_key = participant_key
        self.colour = colour
        self.create_token = create_token
        self.doc = RoomDocument(self.room_id)
        self.role: Role | None = None
        self.connected = False
        self.errors: deque[DeepRoomError] = deque(maxlen=100)
        self.poses: dict[str, Pose] = {}
        self._pose_seen: dict[str, float] = {}
        self._batches_read = 0
        self._acked_at = 0.0
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._op_bucket = TokenBucket(*op_rate)
        self._pose_interval = 1.0 / pose_hz_max
        self._client_tag = secrets.token_hex(4)
        self._seq = 0
        self._pending: OrderedDict[str, _PendingOp] = OrderedDict()
        self._outbox: deque[str] = deque()
        self._pump_task: asyncio.Task[None] | None = None
        self._sio: socketio.AsyncClient | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._pose_task: asyncio.Task[None] | None = None
        self._pose_latest: bytes | None = None
        self._pose_wake: asyncio.Event | None = None
        self._compact_pose = False
        """Whether this relay takes compact poses (its join ack says so)."""
        self._joined_once: asyncio.Future[None] | None = None
        self._live: asyncio.Event | None = None
        self._lost = asyncio.Event()
        self._closed = False
        self._stopped_reason: DeepRoomError | None = None
        self._pose_listeners = _Listeners()
        self._event_listeners: dict[str, _Listeners] = {}
        self._refused_listeners = _Listeners()
        self._error_listeners = _Listeners()
        self._status_listeners = _Listeners()
        self._blob_cache = ByteLRU(cache_bytes)
        self._disk = BlobStore(cache_dir) if cache_dir is not None else None
        self._fetches: dict[str, asyncio.Future[bytes]] = {}
        self.tick_hz = 30.0
        self.sfu_url: str | None = None
        """The voice SFU the relay announced in its join ack (None: it has none)."""
        self.stats = {"reconnects": 0, "batches": 0, "ops_acked": 0, "ops_refused": 0}

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> RoomClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and join; returns once joined (raises JoinRefused or ConnectionLost)."""
        if self._supervisor is not None:
            return
        loop = asyncio.get_running_loop()
        self._joined_once = loop.create_future()
        self._live = asyncio.Event()
        self._pose_wake = asyncio.Event()
        self._supervisor = asyncio.create_task(self._run(), name=f"room-client-{self.participant_id}")
        self._pose_task = asyncio.create_task(self._send_poses())
        try:
            await asyncio.wait_for(asyncio.shield(self._joined_once), self._connect_timeout)
        except TimeoutError:
            await self.close()
            raise ConnectionLost(f"could not join room {self.room_id!r} at {self.url} within {self._connect_timeout:g} s") from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Leave the connection (the relay keeps you in the room for a grace period). Safe twice."""
        if self._closed:
            return
        self._closed = True
        sio = self._sio
        if sio is not None:
            await _quietly(sio.disconnect())
        for task in (self._supervisor, self._pose_task, self._pump_task):
            if task is not None:
                task.cancel()
        for task in (self._supervisor, self._pose_task, self._pump_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(ClientClosed(f"client closed before operation {p.op.get('op')!r} was acknowledged"))
                p.future.exception()
        self._pending.clear()
        for fut in self._fetches.values():
            if not fut.done():
                fut.cancel()
        self.connected = False
        self._status_listeners("closed")

    @property
    def room(self) -> Room:
        """The room as the relay last confirmed it."""
        return self.doc.snapshot()

    @property
    def pending(self) -> int:
        """Operations sent (or waiting to be sent) but not yet acknowledged."""
        return len(self._pending)

    async def _run(self) -> None:
        delay = self._backoff[0]
        assert self._joined_once is not None and self._live is not None
        while not self._closed:
            sio = RelaySocketClient(reconnection=False, request_timeout=10)
            self._sio = sio
            self._lost = asyncio.Event()
            self._batches_read = 0
            sio.on("update", self._on_update)
            sio.on("poses", self._on_poses)
            sio.on("event", self._on_event)
            sio.on("error", self._on_error)
            sio.on("kicked", self._on_kicked)
            try:
                await sio.connect(self.url, transports=["websocket"], wait_timeout=10)
                ack = await sio.call("join", self._join_message(), timeout=30)
                if not isinstance(ack, dict) or not ack.get("ok"):
                    err = error_from_wire(ack.get("error") if isinstance(ack, dict) else ack)
                    if isinstance(err, JoinRefused | ValidationError):
                        self._stop(err)
                        return
                    raise err
                if isinstance(ack.get("key"), str) and self.participant_key is None:
                    self.participant_key = ack["key"]  # the relay bound our id to this key; rejoin with it
                self.doc.apply_update(ack["update"])
                self._check_not_ahead(ack.get("sv"))
                self.role = Role(ack.get("role", "member"))
                self.tick_hz = float(ack.get("tick_hz", 30.0))
                self._compact_pose = ack.get("compact_pose") is True
                sfu = ack.get("sfu")
                self.sfu_url = sfu if isinstance(sfu, str) and sfu.startswith(("http://", "https://")) and len(sfu) <= 2048 else None
                for message in ack.get("streams", []):
                    self._on_event(message)
                self.connected = True
                delay = self._backoff[0]
                # Everything not yet acknowledged goes again, in the order it was made.
                self._outbox = deque(self._pending)
                self._live.set()
                self._kick_pump()
                if not self._joined_once.done():
                    self._joined_once.set_result(None)
                else:
                    self.stats["reconnects"] += 1
                self._status_listeners("connected")
                await sio.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("room client %s: connection failed: %r", self.participant_id, exc)
            finally:
                self._live.clear()
                self._lost.set()
                was = self.connected
                self.connected = False
                if not self._closed:
                    await _quietly(sio.disconnect())
                if was and not self._closed:
                    self._status_listeners("disconnected")
            if self._closed or self._stopped_reason is not None:
                return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self._backoff[1])

    def _check_not_ahead(self, relay_sv: Any) -> None:
        """A copy holding changes the relay lacks means the relay lost its store: say so loudly.

        Compared by state vectors: this copy is ahead only if, for some writer, it has seen
        more of their changes than the relay. (A diff against the relay's state vector is
        no test: it always carries the delete set, so it is never empty once anything was
        deleted or overwritten, e.g. after a panel was moved.)
        """
        if not isinstance(relay_sv, bytes):
            return
        try:
            relay_clocks = P.decode_state_vector(relay_sv)
            mine = P.decode_state_vector(self.doc.state_vector())
        except ProtocolError:
            return
        if any(clock > relay_clocks.get(client, 0) for client, clock in mine.items()):
            err = NetError(
                f"the relay's copy of room {self.room_id!r} lacks changes this client saw (was its store lost "
                "or restored from a backup?); this client's view may show things the room no longer has"
            )
            self.errors.append(err)
            self._error_listeners(err)

    def _join_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "room": self.room_id,
            "name": self.name,
            "participant_id": self.participant_id,
            "sv": self.doc.state_vector(),
        }
        for key, value in (("key", self.participant_key), ("colour", self.colour),
                           ("password", self.password), ("invite", self.invite),
                           ("create_token", self.create_token)):
            if value is not None:
                msg[key] = value
        return msg

    def _stop(self, reason: DeepRoomError) -> None:
        """The relay will not have us (refused join, kicked): stop reconnecting and fail what waits."""
        self._stopped_reason = reason
        if self._joined_once is not None and not self._joined_once.done():
            self._joined_once.set_exception(reason)
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(reason)
                p.future.exception()
        self._pending.clear()
        self.errors.append(reason)
        self._error_listeners(reason)
        self._status_listeners("refused")

    # --- state ------------------------------------------------------------------------

    def observe(self, callback: Callable[[RoomChange], None]) -> Subscription:
        """Call `callback(RoomChange)` after every change the relay confirms."""
        return self.doc.observe(callback)

    async def apply(self, op: dict[str, Any] | Any) -> Room:
        """Send an operation; returns the room once the relay stored it, or raises its refusal.

        While disconnected, the operation waits and is sent after reconnecting.
        """
        return await self.submit(op)

    def submit(self, op: dict[str, Any] | Any) -> asyncio.Future[Room]:
        """Queue an operation without waiting; the future resolves as `apply` would return."""
        if self._closed:
            raise ClientClosed("the room client is closed")
        if self._stopped_reason is not None:
            raise self._stopped_reason
        parsed = parse_operation(op) if isinstance(op, dict) else op
        data = parsed.to_dict()  # checked here so a malformed op fails at once, not after a round trip
        self._seq += 1
        op_id = f"{self.participant_id}:{self._client_tag}:{self._seq}"
        fut: asyncio.Future[Room] = asyncio.get_running_loop().create_future()
        self._pending[op_id] = _PendingOp(op_id, data, fut)
        if self._live is not None and self._live.is_set():
            self._outbox.append(op_id)
            self._kick_pump()
        return fut

    def _kick_pump(self) -> None:
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        assert self._live is not None
        while self._outbox and self._live.is_set():
            wait = self._op_bucket.wait_time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            op_id = self._outbox[0]
            pending = self._pending.get(op_id)
            if pending is None:
                self._outbox.popleft()
                continue
            sio = self._sio
            if sio is None:
                return
            self._op_bucket.take()
            self._outbox.popleft()
            try:
                await sio.emit("op", {"id": op_id, "op": pending.op}, callback=lambda ack, i=op_id: self._on_op_ack(i, ack))
            except Exception:
                return  # disconnected; the reconnect resends it

    def _on_op_ack(self, op_id: str, ack: Any) -> None:
        pending = self._pending.pop(op_id, None)
        if pending is None:
            return
        if isinstance(ack, dict) and ack.get("ok"):
            update = ack.get("update")
            if update:
                self.doc.apply_update(update)
            self.stats["ops_acked"] += 1
            if not pending.future.done():
                pending.future.set_result(self.doc.snapshot())
            return
        err = error_from_wire(ack.get("error") if isinstance(ack, dict) else ack)
        self.stats["ops_refused"] += 1
        if not pending.future.done():
            pending.future.set_exception(err)
        self._refused_listeners(pending.op, err)

    def on_refused(self, callback: Callable[[dict[str, Any], DeepRoomError], None]) -> Callable[[], None]:
        """Hear about every refused operation (also those replayed after a reconnect)."""
        return self._refused_listeners.add(callback)

    def _on_update(self, data: Any) -> None:
        if isinstance(data, bytes | bytearray):
            try:
                self.doc.apply_update(bytes(data))
            except ValidationError:
                log.warning("room client: relay sent an unreadable update")

    async def sync(self) -> None:
        """Ask the relay for anything this copy lacks (normally not needed)."""
        ack = await self._call("sync", {"sv": self.doc.state_vector()})
        self.doc.apply_update(ack["update"])

    # --- presence ---------------------------------------------------------------------

    def publish_pose(self, pose: Pose) -> None:
        """Send this participant's pose; only the latest is kept if sending lags. Never blocks."""
        self._pose_latest = encode_pose(pose)
        if self._pose_wake is not None:
            self._pose_wake.set()

    async def _send_poses(self) -> None:
        assert self._pose_wake is not None
        last = 0.0
        while True:
            await self._pose_wake.wait()
            self._pose_wake.clear()
            gap = last + self._pose_interval - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            data, self._pose_latest = self._pose_latest, None
            sio = self._sio
            if data is None or sio is None or not self.connected:
                continue
            try:
                # A backed-up socket gets no more poses: a stale one is worth nothing.
                if sio.eio.queue is not None and sio.eio.queue.qsize() > 4:
                    continue
                if self._compact_pose:
                    # one binary Engine.IO message, no Socket.IO packet (docs/protocol.md §8)
                    await sio.eio.send(_COMPACT_POSE + (self._batches_read & 0xFFFFFFFF).to_bytes(4, "little") + data)
                else:  # a relay that predates the compact form
                    await sio.emit("pose", (data, self._batches_read))
                last = time.monotonic()
                self._acked_at = last
            except Exception:
                continue

    def on_poses(self, callback: PoseCallback) -> Callable[[], None]:
        """`callback({participant id: Pose})` for every presence batch (others' latest poses)."""
        return self._pose_listeners.add(callback)

    def _on_poses(self, data: Any) -> None:
        # Tell the relay how far we have read, so it stops sending while we lag behind.
        self._batches_read += 1
        now = time.monotonic()
        sio = self._sio
        if sio is not None and self._batches_read % 3 == 0 and now - self._acked_at > 0.08:
            self._acked_at = now
            asyncio.get_running_loop().create_task(_quietly(sio.emit("pa", self._batches_read)))
        try:
            _, batch = decode_batch(P.unpack_binary(data, 1 << 20, "pose batch"))
        except ValidationError:
            return
        batch.pop(self.participant_id, None)
        self.poses.update(batch)
        for pid in batch:
            self._pose_seen[pid] = now
        for pid in [p for p, t in self._pose_seen.items() if now - t > 2.0]:
            del self._pose_seen[pid]
            self.poses.pop(pid, None)
        self.stats["batches"] += 1
        self._pose_listeners(dict(self.poses))

    # --- events -----------------------------------------------------------------------

    async def send_event(self, kind: str, payload: dict[str, Any], to: str | None = None) -> None:
        """Send "signal" or "steer" to one participant (`to`), or "stream"/"summon" to the room."""
        if kind not in P.EVENT_KINDS:
            raise ValidationError(f"unknown event kind {kind!r}; allowed: {', '.join(P.EVENT_KINDS)}")
        msg: dict[str, Any] = {"kind": kind, "payload": payload}
        if to is not None:
            msg["to"] = to
        await self._call("event", msg, wait_connected=False)

    def on_event(self, kind: str, callback: EventCallback) -> Callable[[], None]:
        """`callback(sender id, payload)` for each event of `kind` sent to this participant or room."""
        return self._event_listeners.setdefault(kind, _Listeners()).add(callback)

    def _on_event(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        listeners = self._event_listeners.get(str(message.get("kind")))
        if listeners is not None:
            listeners(str(message.get("sender")), message.get("payload") or {})

    def on_error(self, callback: Callable[[DeepRoomError], None]) -> Callable[[], None]:
        """Errors the relay sent about things that have no reply (poses, unknown events), and refusals to stay."""
        return self._error_listeners.add(callback)

    def on_status(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """"connected", "disconnected", "refused" or "closed"."""
        return self._status_listeners.add(callback)

    def _on_error(self, data: Any) -> None:
        err = error_from_wire(data)
        self.errors.append(err)
        self._error_listeners(err)

    def _on_kicked(self, data: Any) -> None:
        message = data.get("message") if isinstance(data, dict) else None
        self._stop(JoinRefused(str(message or "removed from the room by its host")))
        sio = self._sio
        if sio is not None:
            asyncio.get_running_loop().create_task(sio.disconnect())

    # --- host actions -----------------------------------------------------------------

    async def create_invite(self, role: str = "member", ttl_s: float = 7 * 86400) -> str:
        """A signed invite token for this room (host only)."""
        ack = await self._call("invite", {"role": role, "ttl": ttl_s})
        return str(ack["token"])

    async def create_invite_link(self, role: str = "member", ttl_s: float = 7 * 86400) -> str:
        """A `deeproom://host:port/room?invite=...` link (host only)."""
        from deeproom.net.auth import invite_link

        return invite_link(self.url, self.room_id, await self.create_invite(role, ttl_s))

    async def kick(self, participant_id: str) -> None:
        """Remove someone from the room for good (host only)."""
        await self._call("kick", {"participant_id": participant_id})

    async def set_password(self, password: str | None) -> None:
        """Set or clear the room password (host only)."""
        await self._call("set_password", {"password": password})

    async def set_role(self, participant_id: str, role: str) -> Room:
        """Promote or demote someone (host only)."""
        return await self.apply({"op": "set_role", "participant_id": participant_id, "role": role})

    async def mute(self, participant_id: str, muted: bool = True) -> Room:
        return await self.apply({"op": "mute_participant", "participant_id": participant_id, "muted": muted})

    # --- layouts ----------------------------------------------------------------------

    async def save_layout(self, name: str) -> LayoutInfo:
        """Save the room's layout as the next version of `name` (host or presenter)."""
        ack = await self._call("layout", {"action": "save", "name": name})
        return info_from_wire(ack.get("version"), self.room_id)

    async def list_layouts(self) -> list[LayoutInfo]:
        """The room's saved layout versions, by name then version (anyone in the room)."""
        ack = await self._call("layout", {"action": "list"})
        versions = ack.get("versions")
        if not isinstance(versions, list):
            raise ProtocolError("the relay's layout list is not a list")
        return [info_from_wire(v, self.room_id) for v in versions]

    async def load_layout(self, name: str, version: int | None = None, *, prune: bool = False) -> LayoutLoaded:
        """Put the room's panels where a saved version has them (host or presenter), all or
        nothing; panels that no longer fit are listed in `not_loaded`. `prune` also removes
        panels the version lacks. When it returns, `room` shows the loaded layout."""
        ack = await self._call("layout", {"action": "load", "name": name, "version": version, "prune": prune})
        loaded = loaded_from_wire(ack)
        update = ack.get("update")
        if isinstance(update, bytes | bytearray) and update:
            self.doc.apply_update(bytes(update))
        return loaded

    async def export_layout(self, name: str | None = None, version: int | None = None, *,
                            path: str | os.PathLike[str] | None = None) -> Layout:
        """A saved version (or, without `name`, the room as it is now) as a checked `Layout`;
        with `path`, also written there as a layout file (docs/layout-format.md)."""
        ack = await self._call("layout", {"action": "export", "name": name, "version": version})
        text = ack.get("layout")
        if not isinstance(text, str):
            raise ProtocolError("the relay's layout export is not text")
        layout = await asyncio.to_thread(loads_layout, text, source="the relay's export")
        if path is not None:
            await asyncio.to_thread(write_layout_file, layout, path)
        return layout

    async def import_layout(self, source: str | os.PathLike[str] | Layout, name: str) -> LayoutInfo:
        """Store a layout file (or `Layout`) as the next version of `name` (host or presenter);
        checked here and again by the relay. Load it with `load_layout(name, info.version)`."""
        layout = source if isinstance(source, Layout) else await asyncio.to_thread(read_layout_file, source)
        sha = await self.put_blob(dumps_layout(layout).encode("utf-8"))
        ack = await self._call("layout", {"action": "import", "name": name, "blob": sha})
        return info_from_wire(ack.get("version"), self.room_id)

    # --- blobs ------------------------------------------------------------------------

    async def put_blob(self, data: bytes) -> str:
        """Upload `data` (once: the relay says when it already has it); returns its sha256 id."""
        data = bytes(data)
        sha = sha256_hex(data)
        for attempt in range(5):
            try:
                ack = await self._call("blob_begin", {"sha": sha, "size": len(data)})
                if not ack.get("have"):
                    for offset in range(0, len(data), P.BLOB_CHUNK):
                        await self._call("blob_chunk", {"sha": sha, "offset": offset, "data": data[offset : offset + P.BLOB_CHUNK]})
                    await self._call("blob_end", {"sha": sha})
                break
            except ConnectionLost:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)  # the relay dropped the partial upload; start again
        self._cache_put(sha, data)
        return sha

    async def get_blob(self, sha: str) -> bytes:
        """The blob's bytes, from the local cache or fetched once from the relay (checked against `sha`)."""
        check_blob_id(sha)
        cached = self._blob_cache.get(sha)
        if cached is not None:
            return cached
        if self._disk is not None and self._disk.has(sha):
            with contextlib.suppress(DeepRoomError):
                data = await asyncio.to_thread(self._disk.get, sha)
                self._cache_put(sha, data, disk=False)
                return data
        fut = self._fetches.get(sha)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._fetches[sha] = fut
            try:
                fut.set_result(await self._fetch(sha))
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()
                raise
            finally:
                self._fetches.pop(sha, None)
        return await asyncio.shield(fut)

    async def _fetch(self, sha: str) -> bytes:
        for attempt in range(5):
            try:
                parts: list[bytes] = []
                offset, size = 0, None
                while size is None or offset < size:
                    ack = await self._call("blob_get", {"sha": sha, "offset": offset, "length": P.BLOB_CHUNK})
                    size = int(ack["size"])
                    chunk = bytes(ack["data"])
                    if not chunk and offset < size:
                        raise ValidationError(f"relay sent an empty chunk of blob {sha[:12]}")
                    parts.append(chunk)
                    offset += len(chunk)
                data = b"".join(parts)
                if sha256_hex(data) != sha:
                    raise ValidationError(f"blob {sha[:12]} arrived damaged (sha256 mismatch)")
                self._cache_put(sha, data)
                return data
            except ConnectionLost:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)
        raise NotFound(f"blob {sha}")  # not reached

    def _cache_put(self, sha: str, data: bytes, disk: bool = True) -> None:
        if disk and self._disk is not None:
            with contextlib.suppress(DeepRoomError, OSError):
                self._disk.put(data, sha)
        self._blob_cache.put(sha, data)

    # --- plumbing ---------------------------------------------------------------------

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until joined (again); raises ConnectionLost after `timeout` seconds."""
        if self._stopped_reason is not None:
            raise self._stopped_reason
        if self._live is None:
            raise ConnectionLost("not connected; use `async with RoomClient(...)` or `await connect()`")
        try:
            await asyncio.wait_for(self._live.wait(), timeout)
        except TimeoutError:
            raise ConnectionLost(f"not reconnected to {self.url} within {timeout} s") from None

    async def _call(self, event: str, data: dict[str, Any], *, wait_connected: bool = True, timeout: float = 30.0) -> dict[str, Any]:
        if self._closed:
            raise ClientClosed("the room client is closed")
        if wait_connected:
            await self.wait_connected(timeout)
        sio = self._sio
        if sio is None or self._live is None or not self._live.is_set():
            raise ConnectionLost(f"not connected to {self.url}")
        lost = self._lost
        call = asyncio.ensure_future(sio.call(event, data, timeout=timeout))
        watch = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait((call, watch), return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                raise ConnectionLost(f"connection lost during {event}")
            ack = call.result()
        except socketio.exceptions.TimeoutError:
            raise ConnectionLost(f"relay did not answer {event} within {timeout} s") from None
        except socketio.exceptions.SocketIOError as exc:
            raise ConnectionLost(f"connection lost during {event}: {exc}") from None
        finally:
            for t in (call, watch):
                if not t.done():
                    t.cancel()
        if not isinstance(ack, dict):
            raise ConnectionLost(f"no answer to {event} (connection lost)")
        if not ack.get("ok"):
            raise error_from_wire(ack.get("error"))
        return ack


async def _quietly(aw: Any) -> None:
    """Await a library's close that may raise or be cancelled internally; re-raise only our own cancellation."""
    try:
        await aw
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:
        log.debug("ignored error while closing", exc_info=True)


def blob_id(data: bytes) -> str:
    """The id a blob with these bytes has (its sha256)."""
    return hashlib.sha256(data).hexdigest()
