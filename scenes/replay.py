"""A recording played back as a read-only room in the app, with a timeline panel in the world.

    session = ReplaySession(read_timeline(path), blobs_dir, at=30.0, speed=1.0)
    app = RoomApp(session, options=...)
    attach_timeline(app)          # the timeline panel, its clicks and keys
    app.start(); app.run()

`ReplaySession` is a `Session` whose room is driven by a `deeproom.recording.Player`
on a worker thread of its own: it seeks and plays there (the Player reads presence
chunks from disk) and posts what changed into the ONE inbox the app drains once per
frame: `RoomUpdate` when the recorded room changed, `PosesUpdate` (every recorded
participant's head, hands and laser) 20 times a second, the recorded `stream` events
as they pass (live-run panels follow them), a notice at each chapter, and a
`ReplayClock` (where the playhead is) that the timeline panel shows. Panels' content
blobs are read from the recording store's blob folder by the app's content worker,
never in a frame. Everything that would change the room (`apply`, `put_blob`,
`send_event`, relay calls) is refused at once: the app shows the refusal as a notice.

The timeline panel (`TimelineGeometry`, pure; `TimelineView`, its entities) stands
in the world below eye level in front of where the viewer starts: a play/pause
button, speed buttons (0.5x 1x 2x 4x), the clock, and a bar with a mark per chapter
(summons, layouts loaded). A click on the bar seeks there; a click on a chapter mark
jumps to the chapter. Keys: space plays/pauses, 1-4 choose the speed, Tab brings the
timeline in front of you, G turns off (and on) being moved by recorded summons.

A recorded summon that names a place moves the viewer when playback passes it, as a live
summon does (the app's `summon` event); seeking past one does not. `sync(SyncTo)` makes the
session follow another player's timeline (a shared replay: `deeproom.scenes.replay_watch`).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeproom.errors import DeepRoomError
from deeproom.presence import Pose
from deeproom.recording import Chapter, Player, RecordedEvent, Timeline, format_clock
from deeproom.scenes import geometry
from deeproom.scenes.session import (
    ContentReady,
    EventMessage,
    Notice,
    PosesUpdate,
    RoomUpdate,
    SceneMessage,
    StatusUpdate,
)
from deeproom.state import Room, is_sha256

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

SPEEDS = (0.5, 1.0, 2.0, 4.0)
TICK_S = 0.05
"""Seconds between the worker's steps while playing (poses and clock 20 times a second)."""
SYNC_TOLERANCE_S = 0.1
"""A follower whose playhead is further than this from the driver's (two ticks) is brought to it."""
CATCH_UP_S = 5.0
"""A follower this far behind a playing driver plays forward to it (passing its summons); further, it seeks."""
VIEWER_ID = "replay-viewer"
"""The viewer's participant id: never one of the recorded participants, so all of them show."""


class ReadOnly(DeepRoomError):
    """An edit attempted in a replay."""


@dataclass(frozen=True)
class SyncTo:
    """A shared replay's driver said where its playhead is (see `deeproom.scenes.replay_watch`)."""

    t: float
    playing: bool
    speed: float
    jump: bool
    """The driver sought there (a follower seeks too: no summon on the way moves it)."""
    received: float
    """time.monotonic() when it arrived (a playing follower adds the time it waited)."""


@dataclass(frozen=True)
class ReplayClock:
    """Where the playhead is (posted by the worker, shown by the timeline panel)."""

    t: float
    duration: float
    playing: bool
    speed: float


def summon_spot(e: RecordedEvent) -> tuple[tuple[float, float, float], float | None] | None:
    """Where a recorded summon sends people (position, yaw in degrees), if it says so (a summon sent by
    a client that named only a panel moves nobody, live or replayed)."""
    pos, yaw = e.payload.get("position"), e.payload.get("yaw")
    if not (isinstance(pos, list | tuple) and len(pos) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1000 for v in pos)):
        return None
    ok_yaw = isinstance(yaw, int | float) and not isinstance(yaw, bool) and abs(yaw) < 1e6
    return (float(pos[0]), float(pos[1]), float(pos[2])), float(yaw) if ok_yaw else None


def _refused(what: str) -> concurrent.futures.Future[Any]:
    f: concurrent.futures.Future[Any] = concurrent.futures.Future()
    f.set_exception(ReadOnly(f"this is a replay (read-only): {what} is not kept"))
    return f


class ReplaySession:
    """A read-only room driven by a Player on its own thread (see the module docstring)."""

    def __init__(self, timeline: Timeline, blobs_dir: str | Path | None, *, at: float = 0.0, speed: float = 1.0,
                 playing: bool = True, participant_id: str = VIEWER_ID, summons: bool = True) -> None:
        if not 0 < speed <= 64:
            raise DeepRoomError(f"replay speed must be in (0, 64]; got {speed:g}")
        self.timeline = timeline
        self.blobs_dir = Path(blobs_dir) if blobs_dir is not None else None
        self.participant_id = participant_id
        self.is_replay = True
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.summons = summons
        """Whether a recorded summon moves the viewer when playback passes it (G toggles it)."""
        self.on_state: Callable[[ReplayClock, bool, bool], None] | None = None
        """Called on the worker's thread every tick with (clock, changed by a control here, jumped): a shared
        replay's driver sends what changed to the others."""
        self.clock = ReplayClock(min(max(at, 0.0), timeline.duration), timeline.duration, playing, speed)
        """The newest clock the app has drained (render thread)."""
        self.room: Room | None = None
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._closed = threading.Event()
        self._start = (self.clock.t, speed, playing)
        self.voice: Any = None
        """The recorded voices (`deeproom.scenes.replay_voice.attach_voice`), told the playhead; None: silent."""
        self.inbox.put(StatusUpdate(True, f"replay of {timeline.room_id} (read-only)"))
        if timeline.damage:
            self.inbox.put(Notice(f"recording damaged: {timeline.damage}"))
        self._thread = threading.Thread(target=self._run, name="deeproom-replay", daemon=True)
        self._thread.start()

    # --- the timeline's controls (any thread) ---------------------------------------------------

    def play(self) -> None:
        self._commands.put(("play", 0.0))

    def pause(self) -> None:
        self._commands.put(("pause", 0.0))

    def toggle(self) -> None:
        self._commands.put(("toggle", 0.0))

    def seek(self, t: float) -> None:
        self._commands.put(("seek", float(t)))

    def set_speed(self, speed: float) -> None:
        self._commands.put(("speed", float(speed)))

    def sync(self, to: SyncTo) -> None:
        """Follow a shared replay's driver (drift correction: see SYNC_TOLERANCE_S, CATCH_UP_S)."""
        self._commands.put(("sync", to))

    def toggle_summons(self) -> bool:
        self.summons = not self.summons
        self.inbox.put(Notice("recorded summons move you" if self.summons else
                              "recorded summons no longer move you (G turns them back on)", error=False))
        return self.summons

    def chapters(self) -> list[Chapter]:
        return list(self.timeline.chapters)

    # --- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        tl = self.timeline
        t, speed, playing = self._start
        try:
            player = Player(tl)
        except Exception as exc:  # an unreadable presence chunk: say so, keep the app alive
            self.inbox.put(Notice(f"replay cannot start: {type(exc).__name__}: {exc}"))
            return
        try:
            state = player.seek(t)
            applied = bisect.bisect_right(tl.update_times, t)
            self._post(state.room, state.poses, t, playing, speed)
            last = time.monotonic()
            while not self._closed.is_set():
                try:
                    cmd: tuple[str, Any] | None = self._commands.get(timeout=TICK_S)
                except queue.Empty:
                    cmd = None
                sought, told, changed, ahead = False, cmd is not None, False, None
                while cmd is not None:
                    name, value = cmd
                    changed = changed or name != "sync"
                    if name == "sync":
                        target = value.t + ((time.monotonic() - value.received) * value.speed if value.playing else 0.0)
                        target = min(max(target, 0.0), tl.duration)
                        playing, speed = value.playing, value.speed
                        err = target - t
                        if value.jump or (abs(err) > SYNC_TOLERANCE_S and not (playing and 0 < err <= CATCH_UP_S)):
                            t, sought, ahead = target, True, None
                        elif abs(err) > SYNC_TOLERANCE_S:
                            ahead = target  # behind a playing driver: play forward to it
                    elif name == "play":
                        playing = True
                        if t >= tl.duration:  # play at the end starts over
                            t, sought = 0.0, True
                    elif name == "pause":
                        playing = False
                    elif name == "toggle":
                        playing = not playing
                        if playing and t >= tl.duration:
                            t, sought = 0.0, True
                    elif name == "seek":
                        t, sought = min(max(value, 0.0), tl.duration), True
                    elif name == "speed" and 0 < value <= 64:
                        speed = value
                    try:
                        cmd = self._commands.get_nowait()
                    except queue.Empty:
                        cmd = None
                now = time.monotonic()
                if sought:
                    state = player.seek(t)
                    applied = bisect.bisect_right(tl.update_times, t)
                    self._post(state.room, state.poses, t, playing, speed)
                elif playing or ahead is not None:
                    t0 = t
                    t = min(tl.duration, ahead if ahead is not None else t + (now - last) * speed)
                    state = player.advance(t)
                    n = bisect.bisect_right(tl.update_times, t)
                    self._passed(player, t0, t)
                    if t >= tl.duration:
                        playing = False
                    self._post(state.room if n != applied else None, state.poses, t, playing, speed)
                    applied = n
                elif told:  # paused: a speed change or a pause still shows
                    self.inbox.put(ReplayClock(t, tl.duration, playing, speed))
                last = now
                if self.on_state is not None:
                    self.on_state(ReplayClock(t, tl.duration, playing, speed), changed, sought and changed)
        except Exception as exc:  # damage the reader did not catch: stop playing, say why
            self.inbox.put(Notice(f"replay stopped: {type(exc).__name__}: {exc}"))
        finally:
            player.close()

    def _post(self, room: Room | None, poses: Mapping[str, Pose], t: float, playing: bool, speed: float) -> None:
        if room is not None:
            self.inbox.put(RoomUpdate(room))
        if self.voice is not None:
            self.voice.follow(t, playing, speed, poses)
        self.inbox.put(PosesUpdate(dict(poses)))
        self.inbox.put(ReplayClock(t, self.timeline.duration, playing, speed))

    def _passed(self, player: Player, t0: float, t1: float) -> None:
        """What happened between t0 and t1 while playing: stream events, summons (unless the viewer
        turned them off), chapters. Seeking passes nothing."""
        for e in player.events_between(t0, t1):
            if e.kind == "stream":
                self.inbox.put(EventMessage("stream", e.sender, dict(e.payload)))
            elif e.kind == "summon" and self.summons and summon_spot(e) is not None:
                # the app moves the viewer as a live summon would (deeproom.scenes.pump: "summon")
                self.inbox.put(EventMessage("summon", e.sender, dict(e.payload)))
        for c in self.timeline.chapters:
            if t0 < c.t <= t1:
                self.inbox.put(Notice(f"{format_clock(c.t)} {c.title}", error=False))

    # --- Session --------------------------------------------------------------------------------

    def current_room(self) -> Room | None:
        return self.room

    def apply(self, op: Mapping[str, Any]) -> concurrent.futures.Future[Any]:
        return _refused(str(op.get("op", "the change")).replace("_", " "))

    def publish_pose(self, pose: Pose) -> None:
        """The viewer is not in the recorded room: the pose goes nowhere (recorded voices are heard from it)."""
        if self.voice is not None:
            self.voice.listen(pose.head_position, pose.head_rotation)

    def fetch_blob(self, sha: str) -> bytes:
        """A panel's content from the recording's blob store (the content worker's thread)."""
        if not is_sha256(sha):
            raise KeyError(f"not a blob id: {str(sha)[:20]!r}")
        if self.blobs_dir is None:
            raise KeyError("this recording has no blob store")
        path = self.blobs_dir / sha[:2] / sha[2:]
        try:
            return path.read_bytes()
        except OSError:
            raise KeyError(f"blob {sha[:12]}… is not in the recording (it was never uploaded while recording, "
                           "or the recording was imported without it)") from None

    def put_blob(self, data: bytes) -> concurrent.futures.Future[str]:
        return _refused("new content")

    def send_event(self, kind: str, payload: Mapping[str, Any], to: str | None = None) -> concurrent.futures.Future[Any]:
        return _refused(kind)

    def set_muted(self, muted: bool) -> bool:
        return False

    def press_to_talk(self, pressed: bool) -> bool:
        return False

    def call(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return _refused(method.replace("_", " "))

    def translate(self, item: Any) -> list[SceneMessage]:
        if isinstance(item, ReplayClock):
            self.clock = item  # the render thread keeps the newest; the timeline panel shows it
            return []
        if isinstance(item, RoomUpdate):
            self.room = item.room
        if isinstance(item, RoomUpdate | PosesUpdate | EventMessage | StatusUpdate | Notice | ContentReady):
            return [item]
        return []

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
        if self.voice is not None:
            self.voice.close()


# --- the timeline panel ------------------------------------------------------------------------

WIDTH = 1.0
HEIGHT = 0.16
ROW = 0.06
BAR_HEIGHT = 0.035
BAR_MARGIN = 0.03
MARK_HALF = 0.012
"""A click this close (metres along the bar) to a chapter mark jumps to the chapter."""
BUTTON = 0.1
"""Width of the play button and each speed button."""


@dataclass(frozen=True)
class TimelineGeometry:
    """Where the timeline panel's parts are, and what a ray hits (pure, tested without rendering)."""

    position: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    duration: float
    chapters: tuple[tuple[float, str], ...] = ()

    def frame(self) -> geometry.PanelFrame:
        return geometry.PanelFrame.of(self.position, self.rotation, (1.0, 1.0, 1.0), (WIDTH, HEIGHT))

    @property
    def bar_span(self) -> tuple[float, float]:
        """Face u of the bar's left and right ends."""
        return -WIDTH / 2 + BAR_MARGIN, WIDTH / 2 - BAR_MARGIN

    @property
    def bar_v(self) -> float:
        return -HEIGHT / 2 + BAR_MARGIN + BAR_HEIGHT / 2

    @property
    def button_v(self) -> float:
        return HEIGHT / 2 - ROW / 2 - 0.01

    def button_u(self, i: int) -> float:
        """Face u of button i's centre: 0 play/pause, 1.. the speeds."""
        return -WIDTH / 2 + BAR_MARGIN + BUTTON / 2 + i * (BUTTON + 0.01)

    def u_of(self, t: float) -> float:
        lo, hi = self.bar_span
        f = t / self.duration if self.duration > 0 else 0.0
        return lo + (hi - lo) * min(max(f, 0.0), 1.0)

    def t_of(self, u: float) -> float:
        lo, hi = self.bar_span
        return min(max((u - lo) / (hi - lo), 0.0), 1.0) * self.duration

    def world(self, u: float, v: float) -> np.ndarray:
        f = self.frame()
        return np.asarray(f.centre + f.right * u + f.up * v, np.float64)

    def pick(self, origin: Sequence[float], direction: Sequence[float]) -> tuple[str, float] | None:
        """("play", 0), ("speed", x), ("seek", t) or ("chapter", t) for a ray; ("panel", 0) elsewhere on it;
        None off the panel."""
        hit = geometry.ray_panel(origin, direction, self.frame())
        if hit is None:
            return None
        u, v = hit[2], hit[3]
        if abs(v - self.button_v) <= ROW / 2:
            for i in range(1 + len(SPEEDS)):
                if abs(u - self.button_u(i)) <= BUTTON / 2:
                    return ("play", 0.0) if i == 0 else ("speed", SPEEDS[i - 1])
        lo, hi = self.bar_span
        if abs(v - self.bar_v) <= BAR_HEIGHT / 2 + 0.01 and lo - 0.01 <= u <= hi + 0.01:
            near = [(abs(u - self.u_of(t)), t) for t, _ in self.chapters]
            if near and min(near)[0] <= MARK_HALF:
                return "chapter", min(near)[1]
            return "seek", self.t_of(u)
        return "panel", 0.0


def timeline_in_front(head_position: Sequence[float], head_rotation: Sequence[float], duration: float,
                      chapters: Sequence[Chapter]) -> TimelineGeometry:
    """The timeline a metre ahead of a head and 0.28 m below its eyes, facing it (in view on a 16:9 screen)."""
    p = geometry.ahead(head_position, head_rotation, 1.0) - np.array([0.0, 0.28, 0.0])
    return TimelineGeometry((float(p[0]), float(p[1]), float(p[2])), geometry.facing_quat(p, head_position),
                            duration, tuple((c.t, c.title) for c in chapters))


class TimelineView:
    """The timeline panel's entities; `show(clock)` each frame moves the playhead (cheap)."""

    def __init__(self, app: RoomApp, session: ReplaySession) -> None:
        self.app = app
        self.session = session
        self.geometry: TimelineGeometry | None = None
        self.root: Any = None
        self._shown: tuple[float, bool, float] | None = None

    def place(self, head_position: Sequence[float], head_rotation: Sequence[float]) -> TimelineGeometry:
        from panda3d.core import Quat
        from ursina import Entity, Text, color, destroy

        if self.root is not None:
            destroy(self.root)
        g = timeline_in_front(head_position, head_rotation, self.session.timeline.duration, self.session.chapters())
        self.geometry = g
        self.root = Entity(parent=self.app.scene_root, name="replay-timeline", position=g.position)
        self.root.set_quat(Quat(*g.rotation))
        Entity(parent=self.root, model="quad", scale=(WIDTH, HEIGHT), z=0.004, color=color.rgb(0.1, 0.11, 0.16))
        self.buttons: list[Any] = []
        for i in range(1 + len(SPEEDS)):
            b = Entity(parent=self.root, model="quad", scale=(BUTTON, ROW), position=(g.button_u(i), g.button_v, 0.003),
                       color=color.rgb(0.2, 0.32, 0.55))
            label = "play" if i == 0 else f"{SPEEDS[i - 1]:g}x"
            # "pause" is the longest label: smaller on the play button so it stays inside it
            t = Text(label, parent=self.root, origin=(0, 0), scale=1.3 if i == 0 else 1.6,
                     position=(g.button_u(i), g.button_v, -0.001),
                     color=color.rgb(0.95, 0.96, 1))
            self.buttons.append((b, t))
        self.clock_text = Text("", parent=self.root, origin=(0.5, 0), scale=1.6,
                               position=(WIDTH / 2 - BAR_MARGIN, g.button_v, -0.001), color=color.rgb(0.85, 0.88, 0.95))
        lo, hi = g.bar_span
        Entity(parent=self.root, model="quad", scale=(hi - lo, BAR_HEIGHT), position=((lo + hi) / 2, g.bar_v, 0.003),
               color=color.rgb(0.22, 0.24, 0.3))
        self.fill = Entity(parent=self.root, model="quad", scale=(1e-4, BAR_HEIGHT), position=(lo, g.bar_v, 0.002),
                           color=color.rgb(0.35, 0.6, 0.95))
        for t_c, _ in g.chapters:
            Entity(parent=self.root, model="quad", scale=(0.008, BAR_HEIGHT + 0.016),
                   position=(g.u_of(t_c), g.bar_v, 0.001), color=color.rgb(1.0, 0.8, 0.25))
        self.head = Entity(parent=self.root, model="quad", scale=(0.006, BAR_HEIGHT + 0.01), position=(lo, g.bar_v, 0.0),
                           color=color.white)
        self._shown = None
        return g

    def show(self, clock: ReplayClock) -> None:
        from ursina import color

        g = self.geometry
        if g is None:
            return
        key = (round(clock.t, 2), clock.playing, clock.speed)
        if key == self._shown:
            return
        self._shown = key
        lo, _ = g.bar_span
        u = g.u_of(clock.t)
        self.fill.scale_x = max(u - lo, 1e-4)
        self.fill.x = lo + (u - lo) / 2
        self.head.x = u
        self.buttons[0][1].text = "pause" if clock.playing else "play"
        for i, s in enumerate(SPEEDS):
            on = abs(s - clock.speed) < 1e-9
            self.buttons[i + 1][0].color = color.rgb(0.3, 0.55, 0.35) if on else color.rgb(0.2, 0.32, 0.55)
        self.clock_text.text = f"{format_clock(clock.t)} / {format_clock(clock.duration)}"

    def press(self, origin: Any, direction: Any) -> bool:
        """A click on the timeline: acts and returns True; False when the ray misses it."""
        g = self.geometry
        if g is None:
            return False
        what = g.pick(origin, direction)
        if what is None:
            return False
        s = self.session
        kind, value = what
        if kind == "play":
            s.toggle()
        elif kind == "speed":
            s.set_speed(value)
        elif kind in ("seek", "chapter"):
            s.seek(value)
        return True


def attach_timeline(app: RoomApp) -> TimelineView:
    """Give a RoomApp on a ReplaySession its timeline panel, clicks and keys (before `app.start()`)."""
    from deeproom.scenes.input import Input

    session = app.session
    if not isinstance(session, ReplaySession):
        raise DeepRoomError("the timeline panel needs a ReplaySession")
    view = TimelineView(app, session)

    class ReplayInput(Input):
        def press(self, origin: np.ndarray, direction: np.ndarray) -> Any:
            if not app.menus.is_open and view.press(origin, direction):
                return None
            return super().press(origin, direction)

        def key(self, name: str) -> None:
            if app.search.active or app.menus.is_open:
                super().key(name)
            elif name == "space":
                session.toggle()
            elif name in ("1", "2", "3", "4"):
                session.set_speed(SPEEDS[int(name) - 1])
            elif name == "tab" and app.rig is not None:
                view.place(*app.rig.head())
            elif name == "g":
                # summoning is refused in a replay; G says whether recorded summons move you
                session.toggle_summons()
            elif name != "space up":
                super().key(name)

    app.input = ReplayInput(app)

    def frame(a: RoomApp) -> None:
        if view.geometry is None and a.rig is not None:
            view.place(*a.rig.head())
        view.show(session.clock)

    app.on_frame.append(frame)
    return view


def blobs_dir_for(timeline_path: Path) -> Path:
    """The blob store beside a recording (`recordings/<id>/timeline.drrec` -> `recordings/blobs`)."""
    return timeline_path.parent.parent / "blobs"


def run_replay(timeline: Timeline, *, at: float, speed: float, run: Any, blobs_dir: Path | None = None,
               summons: bool = True) -> int:
    """`deeproom replay`: the recording as a read-only room, in a window or offscreen (snapshot)."""
    session = ReplaySession(timeline, blobs_dir if blobs_dir is not None else blobs_dir_for(timeline.path),
                            at=at, speed=speed, playing=True, summons=summons)
    return open_replay_app(session, run, f"DeepRoom replay · {timeline.room_id}",
                           lambda app: f"{len(app.panels)} panels, {len(app.avatars)} avatars")


def open_replay_app(session: ReplaySession, run: Any, title: str, describe: Callable[[Any], str]) -> int:
    """A replay session in the app with its timeline panel and recorded voices: a window, or
    offscreen (one snapshot, then a line ending with `describe(app)`). Closes the session."""
    from deeproom.scenes.app import AppOptions, RoomApp
    from deeproom.scenes.replay_voice import attach_voice
    from deeproom.scenes.runner import content_settled, wait_for

    attach_voice(session, speakers=not run.headless)  # each speaker's recorded voice, from their avatar
    app = RoomApp(session, options=AppOptions(offscreen=run.headless, size=run.size, start_position=(0.0, 1.7, -1.4),
                                              title=title))
    attach_timeline(app)
    try:
        app.start()
        if not run.headless:
            app.limit_fps(60)
            app.run()
            return 0
        wait_for(app, lambda: app.room is not None and content_settled(app), run.wait_s)
        app.step(max(run.frames, 1))
        path = app.save_snapshot(run.snapshot or Path("snapshots") / "replay.png")
        c = session.clock
        print(f"snapshot written to {path} at {format_clock(c.t)} of {format_clock(c.duration)}; {describe(app)}")
        return 0
    finally:
        app.close()
        session.close()
