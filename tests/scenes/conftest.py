"""Rendering tests run their scene in a subprocess (Ursina is one app per process).

`run_scene(script, cwd)` writes the script into a small folder of its own (Ursina
scans the folder of sys.argv[0]), runs it with this interpreter, and returns the
JSON object the script printed as its last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PRELUDE = '''
import json, sys, time
import numpy as np
from deeproom.scenes.app import AppOptions, RoomApp

def settle(app, timeout=60.0, extra=3):
    from deeproom.scenes.runner import content_settled
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.step()
        if content_settled(app):
            app.step(extra)
            return True
        time.sleep(0.01)
    return False

def until(app, check, timeout):
    """Step frames (they drain the inbox) until check() holds and the content settles."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.step()
        if check() and settle(app, 1.0):
            return True
        time.sleep(0.05)
    return False

def wait(app, cond, timeout=90.0):
    """Step frames until cond() holds (then three more, to draw it); False after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.step()
        if cond():
            app.step(3)
            return True
        time.sleep(0.02)
    return False

def click_row(app, label_start):
    """A rendered click on the open menu's first row whose text starts with label_start (a row
    "name · action" matches on its action too, when no row starts so); returns the click's time."""
    g = app.menus.geometry
    rows = [i for i, t in enumerate(g.items) if t.startswith(label_start)]
    rows += [i for i, t in enumerate(g.items) if " · " in t and t.split(" · ", 1)[1].startswith(label_start)]
    u, v = g.row_centre(rows[0])
    ray = app.screen_ray(*app.world_to_screen(g.frame().world(u - g.size[0] * 0.3, v)))
    t = time.monotonic()
    app.pointer_press(*ray); app.pointer_release()
    app.step(2)
    return t

def click_graph_node(app, panel_id, index):
    """Click (press and release) node `index` of the model graph in panel `panel_id`."""
    g = app.panels[panel_id]
    p = g.content.world[index]
    app.pointer_press(*app.screen_ray(*app.world_to_screen(g.frame().world(float(p[0]), float(p[1])))))
    app.pointer_release()

def pixel(app, x, y):
    img = app.screenshot()
    h, w = img.shape[:2]
    return [int(c) for c in img[min(max(int(round(y)), 0), h - 1), min(max(int(round(x)), 0), w - 1), :3]]

def done(result):
    print(json.dumps(result), flush=True)
'''


@pytest.fixture
def run_scene(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    def run(script: str, *, name: str = "scene", timeout: float = 240.0, env: dict[str, str] | None = None,
            background: bool = False) -> Any:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.py"
        path.write_text(PRELUDE + textwrap.dedent(script))
        full_env = {**os.environ, **(env or {})}
        full_env.pop("DISPLAY", None)
        if background:
            return subprocess.Popen([sys.executable, str(path)], cwd=folder, env=full_env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        proc = subprocess.run([sys.executable, str(path)], cwd=folder, env=full_env, capture_output=True,
                              text=True, timeout=timeout)
        return parse(proc.returncode, proc.stdout, proc.stderr)

    return run


def parse(code: int, stdout: str, stderr: str = "") -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if code != 0 or not lines:
        raise AssertionError(f"scene process failed (exit {code}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
