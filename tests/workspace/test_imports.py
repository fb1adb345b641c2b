"""Import rules: the core, the relay and the engine never pull in ursina (or the core torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["deeproom", "deeproom.net", "deeproom.models"])
def test_no_ursina_outside_scenes(module: str) -> None:
    loaded = modules_after_import(module)
    assert not {"ursina", "panda3d", "direct", "xr"} & loaded


def test_core_is_pure_python() -> None:
    loaded = modules_after_import("deeproom, deeproom.document, deeproom.storage, deeproom.layout, deeproom.cli")
    assert not {"torch", "ursina", "socketio", "aiohttp", "aiortc"} & loaded
