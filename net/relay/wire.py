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
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from socketio import packet as sio_packet

from deeproom.errors import DeepRoomError
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


class RelaySocketServer(socketio.AsyncServer):
    """An AsyncServer that dispatches only `CLIENT_EVENTS` and refuses the rest with an error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, serializer=RelayPacket, **kwargs)
        self.refuse: Refuser | None = None

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
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        ack = await self.refuse(sid, id is not None, refusal) if self.refuse is not None else None
        if id is not None:
            await self._send_packet(eio_sid, self.packet_class(sio_packet.ACK, namespace=namespace, id=id, data=[ack]))
