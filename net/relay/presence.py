"""Presence: the latest pose of each participant, sent as one binary batch per room per tick.

The relay keeps only each participant's latest pose. Every tick it sends each room the
poses that changed (and, once per keyframe period, all live ones); a client whose socket
is backed up, or that has not confirmed the batches sent to it, is skipped for that tick
instead of queued for. With a shared backend, each node publishes its clients' changed
poses once per tick and merges the other nodes' into its own batches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from typing import Any

import socketio

from deeproom.errors import DeepRoomError, ValidationError
from deeproom.net import protocol as P
from deeproom.net.backend import RoomBackend
from deeproom.net.errors import TooLarge, error_to_wire
from deeproom.net.recording import hooks as recording_hooks
from deeproom.net.relay.rooms import RoomHub
from deeproom.net.relay.settings import RelaySettings
from deeproom.net.relay.state import Session
from deeproom.net.relay.wire import RelaySocketServer
from deeproom.presence import MAX_COORD, decode_pose, encode_batch, pose_size

log = logging.getLogger(__name__)

_POSE_HEAD = struct.Struct("<BBId")
_BATCH_HEAD = struct.Struct("<BdH")
_FLOATS = {flags: struct.Struct(f"<{(pose_size(flags) - _POSE_HEAD.size) // 4}f") for flags in range(16)}
"""The floats after the head of a pose, by its flags (the four known flag bits)."""
_WITHIN = MAX_COORD.__ge__
COMPACT_POSE_HEAD = 5
"""Bytes before the pose in a compact pose: the marker byte and the u32 LE batches-read count."""
MIN_POSE_BYTES = pose_size(0)
"""The shortest pose (head only)."""


def check_pose(raw: bytes) -> None:
    """Accept a well-formed pose (what `decode_pose` accepts) without building it; anything else
    goes through `decode_pose`, which raises the ValidationError that says what is wrong.

    Every pose a participant sends passes here (30 a second each), so the common case is a
    length check, two unpacks and one pass over the floats in C."""
    n = len(raw)
    floats = _FLOATS[raw[1]] if n >= 42 and raw[0] == 1 and raw[1] < 16 else None
    if (
        floats is not None
        and n == _POSE_HEAD.size + floats.size
        and math.isfinite(_POSE_HEAD.unpack_from(raw)[3])
        # abs(nan) and abs(inf) are not <= MAX_COORD: one comparison covers finite and range
        and all(map(_WITHIN, map(abs, floats.unpack_from(raw, _POSE_HEAD.size))))
    ):
        return
    decode_pose(raw)


def split_remote_batch(data: bytes) -> dict[str, bytes]:
    """Another node's batch back into encoded poses by participant id, by slicing: no pose is
    decoded and encoded again (that node checked every pose when its participant sent it, and
    nodes trust each other through Redis). Raises ValueError on a batch that does not parse."""
    version, _, count = _BATCH_HEAD.unpack_from(data, 0)
    if version != 1:
        raise ValueError(f"pose batch version {version} is not supported")
    pos, size = _BATCH_HEAD.size, len(data)
    out: dict[str, bytes] = {}
    for _ in range(count):
        n = data[pos]
        start = pos + 1 + n
        if start + 2 > size or data[start] != 1 or data[start + 1] >= 16:
            raise ValueError("pose batch entry is malformed")
        end = start + pose_size(data[start + 1])
        if end > size:
            raise ValueError("pose batch is truncated")
        out[data[pos + 1 : start].decode()] = data[start:end]
        pos = end
    if pos != size:
        raise ValueError(f"pose batch has {size - pos} unexpected trailing bytes")
    return out


async def warn(sio: socketio.AsyncServer, sess: Session, exc: DeepRoomError) -> None:
    """An `error` event for things that have no ack (poses, unknown events), at most two a second."""
    now = time.monotonic()
    if now - sess.warned_at < 0.5:
        return
    sess.warned_at = now
    await sio.emit("error", error_to_wire(exc), to=sess.sid, ignore_queue=True)


class Presence:
    """Receives poses and sends the batches."""

    def __init__(self, settings: RelaySettings, hub: RoomHub, backend: RoomBackend,
                 sio: RelaySocketServer, stats: dict[str, int]) -> None:
        self.settings = settings
        self.hub = hub
        self.backend = backend
        self.sio = sio
        self.stats = stats

    @staticmethod
    def ack_batches(sess: Session, count: Any) -> None:
        # Cumulative count of batches the client has read; never beyond what was sent.
        if isinstance(count, int) and not isinstance(count, bool) and sess.batches_acked < count <= sess.batches_sent:
            sess.batches_acked = count

    def on_pose(self, sess: Session, data: Any, extra: tuple[Any, ...]) -> DeepRoomError | None:
        """A `pose` event (the Socket.IO form): taken, dropped (not joined), or the refusal to answer."""
        if not sess.joined:
            return None  # poses before joining are dropped (a client may start sending before its join is acked)
        if extra:
            self.ack_batches(sess, extra[0])
        try:
            raw = P.unpack_binary(data, P.MAX_POSE_BYTES, "a pose (deeproom.presence encoding)")
        except ValidationError as exc:
            return exc
        return self._take(sess, raw)

    def on_compact_pose(self, sess: Session, data: bytes) -> DeepRoomError | None:
        """A compact pose (`protocol.COMPACT_POSE`, u32 LE batches read, the pose): taken, dropped (not
        joined), or the refusal to answer. The caller checked the marker byte and the rate."""
        if not sess.joined:
            return None  # as the Socket.IO form: dropped silently before joining
        n = len(data)
        if n > COMPACT_POSE_HEAD + P.MAX_POSE_BYTES:
            return TooLarge(f"a compact pose is at most {COMPACT_POSE_HEAD + P.MAX_POSE_BYTES} bytes "
                            f"(marker, u32 batches read, a pose of at most {P.MAX_POSE_BYTES}); got {n}")
        if n < COMPACT_POSE_HEAD + MIN_POSE_BYTES:
            return ValidationError(f"a compact pose is at least {COMPACT_POSE_HEAD + MIN_POSE_BYTES} bytes "
                                   f"(marker, u32 batches read, a pose of at least {MIN_POSE_BYTES}); got {n}")
        self.ack_batches(sess, int.from_bytes(data[1:COMPACT_POSE_HEAD], "little"))
        refusal = self._take(sess, data[COMPACT_POSE_HEAD:])
        if refusal is None:
            self.stats["compact_poses_in"] += 1
        return refusal

    def _take(self, sess: Session, raw: bytes) -> DeepRoomError | None:
        """Keep a participant's pose as its latest, if it is one (`check_pose`)."""
        assert sess.room_id is not None and sess.participant_id is not None
        room = self.hub.rooms.get(sess.room_id)
        if room is None:
            return None
        try:
            check_pose(raw)
        except ValidationError as exc:
            return exc
        self.stats["poses_in"] += 1
        room.poses[sess.participant_id] = (raw, time.monotonic())
        room.changed.add(sess.participant_id)
        return None

    def _backed_up(self, sid: str) -> bool:
        try:
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
            sock = self.sio.eio.sockets.get(eio_sid)
            return sock is not None and sock.queue.qsize() > self.settings.backed_up_packets
        except Exception:
            return False

    async def loop(self) -> None:
        period = 1.0 / self.settings.tick_hz
        next_tick = time.monotonic()
        while True:
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_tick = time.monotonic()  # fell behind: do not burst to catch up
            late_ms = (time.monotonic() - next_tick) * 1000.0
            # how late ticks start (the event loop busy, or the process waiting for a CPU)
            self.stats["ticks"] += 1
            self.stats["ticks_late_10ms"] += late_ms > 10
            self.stats["ticks_late_50ms"] += late_ms > 50
            self.stats["tick_late_total_ms"] += round(late_ms)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("relay: presence tick failed")

    async def tick(self) -> None:
        now = time.monotonic()
        stale = now - self.settings.stale_pose_s
        wall = time.time()
        for room in list(self.hub.rooms.values()):
            if not room.sessions and not room.poses and recording_hooks.recorder_of(room) is None:
                continue
            for table in (room.poses, room.remote_poses):
                for pid in [p for p, (_, t) in table.items() if t < stale]:
                    del table[pid]
            keyframe = now - room.last_keyframe >= self.settings.keyframe_s
            if keyframe:
                room.last_keyframe = now
            local = {pid: room.poses[pid][0] for pid in room.changed if pid in room.poses}
            room.changed.clear()
            if self.backend.shared and local:
                await self.backend.publish("poses", room.id.encode() + b"|" + encode_batch(local, wall))
            if keyframe:
                batch_poses = {pid: raw for pid, (raw, _) in room.remote_poses.items()}
                batch_poses.update({pid: raw for pid, (raw, _) in room.poses.items()})
            else:
                batch_poses = {pid: raw for pid, (raw, t) in room.remote_poses.items() if t >= now - 1.5 / self.settings.tick_hz}
                batch_poses.update(local)
            recording_hooks.on_poses(room, batch_poses)
            if not batch_poses or not room.sessions:
                continue
            limit = self.settings.max_unacked_batches
            skip = {
                sid for sid, sess in room.sessions.items()
                if sess.batches_sent - sess.batches_acked > limit or self._backed_up(sid)
            }
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
            await self.sio.emit_local("poses", batch, room=room.id, skip_sid=list(skip))

    async def on_remote_message(self, channel: str, data: bytes) -> None:
        if channel != "poses":
            return
        room_id, batch = data.split(b"|", 1)
        room = self.hub.rooms.get(room_id.decode())
        if room is None:
            return
        now = time.monotonic()
        try:
            poses = split_remote_batch(batch)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError) as exc:
            log.warning("relay: a pose batch from another node was dropped: %s", exc)
            return
        for pid, raw in poses.items():
            room.remote_poses[pid] = (raw, now)
