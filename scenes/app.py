"""The room app: one Ursina app per process that shows a room and turns input into operations.

    app = RoomApp(session, options=AppOptions(offscreen=True, size=(640, 480)))
    app.start()                      # creates the Ursina app (once per process)
    app.step(10)                     # runs 10 frames (offscreen) ...
    app.save_snapshot("room.png")
    app.run()                        # ... or hands the loop to Ursina (desktop window)

`RoomApp` owns the scene graph (floor, panels, avatars, HUD), one `PanelView` per
panel and one `AvatarView` per other participant, and is made of parts with one job
each:

- `pump` (`pump.FramePump`): the per-frame pump. It drains the session's ONE inbox
  (room snapshots, poses, events, status, prepared content, action progress), syncs
  the views, eases avatars, publishes the local pose ~20 times a second. No network,
  file or torch work in a frame: blobs are fetched and decoded by its content worker
  thread, analyses run in the engines; both post into the same inbox.
- `input` (`input.Input`): pointer press/move/release and keys, the same for a mouse,
  controllers and tests.
- `clouds` (`cloud_tools.CloudTools`): latent-cloud selection and what acts on it.
- `menus` (`action_menus.ActionMenus`): the add-panel menu, panels' action menus and
  pickers (built only from what a panel's source declares), progress on panels.
- `room_actions` (`room_actions.RoomActions`): add/move/lock/close panels, teleport,
  follow, summon, mute, asking an engine.
- `search` (`search.LayerSearch`): find a layer or group in the model graphs by name
  (desktop `/`, typed in the HUD) or from a list (XR: "Search layer" in a graph's menu)
  and go stand in front of it.

What a rig provides (`Rig`): the camera(s), head and hand poses, the pointer ray and
each hand's laser, teleport/follow, and device input, which it turns into the app's
input methods: `pointer_press/pointer_move/pointer_release(origin, direction)`,
`pointer_context(origin, direction)` (the secondary button) and `key(name)`.
`DesktopRig` (keyboard and mouse, or a script offscreen) is the default; the XR rig
(`deeproom.scenes.xr`) plugs in the same way: pass `rig=` to RoomApp or call
`app.set_rig(rig)` before `start()`.

Input mapping (desktop): WASD walk, right-drag or arrow keys look, left-drag a title
bar to move a panel (Q/E rotate, +/- or wheel scale while it is selected), drag the
bottom-right corner to resize, click x to close, L lock/unlock; right-click a panel
or a layer for its actions; click a layer of a model graph to open its feature maps,
filters and Grad-CAM; click a grey group to expand it, C to collapse the selected
layer's group, / finds a layer by name (Enter goes there); click a tile of an input strip to compute on that input; in a latent
cloud click to select a sphere (B for box mode, wheel for radius), digits label the
selection, R retrains on it, I shows its images, V colours by label/prediction/
confidence, O opens it at room scale around you; Tab opens the add-panel menu; T teleports
to where you point; F starts/stops following you (presenters), G summons everyone to you;
P opens the participants panel (`participants.Participants`), H raises or lowers your hand.
A training run's panels follow its stream deltas (`live_runs.LiveRuns`).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ursina import Entity, Ursina, camera, color, window

from deeproom.presence import HandPose, Pose
from deeproom.scenes.action_menus import ActionMenus
from deeproom.scenes.avatars import AvatarView, Laser
from deeproom.scenes.cloud_tools import CloudTools
from deeproom.scenes.hud import Hud
from deeproom.scenes.input import Drag, Input
from deeproom.scenes.live_runs import LiveRuns
from deeproom.scenes.participants import Participants
from deeproom.scenes.pump import FramePump
from deeproom.scenes.room_actions import RoomActions
from deeproom.scenes.search import LayerSearch
from deeproom.scenes.session import Notice, Session
from deeproom.scenes.views import Hit, PanelView, ursina_texture
from deeproom.state import Room

Vec3 = tuple[float, float, float]
QuatT = tuple[float, float, float, float]
Ray = tuple[np.ndarray, np.ndarray]


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

    active_hand: str
    """"left" or "right": whose laser is the pointer (the hand that last pressed)."""

    def attach(self, app: RoomApp) -> None: ...

    def update(self, dt: float) -> None: ...

    def head(self) -> tuple[Vec3, QuatT]: ...

    def hands(self) -> tuple[HandPose | None, HandPose | None]: ...

    def pointer_ray(self) -> Ray | None: ...

    def hand_rays(self) -> dict[str, Ray]:
        """A laser from each tracked hand ("left"/"right"); empty when no hand points."""
        ...

    def teleport(self, position: Vec3, yaw_degrees: float | None = None) -> None: ...

    def follow(self, position: Vec3, rotation: QuatT, dt: float) -> None: ...

    def input(self, key: str) -> None: ...

    def detach(self) -> None: ...


class ContentProvider(Protocol):
    """The engine side of the app (the demo's, or `open`'s): runs analyses off the render thread."""

    def request(self, action: str, payload: Mapping[str, Any]) -> None: ...


_URSINA_STARTED = False


def _configure_panda(offscreen: bool) -> None:
    from panda3d.core import load_prc_file_data

    lines = ["audio-library-name null", "sync-video 0", "notify-level-glgsg fatal"]
    if offscreen:
        lines.insert(0, "load-display p3headlessgl")
    load_prc_file_data("deeproom", "\n".join(lines) + "\n")


class RoomApp:
    """See the module docstring."""

    def __init__(self, session: Session, *, options: AppOptions | None = None, rig: Rig | None = None,
                 provider: ContentProvider | None = None) -> None:
        self.session = session
        self.options = options or AppOptions()
        self.rig = rig
        self.provider = provider
        self.room: Room | None = None
        self.panels: dict[str, PanelView] = {}
        self.avatars: dict[str, AvatarView] = {}
        self.poses: dict[str, Pose] = {}
        self.blob_facts: dict[str, dict[str, Any]] = {}  # panel id -> classes, tiles, image size of its blob
        self.connected = True
        self.status_text = ""
        self.notices: list[tuple[float, str, bool]] = []
        self.selected: str | None = None
        self.drag: Drag | None = None
        self.previews: dict[str, float] = {}  # panel id -> when a keyed move was shown
        self.frames = 0
        self.frame_times: list[float] = []
        self.following: str | None = None
        self.ops_sent: list[dict[str, Any]] = []
        self.on_frame: list[Callable[[RoomApp], None]] = []
        self._started = False
        self._closed = False
        self.input = Input(self)
        self.clouds = CloudTools(self)
        self.menus = ActionMenus(self)
        self.room_actions = RoomActions(self)
        self.search = LayerSearch(self)
        self.runs = LiveRuns(self)
        self.people = Participants(self)
        self._later: list[Callable[[], None]] = []  # callbacks for the render thread (answers of relay calls)
        self._later_lock = threading.Lock()
        self.pump = FramePump(self)

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
        self.hud = Hud(self)
        self.hud.build()
        # Your own lasers, drawn where you can see them, when you point with tracked hands
        # (controllers in XR; the one you last pressed with is the pointer, the other dimmer);
        # on the desktop the mouse cursor is the pointer.
        self.laser_colours = (color.rgb(0.55, 0.85, 1.0), color.rgb(0.3, 0.42, 0.5))  # pointer, other hand
        self.own_lasers = {side: Laser(self.avatar_root, self.laser_colours[0]) for side in ("left", "right")}
        app = self

        class _Pump(Entity):  # the one per-frame hook
            def update(self) -> None:
                app.pump.frame()

            def input(self, key: str) -> None:
                if app.rig is not None:
                    app.rig.input(key)

        self._pump = _Pump(name="pump")
        if self.rig is None:
            from deeproom.scenes.rigs import DesktopRig

            self.rig = DesktopRig()
        self.rig.attach(self)
        self.rig.teleport(self.options.start_position, self.options.start_yaw)
        self._started = True

    def _build_environment(self) -> None:
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
        self.pump.worker.close()
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
        win = self.ursina.win
        if hasattr(win, "set_size") and self.options.offscreen:
            win.set_size(int(width), int(height))
        self.ursina.camLens.set_aspect_ratio(width / max(height, 1))
        window.update_aspect_ratio()
        self.hud.layout()

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
        now = time.monotonic()
        said = text.rsplit(": ", 1)[-1]
        if any(now - t < 2.0 and s.rsplit(": ", 1)[-1] == said for t, s, _ in self.notices[-3:]):
            return  # the same refusal again (the client's and the room's, or each step of a drag)
        self.notices.append((now, text, error))
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

    def later(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the render thread at the next frame (any thread may call this)."""
        with self._later_lock:
            self._later.append(fn)

    def run_later(self) -> None:
        """The pump runs what `later` queued (bounded per frame)."""
        with self._later_lock:
            todo, self._later = self._later[:50], self._later[50:]
        for fn in todo:
            try:
                fn()
            except Exception as exc:  # one bad callback must not stop the room
                self.notify(f"could not apply an answer: {type(exc).__name__}: {exc}")

    def in_background(self, fn: Callable[[], Any], then: Callable[[Any], None], what: str) -> None:
        """Run `fn` off the render thread (file listings); `then(result)` on it."""
        def work() -> None:
            try:
                result = fn()
            except Exception as exc:
                message = f"{what} failed: {exc}"
                self.later(lambda: self.notify(message))
                return
            self.later(lambda: then(result))

        start_worker_thread(work, f"deeproom-{what[:20].replace(' ', '-')}")

    def pick(self, origin: np.ndarray, direction: np.ndarray) -> Hit | None:
        """The nearest panel hit by a ray (a views.Hit), or None."""
        best: Hit | None = None
        for view in self.panels.values():
            h = view.hit(origin, direction)
            if h is not None and (best is None or h.distance < best.distance):
                best = h
        return best

    # --- input (the same for mouse, controllers and tests) and what it does -------------------

    def drain(self) -> int:
        """Apply what arrived (bounded per frame). Returns how many messages were handled."""
        return self.pump.drain()

    def pointer_press(self, origin: np.ndarray, direction: np.ndarray) -> Hit | None:
        """Primary button down along a ray. Returns the Hit (or None)."""
        return self.input.press(origin, direction)

    def pointer_move(self, origin: np.ndarray, direction: np.ndarray) -> None:
        self.input.move(origin, direction)

    def pointer_release(self, origin: np.ndarray | None = None, direction: np.ndarray | None = None) -> None:
        self.input.release(origin, direction)

    def pointer_context(self, origin: np.ndarray, direction: np.ndarray) -> Hit | None:
        """Secondary button along a ray (right-click; XR: the menu button with the laser on a
        panel): the action menu of what it points at."""
        return self.input.context(origin, direction)

    def key(self, name: str) -> None:
        """A named action from a keyboard, a controller button or a test."""
        self.input.key(name)

    @property
    def menu(self) -> Any:
        return self.menus.menu

    @property
    def menu_open(self) -> bool:
        return self.menus.is_open

    def open_menu(self) -> None:
        self.menus.open_add_panel()

    def close_menu(self) -> None:
        self.menus.close()

    def add_panel(self, kind: str, *, title: str | None = None, distance: float = 1.6) -> str:
        return self.room_actions.add_panel(kind, title=title, distance=distance)

    def open_layer(self, view: PanelView, layer: str) -> None:
        self.room_actions.open_layer(view, layer)

    def cloud_action(self, action: str, label: int | None = None) -> bool:
        return self.clouds.act(action, label)

    def select_sphere_at(self, centre: Any, radius: float, *, announce: bool = True) -> int | None:
        return self.clouds.select_sphere_at(centre, radius, announce=announce)

    @property
    def tool(self) -> str:
        return self.clouds.tool

    @tool.setter
    def tool(self, value: str) -> None:
        self.clouds.tool = value

    @property
    def cloud_radius(self) -> float:
        return self.clouds.radius

    @cloud_radius.setter
    def cloud_radius(self, value: float) -> None:
        self.clouds.radius = float(value)

    @property
    def muted(self) -> bool:
        return self.room_actions.muted


def start_worker_thread(target: Callable[[], None], name: str) -> threading.Thread:
    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    return t
