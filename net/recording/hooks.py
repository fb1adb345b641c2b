"""The calls the relay's parts make into recording, one line each where they happen.

The room's `recording` setting is the switch: the host's `set_recording` operation (or,
on a relay run with `--record`, the relay itself as soon as a room is written to) turns
it on, and the update that does so starts a recorder; the update that turns it off
stops it. A room that is not being recorded costs each hook one dictionary lookup (and
`on_update` one read of the cached room settings).

On a relay of several nodes (`serve --redis`) one node records each room: the one holding the
room's recorder lease (`deeproom.net.recording.election`); `attach` sets that up per relay.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from deeproom.errors import DeepRoomError
from deeproom.net.errors import error_to_wire
from deeproom.net.recording.election import CHANNEL, BlobFetch, RecorderElection
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
_elections: weakref.WeakKeyDictionary[RoomHub, RecorderElection] = weakref.WeakKeyDictionary()
"""Relays of several nodes: each hub's part in electing who records its rooms."""


def recorder_of(room: LiveRoom) -> RoomRecorder | None:
    return _recorders.get(room)


def on_update(hub: RoomHub, room: LiveRoom, update: bytes, *, merged: bool = False) -> None:
    """After the relay persisted `update` of `room` (the caller holds the room's lock); `merged`: another
    node wrote it and this node merged it into its copy."""
    rec = _recorders.get(room)
    wanted = room.doc.snapshot().settings.recording
    election = _elections.get(hub)
    if rec is not None:
        if wanted and rec.active:
            rec.update(update)
            return
        del _recorders[room]
        rec.update(update)  # the switch itself, so the end state shows it
        rec.stop("stopped by the host" if not wanted else "stopped")
        if election is not None:
            election.stopped(room)  # gives the lease up
        return
    if wanted and room not in _failed:
        if election is not None:
            election.wanted(room)  # the node that takes the room's lease starts the recorder
        else:
            _start(hub, room, "host")
    elif not merged and not wanted and hub.settings.record and room not in _failed and room not in _switching:
        _switch(hub, room, True)  # `serve --record`: the relay turns it on, so everyone sees it


def _start(hub: RoomHub, room: LiveRoom, by: str, recording_id: str | None = None,
           header: Mapping[str, Any] | None = None, fetch_blob: BlobFetch | None = None) -> RoomRecorder | None:
    root = hub.settings.data_dir / "recordings"
    fetch = None
    if fetch_blob is not None:
        fetcher = fetch_blob

        async def fetch(sha: str) -> bool:
            try:
                await fetcher(sha)
            except (DeepRoomError, OSError):
                return False
            return True

    try:
        rec = _recorders[room] = RoomRecorder(
            root, room.id, room.doc, blob_source=hub.settings.data_dir / "blobs", by=by,
            on_failed=lambda reason: _on_failed(hub, room, reason), recording_id=recording_id, header=header,
            fetch_blob=fetch)
        return rec
    except OSError as exc:
        _on_failed(hub, room, f"recording could not start: {exc.strerror or exc}")
        return None


def attach(hub: RoomHub, fetch_blob: BlobFetch) -> RecorderElection:
    """A relay node sharing rooms with others: its rooms are recorded by whichever node holds each
    room's lease. `fetch_blob` brings another node's blob onto this one (`BlobService.blob_bytes`)."""
    election = RecorderElection(
        hub, fetch_blob, lambda room, rid, header: _start(hub, room, "host", rid, header, fetch_blob),
        _recorders.get, lambda room: room.doc.snapshot().settings.recording and room not in _failed)
    _elections[hub] = election
    return election


async def detach(hub: RoomHub) -> None:
    """The relay node is closing: its recordings end and their leases are given up (others take over)."""
    election = _elections.pop(hub, None)
    if election is not None:
        await election.close()


def with_recording_messages(hub: RoomHub, other: Callable[[str, bytes], Awaitable[None]]
                            ) -> Callable[[str, bytes], Awaitable[None]]:
    """The listener for other nodes' pub/sub messages: `CHANNEL` to the hub's election, the rest to `other`."""
    async def listen(channel: str, data: bytes) -> None:
        election = _elections.get(hub)
        if channel == CHANNEL:
            if election is not None:
                await election.on_message(data)
            return
        await other(channel, data)

    return listen


async def forward_voice_segment(room: LiveRoom, pid: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """A voice segment for a room this node does not record: on a relay of several nodes, the recording
    node's ack (or refusal, raised); None on a single node."""
    for hub, election in list(_elections.items()):
        if hub.rooms.get(room.id) is room:
            return await election.forward_voice_segment(room, pid, payload)
    return None


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
        live = {pid: raw for pid, (raw, _) in room.remote_poses.items()}  # participants on other nodes
        live.update((pid, raw) for pid, (raw, _) in room.poses.items())
        rec.poses(batch, live)


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
