"""The relay protocol: event names, limits, and checks of what arrives from the network.

Client to relay (Socket.IO events, each answered through its ack unless noted; any other
event name, Socket.IO's reserved ones included, is refused with an error):
- `join` {room, name, participant_id, key?, colour?, password?, invite?, create_token?, sv?}
  -> {ok, participant_id, role, update, sv, streams, key?} : joins (creating the room if new
  and the relay's policy allows: `create_token` when it creates rooms by token only);
  `update` is what the client's state vector `sv` lacks. The id is bound to `key` (16-256
  characters) on first join; without one the relay makes a key and returns it as `key`.
- `op` {id, op} -> {ok, update?} : one operation with a client-chosen id
  ("<client>:<seq>"); a replayed id is answered {ok, duplicate} without applying it twice.
  Ids are per sender: another participant may use the same id. `join` and `leave` are
  the relay's own operations and are refused.
- `pose` bytes (or base64 text)[, batches read] (no ack) : the sender's latest pose (`deeproom.presence`),
  optionally with how many `poses` batches it has read so far.
- `pa` int (no ack) : how many `poses` batches the client has read (sent every few
  batches when it sends no poses); the relay skips a client more than a few ticks
  behind instead of queueing for it.
- `event` {kind, payload, to?} -> {ok}: "signal" | "stream" | "steer" | "summon".
- `blob_begin` {sha, size} -> {ok, have}; `blob_chunk` {sha, offset, data} -> {ok};
  `blob_end` {sha} -> {ok}; `blob_get` {sha, offset, length} -> {ok, size, data}.
- `invite` {role, ttl} -> {ok, token}; `kick` {participant_id}; `set_password` {password}.
- `layout` {action: save|list|load|export|import, ...} -> {ok, ...}: the room's saved layouts
  (docs/protocol.md §12a; `deeproom.net.relay.layouts`).
Relay to client: `update` bytes, `poses` bytes (a presence batch), `event`
{kind, sender, payload}, `error` {type, message}, `kicked` {message}.
A refusal is an ack {ok: false, error: {type, message}}.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

from deeproom.net.errors import ProtocolError, TooLarge
from deeproom.state import check_json

PROTOCOL_VERSION = 1

EVENT_KINDS = ("signal", "stream", "steer", "summon", "watch", "voice_segment")
"""Kinds of `event` a client may send. All are forwarded but `voice_segment`, which the relay
checks and keeps in the room's recording (`deeproom.net.recording.voice`)."""

MAX_MESSAGE_BYTES = 1280 * 1024
"""Engine.IO closes a connection that sends one message bigger than this (read from the frame's
header, so such a message is never assembled). Above every legitimate message: the largest text
is an `event` of `MAX_TEXT_CHARS["event"]` (1 MiB), the largest binary a blob chunk (512 KiB)."""
MAX_OP_BYTES = 64 * 1024
"""An operation as JSON (content sources are capped at 16 KiB by the core)."""
MAX_EVENT_BYTES = {"signal": 64 * 1024, "stream": 256 * 1024, "steer": 16 * 1024, "summon": 4 * 1024,
                   "watch": 1024, "voice_segment": 1024}
"""Largest payload per event kind."""
MAX_POSE_BYTES = 256
"""A pose (deeproom.presence encoding) is at most this many bytes."""
COMPACT_POSE = 0xC1
"""First byte of a compact pose: one binary Engine.IO message that no Socket.IO message announces,
this byte, u32 LE batches read, then the pose (docs/protocol.md §8). 0xC1 starts no valid UTF-8
(text sent as binary), is msgpack's one never-used byte (a msgpack-parser Socket.IO packet), is
no Engine.IO packet type (0-6: EIO 3's binary prefix) and no pose or batch version (1), so a
stray attachment or a bare pose is never read as one."""
BLOB_CHUNK = 256 * 1024
"""Bytes per blob chunk, both ways."""
MAX_BLOB_CHUNK = 512 * 1024
MAX_UPLOADS_PER_CLIENT = 4
MAX_STATE_VECTOR = 64 * 1024
MAX_DEPTH = 16
"""Deepest nesting of a payload (an op, an event's payload)."""
MAX_TEXT_CHARS = {"op": 4 * MAX_OP_BYTES, "event": 4 * MAX_EVENT_BYTES["stream"], "pose": 4096, "pa": 4096}
"""Longest text of one message by event name (other events: `MAX_TEXT_CHARS_OTHER`), checked
before the JSON is decoded: four times the payload cap (numbers and escapes take more room as
text than `payload_size` counts), so nothing under a payload cap is refused by it."""
MAX_TEXT_CHARS_OTHER = 64 * 1024


def decode_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs state vector (varuint count, then count pairs of varuint client id and clock) as {client: clock}."""
    pos = 0

    def varuint() -> int:
        nonlocal pos
        value, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ProtocolError("not a valid state vector")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    count = varuint()
    if count > len(data):
        raise ProtocolError("not a valid state vector")
    clocks = {}
    for _ in range(count):
        client = varuint()
        clocks[client] = varuint()
    return clocks


def require_mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ProtocolError(f"{what} must be an object; got {type(data).__name__}")
    return data


def require_str(data: Mapping[str, Any], key: str, what: str, max_len: int = 256, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string; got {type(value).__name__}")
    if len(value) > max_len:
        raise TooLarge(f"{what} is at most {max_len} characters; got {len(value)}")
    check_json(value, what)  # valid Unicode (no lone surrogates), no control characters but tab and newlines
    return value


def require_bytes(data: Mapping[str, Any], key: str, what: str, max_len: int, optional: bool = False) -> bytes | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, bytes | bytearray):
        raise ProtocolError(f"{what} must be bytes; got {type(value).__name__}")
    if len(value) > max_len:
        raise TooLarge(f"{what} is at most {max_len} bytes; got {len(value)}")
    return bytes(value)


def require_int(data: Mapping[str, Any], key: str, what: str, lo: int, hi: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what} must be a whole number; got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ProtocolError(f"{what} must be in [{lo}, {hi}]; got {value}")
    return value


def payload_size(value: Any, depth: int = 0) -> int:
    """Rough wire size of a JSON-like payload (bytes allowed); raises on other types or deep nesting."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"payload nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return 4
    if isinstance(value, int):
        if abs(value) > 2**63:
            raise ProtocolError("payload integers must fit in 64 bits")
        return 8
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError("payload numbers must be finite")
        return 8
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, list | tuple):
        return 2 + sum(payload_size(v, depth + 1) + 1 for v in value)
    if isinstance(value, Mapping):
        total = 2
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError("payload keys must be strings")
            total += len(k) + 3 + payload_size(v, depth + 1)
        return total
    raise ProtocolError(f"payload values are JSON types or bytes; got {type(value).__name__}")


def check_payload(value: Any, max_bytes: int, what: str) -> dict[str, Any]:
    """A dict payload no bigger than `max_bytes`, whose text (keys included) is what the core
    accepts in JSON: valid Unicode, no control characters but tab and newlines."""
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} payload must be an object; got {type(value).__name__}")
    size = payload_size(value)
    if size > max_bytes:
        raise TooLarge(f"{what} payload is at most {max_bytes} bytes; got about {size}")
    check_payload_text(value, f"{what} payload")
    return value


def check_payload_text(value: Any, what: str) -> None:
    """Every string in a payload (keys too) checked by the core's JSON text rule (bytes pass)."""
    stack: list[tuple[Any, str]] = [(value, what)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            check_json(v, where)
        elif isinstance(v, Mapping):
            for k, item in v.items():
                check_json(k, f"{where} key")
                stack.append((item, f"{where}.{k[:40]}"))
        elif isinstance(v, list | tuple):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(v))


def pack_binary(data: bytes) -> str:
    """Binary data as base64 text, for clients that cannot send binary frames.

    (Measured here: python-socketio encodes and decodes a 1.4 KB binary event in
    ~66 µs and the same as base64 text in ~102 µs, so the relay itself sends bytes.)
    """
    return base64.b64encode(data).decode("ascii")


def unpack_binary(value: object, max_bytes: int, what: str) -> bytes:
    """Bytes from a base64 text frame (or raw bytes), refusing anything over `max_bytes`."""
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    elif isinstance(value, str):
        if len(value) > (max_bytes * 4) // 3 + 4:
            raise TooLarge(f"{what} is at most {max_bytes} bytes")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"{what} must be base64 text or bytes") from None
    else:
        raise ProtocolError(f"{what} must be base64 text or bytes; got {type(value).__name__}")
    if len(raw) > max_bytes:
        raise TooLarge(f"{what} is at most {max_bytes} bytes; got {len(raw)}")
    return raw
