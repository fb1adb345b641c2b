"""`deeproom demo` without a display: embedded relay, the digits CNN trained, every panel
filled by the engine, snapshots written (what `make demo` does on a headless machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
until(app, engine.ready.is_set, 300)
out = {"failed": engine.failed}
cloud = app.panels["cloud"].content
out["trails"] = isinstance(cloud, CloudView) and cloud.content.trails is not None
gv = app.panels["graph"].content
click_graph_node(app, "graph", next(k for k, nd in enumerate(gv.layout.nodes) if nd.name == "conv2"))
want = {"feature-maps-conv2", "filters-conv2", "grad-cam-conv2"}
until(app, lambda: want <= set(app.panels), 120)  # the new panels arrive through the inbox
out["opened"] = sorted(set(app.panels) - {"graph", "cloud"})
out["errors"] = sorted(pid for pid, v in app.panels.items() if v.is_error)
out["kinds"] = {pid: app.panels[pid].panel.kind.value for pid in out["opened"]}
app.save_snapshot("layers.png")
engine.close(); app.close()
done(out)
'''


@pytest.mark.slow
def test_clicking_a_layer_opens_its_maps_filters_and_grad_cam(run_scene: Callable[..., dict[str, Any]]) -> None:
    out = run_scene(LAYER_SCRIPT, name="layers", timeout=600)
    assert out["failed"] is None
    assert out["trails"]  # the cloud moved while the model trained
    assert out["opened"] == ["feature-maps-conv2", "filters-conv2", "grad-cam-conv2"]
    assert out["kinds"] == {"feature-maps-conv2": "feature_maps", "filters-conv2": "filters", "grad-cam-conv2": "grad_cam"}
    assert out["errors"] == []


def _cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    return subprocess.run([sys.executable, "-c", "import sys; from deeproom.cli import main; sys.exit(main())", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_open_a_model_in_a_room_on_a_relay_and_join_it_from_another_app(tmp_path: Path) -> None:
    """`deeproom open` puts an ONNX model's graph into a room on a running relay;
    `deeproom join` (another process, another data folder) sees the same panel."""
    import socket

    import torch

    from deeproom.models.bench import export_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    (tmp_path / "tiny.onnx").write_bytes(export_onnx(model.eval(), torch.zeros(1, 1, 8, 8)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    relay = subprocess.Popen(
        [sys.executable, "-c", "import sys; from deeproom.cli import main; sys.exit(main())",
         "--data-dir", str(tmp_path / "relay"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and relay.poll() is None, "the relay did not start"
                time.sleep(0.1)
        common = ("--frames", "3", "--size", "320x240", "--no-voice")
        opened = _cli("--data-dir", str(tmp_path / "a"), "open", "tiny.onnx", "--server", url, "--room", "r1",
                      "--snapshot", "open.png", *common, cwd=tmp_path)
        out = opened.stdout + opened.stderr
        assert opened.returncode == 0, out[-3000:]
        assert "1 panels, 0 showing errors" in out, out[-3000:]
        joined = _cli("--data-dir", str(tmp_path / "b"), "join", f"{url}/r1", "--snapshot", "join.png", *common, cwd=tmp_path)
        out = joined.stdout + joined.stderr
        assert joined.returncode == 0, out[-3000:]
        assert "1 panels, 0 showing errors" in out, out[-3000:]
        for shot in ("open.png", "join.png"):
            img = np.asarray(Image.open(tmp_path / shot).convert("RGB"))
            assert img.shape == (240, 320, 3)
            assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, shot  # the graph panel, not a blank frame
        missing = _cli("--data-dir", str(tmp_path / "c"), "open", "nope.onnx", *common, cwd=tmp_path)
        assert missing.returncode == 2 and "no such model file: nope.onnx" in missing.stdout
    finally:
        relay.terminate()
        relay.wait(10)


OPEN_LAYER_SCRIPT = '''
from pathlib import Path
from deeproom.document import new_room
from deeproom.scenes.open_models import ModelsEngine
from deeproom.scenes.session import LocalSession

doc = new_room("o", name="opened", host_id="host", host_name="Host")
session = LocalSession(doc, "host")
engine = ModelsEngine(session, [Path("tiny.onnx"), Path("notes.txt")])
app = RoomApp(session, options=AppOptions(offscreen=True, size=(320, 240), start_position=(0.0, 1.9, 0.5)),
              provider=engine)
app.start()
engine.start()
until(app, engine.ready.is_set, 120)
gv = app.panels["graph-1"].content
conv = next(k for k, nd in enumerate(gv.layout.nodes) if nd.op == "Conv")
click_graph_node(app, "graph-1", conv)
until(app, lambda: {"feature_maps", "filters", "grad_cam"} <= {v.panel.kind.value for v in app.panels.values()}, 120)
out = {"conv": gv.layout.nodes[conv].name,
       "panels": sorted((v.panel.kind.value, v.panel.content.source.get("layer")) for v in app.panels.values()),
       "errors": sorted(pid for pid, v in app.panels.items() if v.is_error),
       "notes": [s for _, s, _ in app.notices]}
engine.close(); app.close()
done(out)
'''


@pytest.mark.slow
def test_clicking_a_layer_of_an_opened_onnx_model_opens_its_analyses(
    tmp_path: Path, run_scene: Callable[..., dict[str, Any]]
) -> None:
    import torch

    from deeproom.models.bench import export_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 16 * 16, 10))
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "tiny.onnx").write_bytes(export_onnx(model.eval(), torch.zeros(1, 3, 16, 16)))
    (tmp_path / "open" / "notes.txt").write_text("not a model")
    out = run_scene(OPEN_LAYER_SCRIPT, name="open", timeout=600)
    conv = out["conv"]
    kinds = [k for k, _ in out["panels"]]
    assert sorted(kinds) == ["feature_maps", "filters", "grad_cam", "model_graph", "note"], out
    assert all(layer == conv for k, layer in out["panels"] if k in ("feature_maps", "filters", "grad_cam")), out
    assert out["errors"] == [], out
    assert any(f"opened {conv}" in n for n in out["notes"]), out["notes"]
