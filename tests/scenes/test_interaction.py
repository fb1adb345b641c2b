"""Input becomes core operations and events: menu, rotate/scale, resize, close, cloud
selection and its actions, a model graph's groups and layers; a lost relay shows a
banner and the room comes back. Driven offscreen by calling the app's input methods."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.scenes.conftest import PRELUDE, parse  # type: ignore[import-not-found]

SCRIPT = '''
from deeproom.content import encode_content
from deeproom.document import new_room
from deeproom.scenes.session import LocalSession
from deeproom.scenes.views import CORNER, TITLE_BAR, CloudView, GraphView

doc = new_room("i", name="input test", host_id="host", host_name="Host")
session = LocalSession(doc, "host")
events = []
session.on_event(lambda kind, sender, payload: events.append([kind, dict(payload)]))
def put(meta, arrays):
    return session.put_blob(encode_content(meta, arrays)).result()
def add(pid, kind, pos, size, refs):
    doc.apply({"op": "add_panel", "panel_id": pid, "kind": kind, "title": pid, "transform": {"position": pos},
               "size": size, "content": {"source": {}, "refs": refs}}, "host")
cm = put({"kind": "confusion_matrix"}, {"matrix": np.eye(3, dtype=np.int32) * 5})
add("cm", "confusion_matrix", [0.0, 1.6, 2.0], [0.6, 0.6], [cm])
app = RoomApp(session, options=AppOptions(offscreen=True, size=(320, 240), start_position=(0.0, 1.6, 0.0)))
app.start()
out = {"settled": settle(app)}

# Add from the menu: Tab, then 3 (the third kind, confusion_matrix).
before = set(doc.snapshot().panels)
app.key("tab"); out["menu_open"] = app.menu_open
app.key("3")
app.step(2)
new = sorted(set(doc.snapshot().panels) - before)
p = doc.snapshot().panels[new[0]] if new else None
out["added"] = {"ids": new, "kind": p.kind.value if p else None, "position": list(p.transform.position) if p else None,
                "refs_reused": bool(p and p.content.refs == (cm,))}
from deeproom.placement import overlapping
out["added_overlaps"] = [list(pair) for pair in overlapping(doc.snapshot(), (0.0, 1.6, 0.0))]
doc.apply({"op": "remove_panel", "panel_id": new[0]}, "host"); app.step(2)

# The menu is a panel in the world (a headset sees it too): turned to face +x, Tab opens it
# in front of the eyes; a ray on its "note" row adds a note; a ray beside it only closes it.
app.rig.teleport((0.0, 1.6, 0.0), 90.0); app.step(2)
app.key("tab"); app.step(3)
g = app.menu.geometry
out["menu_world"] = {"position": list(g.position), "items": list(g.items)}
row = g.frame().world(*g.row_centre(g.items.index("note")))
sx, sy = app.world_to_screen(row)
from deeproom.scenes.menu import ROW, WIDTH
out["menu_row_pixel"] = pixel(app, *app.world_to_screen(g.frame().world(WIDTH * 0.45, g.row_centre(g.items.index("note"))[1])))  # the row's right end, clear of its label
out["menu_bg_pixel"] = pixel(app, *app.world_to_screen(g.frame().world(WIDTH * 0.45, g.size[1] / 2 - ROW * 3.5)))
before = set(doc.snapshot().panels)
app.pointer_press(*app.screen_ray(sx, sy)); app.pointer_release(); app.step(2)
new = sorted(set(doc.snapshot().panels) - before)
out["menu_added"] = [doc.snapshot().panels[i].kind.value for i in new]
out["menu_closed_after_pick"] = not app.menu_open
for pid in new:  # the new note stands right behind where the menu was: take it away to look
    doc.apply({"op": "remove_panel", "panel_id": pid}, "host")
app.step(3)
out["after_menu_pixel"] = pixel(app, *app.world_to_screen(g.frame().world(WIDTH * 0.45, g.size[1] / 2 - ROW * 3.5)))
app.key("tab"); app.step(1)
before = set(doc.snapshot().panels)
app.pointer_press(*app.screen_ray(5, 5)); app.pointer_release(); app.step(1)
out["beside_menu"] = {"open": app.menu_open, "added": sorted(set(doc.snapshot().panels) - before)}
app.rig.teleport((0.0, 1.6, 0.0), 0.0); app.step(2)

# Select, rotate, scale.
v = app.panels["cm"]
app.pointer_press(*app.screen_ray(*app.world_to_screen(v.frame().world(0.0, 0.0))))
app.pointer_release()
out["selected"] = app.selected
app.key("e"); app.key("+"); app.step(2)
t = doc.snapshot().panels["cm"].transform
out["rotated"] = list(t.rotation); out["scaled"] = list(t.scale)
app.key("-"); app.key("q"); app.step(2)

# Resize from the corner: drag it outwards.
v = app.panels["cm"]
w, h = v.size
c = v.frame().world(w / 2 - CORNER * 0.2, -h / 2 + CORNER * 0.2)
cx, cy = app.world_to_screen(c)
hit = app.pointer_press(*app.screen_ray(cx, cy))
out["corner_region"] = hit.region if hit else None
app.pointer_release(*app.screen_ray(cx + 30, cy + 20))
app.step(3)
out["resized"] = list(doc.snapshot().panels["cm"].size)

# A latent cloud: click on a point, act on the selection.
pos = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]], np.float32)
thumbs = np.zeros((5, 8, 8), np.uint8); thumbs[:, 2:6, 2:6] = 255
cl = put({"kind": "latent_cloud", "classes": ["a", "b"]}, {"positions": pos[:, :2], "labels": np.array([0, 1, 0, 1, -1], np.int16),
        "predictions": np.array([0, 1, 1, 1, 0], np.int16), "thumbnails": thumbs})
doc.apply({"op": "remove_panel", "panel_id": "cm"}, "host")
add("cloud", "latent_cloud", [0.0, 1.6, 2.0], [1.0, 1.0], [cl])
settle(app)
cv = app.panels["cloud"]
target = cv.frame().world(*cv.content.pos[1][:2])  # point 1, in the face plane
app.pointer_press(*app.screen_ray(*app.world_to_screen(target)))
app.pointer_release()
out["selection"] = [int(i) for i in cv.content.selection]
app.key("7"); app.key("r"); app.key("i")
app.step(3)
for _ in range(50):
    app.step()
    if any(pp.kind.value == "image" for pp in doc.snapshot().panels.values()):
        break
out["events"] = events
imgs = [pp for pp in doc.snapshot().panels.values() if pp.kind.value == "image"]
out["images_panel"] = imgs[0].title if imgs else None
app.tool = "box"
a = cv.frame().world(-0.49, 0.49); b = cv.frame().world(0.03, -0.03)
app.pointer_press(*app.screen_ray(*app.world_to_screen(a)))
app.pointer_release(*app.screen_ray(*app.world_to_screen(b)))
out["box_selection"] = sorted(int(i) for i in cv.content.selection)
# In a headset the hands place the sphere: centred on point 3 (world), radius just over its
# distance to nothing else -> that point alone; a sphere in empty space selects no cloud.
p3 = cv.to_world(cv.content.pos[3])
out["hand_sphere"] = [app.select_sphere_at(p3, 0.05), [int(i) for i in cv.content.selection]]
out["hand_sphere_big"] = app.select_sphere_at(cv.frame().world(0.0, 0.0), 2.0)
out["hand_sphere_nowhere"] = app.select_sphere_at((5.0, 1.6, -3.0), 0.2)

# A cloud whose trail starts ten times wider than where its points are now (an embedding that
# contracted): the trail is drawn in the same frame as the points, on the panel, not beyond it.
trails = np.stack([pos[:, :2] * 10.0, pos[:, :2] * 3.0, pos[:, :2]]).astype(np.float32)
tc = put({"kind": "latent_cloud"}, {"positions": pos[:, :2], "labels": np.zeros(5, np.int16), "trails": trails})
add("trailed", "latent_cloud", [2.0, 1.6, 2.0], [1.0, 0.8], [tc])
settle(app)
tv = app.panels["trailed"].content
tnode = next(nd for nd in tv.nodes if nd.name == "cloud-trails")
lo, hi = tnode.get_tight_bounds(tv.parent)
out["trail_bounds"] = [[float(lo[0]), float(lo[1])], [float(hi[0]), float(hi[1])]]
out["trail_points_span"] = float(np.ptp(tv.pos[:, 0]))
doc.apply({"op": "remove_panel", "panel_id": "trailed"}, "host")

# A model graph with 600 layers in 3 groups opens collapsed; click a group to expand it, then a layer.
n = 600
nodes = [{"id": i, "name": f"layer{i}", "op": "Conv", "group": i // 200, "rank": i, "order": 0, "params": 10} for i in range(n)]
edges = [[i, i + 1] for i in range(n - 1)]
groups = [{"id": g, "name": f"stage{g}", "parent": None} for g in range(3)]
gb = put({"kind": "model_graph", "nodes": nodes, "edges": edges, "groups": groups}, {})
for pid in list(doc.snapshot().panels):
    doc.apply({"op": "remove_panel", "panel_id": pid}, "host")
add("graph", "model_graph", [0.0, 1.6, 1.6], [1.4, 0.8], [gb])
settle(app)
gv = app.panels["graph"]
out["collapsed_nodes"] = len(gv.content.layout.nodes)
def click_node(i):
    p = gv.content.world[i]
    world = gv.frame().world(float(p[0]), float(p[1]))
    app.pointer_press(*app.screen_ray(*app.world_to_screen(world)))
    app.pointer_release()
    app.step(2)
click_node(0)
out["expanded_nodes"] = len(gv.content.layout.nodes)
layer_index = next(i for i, nd in enumerate(gv.content.layout.nodes) if not nd.collapsed)
click_node(layer_index)
out["open_layer"] = [e for e in events if e[1].get("cmd") == "open_layer"]
# A tracked hand that points (a controller, in XR): its wearer sees their own laser,
# from the hand to where it meets the graph panel.
from deeproom.presence import HandPose
from deeproom.scenes.rigs import DesktopRig
class PointingHandRig(DesktopRig):  # the desktop camera, plus a right hand pointing straight ahead
    def hands(self):
        return None, HandPose(position=(0.2, 1.4, 0.3), rotation=(1.0, 0.0, 0.0, 0.0))
    def pointer_ray(self):
        return np.array([0.2, 1.4, 0.3]), np.array([0.0, 0.0, 1.0])
out["own_laser_desktop"] = app.own_lasers["right"].shown
desk = app.rig
app.set_rig(PointingHandRig()); app.rig.teleport((0.0, 1.6, 0.0), 0.0); app.step(3)
dot = [float(c) for c in app.own_lasers["right"].dot.world_position]
out["own_laser"] = {"shown": app.own_lasers["right"].shown, "dot": dot,
                    "pixel": pixel(app, *app.world_to_screen(np.array(dot) - np.array([0.0, 0.0, 0.02])))}
app.set_rig(desk); app.step(2)
out["own_laser_after"] = app.own_lasers["right"].shown
# Close button removes the panel.
w, h = gv.size
x, y = app.world_to_screen(gv.frame().world(w / 2 - TITLE_BAR / 2, h / 2 + TITLE_BAR / 2))
hit = app.pointer_press(*app.screen_ray(x, y)); app.pointer_release(); app.step(2)
out["close_region"] = hit.region if hit else None
out["after_close"] = sorted(doc.snapshot().panels)
app.close()
done(out)
'''


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("interaction")
    path = folder / "scene.py"
    path.write_text(PRELUDE + textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.run([sys.executable, str(path)], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    return parse(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.slow
def test_a_clouds_trail_stays_on_its_panel(seen: dict[str, Any]) -> None:
    (x0, y0), (x1, y1) = seen["trail_bounds"]
    assert x0 >= -0.5 and x1 <= 0.5 and y0 >= -0.4 and y1 <= 0.4, seen["trail_bounds"]
    assert x1 - x0 > 0.8  # the widest trail frame fills the face
    assert 0.05 < seen["trail_points_span"] < 0.2  # the points are where they are now, inside it


@pytest.mark.slow
def test_menu_adds_a_panel_in_front(seen: dict[str, Any]) -> None:
    assert seen["menu_open"]
    added = seen["added"]
    assert added["kind"] == "confusion_matrix" and added["refs_reused"]
    x, _, z = added["position"]
    # 1.6 m straight ahead is where the confusion matrix stands: the new panel goes to the
    # free place nearest to it instead, in front of the viewer, overlapping nothing
    assert seen["added_overlaps"] == [] and z > 1.0 and 0.3 < abs(x) < 2.0, added


MENU_BG = (0.1 * 255, 0.11 * 255, 0.16 * 255)  # scenes/menu.py's colours
MENU_ROW = (0.14 * 255, 0.15 * 255, 0.21 * 255)


def near(pixel: list[int], rgb: tuple[float, ...], tol: float = 3.0) -> bool:
    return all(abs(p - c) <= tol for p, c in zip(pixel, rgb, strict=True))


@pytest.mark.slow
def test_the_menu_is_a_panel_in_the_world_picked_by_a_ray(seen: dict[str, Any]) -> None:
    menu = seen["menu_world"]
    x, y, z = menu["position"]
    assert 0.9 < x < 1.1 and abs(z) < 0.05 and 1.45 < y < 1.55  # a metre ahead of eyes turned to +x
    assert "note" in menu["items"] and len(menu["items"]) == 11  # the ten kinds, then the participants panel
    assert menu["items"][-1] == "People & class…"
    # the row's background (odd rows are lighter) is drawn where the world says it is
    assert near(seen["menu_row_pixel"], MENU_ROW) or near(seen["menu_row_pixel"], MENU_BG), seen["menu_row_pixel"]
    assert near(seen["menu_bg_pixel"], MENU_ROW) or near(seen["menu_bg_pixel"], MENU_BG), seen["menu_bg_pixel"]
    assert seen["menu_added"] == ["note"] and seen["menu_closed_after_pick"]
    assert not near(seen["after_menu_pixel"], MENU_ROW) and not near(seen["after_menu_pixel"], MENU_BG)  # gone
    assert seen["beside_menu"] == {"open": False, "added": []}


@pytest.mark.slow
def test_a_pointing_hand_shows_its_own_laser_ending_on_the_panel(seen: dict[str, Any]) -> None:
    assert seen["own_laser_desktop"] is False  # the mouse is the desktop's pointer
    laser = seen["own_laser"]
    assert laser["shown"]
    x, y, z = laser["dot"]
    assert abs(x - 0.2) < 1e-3 and abs(y - 1.4) < 1e-3 and 1.55 < z < 1.61  # on the graph panel's face (z = 1.6)
    assert near(laser["pixel"], (0.55 * 255, 0.85 * 255, 255), tol=25), laser["pixel"]
    assert seen["own_laser_after"] is False


@pytest.mark.slow
def test_hands_place_the_selection_sphere_in_the_cloud(seen: dict[str, Any]) -> None:
    assert seen["hand_sphere"] == [1, [3]]
    assert seen["hand_sphere_big"] == 5
    assert seen["hand_sphere_nowhere"] is None


@pytest.mark.slow
def test_rotate_scale_resize_close(seen: dict[str, Any]) -> None:
    assert seen["selected"] == "cm"
    w, _, yq, _ = seen["rotated"]
    assert np.isclose(2 * np.degrees(np.arctan2(yq, w)), 15.0, atol=0.01)
    assert np.allclose(seen["scaled"], [1.1, 1.1, 1.1])
    assert seen["corner_region"] == "resize"
    rw, rh = seen["resized"]
    assert rw > 0.6 + 0.05 and rh > 0.6 + 0.05
    assert seen["close_region"] == "close" and "graph" not in seen["after_close"]


@pytest.mark.slow
def test_cloud_selection_and_its_actions(seen: dict[str, Any]) -> None:
    assert seen["selection"] == [1]
    kinds = [(k, p["cmd"], p.get("ids"), p.get("label"), p.get("select")) for k, p in seen["events"]]
    assert ("steer", "label_ids", [1], 7, None) in kinds  # the training runs' labelling command
    assert ("steer", "retrain", [1], None, "ids") in kinds
    assert seen["images_panel"] == "1 selected images"
    assert seen["box_selection"] == [0, 4]  # the top-left quadrant (and the centre on its corner)


@pytest.mark.slow
def test_huge_graph_opens_collapsed_and_expands_and_opens_layers(seen: dict[str, Any]) -> None:
    assert seen["collapsed_nodes"] == 3
    assert seen["expanded_nodes"] == 2 + 200
    opened = seen["open_layer"]
    assert opened and opened[0][1]["panel_id"] == "graph" and opened[0][1]["layer"].startswith("layer")


RELAY_LOST = '''
from deeproom.net import BackgroundClient
from deeproom.scenes.session import RelaySession
URL = sys.argv[1]
client = BackgroundClient(URL, room="lost", name="Alice", data_dir="data").wait_ready(60)
client.apply({"op": "add_panel", "panel_id": "n", "kind": "note", "title": "note",
              "transform": {"position": [0, 1.6, 2]}, "size": [0.6, 0.4], "content": {"source": {"text": "hi"}}}).result(30)
app = RoomApp(RelaySession(client), options=AppOptions(offscreen=True, size=(320, 240), start_position=(0.0, 1.6, 0.0)))
app.start()
settle(app)
open("joined", "w").write("1")
def wait(cond, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.step()
        if cond():
            return True
        time.sleep(0.05)
    return False
out = {"lost": wait(lambda: not app.connected)}
app.step(2)
out["banner"] = bool(app.hud.banner.enabled)
out["banner_pixel"] = pixel(app, 160, 240 * 0.05)
open("lost", "w").write("1")
out["back"] = wait(lambda: app.connected, timeout=90)
app.step(3)
out["banner_after"] = bool(app.hud.banner.enabled)
out["panels"] = sorted(app.panels)
app.close(); client.close()
done(out)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _relay(data: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from deeproom.cli import main; sys.exit(main())",
                             "--data-dir", str(data), "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("relay did not start")


def _wait_file(path: Path, proc: subprocess.Popen[str], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
            raise AssertionError(f"{path.name} never appeared: {out[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_lost_relay_shows_a_banner_and_reconnects(tmp_path: Path) -> None:
    data = tmp_path / "relay"
    port = _free_port()
    relay = _relay(data, port)
    folder = tmp_path / "scene"
    folder.mkdir()
    path = folder / "scene.py"
    path.write_text(PRELUDE + textwrap.dedent(RELAY_LOST))
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    scene = subprocess.Popen([sys.executable, str(path), f"http://127.0.0.1:{port}"], cwd=folder, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_file(folder / "joined", scene, 120)
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
        _wait_file(folder / "lost", scene, 90)
        relay = _relay(data, port)
        out_text, _ = scene.communicate(timeout=150)
        out = parse(scene.returncode, out_text)
    finally:
        if scene.poll() is None:
            scene.kill()
            scene.wait(10)
        if relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(20)
    assert out["lost"] and out["banner"]
    r, g, b = out["banner_pixel"]
    assert r > 120 and g < 80 and b < 80  # the red banner across the top
    assert out["back"] and not out["banner_after"]
    assert out["panels"] == ["n"]
