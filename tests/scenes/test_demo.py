"""`deeproom demo` without a display: embedded relay, the digits CNN trained, every panel
filled by the engine, snapshots written (what `make demo` does on a headless machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.mark.slow
def test_demo_headless_writes_snapshots_of_a_full_room(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from deeproom.cli import main; sys.exit(main())",
         "--data-dir", str(tmp_path / "data"), "demo", "--frames", "3", "--size", "640x360"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "10 panels, 0 showing errors" in out, out[-4000:]
    shots = sorted((tmp_path / "snapshots").glob("demo-*.png"))
    assert [p.name for p in shots] == ["demo-latent-cloud.png", "demo-left-wall.png", "demo-model-graph.png",
                                       "demo-overview.png", "demo-right-wall.png"]
    img = np.asarray(Image.open(tmp_path / "snapshots" / "demo-overview.png").convert("RGB"))
    assert img.shape == (360, 640, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # a full room, not a blank frame
