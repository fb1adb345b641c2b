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


LAYER_SCRIPT = '''
from deeproom.document import new_room
from deeproom.scenes.demo import DEMO_SLOTS, DemoEngine
from deeproom.scenes.session import LocalSession
from deeproom.scenes.views import CloudView, GraphView

doc = new_room("d", name="demo layers", host_id="host", host_name="Host")
session = LocalSession(doc, "host")
slots = [s for s in DEMO_SLOTS if s.panel_id in ("graph", "cloud")]
engine = DemoEngine(session, slots=slots)
app = RoomApp(session, options=AppOptions(offscreen=True, size=(320, 240), start_position=(0.0, 2.3, 1.5)),
              provider=engine)
app.start()
engine.start()
end = time.monotonic() + 300
while time.monotonic() < end:
    app.step()
    if engine.ready.is_set() and settle(app, 1.0):
        break
    time.sleep(0.05)
out = {"failed": engine.failed}
cloud = app.panels["cloud"].content
out["trails"] = isinstance(cloud, CloudView) and cloud.content.trails is not None
g = app.panels["graph"]
gv = g.content
i = next(k for k, nd in enumerate(gv.layout.nodes) if nd.name == "conv2")
p = gv.world[i]
app.pointer_press(*app.screen_ray(*app.world_to_screen(g.frame().world(float(p[0]), float(p[1])))))
app.pointer_release()
want = {"feature-maps-conv2", "filters-conv2", "grad-cam-conv2"}
end = time.monotonic() + 120
while time.monotonic() < end:
    app.step()  # frames drain the inbox: the new panels arrive through it
    if want <= set(app.panels) and settle(app, 1.0):
        break
    time.sleep(0.05)
out["opened"] = sorted(set(app.panels) - {"graph", "cloud"})
out["errors"] = sorted(pid for pid, v in app.panels.items() if v.is_error)
out["kinds"] = {pid: app.panels[pid].panel.kind.value for pid in out["opened"]}
app.save_snapshot("layers.png")
engine.close(); app.close()
done(out)
'''


@pytest.mark.slow
def test_clicking_a_layer_opens_its_maps_filters_and_grad_cam(tmp_path: Path) -> None:
    import textwrap

    from tests.scenes.conftest import PRELUDE, parse  # type: ignore[import-not-found]

    path = tmp_path / "layers.py"
    path.write_text(PRELUDE + textwrap.dedent(LAYER_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    out = parse(proc.returncode, proc.stdout, proc.stderr)
    assert out["failed"] is None
    assert out["trails"]  # the cloud moved while the model trained
    assert out["opened"] == ["feature-maps-conv2", "filters-conv2", "grad-cam-conv2"]
    assert out["kinds"] == {"feature-maps-conv2": "feature_maps", "filters-conv2": "filters", "grad-cam-conv2": "grad_cam"}
    assert out["errors"] == []
