"""Runs XR mode headless and reports what happened (tests and `deeproom bench xr`).

Runs inside the trixie folder next to Monado (see monado.py), as
`python -m deeproom.scenes.xr.harness --out DIR ...`. It opens Ursina offscreen
(Panda's EGL display, llvmpipe), builds the ring of coloured panels
(test_scene.py), measures desktop frames per second for `--desktop-seconds`, then
switches the same app and scene to XR mode, renders until the session is FOCUSED
and frames have been submitted, reads the left eye back from its swapchain at a
few moments (pixels and the view pose/FOV used for them), optionally publishes the
head and hand poses to a relay, and writes `report.json` (+ `.npy` images) to DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _prc() -> None:
    from panda3d.core import loadPrcFileData

    loadPrcFileData("deeproom-xr", "load-display p3headlessgl\naudio-library-name null\nsync-video 0\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deeproom.scenes.xr.harness")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seconds", type=float, default=6.0, help="XR mode run time after focus")
    p.add_argument("--desktop-seconds", type=float, default=0.0)
    p.add_argument("--captures", type=int, default=3, help="left-eye readbacks, spread over the run")
    p.add_argument("--size", default="640x480", help="desktop window size WxH")
    p.add_argument("--render-scale", type=float, default=1.0)
    p.add_argument("--relay", default="", help="relay URL: publish poses to this room")
    p.add_argument("--room", default="xr-room")
    p.add_argument("--name", default="Headset")
    p.add_argument("--focus-timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"ok": False}
    try:
        _run(args, report)
        report["ok"] = True
        return 0
    except BaseException as exc:
        import traceback

        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
        return 1
    finally:
        (args.out / "report.json").write_text(json.dumps(report, indent=1))
        sys.stdout.flush()
        # Panda/Monado teardown at interpreter exit has crashed other bindings; the
        # session is already closed here, so leave without running atexit handlers.
        os._exit(0 if report.get("ok") else 1)


def _run(args: argparse.Namespace, report: dict[str, Any]) -> None:
    import numpy as np

    _prc()
    from ursina import Ursina, window

    from . import test_scene
    from .presence import PosePublisher
    from .rig import XRRig
    from .session import XRSession

    w, h = (int(v) for v in args.size.split("x"))
    app = Ursina(window_type="offscreen", size=(w, h), development_mode=False, editor_ui_enabled=False)
    window.update_aspect_ratio()
    panels = test_scene.ring()
    test_scene.build(panels)
    report["panels"] = [
        {"name": q.name, "position": q.position, "size": q.size, "color": q.color} for q in panels
    ]

    if args.desktop_seconds > 0:
        from ursina import camera

        camera.position = (0, 1.6, 0)
        camera.rotation = (0, 0, 0)
        for _ in range(3):
            app.step()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.desktop_seconds:
            app.step()
            n += 1
        report["desktop_fps"] = n / (time.perf_counter() - t0)
        report["desktop_size"] = [w, h]

    session = XRSession("DeepRoom harness", render_scale=args.render_scale)
    info = session.open()
    report["runtime"] = info.runtime
    report["system"] = info.system
    report["view_sizes"] = [list(s) for s in info.view_sizes]
    from .input import Controllers

    session.actions = Controllers(session.instance)
    rig = XRRig(session).start()
    publisher = None
    if args.relay:
        publisher = PosePublisher.connect(args.relay, room=args.room, name=args.name)
        rig.listeners.append(publisher.on_frame)
        report["participant_id"] = publisher.participant_id

    t0 = time.perf_counter()
    while not (session.focused and rig.stats.frames_submitted > 0):
        app.step()
        if rig.error is not None:
            raise rig.error
        if time.perf_counter() - t0 > args.focus_timeout:
            raise TimeoutError(f"no FOCUSED session with a submitted frame after {args.focus_timeout} s; states {session.state_history}")
    report["focus_seconds"] = time.perf_counter() - t0
    report["swapchain_format"] = session.swapchain_format
    report["egl"] = bool(session.use_egl)

    captures: list[dict[str, Any]] = []
    n0 = rig.stats.frames_submitted
    t1 = time.perf_counter()
    next_capture = 0.0
    interval = args.seconds / max(1, args.captures)
    while time.perf_counter() - t1 < args.seconds:
        wanted = len(captures) < args.captures and time.perf_counter() - t1 >= next_capture
        if wanted:
            session.request_capture(0)
        app.step()
        if rig.error is not None:
            raise rig.error
        if wanted:
            image = session.take_capture(0)
            frame = rig.last_frame
            if image is not None and frame is not None and frame.views:
                pose, fov = frame.views[0]
                name = f"left-{len(captures)}.npy"
                np.save(args.out / name, image)
                captures.append({
                    "file": name, "display_time": frame.display_time,
                    "position": pose.position, "orientation": pose.orientation,
                    "fov": [fov.angle_left, fov.angle_right, fov.angle_up, fov.angle_down],
                    "size": [image.shape[1], image.shape[0]],
                })
                next_capture += interval
    elapsed = time.perf_counter() - t1
    report["frames_submitted"] = rig.stats.frames_submitted
    if rig.last_frame is not None and rig.last_frame.period_ns:
        report["runtime_display_hz"] = 1e9 / rig.last_frame.period_ns
    report["frames_submitted_per_s"] = (rig.stats.frames_submitted - n0) / elapsed
    report["captures"] = captures
    report["controllers"] = {
        "suggested": session.actions.suggested,
        "rejected": session.actions.rejected,
        "profiles": session.actions.state.profiles,
        "hands_active": {k: v.active for k, v in session.actions.state.hands.items()},
        "grip": {k: (v.grip.position if v.grip else None) for k, v in session.actions.state.hands.items()},
    }
    if publisher is not None:
        report["poses_published"] = publisher.published
        report["last_published"] = publisher.last_summary()
    # The mirror: what the desktop window shows is the left eye -- of the same frame
    # (the eye buffers render before the window), read back together.
    session.request_capture(0)
    app.step()
    final = session.take_capture(0)
    if final is not None:
        np.save(args.out / "left-final.npy", final)
        report["mirror_eye"] = "left-final.npy"
    shot = app.win.getScreenshot()
    if shot is not None:
        data = shot.getRamImageAs("RGBA")
        mirror = np.frombuffer(bytes(data), dtype=np.uint8).reshape(shot.getYSize(), shot.getXSize(), 4)[::-1]
        np.save(args.out / "mirror.npy", mirror)
        report["mirror"] = "mirror.npy"
    session.request_exit()
    t2 = time.perf_counter()
    while session.running and time.perf_counter() - t2 < 20:  # generous: a loaded host tears down slowly
        app.step()
    report["states"] = session.state_history
    rig.close()
    if publisher is not None:
        publisher.close()


if __name__ == "__main__":
    raise SystemExit(main())
