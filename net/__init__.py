"""deeproom.net: the Socket.IO relay, the room client, presence and blob transfer.

    from deeproom.net import EmbeddedRelay, RoomClient, BackgroundClient

Imports are lazy so `import deeproom.net` stays light (voice and the relay pull in
aiohttp, python-socketio and aiortc only when used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deeproom.net.background import BackgroundClient, Inbound
    from deeproom.net.client import RoomClient
    from deeproom.net.embedded import EmbeddedRelay
    from deeproom.net.errors import ClientClosed, ConnectionLost, JoinRefused, NetError, RateLimited
    from deeproom.net.server import RelayServer, RelaySettings

_EXPORTS = {
    "BackgroundClient": "deeproom.net.background",
    "Inbound": "deeproom.net.background",
    "RoomClient": "deeproom.net.client",
    "EmbeddedRelay": "deeproom.net.embedded",
    "RelayServer": "deeproom.net.server",
    "RelaySettings": "deeproom.net.server",
    "NetError": "deeproom.net.errors",
    "JoinRefused": "deeproom.net.errors",
    "RateLimited": "deeproom.net.errors",
    "ConnectionLost": "deeproom.net.errors",
    "ClientClosed": "deeproom.net.errors",
}

__all__ = [
    "BackgroundClient",
    "ClientClosed",
    "ConnectionLost",
    "EmbeddedRelay",
    "Inbound",
    "JoinRefused",
    "NetError",
    "RateLimited",
    "RelayServer",
    "RelaySettings",
    "RoomClient",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deeproom.net' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
