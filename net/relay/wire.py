"""The Socket.IO server the relay speaks through, refusing what python-socketio would
otherwise hand to the wrong handler.

python-socketio dispatches a client's event by name, and some names are its own:
an event called "connect" or "disconnect" from a client would run the relay's
connection handlers (a client could "disconnect" itself while keeping its socket, or
"connect" again and join twice), and "*" would reach the catch-all handler with the
wrong arguments. `RelaySocketServer` lets through only the relay's client events
(`CLIENT_EVENTS`) and answers anything else with an error, before dispatch.

JSON nested deeper than the decoder's recursion limit (or an integer longer than
Python converts) would fail inside python-socketio's packet decoding, where no ack
can be sent; `RelayPacket` decodes with a depth bound and, for a message it cannot
read, hands the dispatcher an `Unreadable` marker instead, which is refused with a
clear error.

Before any of that, `RelaySocketServer` reads only the head of each text message (its
packet type, ack id, attachment count and event name) and asks the relay's `gate`
whether to decode it at all: an unknown name, a message longer than its kind allows
(`protocol.MAX_TEXT_CHARS`) or one over the sender's rate is refused from the head
alone, so a flood or an oversized message costs the relay a regular expression, not a
JSON decode. The binary attachments of a refused message are swallowed, not decoded.
Messages for a socket whose Socket.IO session is gone (nobody to answer) are dropped
unread, and binary data no message announced is refused with an error event (in
python-socketio both were tracebacks in the log, one per message) — except a compact pose:
one binary Engine.IO message starting with `protocol.COMPACT_POSE` (docs/protocol.md §8), which no
Socket.IO message announces and which is handed whole to `compact_pose`, never decoded as
Socket.IO (one websocket frame per pose instead of a text head, a JSON decode and an
attachment).

Sending: a Socket.IO message with bytes in it is several Engine.IO packets (a text
head, then one packet per attachment), which python-socketio queues one by one, each
after a ping-timeout check. Here every message is queued whole or not at all
(`RelaySocketServer.queue_message`), and a room broadcast is encoded once and queued to
each recipient in one pass (no task per packet). A socket dropped for a late pong has
its websocket closed too: Engine.IO's own check discarded the CLOSE packet for the same
late ping, so the client kept sending into a session that was gone.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from deeproom.errors import DeepRoomError
from deeproom.net import protocol as P
from deeproom.net.errors import ProtocolError

CLIENT_EVENTS = frozenset({
    "join", "op", "event", "blob_begin", "blob_chunk", "blob_end", "blob_get",
    "invite", "kick", "set_password", "sync", "pose", "pa", "layout",
})
"""Every event name a client may send; anything else (Socket.IO's reserved names included) is refused."""

MAX_WIRE_DEPTH = 32
"""Deepest nesting of a message's JSON (payloads inside are held to `protocol.MAX_DEPTH`)."""


class Unreadable:
    """Stands in for the arguments of a message the relay would not decode, and says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"<unreadable: {self.reason}>"

_EVENT_NAME = re.compile(r'\s*\[\s*"((?:[^"\\]|\\.){0,64})"')


def _depth_over(value: Any, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | dict):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, list | dict))
    return False


class BoundedJson:
    """The `json` python-socketio's packets use on this server: depth-bounded `loads`."""

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        return json.dumps(obj, **kwargs)

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        too_deep = f"nests deeper than {MAX_WIRE_DEPTH} levels"
        try:
            value = json.loads(text, **kwargs)
        except RecursionError:
            return _unreadable(text, too_deep)
        except ValueError as exc:  # not JSON, or an integer of thousands of digits
            return _unreadable(text, f"is not JSON the relay reads ({str(exc)[:80]})")
        s = text if isinstance(text, str) else text.decode("utf-8", "replace")
        if s.count("[") + s.count("{") > MAX_WIRE_DEPTH and _depth_over(value, MAX_WIRE_DEPTH):
            return _unreadable(s, too_deep)
        return value


def _unreadable(text: str | bytes, reason: str) -> list[Any]:
    s = text if isinstance(text, str) else text.decode("utf-8", "replace")
    m = _EVENT_NAME.match(s)
    return [m.group(1) if m else "?", Unreadable(reason)]


class RelayPacket(sio_packet.Packet):
    """Socket.IO packets decoded with `BoundedJson` (only on the relay's server, not process-wide)."""

    json = BoundedJson


Refuser = Callable[[str, bool, DeepRoomError], Awaitable[dict[str, Any] | None]]
"""Called with (sid, whether the client waits for an ack, the refusal); returns the ack to send."""

CompactPose = Callable[[str, bytes], DeepRoomError | None]
"""Called with (sid, the whole binary message) for a compact pose of a connected socket; returns
the refusal to answer with (an `error` event), or None."""

Gate = Callable[[str, str, int], DeepRoomError | None]
"""Called with (sid, event name, length of the message's text) before the message is decoded;
returns the refusal for a message the relay will not read, or None to decode it."""

_HEAD = re.compile(r'([0-6])(?:(\d{1,10})-)?(/[^,]{0,64},)?(\d{1,18})?\s*(?:\[\s*"((?:[^"\\]|\\.){0,64})")?')
"""A Socket.IO packet's head: type, attachment count, namespace, ack id, event name."""
_EVENT, _BINARY_EVENT = sio_packet.EVENT, sio_packet.BINARY_EVENT
_COMPACT_POSE_BYTE = bytes((P.COMPACT_POSE,))


class RelaySocketServer(socketio.AsyncServer):
    """An AsyncServer that dispatches only `CLIENT_EVENTS`, asks `gate` before decoding a
    message, refuses the rest with an error, and queues every outgoing message whole."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, serializer=RelayPacket, **kwargs)
        self.refuse: Refuser | None = None
        self.gate: Gate | None = None
        self.refusal_pause: Callable[[str], float] | None = None
        """After refusing a message of socket `sid`, wait `refusal_pause(sid)` seconds before reading
        that socket's next one (only that socket waits): a client that floods refused messages is
        served at the relay's pace."""
        self.compact_pose: CompactPose | None = None
        self._swallow: dict[str, int] = {}
        """Attachments still to come of a binary message refused from its head, per Engine.IO socket."""
        self._closing_tasks: set[asyncio.Task[Any]] = set()
        # Engine.IO's own tasks (each socket's next ping sleeps 5 s, the ping-timeout service),
        # kept so that closing the relay ends them rather than leaving them to be destroyed pending.
        self._eio_tasks: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()
        start = self.eio.start_background_task

        def tracked(target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            task = start(target, *args, **kwargs)
            self._eio_tasks.add(task)
            return task

        self.eio.start_background_task = tracked  # type: ignore[method-assign]

    async def end_background_tasks(self) -> None:
        """Cancel Engine.IO's tasks still pending (after `shutdown`, when the relay closes)."""
        pending = [t for t in self._eio_tasks if not t.done()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # --- receiving ----------------------------------------------------------------------

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if isinstance(data, bytes | bytearray):
            left = self._swallow.get(eio_sid)
            if left:
                if left > 1:
                    self._swallow[eio_sid] = left - 1
                else:
                    del self._swallow[eio_sid]
                return
            if eio_sid not in self._binary_packet:
                if data[:1] == _COMPACT_POSE_BYTE and self.compact_pose is not None:
                    await self._compact_pose(eio_sid, bytes(data))
                    return
                # python-socketio would fail on it deep inside (int(b"...")) and log a traceback
                await self._answer(eio_sid, "/", None, ProtocolError(
                    "binary data that no message announced (a compact pose starts with byte 0xc1)"))
                return
        elif isinstance(data, str) and eio_sid not in self._binary_packet:
            head = _HEAD.match(data)
            if head is not None and int(head.group(1)) in (_EVENT, _BINARY_EVENT):
                namespace = head.group(3)[:-1] if head.group(3) else "/"
                sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
                refusal = self._screen(sid, head.group(5), len(data))
                if sid is None or not self.manager.is_connected(sid, namespace) or refusal is not None:
                    # refused, or for a socket already disconnected (nobody to answer): not decoded,
                    # and its binary attachments are dropped as they come
                    if head.group(2):
                        self._swallow[eio_sid] = int(head.group(2))
                    if refusal is not None and sid is not None:
                        await self._answer(eio_sid, namespace, int(head.group(4)) if head.group(4) else None, refusal)
                        if self.refusal_pause is not None:
                            await asyncio.sleep(self.refusal_pause(sid))
                    return
        await super()._handle_eio_message(eio_sid, data)

    async def _compact_pose(self, eio_sid: str, data: bytes) -> None:
        """A compact pose: handed to `compact_pose` for a connected socket (dropped for one whose
        session is gone), its refusal answered like any refusal without an ack."""
        assert self.compact_pose is not None
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not self.manager.is_connected(sid, "/"):
            return
        refusal = self.compact_pose(sid, data)
        if refusal is not None:
            await self._answer(eio_sid, "/", None, refusal)
            if self.refusal_pause is not None:
                await asyncio.sleep(self.refusal_pause(sid))

    def _screen(self, sid: str | None, name: str | None, length: int) -> DeepRoomError | None:
        """The refusal of a message from its head alone, or None to decode it."""
        if name is None or "\\" in name:
            return None  # no plain name in the head: decode it, `_handle_event` checks what it is
        if name not in CLIENT_EVENTS:
            return ProtocolError(f"unknown event {name[:40]!r}; clients send {', '.join(sorted(CLIENT_EVENTS))}")
        if sid is None or self.gate is None:
            return None
        return self.gate(sid, name, length)

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        namespace = namespace or "/"
        event = data[0] if isinstance(data, list) and data else None
        refusal: DeepRoomError | None = None
        if not isinstance(event, str) or event not in CLIENT_EVENTS:
            shown = event[:40] if isinstance(event, str) else type(event).__name__
            refusal = ProtocolError(f"unknown event {shown!r}; clients send {', '.join(sorted(CLIENT_EVENTS))}")
        elif any(isinstance(arg, Unreadable) for arg in data[1:]):
            reason = next(arg.reason for arg in data[1:] if isinstance(arg, Unreadable))
            refusal = ProtocolError(f"{event} message {reason}")
        if refusal is None:
            await super()._handle_event(eio_sid, namespace, id, data)
            return
        await self._answer(eio_sid, namespace, id, refusal)

    async def _answer(self, eio_sid: str, namespace: str, id: int | None, refusal: DeepRoomError) -> None:
        """A refusal: the error ack if the client asked for one (otherwise `refuse` sends an error event)."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        ack = await self.refuse(sid, id is not None, refusal) if self.refuse is not None else None
        if id is not None:
            await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=namespace, id=id, data=[ack]))

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        self._swallow.pop(eio_sid, None)
        await super()._handle_eio_disconnect(eio_sid, reason)

    # --- sending ------------------------------------------------------------------------

    def queue_message(self, eio_sid: str, packets: list[eio_packet.Packet]) -> bool:
        """Queue one message's Engine.IO packets on a socket, all or none, without waiting.

        A socket that is closing gets nothing. One whose client has not answered a ping in
        time gets nothing and is closed (`_close_late`)."""
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closed or sock.closing:
            return False
        last_ping = sock.last_ping
        if last_ping and time.time() - last_ping > self.eio.ping_timeout:
            task = asyncio.ensure_future(self._close_late(sock))
            self._closing_tasks.add(task)
            task.add_done_callback(self._closing_tasks.discard)
            return False
        for p in packets:
            sock.queue.put_nowait(p)
        return True

    async def _close_late(self, sock: Any) -> None:
        """Close a socket whose pong did not come in time, websocket included.

        (Engine.IO's own check drops its CLOSE packet for the same late ping, so the websocket
        stayed open: the client went on sending, unaware, and every binary message it sent was
        an error in python-socketio, "invalid literal for int() with base 10: b'\\x01'".)"""
        await sock.close(wait=False, abort=True, reason=self.eio.reason.PING_TIMEOUT)
        sock.queue.put_nowait(None)  # ends the writer, which closes the websocket

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        encoded = pkt.encode()
        parts = encoded if isinstance(encoded, list) else [encoded]
        self.queue_message(eio_sid, [eio_packet.Packet(eio_packet.MESSAGE, data=p) for p in parts])

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        # python-socketio's manager sends each packet of a broadcast from its own task; none of
        # them waits here, so the packets of one message still reach each socket back to back.
        self.queue_message(eio_sid, [eio_pkt])

    async def emit_local(self, event: str, data: Any, *, room: str, skip_sid: list[str] | None = None,
                         namespace: str = "/") -> int:
        """`emit(..., ignore_queue=True)` for this node's sockets: encoded once, each message queued
        whole to each recipient in one pass. Returns how many sockets it was queued to."""
        pkt = self.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, data])
        encoded = pkt.encode()
        packets = [eio_packet.Packet(eio_packet.MESSAGE, data=p) for p in (encoded if isinstance(encoded, list) else [encoded])]
        skip = set(skip_sid or ())
        sent = 0
        for sid, eio_sid in list(self.manager.get_participants(namespace, room)):
            if sid not in skip and self.queue_message(eio_sid, packets):
                sent += 1
        return sent
