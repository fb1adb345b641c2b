"""One OpenXR instance + session bound to Panda3D's OpenGL context, on pyopenxr.

What it does, in the order OpenXR wants it:
- `XRSession.open()` (no GL needed): instance with XR_KHR_opengl_enable, plus
  XR_MNDX_egl_enable when rendering through EGL (no X server); the HMD system, its
  stereo view configuration and recommended image sizes.
- `bind(api)` (with Panda's GL context current, i.e. from a draw callback): the
  graphics binding (EGL handles, or GLX ones under X), the session, the reference
  spaces (STAGE when offered: floor at y=0, else LOCAL raised to eye height), one
  colour swapchain per eye (sRGB-encoded RGBA; see gl.PREFERRED_FORMATS) and a
  framebuffer per swapchain image.
- per frame: `poll()` the event queue (begin/end the session as its state asks),
  `begin_frame()` = xrWaitFrame + xrBeginFrame + xrLocateViews at the *predicted
  display time*, `copy_eye()` from inside each eye's draw callback, `end_frame()`
  with one projection layer.

No ursina import; panda3d only where the rig hands over its context.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from dataclasses import dataclass, field
from typing import Any

from .convert import XRFov, XRPose
from .errors import XRError, XRUnavailable
from .gl import PREFERRED_FORMATS, GLFunctions, TextureTarget, current_egl, current_glx

log = logging.getLogger(__name__)

EGL_EXTENSION = "XR_MNDX_egl_enable"
STAGE_EYE_HEIGHT = 1.6  # metres added to LOCAL space when no STAGE space exists


@dataclass(frozen=True)
class RuntimeInfo:
    """What the runtime said about itself."""

    runtime: str
    system: str
    view_sizes: tuple[tuple[int, int], ...]
    """Recommended image size (w, h) per view."""
    egl: bool
    """Whether the runtime offers XR_MNDX_egl_enable (rendering without an X server)."""


@dataclass
class FrameInfo:
    """One frame between begin_frame() and end_frame()."""

    display_time: int
    """Predicted display time (XrTime, ns) the poses were located for."""
    period_ns: int
    should_render: bool
    views: list[tuple[XRPose, XRFov]] = field(default_factory=list)
    head: XRPose | None = None
    copied: list[bool] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def probe(app_name: str = "deeproom-probe") -> RuntimeInfo:
    """Ask the active OpenXR runtime what it is, without a session. Raises XRUnavailable
    with a one-line reason when there is none or it refuses."""
    s = XRSession(app_name=app_name)
    try:
        return s.open()
    finally:
        s.close()


class XRSession:
    """The OpenXR side of XR mode. Single-threaded: call everything from the render thread."""

    def __init__(self, app_name: str = "DeepRoom", *, use_egl: bool | None = None, render_scale: float = 1.0) -> None:
        self.app_name = app_name
        self.use_egl = use_egl
        self.render_scale = render_scale
        self.instance: Any = None
        self.system_id: Any = None
        self.session: Any = None
        self.info: RuntimeInfo | None = None
        self.state: Any = None
        self.running = False
        self.exit_requested = False
        self.space: Any = None
        self.view_space: Any = None
        self.space_offset_y = 0.0
        self.swapchains: list[Any] = []
        self.sizes: list[tuple[int, int]] = []
        self.targets: list[TextureTarget] = []
        self.swapchain_format = 0
        self.frames_submitted = 0
        self.state_history: list[str] = []
        self.gl: GLFunctions | None = None
        self.actions: Any = None  # set by the rig (input.Controllers)
        self._frame: FrameInfo | None = None
        self._capture: dict[int, Any] = {}
        self._capture_wanted: set[int] = set()

    # --- before a GL context exists -------------------------------------------------

    def open(self) -> RuntimeInfo:
        import xr

        try:
            available = {_text(e.extension_name) for e in xr.enumerate_instance_extension_properties()}
        except xr.exception.RuntimeUnavailableError as exc:
            raise XRUnavailable(f"no OpenXR runtime found ({_text(exc).strip() or 'the loader found none'})") from exc
        except xr.exception.XrException as exc:
            raise XRUnavailable(f"the OpenXR runtime refused to list its extensions: {exc}") from exc
        if xr.KHR_OPENGL_ENABLE_EXTENSION_NAME not in available:
            raise XRUnavailable("the OpenXR runtime does not support OpenGL (XR_KHR_opengl_enable), which Panda3D needs")
        egl_offered = EGL_EXTENSION in available
        if self.use_egl is None:
            self.use_egl = egl_offered
        if self.use_egl and not egl_offered:
            raise XRUnavailable("no X display and the OpenXR runtime offers no EGL binding (XR_MNDX_egl_enable)")
        extensions = [xr.KHR_OPENGL_ENABLE_EXTENSION_NAME] + ([EGL_EXTENSION] if self.use_egl else [])
        try:
            self.instance = xr.create_instance(
                xr.InstanceCreateInfo(
                    application_info=xr.ApplicationInfo(
                        application_name=self.app_name, engine_name="DeepRoom/Panda3D", api_version=xr.Version(1, 0, 0)
                    ),
                    enabled_extension_names=extensions,
                )
            )
            props = xr.get_instance_properties(self.instance)
            self.system_id = xr.get_system(self.instance, xr.SystemGetInfo(form_factor=xr.FormFactor.HEAD_MOUNTED_DISPLAY))
            sysprops = xr.get_system_properties(self.instance, self.system_id)
            views = xr.enumerate_view_configuration_views(
                self.instance, self.system_id, xr.ViewConfigurationType.PRIMARY_STEREO
            )
        except xr.exception.RuntimeUnavailableError as exc:
            raise XRUnavailable(f"no OpenXR runtime found ({_text(exc).strip()})") from exc
        except xr.exception.FormFactorUnavailableError as exc:
            raise XRUnavailable("the OpenXR runtime is running but no headset is connected") from exc
        except xr.exception.XrException as exc:
            raise XRUnavailable(f"the OpenXR runtime refused: {type(exc).__name__}: {exc}") from exc
        sizes = []
        for v in views:
            w = max(16, min(int(v.recommended_image_rect_width * self.render_scale), int(v.max_image_rect_width)))
            h = max(16, min(int(v.recommended_image_rect_height * self.render_scale), int(v.max_image_rect_height)))
            sizes.append((w, h))
        self.sizes = sizes
        self.info = RuntimeInfo(
            runtime=_text(props.runtime_name), system=_text(sysprops.system_name), view_sizes=tuple(sizes), egl=egl_offered
        )
        return self.info

    # --- with Panda's context current ----------------------------------------------

    def bind(self) -> None:
        """Create the session against the GL context current on this thread."""
        import xr

        if self.instance is None:
            raise XRError("open() the runtime before bind()")
        # The spec requires asking for the GL requirements before creating the session.
        xr.get_opengl_graphics_requirements_khr(self.instance, self.system_id)
        if self.use_egl:
            egl = current_egl()
            if egl is None:
                raise XRUnavailable("Panda3D is not rendering through EGL here, but the runtime needs EGL (no X display)")
            self.gl = GLFunctions.from_egl(egl)
            fields = dict(xr.GraphicsBindingEGLMNDX._fields_)
            pfn = ctypes.cast(egl.get_proc_address, xr.PFN_xrEglGetProcAddressMNDX)
            binding: Any = xr.GraphicsBindingEGLMNDX(
                get_proc_address=pfn,
                display=ctypes.cast(ctypes.c_void_p(egl.display), fields["display"]),
                config=ctypes.cast(ctypes.c_void_p(egl.config), fields["config"]),
                context=ctypes.cast(ctypes.c_void_p(egl.context), fields["context"]),
            )
            self._keepalive = (pfn, binding)
        else:
            glx = current_glx()
            if glx is None:
                raise XRUnavailable("no current GLX context (Panda3D is not rendering through GLX)")
            self.gl = GLFunctions.from_glx()
            fields = dict(xr.GraphicsBindingOpenGLXlibKHR._fields_)
            binding = xr.GraphicsBindingOpenGLXlibKHR(
                x_display=ctypes.cast(ctypes.c_void_p(glx.display), fields["x_display"]),
                visualid=glx.visualid,
                glx_fbconfig=ctypes.cast(ctypes.c_void_p(glx.fbconfig), fields["glx_fbconfig"]),
                glx_drawable=glx.drawable,
                glx_context=ctypes.cast(ctypes.c_void_p(glx.context), fields["glx_context"]),
            )
            self._keepalive = (binding, None)
        try:
            self.session = xr.create_session(
                self.instance,
                xr.SessionCreateInfo(system_id=self.system_id, next=ctypes.cast(ctypes.pointer(binding), ctypes.c_void_p)),
            )
        except xr.exception.XrException as exc:
            raise XRUnavailable(f"the OpenXR runtime refused a session for Panda's GL context: {exc}") from exc
        spaces = list(xr.enumerate_reference_spaces(self.session))
        if xr.ReferenceSpaceType.STAGE in spaces or xr.ReferenceSpaceType.STAGE.value in spaces:
            kind = xr.ReferenceSpaceType.STAGE
        else:
            kind = xr.ReferenceSpaceType.LOCAL
            self.space_offset_y = STAGE_EYE_HEIGHT
        self.space = xr.create_reference_space(
            self.session, xr.ReferenceSpaceCreateInfo(reference_space_type=kind, pose_in_reference_space=xr.Posef())
        )
        self.view_space = xr.create_reference_space(
            self.session,
            xr.ReferenceSpaceCreateInfo(reference_space_type=xr.ReferenceSpaceType.VIEW, pose_in_reference_space=xr.Posef()),
        )
        offered = list(xr.enumerate_swapchain_formats(self.session))
        chosen = next((f for f in PREFERRED_FORMATS if f in offered), None)
        if chosen is None:
            raise XRUnavailable(f"the runtime offers no RGBA colour format Panda can fill; offered: {offered}")
        self.swapchain_format = chosen
        for w, h in self.sizes:
            sc = xr.create_swapchain(
                self.session,
                xr.SwapchainCreateInfo(
                    usage_flags=xr.SwapchainUsageFlags.COLOR_ATTACHMENT_BIT | xr.SwapchainUsageFlags.TRANSFER_DST_BIT,
                    format=chosen, sample_count=1, width=w, height=h, face_count=1, array_size=1, mip_count=1,
                ),
            )
            images = xr.enumerate_swapchain_images(sc, xr.SwapchainImageOpenGLKHR)
            self.swapchains.append(sc)
            self.targets.append(TextureTarget(self.gl, [int(img.image) for img in images]))
        if self.actions is not None:
            self.actions.attach(self)

    # --- per frame -------------------------------------------------------------------

    def poll(self) -> None:
        """Drain the runtime's events; begin or end the session as its state asks."""
        import xr

        while True:
            try:
                event = xr.poll_event(self.instance)
            except xr.EventUnavailable:
                break
            kind = xr.StructureType(event.type)
            if kind == xr.StructureType.EVENT_DATA_SESSION_STATE_CHANGED:
                changed = ctypes.cast(ctypes.byref(event), ctypes.POINTER(xr.EventDataSessionStateChanged)).contents
                self.state = xr.SessionState(changed.state)
                self.state_history.append(self.state.name)
                log.info("OpenXR session state: %s", self.state.name)
                if self.state == xr.SessionState.READY:
                    xr.begin_session(
                        self.session,
                        xr.SessionBeginInfo(primary_view_configuration_type=xr.ViewConfigurationType.PRIMARY_STEREO),
                    )
                    self.running = True
                elif self.state == xr.SessionState.STOPPING:
                    xr.end_session(self.session)
                    self.running = False
                elif self.state in (xr.SessionState.EXITING, xr.SessionState.LOSS_PENDING):
                    self.running = False
                    self.exit_requested = True
            elif kind == xr.StructureType.EVENT_DATA_INSTANCE_LOSS_PENDING:
                self.running = False
                self.exit_requested = True

    @property
    def focused(self) -> bool:
        import xr

        return self.state == xr.SessionState.FOCUSED

    def begin_frame(self) -> FrameInfo | None:
        """xrWaitFrame + xrBeginFrame, views and head located at the predicted display
        time. None when the session is not running (nothing to render or submit)."""
        import xr

        if self.session is None:
            return None
        self.poll()
        if not self.running:
            return None
        state = xr.wait_frame(self.session, xr.FrameWaitInfo())
        xr.begin_frame(self.session, xr.FrameBeginInfo())
        frame = FrameInfo(
            display_time=int(state.predicted_display_time),
            period_ns=int(state.predicted_display_period),
            should_render=bool(state.should_render),
            copied=[False] * len(self.swapchains),
        )
        if frame.should_render:
            view_state, views = xr.locate_views(
                self.session,
                xr.ViewLocateInfo(
                    view_configuration_type=xr.ViewConfigurationType.PRIMARY_STEREO,
                    display_time=state.predicted_display_time,
                    space=self.space,
                ),
            )
            flags = int(view_state.view_state_flags)
            if flags & int(xr.ViewStateFlags.ORIENTATION_VALID_BIT):
                frame.views = [(self._lift(XRPose.from_xr(v.pose)), XRFov.from_xr(v.fov)) for v in views]
            loc = xr.locate_space(self.view_space, self.space, state.predicted_display_time)
            if int(loc.location_flags) & int(xr.SpaceLocationFlags.ORIENTATION_VALID_BIT):
                frame.head = self._lift(XRPose.from_xr(loc.pose))
            if self.actions is not None and self.focused:
                self.actions.sync(self, frame.display_time)
        self._frame = frame
        return frame

    def _lift(self, pose: XRPose) -> XRPose:
        if not self.space_offset_y:
            return pose
        x, y, z = pose.position
        return XRPose((x, y + self.space_offset_y, z), pose.orientation)

    def copy_eye(self, eye: int) -> None:
        """From inside eye `eye`'s draw callback (its framebuffer bound, just drawn):
        acquire a swapchain image, copy the drawing into it, release it."""
        import xr

        frame = self._frame
        if frame is None or not frame.should_render or not frame.views or eye >= len(self.swapchains):
            return
        sc = self.swapchains[eye]
        w, h = self.sizes[eye]
        index = xr.acquire_swapchain_image(sc, xr.SwapchainImageAcquireInfo())
        xr.wait_swapchain_image(sc, xr.SwapchainImageWaitInfo(timeout=xr.INFINITE_DURATION))
        try:
            self.targets[eye].blit_from_current(index, w, h)
            if eye in self._capture_wanted:
                self._capture[eye] = self.targets[eye].read(index, w, h)
                self._capture_wanted.discard(eye)
        finally:
            xr.release_swapchain_image(sc, xr.SwapchainImageReleaseInfo())
        frame.copied[eye] = True

    def request_capture(self, eye: int) -> None:
        """Read back eye `eye`'s swapchain image after the next copy (diagnostics/tests)."""
        self._capture_wanted.add(eye)

    def take_capture(self, eye: int) -> Any:
        return self._capture.pop(eye, None)

    def end_frame(self) -> bool:
        """xrEndFrame with one projection layer when every eye was copied; an empty
        frame otherwise (the runtime still needs every begun frame ended). True when
        a layer was submitted."""
        import xr

        frame, self._frame = self._frame, None
        if frame is None:
            return False
        layers = []
        submitted = frame.should_render and bool(frame.views) and all(frame.copied)
        if submitted:
            proj_views = []
            for eye, (pose, fov) in enumerate(frame.views):
                w, h = self.sizes[eye]
                px, py, pz = pose.position
                proj_views.append(
                    xr.CompositionLayerProjectionView(
                        pose=xr.Posef(
                            orientation=xr.Quaternionf(*pose.orientation),
                            position=xr.Vector3f(px, py - self.space_offset_y, pz),
                        ),
                        fov=xr.Fovf(fov.angle_left, fov.angle_right, fov.angle_up, fov.angle_down),
                        sub_image=xr.SwapchainSubImage(
                            swapchain=self.swapchains[eye],
                            image_rect=xr.Rect2Di(offset=xr.Offset2Di(0, 0), extent=xr.Extent2Di(w, h)),
                        ),
                    )
                )
            layer = xr.CompositionLayerProjection(space=self.space, views=proj_views)
            layers.append(ctypes.byref(layer))
        xr.end_frame(
            self.session,
            xr.FrameEndInfo(
                display_time=frame.display_time,
                environment_blend_mode=xr.EnvironmentBlendMode.OPAQUE,
                layers=layers,
            ),
        )
        if submitted:
            self.frames_submitted += 1
        return submitted

    def request_exit(self) -> None:
        import xr

        if self.session is not None and self.running:
            with contextlib.suppress(xr.exception.XrException):
                xr.request_exit_session(self.session)

    def close(self) -> None:
        """Destroy everything in reverse order; safe to call twice."""
        import xr

        for target in self.targets:
            with contextlib.suppress(Exception):
                target.release()
        self.targets = []
        for sc in self.swapchains:
            with contextlib.suppress(Exception):
                xr.destroy_swapchain(sc)
        self.swapchains = []
        if self.actions is not None:
            with contextlib.suppress(Exception):
                self.actions.destroy()
        for space in (self.view_space, self.space):
            if space is not None:
                with contextlib.suppress(Exception):
                    xr.destroy_space(space)
        self.view_space = self.space = None
        if self.session is not None:
            with contextlib.suppress(Exception):
                xr.destroy_session(self.session)
            self.session = None
        if self.instance is not None:
            with contextlib.suppress(Exception):
                xr.destroy_instance(self.instance)
            self.instance = None
        self.running = False
