"""Watching one replay together on a relay: one person drives the timeline, the others follow.

    deeproom replay RECORDING --relay URL --room ROOM    # the host of ROOM: shares the recording, drives
    deeproom replay --relay URL --room ROOM              # everyone else: gets it once, follows

`WatchSession` is a `ReplaySession` (the recording plays on this machine, from this machine's
copy) joined to an ordinary room on a relay through a `BackgroundClient`:

- Driving (the watch room's host, or a presenter the host made): each play/pause/seek/speed
  change goes to the room at once as a `watch` event (`deeproom.net.recording.watch`), and the
  state goes again once a second while this driver was the last to change it (late joiners
  start from it; followers correct drift with it).
- Following: `watch` events bring the playhead to the driver's (`ReplaySession.sync`: within
  two ticks; behind a playing driver by up to 5 s it plays forward, passing summons; otherwise
  it seeks). The timeline's controls are refused with a notice. Looking around, and whether
  recorded summons move you (G), stay local.
- The live watchers stand beside the recorded participants as avatars: their ids are
  `live:<id>`, their name tags say "(watching)"; this viewer's own pose goes to the room.
- The host hands control through the People panel (P): promoting a live watcher to presenter
  (or demoting) is the one change a watch party sends to its room; everything else stays
  read-only. The relay refuses `watch` events from anyone else, whatever their client does.

The `watch` events, poses and room changes of the watch room are read off the client's inbox
by a thread of this session (a driver's state is applied as it arrives, not a frame later),
and everything the app draws goes through the one inbox the app drains per frame.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeproom.errors import DeepRoomError, ValidationError
from deeproom.net.recording.store import RecordingStore
from deeproom.net.recording.watch import (
    HEARTBEAT_S,
    WatchState,
    fetch_recording,
    parse_watch,
    share_recording,
)
from deeproom.presence import Pose
from deeproom.recording import Timeline, format_clock
from deeproom.scenes.replay import ReplayClock, ReplaySession, SyncTo
from deeproom.scenes.session import Notice, PosesUpdate, RoomUpdate, SceneMessage, StatusUpdate
from deeproom.state import Room

LIVE_PREFIX = "live:"
"""Live watchers' avatar ids (a recorded participant may be watching too: their ids never collide)."""
DRIVES = ("host", "presenter")
LIVE_OPS = ("set_role",)
"""Operations a watch party sends to its room (on live watchers only): the host handing control."""


@dataclass(frozen=True)
class LiveRoom:
    """The watch room changed (who is watching, their roles)."""

    room: Room


class WatchSession(ReplaySession):
    """A replay joined to a watch room on a relay (see the module docstring)."""

    def __init__(self, client: Any, timeline: Timeline, blobs_dir: str | Path | None, manifest_sha: str, *,
                 start: WatchState | None = None, received: float = 0.0, at: float = 0.0, speed: float = 1.0,
                 playing: bool = True, summons: bool = True) -> None:
        """`client`: a joined `BackgroundClient` made with `event_kinds=("watch",)` (this session closes it).
        `start`: the driver's state as last received (at `received`, time.monotonic()), for a follower."""
        if start is not None:
            at, speed, playing = start.t, start.speed, start.playing
            if playing:
                at += (time.monotonic() - received) * speed
        self.client = client
        self.me: str = client.participant_id
        self.manifest_sha = manifest_sha
        self.live_room: Room | None = client.room
        self.watch_room = client.room.id if client.room is not None else "?"
        self.recorded_room: Room | None = None
        self.leader: str | None = None
        """Who changed the timeline last (only they repeat the state once a second)."""
        self.sent = 0
        self._last_sent = 0.0
        self._stop = threading.Event()
        self._warned_other = False
        super().__init__(timeline, blobs_dir, at=at, speed=speed, playing=playing,
                         participant_id=LIVE_PREFIX + self.me, summons=summons)
        if self.can_drive() and start is None:
            self.leader = self.me
        self.inbox.put(LiveRoom(client.room))
        self.on_state = self._on_state  # the worker calls it each tick
        self._forwarder = threading.Thread(target=self._forward, name="deeproom-watch", daemon=True)
        self._forwarder.start()

    # --- who drives ------------------------------------------------------------------------------

    def role(self) -> str:
        room = self.client.room
        p = room.participants.get(self.me) if room is not None else None
        return p.role.value if p is not None else "viewer"

    def can_drive(self) -> bool:
        return self.role() in DRIVES

    def driver_name(self) -> str:
        room = self.client.room
        if room is None:
            return "the host"
        leader = room.participants.get(self.leader or "")
        if leader is not None:
            return leader.name
        hosts = [p.name for p in room.participants.values() if p.role.value == "host"]
        return hosts[0] if hosts else "the host"

    def _control(self, what: str) -> bool:
        if self.can_drive():
            self.leader = self.me
            return True
        self.inbox.put(Notice(f"{what}: {self.driver_name()} drives this replay; the host can hand you control "
                              f"(you are {self.role()})"))
        return False

    def play(self) -> None:
        if self._control("play"):
            super().play()

    def pause(self) -> None:
        if self._control("pause"):
            super().pause()

    def toggle(self) -> None:
        if self._control("play/pause"):
            super().toggle()

    def seek(self, t: float) -> None:
        if self._control(f"seek to {format_clock(t)}"):
            super().seek(t)

    def set_speed(self, speed: float) -> None:
        if self._control(f"speed {speed:g}x"):
            super().set_speed(speed)

    # --- driving: the worker's tick --------------------------------------------------------------

    def _on_state(self, clock: ReplayClock, changed: bool, jumped: bool) -> None:
        now = time.monotonic()
        if changed or (self.leader == self.me and now - self._last_sent >= HEARTBEAT_S):
            if not self.can_drive():
                return
            self._last_sent = now
            state = WatchState(self.manifest_sha, min(max(clock.t, 0.0), clock.duration), clock.playing,
                               clock.speed, clock.duration, jumped)
            try:
                fut = self.client.send_event("watch", state.to_payload())
            except DeepRoomError as exc:
                self.inbox.put(Notice(f"the replay's timeline was not sent: {exc}"))
                return
            self.sent += 1
            fut.add_done_callback(self._sent)

    def _sent(self, fut: concurrent.futures.Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            self.inbox.put(Notice(f"the room refused the replay's timeline: {exc}"))

    # --- the watch room: read off the client's inbox -----------------------------------------------

    def _forward(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.client.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.take(item.kind, item.data, time.monotonic())
            except Exception as exc:  # one bad message must not stop following
                self.inbox.put(Notice(f"watch room: {type(exc).__name__}: {exc}"))

    def take(self, kind: str, data: Any, received: float) -> None:
        """One item from the watch room's client (the forwarder thread)."""
        if kind == "event" and isinstance(data, tuple) and len(data) == 3 and data[0] == "watch":
            sender, payload = str(data[1]), data[2]
            try:
                state = parse_watch(payload)  # the relay checked it; a follower checks again
            except ValidationError as exc:
                self.inbox.put(Notice(f"ignored a replay timeline from {sender}: {exc}"))
                return
            if state.recording != self.manifest_sha:
                if not self._warned_other:
                    self._warned_other = True
                    self.inbox.put(Notice("the driver switched to another recording; open the watch room again "
                                          "to follow it"))
                return
            self.leader = sender
            self.sync(SyncTo(state.t, state.playing, state.speed, state.jump, received))
        elif kind == "change":
            room = getattr(data, "room", None)
            if isinstance(room, Room):
                self.inbox.put(LiveRoom(room))
        elif kind == "poses" and isinstance(data, Mapping):
            self.inbox.put(PosesUpdate({LIVE_PREFIX + pid: pose for pid, pose in data.items() if pid != self.me}))
        elif kind == "status":
            self.inbox.put(StatusUpdate(data == "connected", f"watch room {self.watch_room}: {data}"))
        elif kind in ("refused", "error"):
            self.inbox.put(Notice(f"watch room: {data[1] if kind == 'refused' else data}"))

    # --- the room the app draws: the recording, plus the live watchers -------------------------------

    def merged(self) -> Room | None:
        rec, live = self.recorded_room, self.live_room
        if rec is None:
            return None
        if live is None:
            return rec
        people = dict(rec.participants)
        for pid, p in live.participants.items():
            lid = LIVE_PREFIX + pid
            name = p.name if pid == self.me else f"{p.name[:53]} (watching)"
            people[lid] = dataclasses.replace(p, id=lid, name=name)
        return dataclasses.replace(rec, participants=people)

    def translate(self, item: Any) -> list[SceneMessage]:
        if isinstance(item, LiveRoom):
            self.live_room = item.room
        elif isinstance(item, RoomUpdate):
            self.recorded_room = item.room
        else:
            return super().translate(item)
        self.room = self.merged()
        return [] if self.room is None else [RoomUpdate(self.room)]

    def apply(self, op: Mapping[str, Any]) -> concurrent.futures.Future[Any]:
        pid = op.get("participant_id")
        if op.get("op") in LIVE_OPS and isinstance(pid, str) and pid.startswith(LIVE_PREFIX):
            try:
                fut: concurrent.futures.Future[Any] = self.client.apply({**op, "participant_id": pid[len(LIVE_PREFIX):]})
                return fut
            except DeepRoomError as exc:
                failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
                failed.set_exception(exc)
                return failed
        return super().apply(op)

    def publish_pose(self, pose: Pose) -> None:
        """The other watchers see where you are (the recording does not)."""
        super().publish_pose(pose)
        self.client.publish_pose(pose)

    def close(self) -> None:
        self._stop.set()
        self.on_state = None  # type: ignore[assignment]  # (a closed session sends nothing)
        super().close()
        self._forwarder.join(timeout=2.0)
        self.client.close()


def open_watch(url: str, room: str, name: str, store: RecordingStore, recording: str | None = None, *,
               at: float = 0.0, speed: float = 1.0, playing: bool = True, summons: bool = True, wait_s: float = 120.0,
               client_options: Mapping[str, Any] | None = None,
               say: Callable[[str], None] = print) -> WatchSession:
    """Join watch room `room` and open its replay: share and drive `recording` (an id in `store`, or
    `(store, id)` found by the caller) when this participant may drive, else follow the room's driver
    with the recording it shares (this machine's copy when it has the same one, else fetched once)."""
    from deeproom.net import BackgroundClient

    client = BackgroundClient(url, room=room, name=name, event_kinds=("watch",), **dict(client_options or {}))
    try:
        client.wait_ready(60)
        me = client.room.participants.get(client.participant_id) if client.room is not None else None
        role = me.role.value if me is not None else "viewer"
        if recording is not None and role in DRIVES:
            say(f"sharing recording {recording} with room {room} (you are {role}: you drive the timeline)")
            sha, manifest = share_recording(store, recording, lambda data: client.put_blob(data).result(600))
            say(f"shared: {_size(manifest.archive_bytes)} in {len(manifest.pieces)} piece(s)")
            return WatchSession(client, store.open(recording), store.root / "blobs", sha, at=at, speed=speed,
                                playing=playing, summons=summons)
        if recording is not None:
            say(f"you are {role} in room {room}: you follow its driver (the host can hand you control)")
        state, received = _first_watch(client, room, wait_s)
        rid, manifest = fetch_recording(store, state.recording, lambda sha: client.get_blob(sha).result(600),
                                        progress=lambda got, size: say(f"fetching the recording: {_size(got)} of "
                                                                       f"{_size(size)}"))
        say(f"following {format_clock(manifest.duration)} of room {manifest.room_id!r} (recording {rid})")
        return WatchSession(client, store.open(rid), store.root / "blobs", state.recording, start=state,
                            received=received, summons=summons)
    except BaseException:
        client.close()
        raise


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _first_watch(client: Any, room: str, wait_s: float) -> tuple[WatchState, float]:
    """The driver's state, as soon as it says it (it repeats it once a second)."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            item = client.inbox.get(timeout=0.2)
        except queue.Empty:
            continue
        if item.kind == "event" and item.data[0] == "watch":
            try:
                return parse_watch(item.data[2]), time.monotonic()
            except ValidationError:
                continue
    raise DeepRoomError(f"nobody is driving a replay in room {room!r} (waited {wait_s:.0f} s): the host starts one "
                        f"with `deeproom replay RECORDING --relay URL --room {room}`")


def run_watch(session: WatchSession, run: Any) -> int:
    """The watch party in the app: a window, or offscreen (one snapshot), like `run_replay`."""
    from deeproom.scenes.replay import open_replay_app

    def describe(app: Any) -> str:
        live = sum(1 for pid in app.avatars if pid.startswith(LIVE_PREFIX))
        return f"{len(app.panels)} panels, {len(app.avatars) - live} recorded avatars, {live} live watchers"

    return open_replay_app(session, run, f"DeepRoom replay · {session.timeline.room_id} · watching together", describe)
