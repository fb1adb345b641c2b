"""The few raw OpenGL / EGL / GLX calls the OpenXR binding needs, through ctypes.

Panda3D does not expose its GL context handles or framebuffer objects to Python,
so the binding asks the platform library for the *current* display and context
(valid while Panda renders, i.e. inside a draw callback) and copies each eye's
rendered image into the runtime's swapchain texture with one glBlitFramebuffer.
GL entry points are resolved through eglGetProcAddress / glXGetProcAddressARB,
the same loader the context was made with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import XRError

GL_FRAMEBUFFER = 0x8D40
GL_READ_FRAMEBUFFER = 0x8CA8
GL_DRAW_FRAMEBUFFER = 0x8CA9
GL_READ_FRAMEBUFFER_BINDING = 0x8CAA
GL_DRAW_FRAMEBUFFER_BINDING = 0x8CA6
GL_COLOR_ATTACHMENT0 = 0x8CE0
GL_TEXTURE_2D = 0x0DE1
GL_COLOR_BUFFER_BIT = 0x00004000
GL_NEAREST = 0x2600
GL_LINEAR = 0x2601
GL_FRAMEBUFFER_COMPLETE = 0x8CD5
GL_FRAMEBUFFER_SRGB = 0x8DB9
GL_SCISSOR_TEST = 0x0C11
GL_RGBA = 0x1908
GL_UNSIGNED_BYTE = 0x1401
GL_PACK_ALIGNMENT = 0x0D05
GL_READ_BUFFER = 0x0C02

# Swapchain formats (GL internal formats) in the order we take them. sRGB-encoded
# storage first: Panda writes sRGB-encoded colours (as to any window); copied raw into
# an SRGB8_ALPHA8 image, the runtime decodes them exactly once. Plain RGBA8 would be
# read as linear and look washed out. GL_SRGB8 (no alpha) is not offered by Monado.
GL_SRGB8_ALPHA8 = 0x8C43
GL_RGBA8 = 0x8058
PREFERRED_FORMATS = (GL_SRGB8_ALPHA8, GL_RGBA8)

EGL_CONFIG_ID = 0x3028
EGL_NONE = 0x3038
GLX_FBCONFIG_ID = 0x8013
GLX_SCREEN = 0x800C


def _load(name: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name)
    candidates = [path] if path else []
    candidates += [f"lib{name}.so.1", f"lib{name}.so"]
    for candidate in candidates:
        try:
            # RTLD_GLOBAL-free default: if Panda already loaded it, dlopen returns that copy.
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    raise XRError(f"cannot load lib{name} (install the Mesa/GLVND packages: libegl1 libgl1)")


@dataclass(frozen=True)
class EGLHandles:
    """The current EGL display, config and context (opaque pointers as ints)."""

    display: int
    config: int
    context: int
    get_proc_address: Any  # the ctypes function eglGetProcAddress


@dataclass(frozen=True)
class GLXHandles:
    """The current GLX display, fbconfig, visual, drawable and context."""

    display: int
    fbconfig: int
    visualid: int
    drawable: int
    context: int


def current_egl() -> EGLHandles | None:
    """The EGL context current on this thread, or None when EGL has none current."""
    egl = _load("EGL")
    egl.eglGetCurrentDisplay.restype = ctypes.c_void_p
    egl.eglGetCurrentContext.restype = ctypes.c_void_p
    egl.eglQueryContext.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)]
    egl.eglChooseConfig.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_int32, ctypes.POINTER(ctypes.c_int32),
    ]
    egl.eglGetProcAddress.restype = ctypes.c_void_p
    egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    display = egl.eglGetCurrentDisplay()
    context = egl.eglGetCurrentContext()
    if not display or not context:
        return None
    config_id = ctypes.c_int32(0)
    if not egl.eglQueryContext(display, context, EGL_CONFIG_ID, ctypes.byref(config_id)):
        raise XRError("eglQueryContext(EGL_CONFIG_ID) failed for Panda's context")
    attribs = (ctypes.c_int32 * 3)(EGL_CONFIG_ID, config_id.value, EGL_NONE)
    config = ctypes.c_void_p()
    count = ctypes.c_int32(0)
    if not egl.eglChooseConfig(display, attribs, ctypes.byref(config), 1, ctypes.byref(count)) or count.value < 1:
        raise XRError(f"no EGLConfig with id {config_id.value} (Panda's context)")
    return EGLHandles(int(display), int(config.value or 0), int(context), egl.eglGetProcAddress)


def current_glx() -> GLXHandles | None:
    """The GLX context current on this thread, or None."""
    try:
        glx = _load("GL")
    except XRError:
        return None
    for fn in ("glXGetCurrentDisplay", "glXGetCurrentContext", "glXGetCurrentDrawable"):
        getattr(glx, fn).restype = ctypes.c_void_p
    display = glx.glXGetCurrentDisplay()
    context = glx.glXGetCurrentContext()
    if not display or not context:
        return None
    drawable = glx.glXGetCurrentDrawable() or 0
    glx.glXQueryContext.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    fb_id = ctypes.c_int(0)
    screen = ctypes.c_int(0)
    glx.glXQueryContext(display, context, GLX_FBCONFIG_ID, ctypes.byref(fb_id))
    glx.glXQueryContext(display, context, GLX_SCREEN, ctypes.byref(screen))
    glx.glXChooseFBConfig.restype = ctypes.POINTER(ctypes.c_void_p)
    glx.glXChooseFBConfig.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    attribs = (ctypes.c_int * 3)(GLX_FBCONFIG_ID, fb_id.value, 0)
    n = ctypes.c_int(0)
    configs = glx.glXChooseFBConfig(display, screen.value, attribs, ctypes.byref(n))
    if not configs or n.value < 1:
        raise XRError(f"no GLXFBConfig with id {fb_id.value} (Panda's context)")
    fbconfig = configs[0]
    glx.glXGetFBConfigAttrib.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    visual = ctypes.c_int(0)
    glx.glXGetFBConfigAttrib(display, fbconfig, 0x800B, ctypes.byref(visual))  # GLX_VISUAL_ID
    return GLXHandles(int(display), int(fbconfig or 0), int(visual.value), int(drawable), int(context))


class GLFunctions:
    """GL entry points resolved from the current context's loader."""

    def __init__(self, get_proc_address: Callable[[bytes], int | None]) -> None:
        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            addr = get_proc_address(name.encode())
            if not addr:
                raise XRError(f"OpenGL function {name} not available in this context")
            return ctypes.CFUNCTYPE(restype, *argtypes)(addr)

        u, i, p = ctypes.c_uint, ctypes.c_int, ctypes.c_void_p
        self.GenFramebuffers = fn("glGenFramebuffers", None, i, ctypes.POINTER(ctypes.c_uint))
        self.DeleteFramebuffers = fn("glDeleteFramebuffers", None, i, ctypes.POINTER(ctypes.c_uint))
        self.BindFramebuffer = fn("glBindFramebuffer", None, u, u)
        self.FramebufferTexture2D = fn("glFramebufferTexture2D", None, u, u, u, u, i)
        self.CheckFramebufferStatus = fn("glCheckFramebufferStatus", u, u)
        self.BlitFramebuffer = fn("glBlitFramebuffer", None, i, i, i, i, i, i, i, i, u, u)
        self.GetIntegerv = fn("glGetIntegerv", None, u, ctypes.POINTER(i))
        self.IsEnabled = fn("glIsEnabled", ctypes.c_ubyte, u)
        self.Enable = fn("glEnable", None, u)
        self.Disable = fn("glDisable", None, u)
        self.ReadPixels = fn("glReadPixels", None, i, i, i, i, u, u, p)
        self.PixelStorei = fn("glPixelStorei", None, u, i)
        self.ReadBuffer = fn("glReadBuffer", None, u)
        self.Flush = fn("glFlush", None)

    @classmethod
    def from_egl(cls, handles: EGLHandles) -> GLFunctions:
        return cls(handles.get_proc_address)

    @classmethod
    def from_glx(cls) -> GLFunctions:
        glx = _load("GL")
        glx.glXGetProcAddressARB.restype = ctypes.c_void_p
        glx.glXGetProcAddressARB.argtypes = [ctypes.c_char_p]
        return cls(glx.glXGetProcAddressARB)

    def get_int(self, pname: int) -> int:
        v = ctypes.c_int(0)
        self.GetIntegerv(pname, ctypes.byref(v))
        return v.value


class TextureTarget:
    """A framebuffer object per swapchain texture, to blit into and read back from."""

    def __init__(self, gl: GLFunctions, textures: list[int]) -> None:
        self.gl = gl
        self.textures = list(textures)
        n = len(textures)
        arr = (ctypes.c_uint * n)()
        gl.GenFramebuffers(n, arr)
        self.fbos = list(arr)
        previous = gl.get_int(GL_DRAW_FRAMEBUFFER_BINDING)
        try:
            for fbo, tex in zip(self.fbos, self.textures, strict=True):
                gl.BindFramebuffer(GL_DRAW_FRAMEBUFFER, fbo)
                gl.FramebufferTexture2D(GL_DRAW_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_TEXTURE_2D, tex, 0)
                status = gl.CheckFramebufferStatus(GL_DRAW_FRAMEBUFFER)
                if status != GL_FRAMEBUFFER_COMPLETE:
                    raise XRError(f"swapchain texture {tex} cannot be a framebuffer (status 0x{status:x})")
        finally:
            gl.BindFramebuffer(GL_DRAW_FRAMEBUFFER, previous)

    def blit_from_current(self, index: int, width: int, height: int) -> None:
        """Copy the bound draw framebuffer's (0,0,w,h) into swapchain image `index`,
        raw bytes (no sRGB conversion either way: colour space is handled once, by
        the runtime reading an sRGB-encoded image)."""
        gl = self.gl
        source = gl.get_int(GL_DRAW_FRAMEBUFFER_BINDING)
        previous_read = gl.get_int(GL_READ_FRAMEBUFFER_BINDING)
        srgb_was_on = bool(gl.IsEnabled(GL_FRAMEBUFFER_SRGB))
        scissor_was_on = bool(gl.IsEnabled(GL_SCISSOR_TEST))
        if srgb_was_on:
            gl.Disable(GL_FRAMEBUFFER_SRGB)
        if scissor_was_on:
            gl.Disable(GL_SCISSOR_TEST)
        gl.BindFramebuffer(GL_READ_FRAMEBUFFER, source)
        gl.BindFramebuffer(GL_DRAW_FRAMEBUFFER, self.fbos[index])
        gl.BlitFramebuffer(0, 0, width, height, 0, 0, width, height, GL_COLOR_BUFFER_BIT, GL_NEAREST)
        gl.BindFramebuffer(GL_DRAW_FRAMEBUFFER, source)
        gl.BindFramebuffer(GL_READ_FRAMEBUFFER, previous_read)
        if srgb_was_on:
            gl.Enable(GL_FRAMEBUFFER_SRGB)
        if scissor_was_on:
            gl.Enable(GL_SCISSOR_TEST)

    def read(self, index: int, width: int, height: int) -> np.ndarray:
        """The stored bytes of swapchain image `index` as RGBA uint8, top row first."""
        gl = self.gl
        previous_read = gl.get_int(GL_READ_FRAMEBUFFER_BINDING)
        out = np.empty((height, width, 4), dtype=np.uint8)
        gl.BindFramebuffer(GL_READ_FRAMEBUFFER, self.fbos[index])
        gl.ReadBuffer(GL_COLOR_ATTACHMENT0)
        gl.PixelStorei(GL_PACK_ALIGNMENT, 1)
        gl.ReadPixels(0, 0, width, height, GL_RGBA, GL_UNSIGNED_BYTE, out.ctypes.data)
        gl.BindFramebuffer(GL_READ_FRAMEBUFFER, previous_read)
        return out[::-1].copy()

    def release(self) -> None:
        if self.fbos:
            arr = (ctypes.c_uint * len(self.fbos))(*self.fbos)
            self.gl.DeleteFramebuffers(len(self.fbos), arr)
            self.fbos = []
