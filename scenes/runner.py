"""Running the app for the commands: window or offscreen, snapshots, XR, clean shutdown.

`decide_headless(args, env)` picks offscreen when asked or when there is no display.
`run_room(...)` starts the app on a session, waits (stepping frames) for the engine
to fill the room when there is one, then either hands the loop to the window or
renders the requested frames and writes PNG snapshots.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeproom.scenes.app import RoomApp


@dataclass(frozen=True)
class RunSettings:
    headless: bool
    frames: int = 30
    snapshot: Path | None = None
    size: tuple[int, int] = (1280, 720)
    xr: bool = False
    wait_s: float = 120.0


def decide_headless(requested: bool, env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return requested or not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def try_xr(app: RoomApp) -> bool:
    """Attach the XR rig if `deeproom.scenes.xr` offers one; otherwise say so in one line."""
    try:
        import deeproom.scenes.xr as xr

        attach = xr.attach_to_app
    except (ImportError, AttributeError):
        print("XR is unavailable (no OpenXR rig in this installation); opening desktop mode")
        return False
    try:
        attach(app)
        return True
    except Exception as exc:  # no runtime, no headset: desktop mode still works
        print(f"XR is unavailable ({type(exc).__name__}: {exc}); opening desktop mode")
        return False


def wait_for(app: RoomApp, ready: Any, timeout: float) -> bool:
    """Step frames until `ready()` is true (or timeout); returns whether it became true."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.step()
        if ready():
            return True
        time.sleep(0.05)  # leave the CPU to the engine while it trains
    return False


def content_settled(app: RoomApp) -> bool:
    """Every panel shows its content (or its error), none is waiting for a blob."""
    if app.room is None or len(app.panels) != len(app.room.panels):
        return False  # an empty room is settled once it is known
    return not app.pump.pending_content and all(v.content is not None and v.gliding is None for v in app.panels.values())


def overview_pose(app: RoomApp) -> None:
    rig = app.rig
    if rig is not None and hasattr(rig, "look_at"):
        rig.teleport((0.0, 1.75, -1.6), 0.0)
        rig.look_at((0.0, 1.6, 3.0))


def demo_snapshots(app: RoomApp, folder: Path, frames: int) -> list[Path]:
    """The overview and two close-ups (latent cloud with thumbnails, model graph)."""
    rig = app.rig
    out: list[Path] = []
    views = [
        ("overview", (0.0, 1.75, -1.6), (0.0, 1.6, 3.0)),
        ("latent-cloud", (0.25, 1.2, 1.55), (0.0, 1.05, 2.6)),
        ("model-graph", (0.0, 2.3, 1.7), (0.0, 2.3, 3.5)),
        ("left-wall", (0.0, 1.65, 0.2), (-2.2, 1.6, 2.7)),
        ("right-wall", (0.0, 1.65, 0.2), (2.2, 1.6, 2.7)),
    ]
    for name, pos, target in views:
        if rig is not None and hasattr(rig, "look_at"):
            rig.teleport(pos, None)
            rig.look_at(target)
        app.step(max(frames, 3))
        time.sleep(0.3)  # the cloud's thumbnails refresh a few times a second
        app.step(3)
        out.append(app.save_snapshot(folder / f"demo-{name}.png"))
    return out


def run_room(app: RoomApp, run: RunSettings, *, engine: Any = None, name: str = "room") -> int:
    app.start()
    if run.xr:
        try_xr(app)
    if not run.headless:
        app.limit_fps(60)
        if engine is not None and not engine.ready.is_set():
            app.limit_fps(12)  # leave the CPU to the engine until the room is filled

            def relax(a: RoomApp) -> None:
                if engine.ready.is_set():
                    a.limit_fps(60)
                    a.on_frame.remove(relax)

            app.on_frame.append(relax)
        app.run()
        return 0
    ready = (lambda: engine.ready.is_set() and content_settled(app)) if engine is not None else (lambda: content_settled(app))
    t0 = time.monotonic()
    if not wait_for(app, ready, run.wait_s):
        print(f"warning: the room was not complete after {run.wait_s:.0f} s; snapshotting what there is")
    if engine is not None and getattr(engine, "failed", None):
        print(f"the engine failed: {engine.failed}")
    app.step(2)
    settle = time.monotonic() - t0
    if run.snapshot is not None:
        overview_pose(app)
        app.step(max(run.frames, 1))
        path = app.save_snapshot(run.snapshot)
        print(f"snapshot written to {path}")
    else:
        paths = demo_snapshots(app, Path("snapshots"), run.frames) if name == "demo" else []
        if not paths:
            overview_pose(app)
            app.step(max(run.frames, 1))
            paths = [app.save_snapshot(Path("snapshots") / f"{name}.png")]
        print(f"snapshots written to {paths[0].parent.resolve()}/: " + ", ".join(p.name for p in paths))
    errors = sorted(pid for pid, v in app.panels.items() if v.is_error)
    print(f"room ready in {settle:.1f} s; {len(app.panels)} panels, {len(errors)} showing errors"
          f"{' (' + ', '.join(errors) + ')' if errors else ''}; {app.frames} frames rendered offscreen "
          f"({app.screen_size()[0]}x{app.screen_size()[1]})")
    return 0
