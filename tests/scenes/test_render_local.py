"""Rendering checked by pixels, offscreen, on a room held in the scene's own process.

One subprocess renders a small room (320x240, llvmpipe) and reports what it saw; the
tests below each check one part of it: panels are drawn where the room says and
follow a move; a drag on a title bar becomes a move operation in the room; a
confusion matrix's cells have the colours its counts map to; a panel whose blob is
missing shows an error card while the rest of the room works; a resize is followed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deeproom.scenes import painting

SCRIPT = '''
from deeproom.content import encode_content
from deeproom.document import new_room
from deeproom.scenes import painting
from deeproom.scenes.session import LocalSession
from deeproom.scenes.views import TITLE_BAR

doc = new_room("t", name="render test", host_id="host", host_name="Host")
session = LocalSession(doc, "host")
def solid(rgb):
    img = np.zeros((8, 8, 3), np.uint8); img[:] = rgb
    return session.put_blob(encode_content({"kind": "image"}, {"image": img})).result()
def add(pid, kind, pos, size, refs):
    doc.apply({"op": "add_panel", "panel_id": pid, "kind": kind, "title": pid, "transform": {"position": pos},
               "size": size, "content": {"source": {}, "refs": refs}}, "host")
add("red", "image", [-0.45, 1.6, 2.0], [0.5, 0.5], [solid((255, 0, 0))])
add("blue", "image", [0.45, 1.6, 2.0], [0.5, 0.5], [solid((0, 0, 255))])
app = RoomApp(session, options=AppOptions(offscreen=True, size=(320, 240), start_position=(0.0, 1.6, 0.0)))
app.start()
out = {}
out["settled"] = settle(app)
def centre(pid):
    return app.world_to_screen(app.panels[pid].frame().centre)
for pid in ("red", "blue"):
    x, y = centre(pid)
    out[pid] = {"screen": [x, y], "pixel": pixel(app, x, y)}
old = centre("red")
doc.apply({"op": "move_panel", "panel_id": "red", "transform": {"position": [-0.45, 1.25, 2.0]}}, "host")
app.step(3)
new = centre("red")
out["moved"] = {"old": list(old), "new": list(new), "old_pixel": pixel(app, *old), "new_pixel": pixel(app, *new)}

# A drag on the blue panel's title bar, as a mouse would do it.
v = app.panels["blue"]
f = v.frame()
w, h = v.size
grab_world = f.world(-0.1 * w, h / 2 + TITLE_BAR / 2)
gx, gy = app.world_to_screen(grab_world)
hit = app.pointer_press(*app.screen_ray(gx, gy))
out["grab_region"] = hit.region if hit else None
o1, d1 = app.screen_ray(gx + 30, gy + 25)
app.pointer_move(o1, d1)
app.step(2)
app.pointer_release(o1, d1)
app.step(3)
from deeproom.scenes import geometry
target = geometry.ray_plane(o1, d1, f.centre, f.normal)[1]
out["drag"] = {"expected": [float(c) for c in (np.asarray(f.centre) + target - grab_world)],
               "room": list(doc.snapshot().panels["blue"].transform.position),
               "ops": [op["op"] for op in app.ops_sent],
               "lock_after": doc.snapshot().panels["blue"].lock_holder}
bx, by = centre("blue")
out["drag"]["pixel"] = pixel(app, bx, by)

# A confusion matrix straight ahead, filling most of the view.
for pid in ("red", "blue"):
    doc.apply({"op": "remove_panel", "panel_id": pid}, "host")
m = np.array([[40, 3, 0, 1], [2, 25, 6, 0], [0, 9, 31, 2], [5, 0, 1, 12]], np.int32)
cm = session.put_blob(encode_content({"kind": "confusion_matrix", "labels": ["a", "b", "c", "d"]}, {"matrix": m})).result()
add("cm", "confusion_matrix", [0.0, 1.6, 1.0], [0.9, 0.9], [cm])
add("broken", "metrics", [0.9, 1.6, 1.6], [0.5, 0.5], ["0" * 64])
out["settled2"] = settle(app)
view = app.panels["cm"]
W, H = 300, 300
lay = painting.matrix_layout(4, W, H)
fw, fh = view.size
cells = []
for r in range(4):
    for c in range(4):
        x0, y0, x1, y1 = lay.cell(r, c)
        px, py = x0 + (x1 - x0) * 0.18, y0 + (y1 - y0) * 0.18
        world = view.frame().world((px / W - 0.5) * fw, (0.5 - py / H) * fh)
        sx, sy = app.world_to_screen(world)
        cells.append({"r": r, "c": c, "pixel": pixel(app, sx, sy)})
out["cells"] = cells
out["matrix"] = m.tolist()
b = app.panels["broken"]
out["broken"] = {"is_error": b.is_error, "message": getattr(b.prepared, "message", ""),
                 "pixel": pixel(app, *app.world_to_screen(b.frame().world(0.0, -0.1)))}
app.save_snapshot("confusion.png")
app.resize(400, 300)
app.step(3)
out["resized"] = list(app.screenshot().shape)
app.close()
done(out)
'''


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import os
    import subprocess
    import sys
    import textwrap

    from tests.scenes.conftest import PRELUDE, parse  # type: ignore[import-not-found]

    folder = tmp_path_factory.mktemp("render-local")
    path = folder / "scene.py"
    path.write_text(PRELUDE + textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.run([sys.executable, str(path)], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    return parse(proc.returncode, proc.stdout, proc.stderr)


def close(a: list[int], b: tuple[int, ...] | list[int], tol: int = 12) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_panels_drawn_where_the_room_says(seen: dict[str, Any]) -> None:
    assert seen["settled"]
    assert close(seen["red"]["pixel"], (255, 0, 0))
    assert close(seen["blue"]["pixel"], (0, 0, 255))
    assert seen["red"]["screen"][0] < 160 < seen["blue"]["screen"][0]  # left and right of the centre


@pytest.mark.slow
def test_panel_follows_a_move_in_the_room(seen: dict[str, Any]) -> None:
    mv = seen["moved"]
    assert mv["new"][1] > mv["old"][1] + 20  # lower on screen
    assert close(mv["new_pixel"], (255, 0, 0))
    assert not close(mv["old_pixel"], (255, 0, 0), tol=60)


@pytest.mark.slow
def test_drag_on_title_bar_moves_the_panel_in_the_room(seen: dict[str, Any]) -> None:
    d = seen["drag"]
    assert seen["grab_region"] == "title"
    assert np.allclose(d["room"], d["expected"], atol=1e-3)
    assert d["room"][0] > 0.45 + 0.05 and d["room"][1] < 1.6 - 0.05  # right and down, as dragged
    assert d["ops"][0] == "lock_panel" and "move_panel" in d["ops"] and d["ops"][-1] == "unlock_panel"
    assert d["lock_after"] is None
    assert close(d["pixel"], (0, 0, 255))


@pytest.mark.slow
def test_confusion_matrix_cells_have_their_colour_map_colours(seen: dict[str, Any]) -> None:
    assert seen["settled2"]
    want = painting.confusion_colours(np.array(seen["matrix"]))
    for cell in seen["cells"]:
        assert close(cell["pixel"], tuple(want[cell["r"], cell["c"]]), tol=14), cell
    distinct = {tuple(c["pixel"]) for c in seen["cells"]}
    assert len(distinct) >= 8  # the cells really differ, not one flat colour


@pytest.mark.slow
def test_missing_blob_shows_an_error_card_and_the_room_goes_on(seen: dict[str, Any]) -> None:
    b = seen["broken"]
    assert b["is_error"] and "could not be fetched" in b["message"]
    assert close(b["pixel"], painting.ERROR_BG, tol=30)


@pytest.mark.slow
def test_resize_is_followed(seen: dict[str, Any]) -> None:
    assert seen["resized"] == [300, 400, 4]
