"""The room app: one Ursina app per process that shows a room and turns input into operations.

    app = RoomApp(session, options=AppOptions(offscreen=True, size=(640, 480)))
    app.start()                      # creates the Ursina app (once per process)
    app.step(10)                     # runs 10 frames (offscreen) ...
    app.save_snapshot("room.png")
    app.run()                        # ... or hands the loop to Ursina (desktop window)

What the app owns: the scene graph (floor, panels, avatars, HUD), one `PanelView`
per panel, one `AvatarView` per other participant, and the per-frame pump
(`_frame`): it drains the session's ONE inbox queue (room snapshots, poses, events,
status, prepared content), syncs the views, eases avatars, and publishes the local
pose ~20 times a second. Nothing in the pump does network, file or torch work:
blobs are fetched and decoded by the content worker thread, analyses run in the
content provider's thread; both post results into the same inbox.

What a rig provides (`Rig`): the camera(s), head and hand poses, the pointer ray,
teleport/follow, and device input, which it turns into the app's input methods:
`pointer_press/pointer_move/pointer_release(origin, direction)` and `key(name)`.
`DesktopRig` (keyboard and mouse, or a script offscreen) is the default; the XR
engineer's rig (`deeproom.scenes.xr`) plugs in the same way: pass `rig=` to RoomApp
or call `app.set_rig(rig)` before `start()`.

Input mapping (desktop): WASD walk, right-drag or arrow keys look, left-drag a title
bar to move a panel (Q/E rotate, +/- or wheel scale while it is selected), drag the
bottom-right corner to resize, click x to close, L lock/unlock; click a layer of a
model graph to open its feature maps, filters and Grad-CAM; click a grey group to
expand it, C to collapse the selected layer's group; in a latent cloud click to
select a sphere (B for box mode, wheel for radius), digits label the selection,
R retrains on it, I shows its images, V colours by label/prediction/confidence;
Tab opens the add-panel menu; T teleports to where you point; F starts/stops
following you (presenters), G summons everyone to you.
"""

from __future__ import annotations

import concurrent.futures
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deeproom.presence import HandPose, PointerRay, Pose
from deeproom.scenes import geometry
from deeproom.scenes.menu import WorldMenu
from deeproom.scenes.prepared import (
    ContentFailure,
    ContentRequest,
    prepare_blob,
    prepare_source_only,
)
from deeproom.scenes.session import (
    ContentReady,
    EventMessage,
    Notice,
    PosesUpdate,
    RoomUpdate,
    Session,
    StatusUpdate,
)
from deeproom.state import PanelKind, Room

Vec3 = tuple[float, float, float]
QuatT = tuple[float, float, float, float]

POSE_INTERVAL = 0.05
"""Seconds between published poses (20 Hz)."""
MAX_MESSAGES_PER_FRAME = 200
"""A burst of messages is spread over frames rather than stalling one."""
MOVE_INTERVAL = 0.1
STEER_COMMANDS = {"label": "label_ids", "retrain": "retrain", "open_layer": "open_layer"}
"""App actions as the "cmd" of the steer events a panel's owner receives (see docs/scenes.md)."""
PREVIEW_TIMEOUT = 3.0
"""Seconds a keyed move is shown before the room confirms it (a refused one snaps back)."""
"""Seconds between move operations sent while dragging (the last one is always sent)."""


class AppError(Exception):
    pass


@dataclass(frozen=True)
class AppOptions:
    size: tuple[int, int] = (1280, 720)
    """Window or offscreen buffer size in pixels."""
    offscreen: bool = False
    """Render with Panda3D's EGL display into a buffer (no window, no X server)."""
    title: str = "DeepRoom"
    fov: float = 75.0
    start_position: Vec3 = (0.0, 1.6, -1.2)
    """Where the viewer stands at first (eye height 1.6 m)."""
    start_yaw: float = 0.0


class Rig(Protocol):
    """Cameras, poses and device input for the app (desktop or XR)."""

    def attach(self, app: RoomApp) -> None: ...

    def update(self, dt: float) -> None: ...

    def head(self) -> tuple[Vec3, QuatT]: ...

    def hands(self) -> tuple[HandPose | None, HandPose | None]: ...

    def pointer_ray(self) -> tuple[np.ndarray, np.ndarray] | None: ...

    def teleport(self, position: Vec3, yaw_degrees: float | None = None) -> None: ...

    def follow(self, position: Vec3, rotation: QuatT, dt: float) -> None: ...

    def input(self, key: str) -> None: ...

    def detach(self) -> None: ...


class ContentProvider(Protocol):
    """The engine side of the app (the demo's, or `open`'s): runs analyses off the render thread."""

    def request(self, action: str, payload: Mapping[str, Any]) -> None: ...


class ContentWorker:
    """Fetches and prepares blobs in its own thread; results go into the session's inbox."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="deeproom-content")
        self._closed = False

    def submit(self, req: ContentRequest, key: str) -> None:
        if not self._closed:
            self._pool.submit(self._run, req, key)

    def _run(self, req: ContentRequest, key: str) -> None:
        try:
            if req.sha is None:
                prepared: Any = prepare_source_only(req.kind, req.source, req.size)
            else:
                try:
                    data = self.session.fetch_blob(req.sha)
                except Exception as exc:  # any failure to get the bytes shows as an error card
                    prepared = ContentFailure(f"content blob {req.sha[:12]}… could not be fetched: {exc}")
                else:
                    prepared = prepare_blob(req.kind, data, req.size)
        except Exception as exc:  # a bug in a painter must not kill the worker
            prepared = ContentFailure(f"preparing content failed: {type(exc).__name__}: {exc}")
        self.session.inbox.put(ContentReady(req.panel_id, key, prepared))

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


_URSINA_STARTED = False


def _configure_panda(offscreen: bool) -> None:
    from panda3d.core import load_prc_file_data

    lines = ["audio-library-name null", "sync-video 0", "notify-level-glgsg fatal"]
    if offscreen:
        lines.insert(0, "load-display p3headlessgl")
    load_prc_file_data("deeproom", "\n".join(lines) + "\n")


@dataclass
class _Drag:
    panel_id: str
    mode: str  # "move" or "resize"
    plane_point: np.ndarray
    plane_normal: np.ndarray
    offset: np.ndarray  # panel centre minus grab point (move)
    last_sent: float = 0.0
    moved: bool = False


class RoomApp:
    """See the module docstring."""

    def __init__(self, session: Session, *, options: AppOptions | None = None, rig: Rig | None = None,
                 provider: ContentProvider | None = None) -> None:
        self.session = session
        self.options = options or AppOptions()
        self.rig = rig
        self.provider = provider
        self.room: Room | None = None
        self.panels: dict[str, Any] = {}  # panel id -> PanelView
        self.avatars: dict[str, Any] = {}  # participant id -> AvatarView
        self.poses: dict[str, Pose] = {}
        self.connected = True
        self.status_text = ""
        self.notices: list[tuple[float, str, bool]] = []
        self.selected: str | None = None
        self.drag: _Drag | None = None
        self.tool = "sphere"
        self.cloud_radius = 0.08
        self.box_start: tuple[str, np.ndarray] | None = None
        self.menu = WorldMenu()  # the add-panel menu: a panel in the world, so it reaches a headset too
        self.muted = False  # your microphone, when the session carries voice
        self.frames = 0
        self.frame_times: list[float] = []
        self._pose_seq = 0
        self._last_pose = 0.0
        self._last_frame = time.monotonic()
        self._pending_content: dict[str, str] = {}  # panel id -> key of the content it waits for
        self._worker = ContentWorker(session)
        self._started = False
        self._closed = False
        self.following: str | None = None
        self.ops_sent: list[dict[str, Any]] = []
        self.on_frame: list[Callable[[RoomApp], None]] = []
        self._previews: dict[str, float] = {}  # panel id -> when a keyed move was shown
        self._aspect = 0.0

    # --- life cycle ---------------------------------------------------------------------------

    def set_rig(self, rig: Rig) -> None:
        if self.rig is not None and self._started:
            self.rig.detach()
        self.rig = rig
        if self._started:
            rig.attach(self)

    def start(self) -> None:
        global _URSINA_STARTED
        if _URSINA_STARTED:
            raise AppError("Ursina allows one app per process; this process already started one")
        _URSINA_STARTED = True
        _configure_panda(self.options.offscreen)
        from ursina import Entity, Ursina, camera, color, window

        w, h = self.options.size
        if self.options.offscreen:
            self.ursina = Ursina(window_type="offscreen", size=(w, h), development_mode=False,
                                 editor_ui_enabled=False)
        else:
            self.ursina = Ursina(title=self.options.title, size=(w, h), development_mode=False,
                                 editor_ui_enabled=False, borderless=False)
        window.update_aspect_ratio()
        window.color = color.rgb(0.07, 0.08, 0.11)
        camera.fov = self.options.fov
        camera.clip_plane_near = 0.03
        self.scene_root = Entity(name="room")
        self.panel_root = Entity(parent=self.scene_root, name="panels")
        self.avatar_root = Entity(parent=self.scene_root, name="avatars")
        self._build_environment()
        from deeproom.scenes.hud import Hud

        self.hud = Hud(self)
        self.hud.build()
        from deeproom.scenes.avatars import Laser

        # Your own lasers, drawn where you can see them, when you point with tracked hands
        # (controllers in XR; the one you last pressed with is the pointer, the other dimmer);
        # on the desktop the mouse cursor is the pointer.
        self._laser_colours = (color.rgb(0.55, 0.85, 1.0), color.rgb(0.3, 0.42, 0.5))  # pointer, other hand
        self.own_lasers = {side: Laser(self.avatar_root, self._laser_colours[0]) for side in ("left", "right")}
        app = self

        class _Pump(Entity):  # the one per-frame hook
            def update(self) -> None:
                app._frame()

            def input(self, key: str) -> None:
                app._device_input(key)

        self._pump = _Pump(name="pump")
        if self.rig is None:
            from deeproom.scenes.rigs import DesktopRig

            self.rig = DesktopRig()
        self.rig.attach(self)
        self.rig.teleport(self.options.start_position, self.options.start_yaw)
        self._started = True

    def _build_environment(self) -> None:
        from ursina import Entity, color

        from deeproom.scenes.views import ursina_texture

        size = 64
        img = np.full((size, size, 3), (26, 29, 38), np.uint8)
        img[0, :] = img[:, 0] = (52, 58, 76)
        self.floor = Entity(parent=self.scene_root, model="plane", scale=(40, 1, 40), y=0,
                            texture=ursina_texture(img, mipmap=True), texture_scale=(40, 40), color=color.white)

    def step(self, frames: int = 1) -> None:
        """Run `frames` frames now (offscreen use and tests)."""
        for _ in range(frames):
            self.ursina.step()

    def run(self) -> None:
        """Hand the loop to Ursina (desktop window) until it closes."""
        self.ursina.run()

    def limit_fps(self, fps: float | None) -> None:
        """Cap the frame rate (None: uncapped). On a CPU renderer an uncapped window
        takes the cores the engine needs while it trains."""
        from panda3d.core import ClockObject

        clock = ClockObject.get_global_clock()
        if fps is None:
            clock.set_mode(ClockObject.M_normal)
        else:
            clock.set_mode(ClockObject.M_limited)
            clock.set_frame_rate(float(fps))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._worker.close()
        if self.rig is not None:
            self.rig.detach()

    # --- pixels -------------------------------------------------------------------------------

    def screenshot(self) -> np.ndarray:
        """The last rendered frame as RGBA uint8 [H, W, 4], row 0 at the top."""
        base = self.ursina
        tex = base.win.get_screenshot()
        if tex is None:
            raise AppError("no frame rendered yet")
        data = np.frombuffer(tex.get_ram_image_as("RGBA").get_data(), np.uint8)
        return data.reshape(tex.get_y_size(), tex.get_x_size(), 4)[::-1].copy()

    def save_snapshot(self, path: str | Path) -> Path:
        from PIL import Image

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.screenshot()[:, :, :3]).save(p)
        return p

    def screen_size(self) -> tuple[int, int]:
        win = self.ursina.win
        return int(win.get_x_size()), int(win.get_y_size())

    def world_to_screen(self, point: Any) -> tuple[float, float] | None:
        """Pixel (x, y from the top-left) where a world point is drawn, or None if off camera."""
        from panda3d.core import Point2, Point3

        base = self.ursina
        p = base.cam.get_relative_point(base.render, Point3(*(float(c) for c in point)))
        p2 = Point2()
        if not base.camLens.project(p, p2):
            return None
        w, h = self.screen_size()
        return (float(p2[0]) + 1) / 2 * w, (1 - float(p2[1])) / 2 * h

    def screen_ray(self, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        """Ray (origin, unit direction) through pixel (x, y from the top-left)."""

        w, h = self.screen_size()
        return self.film_ray(2 * x / w - 1, 1 - 2 * y / h)

    def film_ray(self, fx: float, fy: float) -> tuple[np.ndarray, np.ndarray]:
        from panda3d.core import Point2, Point3

        base = self.ursina
        near, far = Point3(), Point3()
        base.camLens.extrude(Point2(fx, fy), near, far)
        n = base.render.get_relative_point(base.cam, near)
        f = base.render.get_relative_point(base.cam, far)
        o = np.array([n[0], n[1], n[2]], np.float64)
        d = np.array([f[0] - n[0], f[1] - n[1], f[2] - n[2]], np.float64)
        return o, d / (np.linalg.norm(d) or 1.0)

    def resize(self, width: int, height: int) -> None:
        """Follow a window (or buffer) resize: new size, lens aspect, HUD layout."""
        from ursina import window

        win = self.ursina.win
        if hasattr(win, "set_size") and self.options.offscreen:
            win.set_size(int(width), int(height))
        self.ursina.camLens.set_aspect_ratio(width / max(height, 1))
        window.update_aspect_ratio()
        self.hud.layout()

    # --- the per-frame pump -------------------------------------------------------------------

    def _frame(self) -> None:
        t0 = time.monotonic()
        dt = min(t0 - self._last_frame, 0.25)
        self._last_frame = t0
        self.drain()
        for pid, since in list(self._previews.items()):
            if t0 - since > PREVIEW_TIMEOUT:  # the room never confirmed: show what it says
                self._previews.pop(pid)
                view = self.panels.get(pid)
                if view is not None:
                    view.end_preview()
        if self.rig is not None:
            self.rig.update(dt)
            self._show_own_laser()
        self._follow(dt)
        viewer = np.array(self.rig.head()[0]) if self.rig is not None else None
        for view in self.panels.values():
            if view.content is not None and viewer is not None:
                view.content.sync(view.to_local(viewer), t0)
        for pid, av in self.avatars.items():
            pose = self.poses.get(pid)
            dist = None
            if pose is not None and pose.pointer is not None:
                hit = self.pick(np.array(pose.pointer.origin), np.array(pose.pointer.direction))
                dist = hit.distance if hit is not None else None
            av.tick(dt, dist, viewer)
        if t0 - self._last_pose >= POSE_INTERVAL:
            self._last_pose = t0
            self._publish_pose()
        for cb in list(self.on_frame):
            cb(self)
        from ursina import window

        if window.aspect_ratio != self._aspect:  # the window was resized: the HUD follows
            self._aspect = window.aspect_ratio
            self.hud.layout()
        self.hud.update(t0)
        self.frames += 1
        self.frame_times.append(time.monotonic() - t0)
        if len(self.frame_times) > 600:
            del self.frame_times[:300]

    def _show_own_laser(self) -> None:
        assert self.rig is not None
        hand_rays = getattr(self.rig, "hand_rays", None)  # rigs with two pointing hands (XR)
        if hand_rays is not None:
            rays, active = hand_rays(), getattr(self.rig, "active_hand", "right")
        else:
            ray = self.rig.pointer_ray() if self.rig.hands()[1] is not None else None
            rays, active = ({"right": ray} if ray is not None else {}), "right"
        for side, laser in self.own_lasers.items():
            ray = rays.get(side)
            if ray is None:
                laser.hide()
                continue
            on_menu = geometry.ray_panel(ray[0], ray[1], self.menu.geometry.frame()) if self.menu.geometry else None
            hit = self.pick(*ray)
            ends = [d for d in (on_menu[0] if on_menu else None, hit.distance if hit else None) if d is not None]
            distance = min(ends) if ends else None
            laser.colour(self._laser_colours[0] if side == active else self._laser_colours[1])
            laser.show(ray[0], ray[1], distance)

    def drain(self) -> int:
        """Apply what arrived (bounded per frame). Returns how many messages were handled."""
        handled = 0
        latest_room: Room | None = None
        while handled < MAX_MESSAGES_PER_FRAME:
            try:
                item = self.session.inbox.get_nowait()
            except queue.Empty:
                break
            handled += 1
            for msg in self.session.translate(item):
                try:
                    if isinstance(msg, RoomUpdate):
                        latest_room = msg.room  # only the newest snapshot matters
                    elif isinstance(msg, PosesUpdate):
                        self._poses(msg.poses)
                    elif isinstance(msg, ContentReady):
                        self._content(msg)
                    elif isinstance(msg, EventMessage):
                        self._event(msg)
                    elif isinstance(msg, StatusUpdate):
                        self.connected = msg.connected
                        self.status_text = msg.text
                    elif isinstance(msg, Notice):
                        self.notify(msg.text, error=msg.error)
                except Exception as exc:  # one bad message must not stop the room
                    self.notify(f"could not apply {type(msg).__name__}: {type(exc).__name__}: {exc}")
        if latest_room is not None:
            try:
                self._room(latest_room)
            except Exception as exc:
                self.notify(f"could not show the room: {type(exc).__name__}: {exc}")
        return handled

    def _room(self, room: Room) -> None:
        from deeproom.scenes.views import PanelView

        self.room = room
        for pid in list(self.panels):
            if pid not in room.panels:
                self.panels.pop(pid).teardown()
                self._pending_content.pop(pid, None)
                if self.selected == pid:
                    self.selected = None
                if self.drag is not None and self.drag.panel_id == pid:
                    self.drag = None
        for pid, panel in room.panels.items():
            view = self.panels.get(pid)
            if view is None:
                view = PanelView(self.panel_root, panel, self.colour_of)
                view.build()
                self.panels[pid] = view
                self._request_content(view)
            else:
                if self.drag is not None and self.drag.panel_id == pid and view.preview is not None:
                    view.panel = panel  # keep showing the drag preview until release
                    continue
                if pid in self._previews and view.preview is not None:
                    t = panel.transform
                    if np.allclose([*t.position, *t.rotation, *t.scale], [c for part in view.preview for c in part], atol=1e-5):
                        self._previews.pop(pid)
                        view.preview = None
                if view.sync(panel):
                    self._request_content(view)
        me = self.session.participant_id
        for pid in list(self.avatars):
            if pid not in room.participants:
                self.avatars.pop(pid).teardown()
        for pid, part in room.participants.items():
            if pid == me:
                continue
            av = self.avatars.get(pid)
            if av is None:
                from deeproom.scenes.avatars import AvatarView

                av = AvatarView(self.avatar_root, pid)
                av.build()
                self.avatars[pid] = av
            av.sync(self.poses.get(pid), part.name, part.colour)

    def _request_content(self, view: Any) -> None:
        p = view.panel
        sha = p.content.refs[0] if p.content.refs else None
        key = f"{sha}:{view.size[0]:.3f}x{view.size[1]:.3f}"
        if self._pending_content.get(p.id) == key or view.content_key == key:
            return
        self._pending_content[p.id] = key
        if view.content is None:
            view.show(ContentFailure("loading…", waiting=True), "")
        self._worker.submit(ContentRequest(p.id, p.kind.value, sha, tuple(view.size), dict(p.content.source)), key)

    def _content(self, msg: ContentReady) -> None:
        view = self.panels.get(msg.panel_id)
        if view is None or self._pending_content.get(msg.panel_id) != msg.key:
            return  # stale: the panel changed or went away meanwhile
        del self._pending_content[msg.panel_id]
        view.show(msg.prepared, msg.key)

    def _poses(self, poses: Mapping[str, Pose]) -> None:
        me = self.session.participant_id
        for pid, pose in poses.items():
            if pid == me:
                continue
            self.poses[pid] = pose
            av = self.avatars.get(pid)
            if av is not None:
                av.sync(pose, av.name, av.colour)

    def _event(self, msg: EventMessage) -> None:
        if msg.kind == "summon":
            pos = msg.payload.get("position")
            yaw = msg.payload.get("yaw")
            if (isinstance(pos, list | tuple) and len(pos) == 3 and all(isinstance(v, int | float) for v in pos)
                    and all(math.isfinite(v) and abs(v) < 1000 for v in pos) and self.rig is not None):
                self.rig.teleport((float(pos[0]), float(pos[1]), float(pos[2])),
                                  float(yaw) if isinstance(yaw, int | float) and math.isfinite(yaw) else None)
                self.notify(f"{self.name_of(msg.sender)} summoned you", error=False)
        elif msg.kind == "notice":
            text = msg.payload.get("text")
            if isinstance(text, str):
                self.notify(text[:200], error=bool(msg.payload.get("error", False)))

    def _follow(self, dt: float) -> None:
        room = self.room
        self.following = None
        if room is None or self.rig is None:
            return
        s = room.settings
        me = self.session.participant_id
        if s.follow.value == "presenter" and s.presenter and s.presenter != me:
            pose = self.poses.get(s.presenter)
            self.following = s.presenter
            if pose is not None:
                # Stand half a metre behind the presenter, looking where they look.
                rot = pose.head_rotation
                fwd = geometry.quat_matrix(rot)[:, 2]
                back = np.array(pose.head_position) - 0.5 * np.array([fwd[0], 0.0, fwd[2]])
                self.rig.follow((float(back[0]), float(back[1]), float(back[2])), rot, dt)

    def _publish_pose(self) -> None:
        if self.rig is None:
            return
        pos, rot = self.rig.head()
        left, right = self.rig.hands()
        ray = self.rig.pointer_ray()
        pointer = None
        if ray is not None and (self.drag is not None or self.pick(ray[0], ray[1]) is not None):
            pointer = PointerRay(tuple(float(c) for c in ray[0]), tuple(float(c) for c in ray[1]))  # type: ignore[arg-type]
        self._pose_seq += 1
        try:
            self.session.publish_pose(Pose(head_position=pos, head_rotation=rot, left=left, right=right,
                                           pointer=pointer, seq=self._pose_seq, sent_at=time.time()))
        except Exception as exc:  # a lost relay must not stop the frame loop
            self.connected = False
            self.status_text = f"pose not sent: {exc}"

    # --- helpers ----------------------------------------------------------------------------

    def colour_of(self, participant_id: str) -> str:
        if self.room is not None and participant_id in self.room.participants:
            return self.room.participants[participant_id].colour
        return "#e0b040"

    def name_of(self, participant_id: str) -> str:
        if self.room is not None and participant_id in self.room.participants:
            return self.room.participants[participant_id].name
        return participant_id

    def notify(self, text: str, *, error: bool = True) -> None:
        self.notices.append((time.monotonic(), text, error))
        del self.notices[:-4]

    def apply(self, op: dict[str, Any]) -> concurrent.futures.Future[Any]:
        """Send a core operation; a refusal comes back as a notice on screen."""
        self.ops_sent.append(op)
        fut = self.session.apply(op)
        inbox = self.session.inbox

        def done(f: concurrent.futures.Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                inbox.put(Notice(f"{op.get('op')} refused: {exc}"))

        fut.add_done_callback(done)
        return fut

    def pick(self, origin: np.ndarray, direction: np.ndarray) -> Any:
        """The nearest panel hit by a ray (a views.Hit), or None."""
        best = None
        for view in self.panels.values():
            h = view.hit(origin, direction)
            if h is not None and (best is None or h.distance < best.distance):
                best = h
        return best

    # --- input: the same for mouse, controllers and tests ----------------------------------

    def pointer_press(self, origin: np.ndarray, direction: np.ndarray) -> Any:
        """Primary button down along a ray. Returns the Hit (or None)."""
        origin, direction = np.asarray(origin, float), np.asarray(direction, float)
        if self.menu.geometry is not None:  # a click on a row adds that kind; anywhere else closes the menu
            row = self.menu.geometry.pick(origin, direction)
            kinds = self.menu.geometry.items
            self.close_menu()
            if row is not None:
                self.add_panel(kinds[row])
            return None
        hit = self.pick(origin, direction)
        self._select(hit.panel_id if hit is not None else None)
        if hit is None:
            return None
        view = self.panels[hit.panel_id]
        if hit.region == "close":
            self.apply({"op": "remove_panel", "panel_id": hit.panel_id})
        elif hit.region in ("title", "resize"):
            f = view.frame()
            pos, _, _ = view.transform
            self.drag = _Drag(hit.panel_id, "move" if hit.region == "title" else "resize", f.centre.copy(),
                              f.normal.copy(), np.asarray(pos, float) - np.asarray(hit.point, float))
            if view.panel.lock_holder is None:
                self.apply({"op": "lock_panel", "panel_id": hit.panel_id})
        elif hit.region == "body":
            self._body_click(view, hit, origin, direction)
        return hit

    def pointer_move(self, origin: np.ndarray, direction: np.ndarray) -> None:
        d = self.drag
        if d is None:
            return
        view = self.panels.get(d.panel_id)
        if view is None:
            self.drag = None
            return
        res = geometry.ray_plane(origin, direction, d.plane_point, d.plane_normal)
        if res is None:
            return
        _, p = res
        d.moved = True
        if d.mode == "move":
            _, rot, scale = view.transform
            new = p + d.offset
            view.set_preview((float(new[0]), float(new[1]), float(new[2])), rot, scale)
        else:
            f = view.frame()
            u, v = f.local(p)
            _, _, scale = view.transform
            w0, h0 = view.panel.size
            left = -w0 / 2 * scale[0]
            top = h0 / 2 * scale[1]
            # the top-left corner stays put; the face grows toward the pointer
            w = float(np.clip((u - left) / scale[0], 0.2, 20.0))
            h = float(np.clip((top - v) / scale[1], 0.15, 20.0))
            view.preview_size = (w, h)
        now = time.monotonic()
        if now - d.last_sent >= MOVE_INTERVAL:
            d.last_sent = now
            self._send_drag(view, d)

    def pointer_release(self, origin: np.ndarray | None = None, direction: np.ndarray | None = None) -> None:
        d = self.drag
        if d is None:
            if self.box_start is not None and origin is not None and direction is not None:
                self._finish_box(np.asarray(origin, float), np.asarray(direction, float))
            return
        if origin is not None and direction is not None:
            self.pointer_move(np.asarray(origin, float), np.asarray(direction, float))
        self.drag = None
        view = self.panels.get(d.panel_id)
        if view is None:
            return
        if d.moved:
            self._send_drag(view, d)
        if d.mode == "move":
            view.end_preview()
        else:
            self._resize_to(view)
        if view.panel.lock_holder in (None, self.session.participant_id):
            self.apply({"op": "unlock_panel", "panel_id": d.panel_id})

    def _send_drag(self, view: Any, d: _Drag) -> None:
        if d.mode == "move":
            pos, rot, scale = view.transform
            self.apply({"op": "move_panel", "panel_id": d.panel_id,
                        "transform": {"position": list(pos), "rotation": list(rot), "scale": list(scale)}})
        elif view.preview_size is not None:
            self.apply({"op": "resize_panel", "panel_id": d.panel_id, "size": list(view.preview_size)})

    def _resize_to(self, view: Any) -> None:
        size = view.preview_size
        if size is not None:
            view.preview_size = None
            view.panel = view.panel  # the room's confirmation rebuilds the frame at the new size

    def _select(self, panel_id: str | None) -> None:
        if self.selected == panel_id:
            return
        if self.selected in self.panels:
            self.panels[self.selected].set_selected(False)
        self.selected = panel_id
        if panel_id is not None:
            self.panels[panel_id].set_selected(True)

    def _body_click(self, view: Any, hit: Any, origin: np.ndarray, direction: np.ndarray) -> None:
        from deeproom.scenes.views import CloudView, GraphView

        content = view.content
        if isinstance(content, GraphView):
            action = content.click(hit.u, hit.v)
            if action is None:
                return
            kind, _, arg = action.partition(":")
            if kind == "expand":
                collapsed = set(content.collapsed)
                collapsed.discard(arg)
                view.graph_collapsed = collapsed
                view.show(view.prepared, view.content_key or "")
            elif kind == "layer":
                self.open_layer(view, arg)
        elif isinstance(content, CloudView):
            local = view.to_local(np.asarray(hit.point))
            mid = content.pos[:, 2].mean() if len(content.pos) else 0.0
            centre = np.array([local[0], local[1], mid], np.float32)
            if self.tool == "box":
                self.box_start = (view.panel.id, centre)
            else:
                sel = content.select_sphere(centre, self.cloud_radius)
                self.notify(f"{len(sel)} points selected — digits label, R retrain, I images", error=False)

    def select_sphere_at(self, centre: Any, radius: float, *, announce: bool = True) -> int | None:
        """Select the latent-cloud points inside a sphere given in world space (in a
        headset the hands place and size it). The cloud is the one whose panel the centre
        is in front of (nearest first). Returns how many points, or None if no cloud is there."""
        from deeproom.scenes.views import CloudView

        c = np.asarray(centre, dtype=np.float64)
        best: tuple[float, Any] | None = None
        for view in self.panels.values():
            if not isinstance(view.content, CloudView):
                continue
            f = view.frame()
            u, v = f.local(c)
            depth = abs(float((c - f.centre) @ f.normal))
            if abs(u) <= f.half_width and abs(v) <= f.half_height and depth <= max(f.half_width, f.half_height) \
                    and (best is None or depth < best[0]):
                best = (depth, view)
        if best is None:
            return None
        view = best[1]
        scale = float(view.transform[2][0]) or 1.0
        sel = view.content.select_sphere(view.to_local(c), float(radius) / scale)
        self._select(view.panel.id)
        if announce:
            self.notify(f"{len(sel)} points selected — digits label, R retrain, I images", error=False)
        return len(sel)

    def _finish_box(self, origin: np.ndarray, direction: np.ndarray) -> None:
        from deeproom.scenes.views import CloudView

        assert self.box_start is not None
        pid, start = self.box_start
        self.box_start = None
        view = self.panels.get(pid)
        if view is None or not isinstance(view.content, CloudView):
            return
        f = view.frame()
        res = geometry.ray_plane(origin, direction, f.centre, f.normal)
        if res is None:
            return
        local = view.to_local(res[1])
        content = view.content
        zs = content.pos[:, 2]
        lo = np.array([start[0], start[1], float(zs.min()) - 0.01], np.float32)
        hi = np.array([local[0], local[1], float(zs.max()) + 0.01], np.float32)
        sel = content.select_box(lo, hi)
        self.notify(f"{len(sel)} points selected — digits label, R retrain, I images", error=False)

    def open_layer(self, view: Any, layer: str) -> None:
        """A layer was clicked: its feature maps, filters and Grad-CAM open next to the graph."""
        payload = {"panel_id": view.panel.id, "layer": layer, "source": dict(view.panel.content.source),
                   "transform": view.panel.transform.to_dict()}
        self._ask_engine("open_layer", payload, view.panel.owner)
        self.notify(f"opening {layer}…", error=False)

    def _ask_engine(self, action: str, payload: dict[str, Any], owner: str) -> None:
        if self.provider is not None:
            self.provider.request(action, payload)
        else:  # whoever owns the panel runs the engine for it (the training runs' "steer" commands)
            self.session.send_event("steer", {"cmd": STEER_COMMANDS.get(action, action), **payload}, to=owner)

    def cloud_action(self, action: str, label: int | None = None) -> bool:
        """Act on the selected points of the selected cloud: label, retrain, images."""
        from deeproom.scenes.views import CloudView

        view = self.panels.get(self.selected or "")
        if view is None or not isinstance(view.content, CloudView) or not len(view.content.selection):
            self.notify("select points in a latent cloud first")
            return False
        idx = [int(i) for i in view.content.selection]
        if action == "images":
            self._show_images(view, idx)
            return True
        payload: dict[str, Any] = {"panel_id": view.panel.id, "ids": idx, "source": dict(view.panel.content.source)}
        if action == "label":
            payload["label"] = int(label if label is not None else 0)
        else:
            payload["select"] = "ids"
        self._ask_engine(action, payload, view.panel.owner)
        self.notify(f"{action} on {len(idx)} points sent", error=False)
        return True

    def _show_images(self, view: Any, idx: list[int]) -> None:
        from deeproom.content import encode_content
        from deeproom.scenes.painting import thumbnail_atlas

        thumbs = view.content.content.thumbnails
        if thumbs is None:
            self.notify("this cloud has no images")
            return
        grid, _, _ = thumbnail_atlas(np.asarray(thumbs)[np.asarray(idx[:256])])
        blob = encode_content({"kind": "image"}, {"image": grid})
        _pos, rot, _scale = view.transform
        f = view.frame()
        at = f.centre + f.right * (f.half_width + 0.6)
        pid = f"images-{int(time.time() * 1000) % 10**9}"
        fut = self.session.put_blob(blob)

        def placed(f2: concurrent.futures.Future[str]) -> None:
            if f2.exception() is None:
                self.apply({"op": "add_panel", "panel_id": pid, "kind": "image", "title": f"{len(idx)} selected images",
                            "transform": {"position": [float(c) for c in at], "rotation": list(rot), "scale": [1, 1, 1]},
                            "size": [0.8, 0.8], "content": {"source": {"from": view.panel.id}, "refs": [f2.result()]}})

        fut.add_done_callback(placed)

    def add_panel(self, kind: str, *, title: str | None = None, distance: float = 1.6) -> str:
        """Add a panel of `kind` in front of the viewer; the engine fills it if it can."""
        kind = PanelKind(kind).value
        pos, rot = self.rig.head() if self.rig is not None else ((0.0, 1.6, 0.0), (1.0, 0.0, 0.0, 0.0))
        at = geometry.ahead(pos, rot, distance)
        at[1] = max(at[1], 1.2)
        face = geometry.facing_quat(at, pos)
        pid = f"{kind.replace('_', '-')}-{int(time.time() * 1000) % 10**9}"
        refs: list[str] = []
        source: dict[str, Any] = {}
        if self.room is not None:  # reuse what the room already shows of this kind until the engine updates it
            for p in self.room.panels.values():
                if p.kind.value == kind and p.content.refs:
                    refs, source = list(p.content.refs), dict(p.content.source)
                    break
        if kind == "note" and not refs:
            source = {"text": "New note"}
        op = {"op": "add_panel", "panel_id": pid, "kind": kind, "title": title or kind.replace("_", " ").capitalize(),
              "transform": {"position": [float(c) for c in at], "rotation": list(face), "scale": [1, 1, 1]},
              "size": [1.2, 0.9], "content": {"source": source, "refs": refs}}
        self.apply(op)
        if self.provider is not None and not refs:
            self.provider.request("fill_panel", {"panel_id": pid, "kind": kind})
        return pid

    @property
    def menu_open(self) -> bool:
        return self.menu.is_open

    def open_menu(self) -> None:
        """The add-panel menu, a metre in front of the viewer's eyes, facing them."""
        head = self.rig.head() if self.rig is not None else ((0.0, 1.6, 0.0), (1.0, 0.0, 0.0, 0.0))
        self.menu.open(*head, parent=self.scene_root)

    def close_menu(self) -> None:
        self.menu.close()

    def key(self, name: str) -> None:
        """A named action from a keyboard, a controller button or a test."""
        if self.menu.geometry is not None:
            kinds = self.menu.geometry.items
            if name.isdigit() and (int(name) - 1) % 10 < len(kinds):
                self.add_panel(kinds[(int(name) - 1) % 10])
            if name in ("tab", "escape", "menu") or name.isdigit():
                self.close_menu()
            return
        view = self.panels.get(self.selected or "")
        if name in ("tab", "menu"):
            self.open_menu()
        elif name in ("q", "e") and view is not None:
            pos, rot, scale = view.transform
            turn = geometry.yaw_quat(math.radians(15 if name == "e" else -15))
            self._move(view, pos, geometry.quat_mul(turn, rot), scale)
        elif name in ("+", "=", "-", "scroll up", "scroll down") and view is not None and self.tool != "box" \
                and not self._cloud_selected():
            pos, rot, scale = view.transform
            k = 1.1 if name in ("+", "=", "scroll up") else 1 / 1.1
            self._move(view, pos, rot, tuple(float(np.clip(s * k, 0.1, 50)) for s in scale))
        elif name in ("scroll up", "scroll down"):
            self.cloud_radius = float(np.clip(self.cloud_radius * (1.2 if name == "scroll up" else 1 / 1.2), 0.01, 1.0))
        elif name == "delete" and view is not None:
            self.apply({"op": "remove_panel", "panel_id": view.panel.id})
        elif name == "l" and view is not None:
            mine = view.panel.lock_holder == self.session.participant_id
            self.apply({"op": "unlock_panel" if mine else "lock_panel", "panel_id": view.panel.id})
        elif name == "b":
            self.tool = "box" if self.tool == "sphere" else "sphere"
            self.notify(f"cloud selection: {self.tool}", error=False)
        elif name == "v" and view is not None:
            from deeproom.scenes.views import CloudView

            if isinstance(view.content, CloudView):
                modes = ["label", "prediction", "confidence"]
                view.content.recolour(modes[(modes.index(view.content.colour_by) + 1) % 3])
                self.notify(f"colour by {view.content.colour_by}", error=False)
        elif name == "c" and view is not None:
            from deeproom.scenes.views import GraphView

            g = view.content
            if isinstance(g, GraphView) and g.selected is not None and g.layout is not None:
                grp = g.layout.nodes[g.selected].group
                if grp:
                    view.graph_collapsed = set(g.collapsed) | {grp}
                    view.show(view.prepared, view.content_key or "")
        elif name.isdigit() and self._cloud_selected():
            self.cloud_action("label", int(name))
        elif name == "r":
            self.cloud_action("retrain")
        elif name == "i":
            self.cloud_action("images")
        elif name == "t" and self.rig is not None:
            self._teleport_to_pointer()
        elif name == "f":
            self._toggle_follow()
        elif name == "g":
            self._summon()
        elif name == "m":
            self.muted = not self.muted
            if getattr(self.session, "set_muted", lambda m: False)(self.muted):
                self.notify("microphone muted" if self.muted else "microphone on", error=False)
            else:
                self.notify("voice is off in this session", error=False)
        elif name in ("space", "space up"):
            getattr(self.session, "press_to_talk", lambda p: False)(name == "space")

    def _cloud_selected(self) -> bool:
        from deeproom.scenes.views import CloudView

        view = self.panels.get(self.selected or "")
        return view is not None and isinstance(view.content, CloudView) and len(view.content.selection) > 0

    def _move(self, view: Any, pos: Any, rot: Any, scale: Any) -> None:
        # Shown at once; kept until the room confirms (or PREVIEW_TIMEOUT passes, if it refuses),
        # so a second key press builds on the first.
        view.set_preview(tuple(pos), tuple(rot), tuple(scale))
        self._previews[view.panel.id] = time.monotonic()
        self.apply({"op": "move_panel", "panel_id": view.panel.id,
                    "transform": {"position": list(pos), "rotation": list(rot), "scale": list(scale)}})

    def _teleport_to_pointer(self) -> None:
        assert self.rig is not None
        ray = self.rig.pointer_ray()
        if ray is None:
            return
        o, d = ray
        hit = self.pick(o, d)
        if hit is not None:
            view = self.panels[hit.panel_id]
            f = view.frame()
            target = f.centre + f.normal * (1.4 + f.half_width)
            yaw = math.degrees(math.atan2(-f.normal[0], -f.normal[2]))
            self.rig.teleport((float(target[0]), 1.6, float(target[2])), yaw)
            return
        floor = geometry.ray_plane(o, d, np.zeros(3), np.array([0.0, 1.0, 0.0]))
        if floor is not None and floor[0] < 30:
            p = floor[1]
            self.rig.teleport((float(p[0]), 1.6, float(p[2])), None)

    def _toggle_follow(self) -> None:
        room = self.room
        if room is None:
            return
        me = self.session.participant_id
        on = room.settings.follow.value == "presenter" and room.settings.presenter == me
        self.apply({"op": "set_follow", "mode": "off" if on else "presenter", "presenter": None if on else me})

    def _summon(self) -> None:
        if self.rig is None:
            return
        pos, rot = self.rig.head()
        fwd = geometry.quat_matrix(rot)[:, 2]
        spot = np.array(pos) + np.array([fwd[0], 0, fwd[2]]) * 1.2
        yaw = math.degrees(math.atan2(-fwd[0], -fwd[2]))
        self.session.send_event("summon", {"position": [float(c) for c in spot], "yaw": yaw})
        self.notify("summoned everyone to you", error=False)

    def _device_input(self, key: str) -> None:
        if self.rig is not None:
            self.rig.input(key)


def start_worker_thread(target: Callable[[], None], name: str) -> threading.Thread:
    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    return t
