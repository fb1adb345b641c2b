"""Presence: where each participant's head and hands are, where they point, whether they speak.

Poses travel about 30 times a second per participant, so they have a compact binary
form (`encode_pose` / `decode_pose`, and `encode_batch` / `decode_batch` for the
relay's per-tick batch of everyone's latest pose). Encoding and decoding are pure
functions; nothing here touches a socket. Presence is never persisted: only the
latest pose of each participant matters, and a stale one is dropped, not queued.

Wire layout of one pose (little-endian):
    u8 version | u8 flags | u32 seq | f64 sent_at | 7 x f32 head (x y z qw qx qy qz)
    [7 x f32 left hand] [7 x f32 right hand] [6 x f32 pointer origin xyz + direction xyz]
The bracketed parts are present only when their flag is set, so a desktop user
without hands or a pointer costs 42 bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deeproom.errors import ValidationError
from deeproom.state import check_id

POSE_VERSION = 1
BATCH_VERSION = 1

SPEAKING = 0x01
HAS_LEFT = 0x02
HAS_RIGHT = 0x04
HAS_POINTER = 0x08
_KNOWN_FLAGS = SPEAKING | HAS_LEFT | HAS_RIGHT | HAS_POINTER

_HEADER = struct.Struct("<BBId")
_SEVEN = struct.Struct("<7f")
_SIX = struct.Struct("<6f")
_BATCH_HEADER = struct.Struct("<BdH")
MAX_BATCH = 65535
# Nothing in a room is kilometres away; a bound keeps a hostile pose from producing
# infinities in someone's renderer.
MAX_COORD = 1.0e4

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]

_IDENTITY: Quat = (1.0, 0.0, 0.0, 0.0)
_ORIGIN: Vec3 = (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class HandPose:
    """One tracked hand or controller."""

    position: Vec3 = _ORIGIN
    """Metres, room coordinates (y up)."""
    rotation: Quat = _IDENTITY
    """Orientation as a unit quaternion (w, x, y, z)."""


@dataclass(frozen=True, slots=True)
class PointerRay:
    """Where a participant points (a laser from the hand or the mouse)."""

    origin: Vec3 = _ORIGIN
    """Metres, room coordinates."""
    direction: Vec3 = (0.0, 0.0, 1.0)
    """Unit vector the ray travels along."""


@dataclass(frozen=True, slots=True)
class Pose:
    """A participant's presence at one instant."""

    head_position: Vec3 = (0.0, 1.6, 0.0)
    """Head (or desktop camera) position in metres."""
    head_rotation: Quat = _IDENTITY
    """Head orientation, unit quaternion (w, x, y, z)."""
    left: HandPose | None = None
    """Left hand or controller; None when not tracked."""
    right: HandPose | None = None
    """Right hand or controller; None when not tracked."""
    pointer: PointerRay | None = None
    """Pointer ray while pointing; None when not pointing."""
    speaking: bool = False
    """Whether the participant's voice is active."""
    seq: int = 0
    """Sender's counter (wraps at 2**32); receivers use it to tell a new pose from a repeat."""
    sent_at: float = 0.0
    """Sender's wall clock (seconds since the epoch) when the pose was made."""


def _floats(values: Sequence[float], n: int, what: str) -> tuple[float, ...]:
    if len(values) != n:
        raise ValidationError(f"{what} needs {n} numbers; got {len(values)}")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError(f"{what} needs {n} numbers") from None
    for v in out:
        if not math.isfinite(v) or abs(v) > MAX_COORD:
            raise ValidationError(f"{what} values must be finite and within ±{MAX_COORD:g}; got {v}")
    return out


def encode_pose(pose: Pose) -> bytes:
    """The pose's compact binary form."""
    flags = (
        (SPEAKING if pose.speaking else 0)
        | (HAS_LEFT if pose.left is not None else 0)
        | (HAS_RIGHT if pose.right is not None else 0)
        | (HAS_POINTER if pose.pointer is not None else 0)
    )
    parts = [
        _HEADER.pack(POSE_VERSION, flags, pose.seq & 0xFFFFFFFF, float(pose.sent_at)),
        _SEVEN.pack(*_floats(pose.head_position, 3, "head position"), *_floats(pose.head_rotation, 4, "head rotation")),
    ]
    for hand, name in ((pose.left, "left hand"), (pose.right, "right hand")):
        if hand is not None:
            parts.append(_SEVEN.pack(*_floats(hand.position, 3, name), *_floats(hand.rotation, 4, name)))
    if pose.pointer is not None:
        parts.append(
            _SIX.pack(
                *_floats(pose.pointer.origin, 3, "pointer origin"),
                *_floats(pose.pointer.direction, 3, "pointer direction"),
            )
        )
    return b"".join(parts)


def pose_size(flags: int) -> int:
    """How many bytes a pose with these flags takes."""
    size = _HEADER.size + _SEVEN.size
    size += _SEVEN.size * (bool(flags & HAS_LEFT) + bool(flags & HAS_RIGHT))
    size += _SIX.size if flags & HAS_POINTER else 0
    return size


def _decode_at(data: bytes | memoryview, offset: int) -> tuple[Pose, int]:
    if len(data) - offset < _HEADER.size + _SEVEN.size:
        raise ValidationError(f"a pose needs at least {_HEADER.size + _SEVEN.size} bytes; got {len(data) - offset}")
    version, flags, seq, sent_at = _HEADER.unpack_from(data, offset)
    if version != POSE_VERSION:
        raise ValidationError(f"pose version {version} is not supported (this reads version {POSE_VERSION})")
    if flags & ~_KNOWN_FLAGS:
        raise ValidationError(f"pose has unknown flags {flags:#04x}")
    end = offset + pose_size(flags)
    if len(data) < end:
        raise ValidationError(f"pose with flags {flags:#04x} needs {end - offset} bytes; got {len(data) - offset}")
    pos = offset + _HEADER.size
    head = _SEVEN.unpack_from(data, pos)
    pos += _SEVEN.size
    hands: list[HandPose | None] = []
    for bit in (HAS_LEFT, HAS_RIGHT):
        if flags & bit:
            h = _SEVEN.unpack_from(data, pos)
            pos += _SEVEN.size
            _floats(h, 7, "hand")
            hands.append(HandPose(h[:3], h[3:]))
        else:
            hands.append(None)
    pointer = None
    if flags & HAS_POINTER:
        r = _SIX.unpack_from(data, pos)
        pos += _SIX.size
        _floats(r, 6, "pointer")
        pointer = PointerRay(r[:3], r[3:])
    _floats(head, 7, "head")
    if not math.isfinite(sent_at):
        raise ValidationError("pose time must be finite")
    pose = Pose(
        head_position=head[:3],
        head_rotation=head[3:],
        left=hands[0],
        right=hands[1],
        pointer=pointer,
        speaking=bool(flags & SPEAKING),
        seq=seq,
        sent_at=sent_at,
    )
    return pose, end


def decode_pose(data: bytes | bytearray | memoryview) -> Pose:
    """Parse one pose; raises ValidationError on anything malformed (including trailing bytes)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValidationError(f"a pose is bytes; got {type(data).__name__}")
    pose, end = _decode_at(bytes(data), 0)
    if end != len(data):
        raise ValidationError(f"pose has {len(data) - end} unexpected trailing bytes")
    return pose


def encode_batch(poses: Mapping[str, bytes], server_time: float) -> bytes:
    """A relay tick: already-encoded poses keyed by participant id.

    Layout: u8 version | f64 server_time | u16 count | count x (u8 id length | id | pose).
    Poses are taken as their encoded bytes so a relay never re-encodes what it forwards.
    """
    if len(poses) > MAX_BATCH:
        raise ValidationError(f"a batch holds at most {MAX_BATCH} poses; got {len(poses)}")
    parts = [_BATCH_HEADER.pack(BATCH_VERSION, float(server_time), len(poses))]
    for pid, raw in poses.items():
        key = pid.encode()
        if not 0 < len(key) < 256:
            raise ValidationError(f"participant id must be 1-255 bytes; got {len(key)}")
        parts.append(bytes((len(key),)))
        parts.append(key)
        parts.append(raw)
    return b"".join(parts)


def decode_batch(data: bytes | bytearray | memoryview) -> tuple[float, dict[str, Pose]]:
    """Parse a relay tick into (server_time, {participant id: Pose})."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValidationError(f"a pose batch is bytes; got {type(data).__name__}")
    buf = bytes(data)
    if len(buf) < _BATCH_HEADER.size:
        raise ValidationError(f"a pose batch needs at least {_BATCH_HEADER.size} bytes; got {len(buf)}")
    version, server_time, count = _BATCH_HEADER.unpack_from(buf, 0)
    if version != BATCH_VERSION:
        raise ValidationError(f"pose batch version {version} is not supported (this reads {BATCH_VERSION})")
    pos = _BATCH_HEADER.size
    out: dict[str, Pose] = {}
    for _ in range(count):
        if pos >= len(buf):
            raise ValidationError("pose batch is truncated")
        n = buf[pos]
        pos += 1
        try:
            pid = check_id(buf[pos : pos + n].decode(), "participant id")
        except UnicodeDecodeError:
            raise ValidationError("participant id in a pose batch is not UTF-8") from None
        pos += n
        pose, pos = _decode_at(buf, pos)
        out[pid] = pose
    if pos != len(buf):
        raise ValidationError(f"pose batch has {len(buf) - pos} unexpected trailing bytes")
    return server_time, out


def split_batch(data: bytes) -> dict[str, bytes]:
    """A batch back into encoded poses by participant id (what a relay forwards between nodes)."""
    _, poses = decode_batch(data)
    return {pid: encode_pose(p) for pid, p in poses.items()}
