"""The relay: one Socket.IO server (aiohttp, websocket only) serving many rooms.

This module is the wiring alone: it makes the Socket.IO server, turns each client
event into a call on the part of the relay whose job it is, and turns whatever that
part raises into a refusal ack for that client only. The parts live in
`deeproom.net.relay`:

- `rooms` (`RoomHub`): live copies of rooms; apply (checked by the core), persist, broadcast,
  merge other nodes' updates;
- `presence` (`Presence`): latest poses, one batch per room per tick;
- `blobs` (`BlobService`): chunked uploads and fetches, per-address upload quotas;
- `admission` (`Admission`): joins, room creation, invites, kicks, passwords, leaving, and the
  per-address quotas on them;
- `events`: signalling, training streams, steering, summons;
- `layouts` (`LayoutService`): saved layout versions per room, loaded into the live room at once;
- `wire` (`RelaySocketServer`): only the relay's own event names reach a handler.

With a Redis URL several relays serve the same rooms: rooms live in Redis
(`RedisBackend`, reached only through the backend), events between participants on
different nodes go through python-socketio's `AsyncRedisManager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web

from deeproom.errors import DeepRoomError, PermissionDenied
from deeproom.net import protocol as P
from deeproom.net.backend import RedisBackend, RoomBackend, SqliteBackend
from deeproom.net.errors import ProtocolError, RateLimited, TooLarge, error_to_wire
from deeproom.net.ratelimit import TokenBucket
from deeproom.net.recording import hooks as recording_hooks
from deeproom.net.recording.election import CHANNEL
from deeproom.net.relay.admission import Admission
from deeproom.net.relay.blobs import BlobService
from deeproom.net.relay.events import forward_event
from deeproom.net.relay.layouts import LayoutService
from deeproom.net.relay.presence import Presence, warn
from deeproom.net.relay.pubsub import RedisEventManager
from deeproom.net.relay.rooms import RoomHub, is_fatal
from deeproom.net.relay.settings import RelaySettings
from deeproom.net.relay.state import LiveRoom, Session
from deeproom.net.relay.wire import RelaySocketServer
from deeproom.net.web_serve import register_web

__all__ = ["RelayServer", "RelaySettings", "serve_forever"]

log = logging.getLogger(__name__)

RoomHandler = Callable[[Session, LiveRoom, Any], Awaitable[dict[str, Any]]]
SessionHandler = Callable[[Session, Any], Awaitable[dict[str, Any]]]


def _address(environ: Any) -> str:
    """The client's address (behind a reverse proxy: the proxy's, so all its clients share quotas)."""
    request = environ.get("aiohttp.request") if isinstance(environ, dict) else None
    remote = getattr(request, "remote", None)
    return str(remote) if remote else "unknown"


class RelayServer:
    """The relay. `async with RelayServer(settings) as relay: relay.url` (closing twice is safe)."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self._connections: Counter[str] = Counter()
        """Open sockets per client address."""
        self._closed = False
        self.backend: RoomBackend
        manager = None
        if settings.redis_url:
            self.backend = RedisBackend(settings.redis_url)
            manager = RedisEventManager(settings.redis_url, channel="deeproom-socketio")
        else:
            self.backend = SqliteBackend(settings.store_path, settings.data_dir / "relay-secret")
        self.sio = RelaySocketServer(
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
        self.sio.refuse = self._refuse_early
        self.sio.gate = self._gate
        self.sio.refusal_pause = self._refusal_pause
        self.sio.compact_pose = self._on_compact_pose
        self._penalty: dict[str, float] = {}
        """Addresses turned away until a monotonic time (a socket of theirs ran out of strikes)."""
        self._expelling: set[asyncio.Task[None]] = set()
        self._tarpit: Counter[str] = Counter()
        """Refused connections being held for half a second, per address."""
        self.stats = {"poses_in": 0, "compact_poses_in": 0, "batches_out": 0, "entries_scheduled": 0, "skipped_backed_up": 0, "ops": 0, "refused": 0,
                      "ticks": 0, "ticks_late_10ms": 0, "ticks_late_50ms": 0, "tick_late_total_ms": 0, "expelled": 0,
                      "connects_refused": 0, "dropped_ping_timeout": 0}
        self._secret = b""
        self.admission: Admission
        self.hub = RoomHub(settings, self.backend, self.sio, self.stats, lambda room: self.admission.on_loaded(room))
        self.admission = Admission(settings, self.hub, self.backend, self.sio, lambda: self._secret, lambda: self._closed)
        self.presence = Presence(settings, self.hub, self.backend, self.sio, self.stats)
        self.blob_service = BlobService(settings, self.backend)
        self.layouts = LayoutService(settings, self.hub, self.backend, self.blob_service)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.port = 0
        self._register()

    @property
    def rooms(self) -> dict[str, LiveRoom]:
        return self.hub.rooms

    @property
    def blobs(self) -> Any:
        """The relay's blob store (`deeproom.storage.BlobStore`)."""
        return self.blob_service.store

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
        if self.backend.shared:
            election = recording_hooks.attach(self.hub, self.blob_service.blob_bytes)  # one node records each room
            if isinstance(self.sio.manager, RedisEventManager):
                self.sio.manager.on_remote_emit = election.on_remote_emit
            await self.backend.start(self.hub.on_remote_update,
                                     recording_hooks.with_recording_messages(self.hub, self.presence.on_remote_message),
                                     channels=("poses", CHANNEL))
        self._secret = await self.backend.secret()
        app = web.Application(client_max_size=P.MAX_MESSAGE_BYTES)
        self.sio.attach(app)
        app.router.add_get("/health", self._health)
        register_web(app, self.settings.sfu_url)  # the browser client: /, /r/{room}, /web/deeproom.js
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
        self._tasks.append(asyncio.create_task(self.presence.loop(), name="relay-presence"))
        self._tasks.append(asyncio.create_task(self.hub.housekeeping_loop(), name="relay-housekeeping"))
        if self.backend.shared:
            self._tasks.append(asyncio.create_task(self.hub.reconcile_loop(), name="relay-reconcile"))
        log.info("relay listening on %s (%s; room creation %s)", self.url,
                 "redis " + str(self.settings.redis_url) if self.backend.shared else self.settings.store_path,
                 self.settings.room_creation)
        return self

    async def close(self) -> None:
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for room in self.hub.rooms.values():
            for t in room.leave_tasks.values():
                t.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.blob_service.close(self.sessions.values())
        # Say goodbye to every client first; otherwise aiohttp waits for open websockets.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sio.shutdown(), 5)
        await self.sio.end_background_tasks()  # each socket's pending ping, the ping-timeout service
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
        mgr = self.sio.manager
        if isinstance(mgr, socketio.AsyncRedisManager):
            with contextlib.suppress(Exception):
                if mgr.thread is not None:
                    mgr.thread.cancel()
        self.admission.close()
        await recording_hooks.detach(self.hub)  # its leases given up at once: another node takes over
        recording_hooks.stop_all()
        await self.backend.close()

    async def __aenter__(self) -> RelayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "time": time.time(), "rooms": len(self.hub.rooms), "clients": len(self.sessions), **self.stats}
        )

    # --- wiring -----------------------------------------------------------------------

    def _register(self) -> None:
        sio, a, b = self.sio, self.admission, self.blob_service
        sio.on("connect", self._on_connect)
        sio.on("disconnect", self._on_disconnect)
        sio.on("join", self._guard("join", a.join))
        sio.on("blob_get", self._guard("blob_get", lambda sess, data: b.get(data), joined=True))
        sio.on("blob_begin", self._guard("blob_begin", b.begin, joined=True))
        sio.on("blob_chunk", self._guard("blob_chunk", b.chunk, joined=True))
        sio.on("blob_end", self._guard("blob_end", b.end, joined=True))
        for name, room_handler in (
            ("op", self.hub.handle_op),
            ("event", lambda sess, room, data: forward_event(self.settings, self.sio, sess, room, data)),
            ("invite", a.invite),
            ("kick", a.kick),
            ("set_password", a.set_password),
            ("sync", lambda sess, room, data: self.hub.sync(room, data)),
            ("layout", self.layouts.handle),
        ):
            sio.on(name, self._guard_room(name, room_handler))
        sio.on("pose", self._on_pose)
        sio.on("pa", self._on_pose_ack)

    def _session(self, sid: str) -> Session:
        sess = self.sessions.get(sid)
        if sess is None:
            raise ProtocolError("not connected")
        return sess

    def _room_of(self, sess: Session) -> LiveRoom:
        if not sess.joined:
            raise PermissionDenied("join a room first")
        assert sess.room_id is not None
        return self.hub.require(sess.room_id)

    def _refusal(self, name: str, sid: str, exc: BaseException) -> dict[str, Any]:
        """The ack for a handler that raised: the refusal it meant, or a plain error for a bug."""
        if isinstance(exc, DeepRoomError):
            self._refused(self.sessions.get(sid), exc)
            return {"ok": False, "error": error_to_wire(exc)}
        # A bug (or a panic in a library) costs one refusal, not the relay.
        log.error("relay: %s from %s failed", name, sid, exc_info=exc)
        return {"ok": False, "error": {"type": "DeepRoomError", "message": f"relay error in {name}: {type(exc).__name__}"}}

    def _guard(self, name: str, handler: SessionHandler, *, joined: bool = False) -> Callable[..., Awaitable[dict[str, Any]]]:
        async def guarded(sid: str, *args: Any) -> dict[str, Any]:
            try:
                if len(args) > 1:
                    raise ProtocolError(f"{name} takes one argument; got {len(args)}")
                sess = self._session(sid)
                if joined:
                    self._room_of(sess)
                return await handler(sess, args[0] if args else None)
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                ack = self._refusal(name, sid, exc)
                # this socket's next message waits (its events run one after another)
                await asyncio.sleep(self._refusal_pause(sid))
                return ack

        return guarded

    def _guard_room(self, name: str, handler: RoomHandler) -> Callable[..., Awaitable[dict[str, Any]]]:
        async def on_session(sess: Session, data: Any) -> dict[str, Any]:
            return await handler(sess, self._room_of(sess), data)

        return self._guard(name, on_session)

    async def _refuse_early(self, sid: str, wants_ack: bool, exc: DeepRoomError) -> dict[str, Any] | None:
        """A message refused before dispatch (by `_gate`, an unknown name, unreadable JSON)."""
        sess = self.sessions.get(sid)
        self._refused(sess, exc)
        if sess is not None and not wants_ack:
            await warn(self.sio, sess, exc)
        return {"ok": False, "error": error_to_wire(exc)}

    def _gate(self, sid: str, event: str, length: int) -> DeepRoomError | None:
        """Whether to decode a message at all, from its event name and text length: over the
        text cap (`protocol.MAX_TEXT_CHARS`) or over the sender's rate is refused undecoded."""
        cap = P.MAX_TEXT_CHARS.get(event, P.MAX_TEXT_CHARS_OTHER)
        if length > cap:
            return TooLarge(f"a {event} message is at most {cap} characters of text; got {length}")
        sess = self.sessions.get(sid)
        if sess is None:
            return None
        s = self.settings
        if event == "pose":
            return self._pose_over_rate(sess)
        if event == "op":
            if not sess.op_bucket.take():
                return RateLimited(f"too many operations: at most {s.op_rate[0]:g}/s (bursts of {s.op_rate[1]:g})")
        elif event == "event" and not sess.event_bucket.take():
            return RateLimited(f"too many events: at most {s.event_rate[0]:g}/s")
        return None

    def _pose_over_rate(self, sess: Session) -> RateLimited | None:
        """One pose from the socket's pose bucket (either form of pose), or the refusal."""
        if sess.pose_bucket.take():
            return None
        return RateLimited(f"too many poses: at most {self.settings.pose_rate[0]:g}/s; extra poses are dropped")

    def _refused(self, sess: Session | None, exc: DeepRoomError) -> None:
        """Count a refusal: relay-wide, towards the socket's pause, and (unless it was for being
        over a rate: those cost the relay no decoding) as a strike."""
        self.stats["refused"] += 1
        if sess is None:
            return
        now = time.monotonic()
        if now - sess.refused_since > self.settings.strikes[1]:
            sess.refused_since, sess.refused = now, 0
        sess.refused += 1
        if not isinstance(exc, RateLimited):
            self._strike(sess)

    def _refusal_pause(self, sid: str) -> float:
        """How long a socket's next message waits after a refusal: `refusal_pause_s`, one more per
        10 refusals it had in the strike window, at most `refusal_pause_max_s`."""
        s = self.settings
        sess = self.sessions.get(sid)
        recent = sess.refused if sess is not None else 0
        return min(s.refusal_pause_max_s, s.refusal_pause_s * (1 + recent // 10))

    def _strike(self, sess: Session) -> None:
        """One refused message (not counting rate limits: those cost the relay no decoding); too many
        in the window and the socket is disconnected, its address turned away for `penalty_s`
        (other addresses, and that address's other open sockets, are not affected)."""
        limit, window = self.settings.strikes
        now = time.monotonic()
        if now - sess.strikes_since > window:
            sess.strikes_since, sess.strikes = now, 0
        sess.strikes += 1
        if sess.strikes <= limit or sess.expelled:
            return
        sess.expelled = True
        self.stats["expelled"] += 1
        if len(self._penalty) > 10_000:
            self._penalty = {a: t for a, t in self._penalty.items() if t > now}
        self._penalty[sess.address] = now + self.settings.penalty_s
        log.info("relay: %s (%s) sent %d refused messages in %g s; disconnected", sess.sid, sess.address, limit, window)
        task = asyncio.create_task(self._expel(sess, limit, window))
        self._expelling.add(task)
        task.add_done_callback(self._expelling.discard)

    async def _expel(self, sess: Session, limit: int, window: float) -> None:
        message = (f"disconnected: more than {limit} refused messages within {window:g} s; "
                   f"this address may connect again in {self.settings.penalty_s:g} s")
        # the refusal that ran out the strikes is answered first (its ack waits the refusal pause)
        await asyncio.sleep(self._refusal_pause(sess.sid) + 0.05)
        with contextlib.suppress(Exception):
            await self.sio.emit("error", error_to_wire(RateLimited(message)), to=sess.sid, ignore_queue=True)
            await self.sio.disconnect(sess.sid, ignore_queue=True)

    # --- connection -------------------------------------------------------------------

    async def _on_connect(self, sid: str, environ: Any, auth: Any = None) -> bool:
        s = self.settings
        address = _address(environ)
        until = self._penalty.get(address)
        if until is not None:
            left = until - time.monotonic()
            if left > 0:
                self.stats["connects_refused"] += 1
                if self._tarpit[address] < s.connections_per_address:
                    # answered after half a second (costs the relay a sleeping coroutine): a client
                    # retrying in a loop tries twice a second, not as fast as it can connect
                    # (python-socketio clients wait 1 s for the answer by default)
                    self._tarpit[address] += 1
                    try:
                        await asyncio.sleep(min(0.5, left))
                    finally:
                        self._tarpit[address] -= 1
                        if self._tarpit[address] <= 0:
                            del self._tarpit[address]
                raise socketio.exceptions.ConnectionRefusedError(
                    f"a connection from your address sent too many refused messages; try again in {max(left - 0.5, 0):.0f} s"
                )
            del self._penalty[address]
        if self._connections[address] >= s.connections_per_address:
            raise socketio.exceptions.ConnectionRefusedError(
                f"too many connections from your address (at most {s.connections_per_address})"
            )
        self._connections[address] += 1
        self.sessions[sid] = Session(
            sid, address, TokenBucket(*s.pose_rate), TokenBucket(*s.op_rate), TokenBucket(*s.event_rate)
        )
        return True

    async def _on_disconnect(self, sid: str, *reason: Any) -> None:
        sess = self.sessions.pop(sid, None)
        if sess is None:
            return
        if reason and str(reason[0]) == str(self.sio.reason.PING_TIMEOUT) and sess.joined:
            # a joined client whose pong came late (it, or this relay, was starved of CPU)
            self.stats["dropped_ping_timeout"] += 1
            log.info("relay: %s (%s, %s) dropped: no pong within %g s", sid, sess.address, sess.participant_id,
                     self.sio.eio.ping_timeout)
        self._connections[sess.address] -= 1
        if self._connections[sess.address] <= 0:
            del self._connections[sess.address]
        try:
            self.blob_service.abandon_all(sess)  # a half-received blob never reaches the store
            await self.admission.disconnected(sess)
        except Exception:
            log.exception("relay: cleaning up after %s failed", sid)

    async def _on_pose(self, sid: str, data: Any = None, *extra: Any) -> None:
        sess = self.sessions.get(sid)
        if sess is None:
            return
        try:
            refusal = self.presence.on_pose(sess, data, extra)
            if refusal is not None:  # counted and answered as the compact form's (`_on_compact_pose`)
                await self._refuse_early(sid, False, refusal)
                await asyncio.sleep(self._refusal_pause(sid))
        except BaseException as exc:
            if is_fatal(exc):
                raise
            log.error("relay: pose from %s failed", sid, exc_info=exc)

    def _on_compact_pose(self, sid: str, data: bytes) -> DeepRoomError | None:
        """A compact pose (docs/protocol.md §8): the pose bucket, then `Presence.on_compact_pose`; a
        refusal is answered by the wire layer through `_refuse_early`, as any refusal without an ack."""
        sess = self.sessions.get(sid)
        if sess is None:
            return None
        return self._pose_over_rate(sess) or self.presence.on_compact_pose(sess, data)

    async def _on_pose_ack(self, sid: str, count: Any = None, *extra: Any) -> None:
        sess = self.sessions.get(sid)
        if sess is not None:
            self.presence.ack_batches(sess, count)


async def serve_forever(settings: RelaySettings, ready: Callable[[RelayServer], None] | None = None) -> None:
    """Run a relay until cancelled (the `deeproom serve` command)."""
    async with RelayServer(settings) as relay:
        if ready is not None:
            ready(relay)
        await asyncio.Event().wait()
