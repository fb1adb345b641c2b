"""The XR camera rig: Panda3D renders each eye for the headset, the head pose moves it.

Per eye an offscreen buffer on the main window's GL context (so one context, the
one the OpenXR session is bound to) with a camera whose lens is the runtime's
asymmetric field of view. A draw callback on each eye's display region draws the
scene, then copies the result into the runtime's swapchain (session.copy_eye).
Two Panda tasks frame the render: before it (sort 49, after Ursina's update) the
session waits for and begins the frame and the cameras take the poses located at
the predicted display time; after it (sort 51) the frame is ended with a projection
layer. The main window becomes the mirror: a card showing the left eye.

Axes: the eye cameras hang under `space`, a node whose local frame is the tracked
play space in Ursina's axes (Panda is y-up-left under Ursina; see convert.py); `space` hangs under `origin`,
which is where the play space sits in the room (teleport moves it, snap turn yaws it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .convert import RigOrigin, XRPose, lens_film, xr_to_room_quat, xr_to_ursina_position
from .session import FrameInfo, XRSession

FrameListener = Callable[[FrameInfo, "XRRig"], None]


@dataclass
class RigStats:
    frames_begun: int = 0
    frames_submitted: int = 0
    started_at: float = 0.0
    first_submit_at: float = 0.0


class XRRig:
    """Stereo rendering into the OpenXR session. Needs a running Ursina/ShowBase app."""

    def __init__(self, session: XRSession, *, mirror: bool = True, near: float = 0.05, far: float = 500.0) -> None:
        self.session = session
        self.mirror = mirror
        self.near = near
        self.far = far
        self.origin_pose = RigOrigin()
        self.listeners: list[FrameListener] = []
        self.stats = RigStats()
        self.head_pose: XRPose | None = None
        self.last_frame: FrameInfo | None = None
        self.error: BaseException | None = None
        self._base: Any = None
        self._buffers: list[Any] = []
        self._cameras: list[Any] = []
        self._textures: list[Any] = []
        self._tasks: list[str] = []
        self._mirror_region: Any = None
        self._main_cam_was_active = True
        self.origin: Any = None
        self.space: Any = None
        self.head: Any = None

    # --- building -------------------------------------------------------------

    def start(self) -> XRRig:
        import builtins

        from panda3d.core import (
            Camera,
            FrameBufferProperties,
            GraphicsOutput,
            GraphicsPipe,
            NodePath,
            PerspectiveLens,
            PythonCallbackObject,
            Texture,
            WindowProperties,
        )

        base = builtins.base  # type: ignore[attr-defined]
        self._base = base
        if self.session.info is None:
            self.session.open()
        self.origin = base.render.attachNewNode("xr-origin")
        self.space = self.origin.attachNewNode("xr-play-space")
        self.head = self.space.attachNewNode("xr-head")
        clear = base.win.getClearColor()
        for eye, (w, h) in enumerate(self.session.sizes):
            fbp = FrameBufferProperties()
            fbp.setRgbaBits(8, 8, 8, 8)
            fbp.setDepthBits(24)
            buf = base.graphicsEngine.makeOutput(
                base.pipe, f"xr-eye-{eye}", -20 + eye, fbp, WindowProperties.size(w, h),
                GraphicsPipe.BFRefuseWindow, base.win.getGsg(), base.win,
            )
            if buf is None:
                raise RuntimeError(f"Panda3D could not make a {w}x{h} offscreen buffer for eye {eye}")
            tex = Texture(f"xr-eye-{eye}")
            buf.addRenderTexture(tex, GraphicsOutput.RTMBindOrCopy)
            buf.setClearColor(clear)
            buf.setClearColorActive(True)
            buf.setClearDepthActive(True)
            lens = PerspectiveLens()
            lens.setNearFar(self.near, self.far)
            cam = self.space.attachNewNode(Camera(f"xr-eye-{eye}", lens))
            region = buf.makeDisplayRegion()
            region.setCamera(cam)
            region.setDrawCallback(PythonCallbackObject(self._eye_callback(eye)))
            self._buffers.append(buf)
            self._cameras.append(cam)
            self._textures.append(tex)
        if self.mirror:
            self._make_mirror(Camera, NodePath)
        self._tasks = [f"xr-begin-{id(self)}", f"xr-end-{id(self)}"]
        base.taskMgr.add(self._begin_task, self._tasks[0], sort=49)
        base.taskMgr.add(self._end_task, self._tasks[1], sort=51)
        self.stats.started_at = time.perf_counter()
        return self

    def _make_mirror(self, Camera: Any, NodePath: Any) -> None:
        """The desktop window shows the left eye (for the people around the wearer)."""
        from panda3d.core import CardMaker, OrthographicLens

        base = self._base
        self._main_cam_was_active = bool(base.camNode.isActive())
        base.camNode.setActive(False)  # the 3D view of the window is the left eye now
        scene = NodePath("xr-mirror")
        cm = CardMaker("xr-mirror-card")
        cm.setFrame(-1, 1, -1, 1)
        card = scene.attachNewNode(cm.generate())
        card.setTexture(self._textures[0])
        # Under Ursina Panda's default is y-up-left: CardMaker's card lies in the x-y
        # plane and the camera looks along +z, so the card goes one unit ahead in z.
        card.setPos(0, 0, 1)
        lens = OrthographicLens()
        lens.setFilmSize(2, 2)
        lens.setNearFar(0.1, 10)
        cam = scene.attachNewNode(Camera("xr-mirror-cam", lens))
        region = base.win.makeDisplayRegion()
        region.setSort(-10)
        region.setCamera(cam)
        self._mirror_region = region
        self.mirror_scene = scene

    def _eye_callback(self, eye: int) -> Callable[[Any], None]:
        def draw(cbdata: Any) -> None:
            cbdata.upcall()
            try:
                if self.session.session is None:
                    # First draw: Panda's context is current now, so the session can bind to it.
                    self.session.bind()
                    return
                self.session.copy_eye(eye)
            except BaseException as exc:  # surfaced by the end task; a draw callback must not raise
                self.error = exc

        return draw

    # --- per frame ----------------------------------------------------------------

    def _begin_task(self, task: Any) -> Any:
        if self.error is not None:
            return task.cont
        try:
            frame = self.session.begin_frame()
        except BaseException as exc:
            self.error = exc
            return task.cont
        self.last_frame = frame
        if frame is None:
            return task.cont
        self.stats.frames_begun += 1
        if frame.views:
            self._place_cameras(frame)
        for listener in list(self.listeners):
            listener(frame, self)
        return task.cont

    def _place_cameras(self, frame: FrameInfo) -> None:
        from panda3d.core import LQuaternionf

        for cam, (pose, fov) in zip(self._cameras, frame.views, strict=False):
            cam.setPos(*xr_to_ursina_position(pose.position))
            cam.setQuat(LQuaternionf(*xr_to_room_quat(pose.orientation)))
            (fw, fh), (ox, oy) = lens_film(fov)
            lens = cam.node().getLens()
            lens.setFilmSize(fw, fh)
            lens.setFocalLength(1.0)
            lens.setFilmOffset(ox, oy)
        if frame.head is not None:
            self.head_pose = frame.head
            self.head.setPos(*xr_to_ursina_position(frame.head.position))
            self.head.setQuat(LQuaternionf(*xr_to_room_quat(frame.head.orientation)))

    def _end_task(self, task: Any) -> Any:
        if self.error is not None:
            return task.cont
        try:
            if self.session.end_frame():
                self.stats.frames_submitted += 1
                if not self.stats.first_submit_at:
                    self.stats.first_submit_at = time.perf_counter()
        except BaseException as exc:
            self.error = exc
        return task.cont

    # --- the play space in the room -------------------------------------------------

    def set_origin(self, origin: RigOrigin) -> None:
        """Move the play space in the room (teleport, snap turn)."""
        from panda3d.core import LQuaternionf

        self.origin_pose = origin
        x, y, z = origin.position
        self.origin.setPos(x, y, z)  # Panda under Ursina is y-up-left: Ursina's axes
        self.origin.setQuat(LQuaternionf(*origin.quat()))

    def room_pose(self, pose: XRPose) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        return self.origin_pose.to_room(pose)

    def eye_texture(self, eye: int = 0) -> Any:
        return self._textures[eye]

    # --- teardown -------------------------------------------------------------------

    def close(self) -> None:
        """Stop rendering for the headset and give the desktop its camera back; safe twice."""
        base = self._base
        if base is None:
            return
        self._base = None
        for name in self._tasks:
            base.taskMgr.remove(name)
        self._tasks = []
        with contextlib.suppress(Exception):
            self.session.request_exit()
        for buf in self._buffers:
            with contextlib.suppress(Exception):
                base.graphicsEngine.removeWindow(buf)
        self._buffers = []
        if self._mirror_region is not None:
            with contextlib.suppress(Exception):
                base.win.removeDisplayRegion(self._mirror_region)
            self._mirror_region = None
            base.camNode.setActive(self._main_cam_was_active)
        self.session.close()
        if self.origin is not None:
            self.origin.removeNode()
