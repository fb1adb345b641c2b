"""Without an OpenXR runtime: one line saying why, desktop mode, and the doctor says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import io, sys
from panda3d.core import loadPrcFileData
loadPrcFileData("", "load-display p3headlessgl\naudio-library-name null\nsync-video 0\n")
from ursina import Ursina
app = Ursina(window_type="offscreen", size=(64, 48), development_mode=False, editor_ui_enabled=False)
from deeproom.scenes.xr import start_xr
out = io.StringIO()
rig = start_xr(out=out)
app.step()  # the desktop app keeps running
print("RIG", rig)
print("LINES", len(out.getvalue().strip().splitlines()))
print("TEXT", out.getvalue().strip())
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Point the loader at a runtime manifest that does not exist: "no runtime".
    env["XR_RUNTIME_JSON"] = str(tmp_path / "missing_runtime.json")
    env["XDG_CONFIG_DIRS"] = str(tmp_path)
    env.pop("DISPLAY", None)
    return env


def test_start_xr_without_runtime_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "s.py"], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RIG None" in proc.stdout
    assert "LINES 1" in proc.stdout
    text = proc.stdout.split("TEXT", 1)[1].strip()
    assert text.startswith("XR mode unavailable: no OpenXR runtime found")
    assert text.endswith("opening in desktop mode")


def test_doctor_reports_why_there_is_no_xr(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("deeproom")
    proc = subprocess.run([str(exe), "doctor"], env=_env(tmp_path), capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    xr_lines = [line for line in proc.stdout.splitlines() if line.startswith("xr:")]
    assert len(xr_lines) == 1 and "no OpenXR runtime found" in xr_lines[0] and "desktop mode" in xr_lines[0]
