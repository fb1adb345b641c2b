"""XR mode: the room in an OpenXR headset, rendered by Panda3D through pyopenxr.

`start_xr()` is what the app calls for `--xr`: it returns a running `XRRig` or,
when there is no runtime or it refuses, prints one line saying why and returns
None so the app carries on in desktop mode. The rest:

- session.py  the OpenXR instance/session/swapchains/frame loop on Panda's GL context
- rig.py      stereo cameras under a play-space node, the mirror, per-frame tasks
- input.py    action set and suggested bindings (simple, Touch, Index, Vive)
- interaction.py  grab / select / laser / teleport / snap turn / selection sphere / menu
- presence.py head and hand poses -> deeproom.presence.Pose -> the relay
- convert.py  OpenXR <-> Ursina axes (pure)
- monado.py   the headless Monado runtime in a trixie folder (tests, bench)
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from .errors import XRError, XRRootError, XRUnavailable

if TYPE_CHECKING:
    from .app_rig import AppXRRig
    from .rig import XRRig


def attach_to_app(app: object, *, render_scale: float = 1.0) -> AppXRRig:
    """The scenes app's hook for `--xr`: switch `app` to the headset rig. Raises
    XRUnavailable (one line) when there is no usable runtime; the app then stays on
    the desktop."""
    from .app_rig import attach_to_app as attach

    return attach(app, render_scale=render_scale)

__all__ = ["XRError", "XRRootError", "XRUnavailable", "attach_to_app", "start_xr"]


def start_xr(
    *, render_scale: float = 1.0, mirror: bool = True, controllers: bool = True, out: TextIO | None = None
) -> XRRig | None:
    """Switch the running Ursina app to the headset; None (and one line on `out`,
    stderr by default) when XR is not possible here, so the caller stays on the desktop."""
    from .rig import XRRig
    from .session import XRSession

    stream = out if out is not None else sys.stderr
    session = XRSession("DeepRoom", render_scale=render_scale)
    try:
        info = session.open()
        if controllers:
            from .input import Controllers

            session.actions = Controllers(session.instance)
        rig = XRRig(session, mirror=mirror).start()
    except XRUnavailable as exc:
        session.close()
        print(f"XR mode unavailable: {exc}; opening in desktop mode", file=stream)
        return None
    except Exception as exc:  # a runtime that misbehaves must not take the app down
        session.close()
        print(f"XR mode failed ({type(exc).__name__}: {exc}); opening in desktop mode", file=stream)
        return None
    print(f"XR mode: {info.runtime} / {info.system}, {info.view_sizes[0][0]}x{info.view_sizes[0][1]} per eye", file=stream)
    return rig
