"""python-socketio's Redis manager, telling the relay about emits other nodes broadcast.

Events between participants on different nodes (summons, training streams, signalling) travel
as Socket.IO emits through Redis pub/sub; each node's manager hands them to its own clients.
The node that records a room (`deeproom.net.recording.election`) must also see the events other
nodes forwarded to that room: `on_remote_emit` is told of each one after it was delivered here.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

import socketio
from socketio.packet import Packet

log = logging.getLogger(__name__)

RemoteEmit = Callable[[str, Any, "str | None"], None]
"""(event name, its data, the Socket.IO room it was sent to)."""


class RedisEventManager(socketio.AsyncRedisManager):
    on_remote_emit: RemoteEmit | None = None

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        await super()._handle_emit(message)
        # emit() calls this for this node's own emits too; only other nodes' are news here
        if (
            self.on_remote_emit is None
            or message.get("host_id") == self.host_id
            or message.get("event") != "event"
        ):
            return
        try:
            data = message["data"]
            if message.get("binary"):
                data = Packet.reconstruct_binary(data[0], [base64.b64decode(a) for a in data[1:]])
            if isinstance(data, list) and len(data) == 1:
                data = data[0]
            room = message.get("room")
            self.on_remote_emit("event", data, room if isinstance(room, str) else None)
        except Exception:
            log.exception("relay: handing another node's event to the recorder failed")
