"""The calls the relay's parts make into recording, one line each where they happen.

The room's `recording` setting is the switch: the host's `set_recording` operation (or,
on a relay run with `--record`, the relay itself as soon as a room is written to) turns
it on, and the update that does so starts a recorder; the update that turns it off
stops it. A room that is not being recorded costs each hook one dictionary lookup (and
`on_update` one read of the cached room settings).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deeproom.net.errors import error_to_wire
from deeproom.net.recording.recorder import RoomRecorder, end_draining
from deeproom.ops import SYSTEM, SetRecording
from deeproom.recording import RecordingError
from deeproom.state import Role

if TYPE_CHECKING:
    from deeproom.net.relay.rooms import RoomHub
    from deeproom.net.relay.state import LiveRoom

log = logging.getLogger(__name__)

_recorders: weakref.WeakKeyDictionary[LiveRoom, RoomRecorder] = weakref.WeakKeyDictionary()
_failed: weakref.WeakSet[LiveRoom] = weakref.WeakSet()
"""Rooms whose recording failed: `--record` does not switch them on again by itself."""
_switching: weakref.WeakSet[LiveRoom] = weakref.WeakSet()
_tasks: set[asyncio.Task[None]] = set()


def recorder_of(room: LiveRoom) -> RoomRecorder | None:
    return _recorders.get(room)


def on_update(hub: RoomHub, room: LiveRoom, update: bytes) -> None:
    """After the relay persisted `update` of `room` (the caller holds the room's lock)."""
    rec = _recorders.get(room)
    wanted = room.doc.snapshot().settings.recording
    if rec is not None:
        if wanted and rec.active:
            rec.update(update)
            return
        del _recorders[room]
        rec.update(update)  # the switch itself, so the end state shows it
        rec.stop("stopped by the host" if not wanted else "stopped")
        return
    if wanted and room not in _failed:
        _start(hub, room, "host")
    elif not wanted and hub.settings.record and room not in _failed and room not in _switching:
        _switch(hub, room, True)  # `serve --record`: the relay turns it on, so everyone sees it


def _start(hub: RoomHub, room: LiveRoom, by: str) -> None:
    root = hub.settings.data_dir / "recordings"
    try:
        _recorders[room] = RoomRecorder(root, room.id, room.doc, blob_source=hub.settings.data_dir / "blobs", by=by,
                                        on_failed=lambda reason: _on_failed(hub, room, reason))
    except OSError as exc:
        _on_failed(hub, room, f"recording could not start: {exc.strerror or exc}")


def _on_failed(hub: RoomHub, room: LiveRoom, reason: str) -> None:
    _recorders.pop(room, None)
    _failed.add(room)
    _switch(hub, room, False, notice=reason)


def _switch(hub: RoomHub, room: LiveRoom, on: bool, notice: str | None = None) -> None:
    """Apply `set_recording` as the relay, later (the caller may hold the room's lock)."""
    _switching.add(room)

    async def run() -> None:
        try:
            async with room.lock:
                if hub.is_live(room) and room.doc.snapshot().settings.recording != on:
                    await hub.apply(room, SetRecording(on), SYSTEM, None, None)
            if notice is not None:
                hosts = [pid for pid, p in room.doc.snapshot().participants.items() if p.role is Role.HOST]
                for pid in hosts:
                    await hub.sio.emit("error", error_to_wire(RecordingError(notice)), room=f"p:{room.id}:{pid}")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relay: switching recording of %s failed", room.id)
        finally:
            _switching.discard(room)

    try:
        task = asyncio.get_running_loop().create_task(run())
    except RuntimeError:
        _switching.discard(room)
        return
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def on_poses(room: LiveRoom, batch: Mapping[str, bytes]) -> None:
    """One presence tick of `room` (`batch`: what the relay sends this tick)."""
    rec = _recorders.get(room)
    if rec is not None:
        rec.poses(batch, {pid: raw for pid, (raw, _) in room.poses.items()})


def on_event(room: LiveRoom, kind: str, sender: str, payload: Mapping[str, Any]) -> None:
    """An event the relay forwarded to the room."""
    rec = _recorders.get(room)
    if rec is not None:
        rec.event(kind, sender, payload)


def on_chapter(room: LiveRoom, title: str, kind: str) -> None:
    """A moment worth a chapter (a layout loaded)."""
    rec = _recorders.get(room)
    if rec is not None:
        rec.chapter(title, kind)


def join_notice(room: LiveRoom, record_all: bool) -> bool:
    """What a joiner's ack says in `recording`: whether this room is (or is about to be) recorded."""
    return room.doc.snapshot().settings.recording or (record_all and room not in _failed)


def stop_all(reason: str = "the relay stopped") -> None:
    """Close every recorder (a relay shutting down)."""
    for room, rec in list(_recorders.items()):
        _recorders.pop(room, None)
        rec.stop(reason, voice_grace_s=0)
    end_draining()  # stopped recorders still waiting for late voice segments: their end marks now
