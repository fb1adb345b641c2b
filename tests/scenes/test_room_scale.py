"""A latent cloud opened at room scale (Kath et al.): several metres across, its frame gone, the
viewer standing inside it and placing the selection sphere with the mouse (offscreen, pixels)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

SCRIPT = '''
from deeproom.content import encode_content
from deeproom.document import new_room
from deeproom.scenes.session import LocalSession
from deeproom.scenes.views import TITLE_BAR

doc = new_room("t", name="cloud", host_id="host", host_name="Host")
session = LocalSession(doc, "host")
rng = np.random.default_rng(0)
pos = rng.normal(size=(600, 3)).astype(np.float32)
labels = (np.arange(600) % 4).astype(np.int16)
sha = session.put_blob(encode_content({"kind": "latent_cloud", "classes": list("abcd")},
                                      {"positions": pos, "labels": labels})).result()
doc.apply({"op": "add_panel", "panel_id": "cloud", "kind": "latent_cloud", "title": "latent", "transform":
           {"position": [0.0, 1.6, 2.0]}, "size": [1.2, 0.9], "content": {"source": {}, "refs": [sha]}}, "host")
app = RoomApp(session, options=AppOptions(offscreen=True, size=(320, 240), start_position=(0.0, 1.6, 0.0)))
app.start()
out = {"settled": settle(app)}
v = app.panels["cloud"]
tx, ty = app.world_to_screen(v.frame().world(-0.3, 0.45 + TITLE_BAR / 2))
out["title_px_before"] = pixel(app, tx, ty)
out["width_before"] = v.frame().half_width * 2
# select the cloud (a click on it), then O: the cloud is around the viewer
app.pointer_press(*app.screen_ray(160, 120)); app.pointer_release()
app.key("o")
ok = until(app, lambda: app.room.panels["cloud"].transform.scale[0] > 2.5 and not app.previews, 20)
v = app.panels["cloud"]
out["room_scale"] = ok and v.room_scale
out["width_after"] = v.frame().half_width * 2
out["frame_shown"] = bool(v.title_bar.enabled or v.plate.enabled)
head = np.array(app.rig.head()[0])
world = np.array([v.to_world(p) for p in v.content.pos])
lo, hi = world.min(axis=0), world.max(axis=0)
out["inside"] = bool(((head > lo) & (head < hi)).all())
out["extent"] = (hi - lo).tolist()
img = app.screenshot()[..., :3].astype(int)
out["lit_share"] = float(((abs(img - img[0, 0]).sum(axis=2)) > 60).mean())
# the mouse places the sphere a metre along the pointer: the points around there are selected
n = app.pointer_press(*app.screen_ray(160, 120)); app.pointer_release()
sel = v.content.selection
centre = head + np.array(app.screen_ray(160, 120)[1]) * 1.0
near = np.linalg.norm(world - centre, axis=1)
out["selected"] = int(len(sel))
out["selected_within"] = float(near[sel].max()) if len(sel) else None
out["nearest_unselected"] = float(np.delete(near, sel).min())
app.step(3)
app.save_snapshot("room-scale.png")
# O again: a panel about a metre wide in front of the viewer, with its frame
app.key("o")
ok = until(app, lambda: app.room.panels["cloud"].transform.scale[0] == 1.0 and not app.previews, 20)
out["back"] = ok and not app.panels["cloud"].room_scale and bool(app.panels["cloud"].title_bar.enabled)
done(out)
'''


@pytest.mark.slow
def test_cloud_at_room_scale(run_scene: Callable[..., dict[str, Any]]) -> None:
    out = run_scene(SCRIPT, name="roomscale")
    assert out["settled"] and out["room_scale"], out
    assert abs(out["width_before"] - 1.2) < 1e-6 and out["width_after"] >= 3.9, out
    assert not out["frame_shown"], out
    assert out["inside"] and min(out["extent"][:2]) > 2.0, out
    assert out["lit_share"] > 0.01, out  # points drawn all around the view
    assert out["selected"] > 0 and out["selected_within"] <= 0.26, out
    assert out["back"], out
