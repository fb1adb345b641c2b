"""The room reaches everything (issue 13), as a user meets it.

`deeproom open model.onnx --data folder --headless`'s own parts (an embedded relay, the
engine as its own participant, the room app offscreen) on a small residual CNN trained on
coloured squares and a generated image folder. Everything is done by rendered clicks:
find the layer with `/`, right-click it (its world position projected to the screen),
pick Score-CAM and class k from the menus in the world; the result panel appears beside
the graph without overlapping anything, its map peaks on the square; a click on another
image of the input strip moves the map; a second process joins the relay and sees the
same panels and the same blobs. And: every analysis the engine's registry has for a CNN
and for a ViT is offered by the app's menus.
"""

from __future__ import annotations

import json
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.squares import COLOURS, SIZE, SmallResNet, square_image, train_on_squares


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An image folder (a red or green square on noise: the class is the colour) and a small
    residual CNN trained on such images, exported to ONNX."""
    import torch
    from PIL import Image

    from deeproom.models.bench import export_onnx

    root = tmp_path_factory.mktemp("reach")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / "data" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray((square_image(colour, rng)[0] * 255).astype(np.uint8)).save(root / "data" / name / f"{i:02d}.png")
    labels = rng.integers(0, 2, 256)
    x = torch.tensor(np.stack([square_image(list(COLOURS.values())[int(k)], rng)[0].transpose(2, 0, 1) for k in labels]))
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = train_on_squares(SmallResNet(), x, y)
    (root / "resnet.onnx").write_bytes(export_onnx(model, torch.zeros(1, 3, SIZE, SIZE)))
    return {"root": root, "model": root / "resnet.onnx", "data": root / "data"}


HELPERS = '''
import pathlib
from types import SimpleNamespace
from deeproom.content import decode_content
from deeproom.net import BackgroundClient
from deeproom.placement import overlapping
from deeproom.scenes.session import RelaySession
from deeproom.scenes import geometry

BACKGROUND = (18, 20, 28)

def screen_of(app, world):
    at = app.world_to_screen(world)
    assert at is not None, f"{world} is not on screen"
    return at

def click(app, world, context=False):
    """A rendered click (or right-click) on a world point: its pixel, and the ray through it."""
    x, y = screen_of(app, world)
    ray = app.screen_ray(x, y)
    if context:
        app.pointer_context(*ray)
    else:
        app.pointer_press(*ray)
        app.pointer_release(*ray)
    app.step(2)
    return x, y

def row_world(app, i):
    g = app.menus.geometry
    return g.frame().world(*g.row_centre(i))

def look_at_panel(app, pid, distance=1.6):
    view = app.panels[pid]
    f = view.frame()
    eye, target = geometry.viewpoint_facing(f, f.centre, distance)
    app.rig.teleport(tuple(float(c) for c in eye), None)
    app.rig.look_at(tuple(float(c) for c in target))
    app.step(3)

def face_crop(app, pid):
    """The panel's face as drawn on screen (its content area), RGB."""
    view = app.panels[pid]
    f = view.frame()
    w, h = view.size
    pts = [screen_of(app, f.world(su * w * 0.45, sv * h * 0.45)) for su in (-1, 1) for sv in (-1, 1)]
    xs, ys = [int(p[0]) for p in pts], [int(p[1]) for p in pts]
    return app.screenshot()[min(ys):max(ys), min(xs):max(xs), :3].astype(np.int16)

def cam_of(session, panel):
    meta, arrays = decode_content(session.fetch_blob(panel.content.refs[0]))
    return np.asarray(arrays["cam"], np.float32), np.asarray(arrays["image"]), meta

def peak_on_square(cam, image):
    square = image.reshape(image.shape[0], image.shape[1], -1).max(-1) > 200
    y, x = np.unravel_index(int(cam.argmax()), cam.shape)
    sy, sx = square.shape[0] / cam.shape[0], square.shape[1] / cam.shape[1]
    ys, xs = np.nonzero(square)
    return bool(ys.min() - 1 <= y * sy <= ys.max() + 1 and xs.min() - 1 <= x * sx <= xs.max() + 1), [int(y), int(x)]
'''


OPENER = HELPERS + '''
from deeproom.models.tasks import applicable_analyses
from deeproom.scenes.commands import _engine_link
from deeproom.scenes.open_models import ModelsEngine
from deeproom.scenes.runner import content_settled, wait_for

MODEL, DATA, DONE, K = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), int(sys.argv[4])
out = {}
client = BackgroundClient(None, room="reach", name="You", data_dir=pathlib.Path("you"))
client.wait_ready(60)
session = RelaySession(client)
engine = ModelsEngine(session, [MODEL], link=_engine_link(client, "reach", SimpleNamespace(data_dir=pathlib.Path("eng"))),
                      data=DATA, preprocess={}).start()
app = RoomApp(session, options=AppOptions(offscreen=True, size=(640, 480), start_position=(0.0, 1.7, -1.4)),
              provider=engine)
app.start()
assert wait_for(app, lambda: engine.ready.is_set() and content_settled(app)
                and {"graph-1", "inputs-m1"} <= set(app.panels) and "inputs-m1" in app.blob_facts, 180), engine.failed
graph = app.panels["graph-1"]
nodes = graph.content.layout.nodes
relu = [i for i, nd in enumerate(nodes) if "relu" in nd.op.lower()][-1]  # the last spatial layer
layer = nodes[relu].name

# "/" and the layer's name in the HUD, Enter: the viewer stands in front of it
app.key("/")
for ch in layer:
    app.key(ch)
app.step()
out["hud_search"] = app.hud.search.text
app.key("enter")
app.step(3)
nodes = graph.content.layout.nodes
relu = next(i for i, nd in enumerate(nodes) if nd.name == layer)
eye = app.rig.head()[0]
node_world = graph.frame().world(float(graph.content.world[relu][0]), float(graph.content.world[relu][1]))
out["after_search_distance"] = float(np.linalg.norm(np.asarray(eye) - node_world))
out["search_closed"] = not app.search.active

# right-click the layer where it is drawn
click(app, node_world, context=True)
out["menu_title"] = app.menus.geometry.title if app.menus.geometry else None
offered = {"layer": [a.name for what, a in app.menus.rows if what == "action"]}
row = next(i for i, (what, a) in enumerate(app.menus.rows) if what == "action" and a.name == "scorecam")
x, y = screen_of(app, row_world(app, row))
out["menu_row_pixel"] = pixel(app, x, y)
t_click = time.monotonic()
click(app, row_world(app, row))
pickers = []
while app.menus.is_open and app.menus.picker is not None:
    p = app.menus.picker
    pickers.append(p.name)
    want = K if p.type == "class" else None
    i = next((i for i, (what, v) in enumerate(app.menus.rows) if what == "value" and (want is None or v == want)), None)
    click(app, row_world(app, i))
sent = app.menus.sent[-1]
out["pickers"], out["sent"] = pickers, {k: sent[k] for k in ("action", "panel_id", "params", "to")}
out["engine_id"] = engine.service.engine_id
rid = sent["request_id"]
assert until(app, lambda: rid in app.menus.drawn_at, 120), [r for r in app.menus.reports][-5:]
out["click_to_drawn_s"] = app.menus.drawn_at[rid] - t_click
result = next(r.result_panel for r in app.menus.reports if r.request_id == rid and r.result_panel)
out["result_panel"] = result
panel = app.room.panels[result]
out["result_source"] = {k: panel.content.source.get(k) for k in ("from", "analysis", "params", "input", "engine")}
out["overlapping"] = [list(p) for p in overlapping(app.room)]
out["result_to_graph_m"] = float(np.linalg.norm(np.subtract(panel.transform.position, graph.panel.transform.position)))
cam, image, _ = cam_of(session, panel)
out["peak_on_square"], out["peak"] = peak_on_square(cam, image)
out["cam_std"] = float(cam.std())
look_at_panel(app, result)
crop1 = face_crop(app, result)
out["face_std"] = float(crop1.std())

# offered on the graph panel itself (right-click beside the layers)
app.rig.teleport((0.0, 1.7, -1.4), 0.0)
app.step(2)
click(app, graph.frame().world(graph.size[0] * 0.49, -graph.size[1] * 0.49), context=True)
offered["panel"] = [a.name for what, a in app.menus.rows if what == "action"]
out["graph_menu_has_search"] = any(what == "search" for what, _ in app.menus.rows)
app.menus.close()
hosted = engine.service.hosted["m1"]
out["applicable"] = sorted(applicable_analyses(hosted.model, hosted.dataset))
out["offered"] = offered

# another image of class k on the strip: the map moves to its square
strip = app.panels["inputs-m1"]
labels = app.blob_facts["inputs-m1"]["tiles"]["labels"]
now = panel.content.source["input"]["index"]
other = next(i for i, lab in enumerate(labels) if lab == labels[K * 8] and i != now and i > now + 2)
out["tile"] = [now, other]
look_at_panel(app, "inputs-m1", 1.4)
u, v = app.menus.tile_point(strip, other)
before = panel.content.refs[0]
click(app, strip.frame().world(u, v))
out["tile_sent"] = {k: app.menus.sent[-1][k] for k in ("action", "params")}
assert until(app, lambda: app.room.panels[result].content.refs[0] != before
             and app.panels[result].content_key.startswith(app.room.panels[result].content.refs[0]), 120)
panel = app.room.panels[result]
cam2, image2, _ = cam_of(session, panel)
out["peak2_on_square"], out["peak2"] = peak_on_square(cam2, image2)
out["input2"] = panel.content.source.get("input")
look_at_panel(app, result)
crop2 = face_crop(app, result)
out["face_change"] = float(np.abs(crop1 - crop2).mean()) if crop1.shape == crop2.shape else 255.0
out["overlapping_after"] = [list(p) for p in overlapping(app.room)]
out["panels"] = {pid: list(p.content.refs) for pid, p in app.room.panels.items()}
print("READY " + json.dumps({"url": client.url, "panels": out["panels"]}), flush=True)
end = time.monotonic() + 300
while not DONE.exists() and time.monotonic() < end:
    app.step()
    time.sleep(0.1)
engine.close(); app.close(); session.close()
done(out)
'''

JOINER = HELPERS + '''
URL, RESULT = sys.argv[1], sys.argv[2]
client = BackgroundClient(URL, room="reach", name="Bo", data_dir=pathlib.Path("bo"))
client.wait_ready(60)
session = RelaySession(client)
app = RoomApp(session, options=AppOptions(offscreen=True, size=(640, 480)))
app.start()
end = time.monotonic() + 120
while time.monotonic() < end and not (app.room is not None and RESULT in app.room.panels and settle(app, 5)):
    app.step()
out = {"panels": {pid: list(p.content.refs) for pid, p in app.room.panels.items()},
       "errors": sorted(pid for pid, v in app.panels.items() if v.is_error)}
cam, image, _ = cam_of(session, app.room.panels[RESULT])
out["peak_on_square"], out["peak"] = peak_on_square(cam, image)
look_at_panel(app, RESULT)
out["face_std"] = float(face_crop(app, RESULT).std())
app.close(); session.close()
done(out)
'''


def _read_ready(proc: Any, timeout: float) -> dict[str, Any]:
    """Wait for the opener's READY line (its room is set up), keeping what it printed."""
    seen: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            break
        r, _, _ = select.select([proc.stdout], [], [], 1.0)
        if r:
            line = proc.stdout.readline()
            seen.append(line)
            if line.startswith("READY "):
                ready: dict[str, Any] = json.loads(line[6:])
                return ready
    rest = proc.stdout.read() if proc.poll() is not None else ""
    raise AssertionError("the opener never got ready:\n" + "".join(seen)[-4000:] + rest[-4000:])


def test_open_click_a_layer_score_cam_choose_an_image_and_a_second_process_sees_it(
        assets: dict[str, Path], run_scene: Callable[..., Any], tmp_path: Path) -> None:
    from tests.scenes.conftest import parse  # type: ignore[import-not-found]

    k = 0  # "green": the first class folder
    flag = tmp_path / "done"
    opener = run_scene(OPENER.replace("sys.argv[1]", repr(str(assets["model"])))
                       .replace("sys.argv[2]", repr(str(assets["data"])))
                       .replace("sys.argv[3]", repr(str(flag))).replace("sys.argv[4]", str(k)),
                       name="opener", background=True)
    try:
        ready = _read_ready(opener, 400)
        result = next(pid for pid in ready["panels"] if pid.startswith("scorecam-"))
        joined = run_scene(JOINER.replace("sys.argv[1]", repr(ready["url"])).replace("sys.argv[2]", repr(result)),
                           name="joiner", timeout=300)
    finally:
        flag.write_text("done")
        try:
            stdout, _ = opener.communicate(timeout=120)
        except Exception:
            opener.kill()
            raise
    out = parse(opener.returncode, stdout)
    # "/" typed the name into the HUD; Enter put the viewer in front of the layer
    assert out["hud_search"].startswith("Find layer: ") and out["search_closed"]
    assert out["after_search_distance"] < 1.6, out["after_search_distance"]
    # the right-click opened the layer's menu in the world; rows were clicked where drawn
    assert out["menu_title"] and "·" in out["menu_title"]
    assert tuple(out["menu_row_pixel"]) != (18, 20, 28)
    assert out["pickers"][:1] == ["target"] or "target" in out["pickers"], out["pickers"]
    sent = out["sent"]
    assert sent["action"] == "scorecam" and sent["panel_id"] == "graph-1" and sent["to"] == out["engine_id"]
    assert sent["params"]["target"] == k and sent["params"]["layer"]
    # the panel appeared beside the graph, overlapping nothing, its peak on the square
    src = out["result_source"]
    assert src["from"] == "graph-1" and src["analysis"] == "scorecam" and src["input"]["from"] == "data"
    assert out["overlapping"] == [] and out["overlapping_after"] == []
    assert out["result_to_graph_m"] < 4.0, out["result_to_graph_m"]
    assert out["cam_std"] > 0.05 and out["peak_on_square"], out
    assert out["face_std"] > 10, "the result panel is not drawn"
    # every analysis the engine has for this model is in the graph's menus
    offered = set(out["offered"]["layer"]) | set(out["offered"]["panel"])
    assert set(out["applicable"]) <= offered, set(out["applicable"]) - offered
    assert out["graph_menu_has_search"]
    # another image of class k on the strip: the map moved to its square, on screen too
    assert out["tile_sent"] == {"action": "choose_input", "params": {"index": out["tile"][1]}}
    assert out["input2"]["index"] == out["tile"][1]
    assert out["peak2_on_square"] and out["peak2"] != out["peak"], (out["peak"], out["peak2"])
    assert out["face_change"] > 3.0, out["face_change"]
    # the second process sees the same panels, the same blobs, drawn
    assert joined["panels"] == out["panels"], (joined["panels"], out["panels"])
    assert joined["errors"] == [] and joined["peak"] == out["peak2"] and joined["face_std"] > 10


def test_the_menus_offer_every_analysis_the_registry_has_for_a_cnn_and_a_vit() -> None:
    from deeproom.models.tasks import applicable_analyses
    from deeproom.scenes import bench_room

    cnn, data = bench_room._cnn_with_data()
    vit = bench_room._vit()
    for model, ds, least in ((cnn, data, 10), (vit, None, 5)):
        engine = set(applicable_analyses(model, ds))
        menu = bench_room.menu_names(model, ds)
        assert len(engine) >= least, engine
        assert engine <= menu, engine - menu
    assert "attention" in set(applicable_analyses(vit, None)) and "attention" not in set(applicable_analyses(cnn, data))
