"""Two follow-ups of issues 13/14, as a person meets them.

A 70,000-point latent cloud carries 4,096 thumbnails plus `thumbnail_index` (−1 = no image):
it is drawn in a bounded number of draw calls, only indexed points get image quads, and a
selection's images panel shows only the indexed points' images; a bad index is an error card.
A run's filters panel: a right-click on filter 2 offers Freeze/Unfreeze this filter and sends
{"filter": 2}. The tile hit test is the painting's own grid (pure tests below).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.content import decode_content, encode_content
from deeproom.scenes import colormap, painting
from deeproom.scenes.prepared import CloudContent, ContentFailure, prepare_blob

N, T = 70_000, 4096


def cloud_blob() -> tuple[bytes, np.ndarray]:
    """The engine's own blob (models.blobs.latent_cloud_blob with embeddings.thumbnail_plan).
    Thumbnail t is a solid colour that names it: (t % 256, 16 * (t // 256), 200)."""
    from deeproom.models import blobs, embeddings

    rng = np.random.default_rng(0)
    rows, index = embeddings.thumbnail_plan(N, T)
    t = np.arange(len(rows))
    thumbs = np.zeros((len(rows), 8, 8, 3), np.uint8)
    thumbs[..., 0] = (t % 256)[:, None, None]
    thumbs[..., 1] = (16 * (t // 256))[:, None, None]
    thumbs[..., 2] = 200
    labels = (np.arange(N) % 10).astype(np.int16)
    centres = rng.normal(size=(10, 3)).astype(np.float32) * 3
    pos = (centres[labels] + rng.normal(size=(N, 3)).astype(np.float32)).astype(np.float32)
    e = embeddings.Embedding(pos, labels, labels, np.ones(N, np.float32), np.zeros(N, np.int32), "pca", "fc1")
    return blobs.latent_cloud_blob(e, [str(i) for i in range(10)], thumbs, thumbnail_index=index), index


def test_a_70k_cloud_with_4096_thumbnails_prepares_through_its_index() -> None:
    blob, index = cloud_blob()
    p = prepare_blob("latent_cloud", blob, (1.2, 1.2))
    assert isinstance(p, CloudContent), p
    assert p.thumbnails is not None and len(p.thumbnails) == T
    assert p.thumbnail_index is not None and np.array_equal(p.thumbnail_index, index)
    cols, rows = p.atlas_grid
    assert cols * rows >= T and p.atlas is not None and p.atlas.shape[:2] == (rows * 8, cols * 8)


def test_a_bad_thumbnail_index_is_refused_and_an_old_blob_still_works() -> None:
    pos = np.zeros((10, 3), np.float32)
    thumbs = np.zeros((4, 8, 8), np.uint8)
    for bad in (np.full(10, 4, np.int32), np.full(9, 0, np.int32), np.full(10, -2, np.int32)):
        p = prepare_blob("latent_cloud", encode_content({"kind": "latent_cloud"}, {
            "positions": pos, "thumbnails": thumbs, "thumbnail_index": bad}), (1.0, 1.0))
        assert isinstance(p, ContentFailure) and "thumbnail_index must be 10 values in [-1, 4)" in p.message, p
    old = prepare_blob("latent_cloud", encode_content({"kind": "latent_cloud"}, {
        "positions": pos, "thumbnails": np.zeros((10, 8, 8), np.uint8)}), (1.0, 1.0))
    assert isinstance(old, CloudContent) and old.thumbnail_index is not None
    assert np.array_equal(old.thumbnail_index, np.arange(10))
    short = prepare_blob("latent_cloud", encode_content({"kind": "latent_cloud"}, {
        "positions": pos, "thumbnails": thumbs}), (1.0, 1.0))
    assert isinstance(short, ContentFailure) and "one per point" in short.message


@pytest.mark.parametrize(("n", "size"), [(16, (420, 300)), (6, (300, 420)), (64, (720, 360)), (3, (200, 200))])
def test_the_filter_hit_test_is_the_painted_grid(n: int, size: tuple[int, int]) -> None:
    """Filter k painted +1 and the others −1: the tile the grid says is at each tile's centre is
    that tile, and only tile k's centre has the colour of +1."""
    width, height = size
    grid = painting.tile_grid(n, width, height, titled=True)
    for k in sorted({0, n // 2, n - 1}):
        f = -np.ones((n, 3, 3), np.float32)
        f[k] = 1.0
        img = painting.paint_filters({"layer": "conv1"}, {"filters": f}, width, height)
        for i in range(n):
            x, y = grid.centre(i)
            assert grid.at(x, y) == i
            px = img[int(y), int(x)].astype(int)
            want = colormap.diverging(np.array([1.0 if i == k else -1.0, 1.0, -1.0]))[0].astype(int)
            assert np.abs(px - want).max() <= 2, (n, size, k, i, px, want)
    assert grid.at(1, 1) is None  # the title header
    assert grid.at(width - 1, height - 1) in (None, n - 1)


def test_a_layer_row_says_how_many_of_its_filters_are_frozen() -> None:
    assert painting.frozen_filters_label("conv1", [3], 16) == "conv1 · 1 of 16 filters frozen"
    assert painting.frozen_filters_label("conv1", list(range(16)), 16) == "conv1 · frozen"
    assert painting.frozen_filters_label("conv1", [1, 2], None) == "conv1 · 2 filters frozen"


SCENE = '''
from pathlib import Path
from deeproom.content import encode_content, decode_content
from deeproom.document import new_room
from deeproom.scenes.session import LocalSession
from deeproom.scenes.prepared import texture_size, CloudContent
from deeproom.scenes.bench_render import count_draws

doc = new_room("a", name="tiles", host_id="me", host_name="Me")
session = LocalSession(doc, "me")
events = []
session.on_event(lambda kind, sender, payload: events.append([kind, dict(payload)]))
def put(blob):
    return session.put_blob(blob).result()
def add(pid, kind, pos, size, refs, source):
    doc.apply({"op": "add_panel", "panel_id": pid, "kind": kind, "title": pid, "transform": {"position": pos},
               "size": size, "content": {"source": source, "refs": refs}}, "me")
big = put(Path(__BLOB__).read_bytes())
add("cloud", "latent_cloud", [0.0, 1.6, 2.0], [1.2, 1.2], [big], {})
bad = put(encode_content({"kind": "latent_cloud"}, {"positions": np.zeros((10, 3), np.float32),
    "thumbnails": np.zeros((4, 8, 8), np.uint8), "thumbnail_index": np.full(10, 7, np.int32)}))
add("bad", "latent_cloud", [-1.4, 1.6, 2.0], [0.8, 0.8], [bad], {})
f = -np.ones((16, 3, 3), np.float16)
f[2] = 1
fb = put(encode_content({"kind": "filters", "layer": "conv1"}, {"filters": f}))
decl = [{"name": f"{v}_filter", "label": f"{v.capitalize()} this filter", "group": "Training", "on": "tile",
         "params": [{"name": "filter", "type": "tile"}]} for v in ("freeze", "unfreeze")]
add("filters-conv1-run", "filters", [1.4, 1.6, 2.0], [1.0, 0.7], [fb], {"engine": "eng", "run": "run", "actions": decl})
app = RoomApp(session, options=AppOptions(offscreen=True, size=(480, 320), start_position=(0.0, 1.6, 0.0)))
app.start()
out = {"settled": settle(app, 180.0)}
cv = app.panels["cloud"]
out["cloud_prepared"] = type(cv.prepared).__name__
app.rig.look_at((0.0, 1.6, 2.0)); app.step(3)
img = app.screenshot()
out["draw_calls"] = count_draws(app)
out["lit_pixels"] = int((img[..., :3].astype(int).sum(axis=2) > 120).sum())
cloud = cv.content
ti = cloud.content.thumbnail_index
c = cloud.pos[int(np.flatnonzero(ti >= 0)[0])]
cloud.update_thumbnails(c)
d2 = ((cloud.pos - c[None]) ** 2).sum(axis=1)
near = np.flatnonzero(d2 < cloud.NEAR ** 2)
out["thumbs_shown"] = cloud.thumbs_shown
out["near_indexed"] = int((ti[near] >= 0).sum())
out["near_all"] = int(len(near))
out["max_thumbs"] = cloud.MAX_THUMBS
# a selection around that point: its images panel shows only the indexed points' images
app.input.select("cloud")
sel = cloud.select_sphere(c, 0.12)
out["selected"] = [int(i) for i in sel]
app.clouds.act("images")
until(app, lambda: any(p.startswith("images-") for p in app.panels), 30.0)
pid = next(p for p in app.panels if p.startswith("images-"))
panel = app.panels[pid].panel
meta, arrays = decode_content(session.fetch_blob(panel.content.refs[0]))
grid = arrays["image"]
shown = set()
for r in range(grid.shape[0] // 8):
    for col in range(grid.shape[1] // 8):
        px = grid[r * 8, col * 8]
        if int(px[2]) == 200:
            shown.add(int(px[0]) + 256 * (int(px[1]) // 16))
out["images_shown"] = sorted(shown)
out["images_title"] = panel.title
out["notices"] = [t for _, t, _ in app.notices[-4:]]
b = app.panels["bad"]
out["bad"] = {"is_error": b.is_error, "message": getattr(b.prepared, "message", None)}
# a right-click on filter 2 of the filters panel: Freeze/Unfreeze this filter, {"filter": 2} sent
fv = app.panels["filters-conv1-run"]
app.rig.look_at((1.4, 1.6, 2.0)); app.step(3)
fw, fh = fv.size
tw, th = texture_size((fw, fh))
from deeproom.scenes import painting
x, y = painting.tile_grid(16, tw, th, titled=True).centre(2)
u, v = x / tw * fw - fw / 2, fh / 2 - y / th * fh
out["tile_point"] = list(app.menus.tile_point(fv, 2))
out["expected_point"] = [u, v]
app.pointer_context(*app.screen_ray(*app.world_to_screen(fv.frame().world(u, v))))
app.step(2)
g = app.menu.geometry
out["menu"] = {"open": app.menu_open, "title": g.title if g else None, "items": list(g.items) if g else []}
if g is not None and app.menu_open:
    sx, sy = app.world_to_screen(g.frame().world(*g.row_centre(0)))
    app.pointer_press(*app.screen_ray(sx, sy)); app.pointer_release(); app.step(2)
out["sent"] = [{k: v for k, v in s.items() if k not in ("at", "request_id")} for s in app.menus.sent]
out["events"] = [[k, {kk: vv for kk, vv in p.items() if kk != "request_id"}] for k, p in events]
done(out)
'''


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.scenes.conftest import PRELUDE, parse  # type: ignore[import-not-found]

    folder = tmp_path_factory.mktemp("cloud_filters")
    blob_path = folder / "cloud.blob"
    blob_path.write_bytes(cloud_blob()[0])
    path = folder / "cloud_filters_scene.py"
    path.write_text(PRELUDE + textwrap.dedent(SCENE).replace("__BLOB__", repr(str(blob_path))))
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.run([sys.executable, str(path)], cwd=folder, env=env, capture_output=True, text=True, timeout=400)
    out: dict[str, Any] = parse(proc.returncode, proc.stdout, proc.stderr)
    out["index"] = np.asarray(decode_content(Path(blob_path).read_bytes())[1]["thumbnail_index"])
    return out


@pytest.mark.slow
def test_the_70k_cloud_is_drawn_and_only_indexed_points_get_images(seen: dict[str, Any]) -> None:
    assert seen["settled"] and seen["cloud_prepared"] == "CloudContent", seen
    assert seen["lit_pixels"] > 500, seen["lit_pixels"]
    assert seen["draw_calls"] < 200, seen["draw_calls"]
    assert seen["near_all"] > seen["near_indexed"] > 0  # some near points have no image...
    assert seen["thumbs_shown"] == min(seen["near_indexed"], seen["max_thumbs"])  # ...and get no quad


@pytest.mark.slow
def test_a_selections_images_panel_shows_only_indexed_points(seen: dict[str, Any]) -> None:
    index = seen["index"]
    chosen = index[np.asarray(seen["selected"], dtype=np.int64)]
    want = sorted(int(t) for t in chosen[chosen >= 0][:256])
    assert (chosen < 0).any() and want, "the selection should hold points with and without images"
    assert seen["images_shown"] == want
    assert seen["images_title"] == f"{len(want)} images of {len(chosen)} selected"
    assert any("have no image" in t for t in seen["notices"]), seen["notices"]


@pytest.mark.slow
def test_a_bad_thumbnail_index_is_an_error_card(seen: dict[str, Any]) -> None:
    assert seen["bad"]["is_error"] and "thumbnail_index must be 10 values in [-1, 4)" in seen["bad"]["message"]


@pytest.mark.slow
def test_a_right_click_on_a_filter_tile_freezes_that_filter(seen: dict[str, Any]) -> None:
    assert seen["tile_point"] == pytest.approx(seen["expected_point"])
    menu = seen["menu"]
    assert menu["open"] and menu["title"].endswith("· filter 2"), menu
    assert menu["items"][:2] == ["Training · Freeze this filter", "Training · Unfreeze this filter"], menu
    sent = seen["sent"][-1]
    assert sent == {"action": "freeze_filter", "panel_id": "filters-conv1-run", "params": {"filter": 2}, "to": "eng"}
    assert ["steer", {"action": "freeze_filter", "panel_id": "filters-conv1-run", "params": {"filter": 2}}] \
        in seen["events"]
