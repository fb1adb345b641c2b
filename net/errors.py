"""The relay's errors, and how they cross the wire.

Every refusal the relay sends names its kind (one of the class names below or the
core's) and a message that says what was wrong and what is allowed; the client turns
it back into the same exception class, so `await client.apply(op)` raises exactly what
`RoomDocument.apply` would have raised on the server.
"""

from __future__ import annotations

from typing import Any

from deeproom.errors import DeepRoomError, NotFound, PermissionDenied, StorageError, ValidationError


class NetError(DeepRoomError):
    """Base of the relay's own errors."""


class JoinRefused(PermissionDenied):
    """The relay would not let this client into the room (password, invite, capacity, kicked)."""


class RateLimited(NetError):
    """The client sent more than the relay accepts per second."""


class ConnectionLost(NetError):
    """The client is not connected (or gave up) and could not do what was asked."""


class ClientClosed(NetError):
    """The client was closed; pending work will not be done."""


class ProtocolError(ValidationError):
    """A message that does not follow the relay protocol (wrong shape, too big, unknown)."""


class TooLarge(ValidationError):
    """A message, blob or payload over its cap."""


_KINDS: dict[str, type[DeepRoomError]] = {
    cls.__name__: cls
    for cls in (
        DeepRoomError,
        ValidationError,
        PermissionDenied,
        NotFound,
        StorageError,
        NetError,
        JoinRefused,
        RateLimited,
        ConnectionLost,
        ProtocolError,
        TooLarge,
    )
}


def error_to_wire(exc: BaseException) -> dict[str, str]:
    """`{"type": ..., "message": ...}` for a refusal; unknown classes map to their nearest known base."""
    for cls in type(exc).__mro__:
        if cls.__name__ in _KINDS:
            return {"type": cls.__name__, "message": str(exc)[:1000]}
    return {"type": "DeepRoomError", "message": "internal relay error"}


def error_from_wire(data: Any) -> DeepRoomError:
    """The exception a wire refusal stands for (a DeepRoomError for anything unrecognised)."""
    if not isinstance(data, dict):
        return ProtocolError(f"relay sent a malformed error: {data!r:.200}")
    cls = _KINDS.get(str(data.get("type")), DeepRoomError)
    return cls(str(data.get("message", "refused by the relay")))
