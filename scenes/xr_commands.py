"""Command-line parts of XR mode: `deeproom bench xr` and the doctor's XR lines.

Light at import (argparse only); the handlers import the XR package when run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(commands: Any, bench: Any) -> None:
    p = bench.add_parser(
        "xr",
        help="XR frames submitted per second against the headless Monado runtime vs desktop fps (same scene, same run)",
    )
    p.add_argument("--seconds", type=float, default=6.0, help="seconds measured in each mode")
    p.add_argument("--root", default="", help="trixie folder with Monado (default .cache/xr-root; built when missing)")
    p.set_defaults(func=cmd_bench_xr)


def cmd_bench_xr(args: argparse.Namespace, config: Any) -> int:
    import json
    import subprocess
    from pathlib import Path

    from deeproom.bench import emit

    from .xr.monado import MonadoRoot, MonadoService

    root = MonadoRoot(Path(args.root)) if args.root else MonadoRoot.default()
    root.ensure_built()
    with MonadoService(root) as service:
        out_host, out_inside = root.make_dir("bench-")
        # Desktop window with as many pixels as both eyes together, so the two
        # figures compare the same work per frame.
        probe_cmd = root.command(
            ["python", "-m", "deeproom.scenes.xr.harness", "--out", out_inside, "--seconds", str(args.seconds),
             "--desktop-seconds", str(args.seconds), "--captures", "0", "--size", "640x240"],
            service.client_env(),
        )
        proc = subprocess.run(probe_cmd, capture_output=True, text=True, timeout=300)
        report = json.loads((out_host / "report.json").read_text())
    if not report.get("ok"):
        print(proc.stderr[-2000:])
        raise SystemExit(f"bench xr failed: {report.get('error')}")
    xr_fps = float(report["frames_submitted_per_s"])
    desktop = float(report["desktop_fps"])
    emit({
        "bench": "xr",
        "runtime": report["runtime"],
        "system": report["system"],
        "eye_size": report["view_sizes"][0],
        "desktop_size": report["desktop_size"],
        "runtime_display_hz": round(float(report.get("runtime_display_hz", 0.0)), 2),
        "frames_submitted": report["frames_submitted"],
        "frames_submitted_per_s": round(xr_fps, 2),
        "desktop_fps": round(desktop, 2),
        "xr_to_desktop_ratio": round(xr_fps / desktop, 4) if desktop else None,
        "focus_seconds": round(float(report["focus_seconds"]), 3),
    })
    return 0


def _check_xr_runtime() -> str:
    from .xr.errors import XRUnavailable
    from .xr.session import probe

    try:
        info = probe()
    except XRUnavailable as exc:
        return f"XR mode unavailable: {exc}; `--xr` opens in desktop mode"
    binding = "EGL (no X server needed)" if info.egl else "GLX only (needs an X display)"
    w, h = info.view_sizes[0]
    return f"{info.runtime} / {info.system}: {len(info.view_sizes)} views {w}x{h}, OpenGL via {binding}"


def _check_headless_monado() -> str:
    import os

    from .xr.monado import MonadoRoot

    root = MonadoRoot.default()
    if root.is_built():
        return f"headless Monado folder ready at {root.path} (tests and `deeproom bench xr` use it)"
    if os.geteuid() != 0:
        return "headless Monado folder not built and cannot be here (needs root): XR tests skip"
    return f"headless Monado folder not built yet ({root.path}); the XR tests build it (~8 min, ~1.5 GB)"


def doctor_checks() -> list[tuple[str, Callable[[], str]]]:
    return [("xr", _check_xr_runtime), ("xr test", _check_headless_monado)]
