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
import time
from typing import Any

import socketio

from deeproom.errors import DeepRoomError, ValidationError
from deeproom.net import protocol as P
from deeproom.net.backend import RoomBackend
from deeproom.net.errors import error_to_wire
from deeproom.net.recording import hooks as recording_hooks
from deeproom.net.relay.rooms import RoomHub
from deeproom.net.relay.settings import RelaySettings
from deeproom.net.relay.state import Session
from deeproom.net.relay.wire import RelaySocketServer
from deeproom.presence import decode_pose, encode_batch, split_batch

log = logging.getLogger(__name__)


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

    async def on_pose(self, sess: Session, data: Any, extra: tuple[Any, ...]) -> None:
        if not sess.joined:
            return  # poses before joining are dropped (a client may start sending before its join is acked)
        assert sess.room_id is not None and sess.participant_id is not None
        if extra:
            self.ack_batches(sess, extra[0])
        room = self.hub.rooms.get(sess.room_id)
        if room is None:
            return
        try:
            raw = P.unpack_binary(data, P.MAX_POSE_BYTES, "a pose (deeproom.presence encoding)")
            decode_pose(raw)
        except ValidationError as exc:
            await warn(self.sio, sess, exc)
            return
        self.stats["poses_in"] += 1
        room.poses[sess.participant_id] = (raw, time.monotonic())
        room.changed.add(sess.participant_id)

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
            if not room.sessions and not room.poses:
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
            skip = [
                sid for sid, sess in room.sessions.items()
                if sess.batches_sent - sess.batches_acked > limit or self._backed_up(sid)
            ]
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
            await self.sio.emit_local("poses", batch, room=room.id, skip_sid=skip)

    async def on_remote_message(self, channel: str, data: bytes) -> None:
        if channel != "poses":
            return
        room_id, batch = data.split(b"|", 1)
        room = self.hub.rooms.get(room_id.decode())
        if room is None:
            return
        now = time.monotonic()
        for pid, raw in split_batch(batch).items():
            room.remote_poses[pid] = (raw, now)
