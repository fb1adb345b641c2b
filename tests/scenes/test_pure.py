"""The scenes' maths, colour maps, painters and content preparation (no rendering)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deeproom.content import encode_content
from deeproom.scenes import colormap, geometry, painting
from deeproom.scenes.prepared import (
    CloudContent,
    ContentFailure,
    GraphContent,
    PaintedContent,
    WallContent,
    prepare_blob,
)


def test_viridis_endpoints_and_monotone_luminance() -> None:
    assert tuple(colormap.sequential(np.array(0.0))) == (68, 1, 84)
    assert tuple(colormap.sequential(np.array(1.0))) == (253, 231, 37)
    lum = colormap.VIRIDIS @ np.array([0.3, 0.59, 0.11])
    assert np.all(np.diff(lum) >= -0.5)


def test_label_colours_grey_for_unlabelled() -> None:
    c = colormap.label_colours(np.array([-1, 0, 11]))
    assert tuple(c[0]) == tuple(colormap.UNLABELLED)
    assert tuple(c[2]) == tuple(colormap.LABEL_PALETTE[1])
    assert colormap.hex_rgb("#ff8000") == (255, 128, 0)
    assert colormap.hex_rgb("nonsense") == (136, 136, 136)


def test_quaternion_matches_facing() -> None:
    pos = (2.0, 1.5, 3.0)
    q = geometry.facing_quat(pos, (0.0, 1.5, 0.0))
    normal = -geometry.quat_matrix(q)[:, 2]
    want = np.array([-2.0, 0.0, -3.0]) / math.hypot(2, 3)
    assert np.allclose(normal, want, atol=1e-9)


def test_ray_hits_panel_face_in_local_coordinates() -> None:
    f = geometry.PanelFrame.of((0, 1.5, 2), geometry.yaw_quat(0.0), (2, 1, 1), (1.0, 0.5))
    hit = geometry.ray_panel((0.4, 1.6, 0), (0, 0, 1), f)
    assert hit is not None
    t, _p, u, v = hit
    assert t == pytest.approx(2.0) and u == pytest.approx(0.4) and v == pytest.approx(0.1)
    assert geometry.ray_panel((1.2, 1.5, 0), (0, 0, 1), f) is None  # beyond the scaled half width of 1.0
    assert geometry.ray_panel((0, 1.5, 0), (0, 0, -1), f) is None  # behind the ray


def test_selections() -> None:
    pts = np.array([[0, 0, 0], [1, 0, 0], [0.1, 0.1, 0], [5, 5, 5]], np.float32)
    assert list(geometry.select_sphere(pts, (0, 0, 0), 0.2)) == [0, 2]
    assert list(geometry.select_box(pts, (2, 2, 2), (-0.5, -0.5, -0.5))) == [0, 1, 2]
    assert list(geometry.select_sphere(pts[:, :2], (5, 5, 99), 0.1)) == [3]  # 2D clouds ignore z


def _chain_meta(n: int, group_size: int) -> dict:
    nodes = [{"id": i, "name": f"n{i}", "op": "Conv", "group": i // group_size, "rank": i, "order": 0, "params": 10}
             for i in range(n)]
    edges = [[i, i + 1] for i in range(n - 1)] + [[0, 3]]
    groups = [{"id": g, "name": f"block{g}", "parent": None} for g in range((n + group_size - 1) // group_size)]
    return {"nodes": nodes, "edges": edges, "groups": groups}


def test_graph_layout_ranks_and_skips() -> None:
    lay = geometry.layout_graph(_chain_meta(6, 3))
    assert len(lay.nodes) == 6 and lay.ranks == 6
    xs = lay.positions[:, 0]
    assert np.all(np.diff(xs) > 0)  # layers left to right
    assert (0, 3) in lay.edges
    line = geometry.edge_polyline(lay.positions[0], lay.positions[3], 3, bow=0.1)
    assert line[:, 2].min() < -0.05  # a skip connection arcs toward the viewer


def test_graph_collapse_merges_groups_and_edges() -> None:
    meta = _chain_meta(6, 3)
    lay = geometry.layout_graph(meta, {"0"})
    names = [n.name for n in lay.nodes]
    assert names[0] == "block0" and lay.nodes[0].members == 3 and lay.nodes[0].collapsed
    assert len(lay.nodes) == 4  # block0 + n3, n4, n5
    assert (0, 1) in lay.edges  # block0 -> n3 (both the chain edge and the skip 0->3 map here)
    big = _chain_meta(geometry.HUGE_GRAPH + 100, 50)
    assert geometry.default_collapsed(big) == {str(g) for g in range(10)}
    assert len(geometry.layout_graph(big, geometry.default_collapsed(big)).nodes) == 10


def test_confusion_painting_uses_the_colour_map() -> None:
    m = np.array([[50, 2, 0], [5, 30, 1], [0, 0, 10]], np.int32)
    img = painting.paint_confusion({"labels": ["a", "b", "c"]}, {"matrix": m}, 300, 300)
    lay = painting.matrix_layout(3, 300, 300)
    colours = painting.confusion_colours(m)
    for r in range(3):
        for c in range(3):
            x0, y0, x1, y1 = lay.cell(r, c)
            px = img[int(y0 + (y1 - y0) * 0.15), int(x0 + (x1 - x0) * 0.15)]
            assert tuple(px) == tuple(colours[r, c])
    assert tuple(colours[0, 0]) == tuple(colormap.sequential(np.array(1.0)))


def test_atlas_lookup_finds_each_thumbnail() -> None:
    thumbs = (np.arange(300) % 251).astype(np.uint8)[:, None, None] * np.ones((1, 6, 5), np.uint8)
    atlas, cols, rows = painting.thumbnail_atlas(thumbs)
    uv = painting.atlas_uv(np.arange(300), cols, rows)
    h, w = atlas.shape[:2]
    cx = ((uv[:, 0] + uv[:, 2]) / 2 * w).astype(int)
    cy = ((1 - (uv[:, 1] + uv[:, 3]) / 2) * h).astype(int)
    assert np.array_equal(atlas[cy, cx, 0], thumbs[:, 0, 0])


def test_prepare_each_kind_and_refuse_bad_blobs() -> None:
    size = (1.0, 0.8)
    ok = {
        "metrics": ({"series": ["loss"], "x": "step"}, {"step": np.arange(5, dtype=np.float32), "loss": np.ones(5, np.float32)}),
        "confusion_matrix": ({"labels": ["a", "b"]}, {"matrix": np.eye(2, dtype=np.int32)}),
        "feature_maps": ({"layer": "c"}, {"maps": np.zeros((4, 5, 5), np.float16)}),
        "filters": ({"layer": "c"}, {"filters": np.zeros((4, 3, 3), np.float16)}),
        "grad_cam": ({}, {"image": np.zeros((8, 8), np.uint8), "cam": np.ones((2, 2), np.float16)}),
        "attention": ({}, {"attention": np.zeros((2, 4, 4), np.float16)}),
        "image": ({}, {"image": np.zeros((8, 8, 3), np.uint8)}),
        "note": ({"text": "hi"}, {}),
    }
    for kind, (meta, arrays) in ok.items():
        assert isinstance(prepare_blob(kind, encode_content({"kind": kind, **meta}, arrays), size), PaintedContent), kind
    graph = prepare_blob("model_graph", encode_content({"kind": "model_graph", "nodes": [], "edges": []}), size)
    assert isinstance(graph, GraphContent)
    cloud = prepare_blob("latent_cloud", encode_content({"classes": ["0"]}, {
        "positions": np.zeros((3, 3), np.float32), "labels": np.zeros(3, np.int16),
        "thumbnails": np.zeros((3, 4, 4), np.uint8)}), size)
    assert isinstance(cloud, CloudContent) and cloud.atlas is not None
    wall = prepare_blob("feature_maps", encode_content({}, {"maps": np.zeros((300, 4, 4), np.float16)}), size)
    assert isinstance(wall, WallContent) and wall.count == 300
    bad = [
        ("metrics", b"not a blob"),
        ("confusion_matrix", encode_content({}, {"matrix": np.zeros((2, 3), np.int32)})),
        ("confusion_matrix", encode_content({}, {})),
        ("latent_cloud", encode_content({}, {"positions": np.zeros((3, 5), np.float32)})),
        ("latent_cloud", encode_content({}, {"positions": np.zeros((3, 2), np.float32), "labels": np.zeros(2, np.int16)})),
        ("image", encode_content({"kind": "note"}, {"image": np.zeros((2, 2), np.uint8)})),
    ]
    for kind, blob in bad:
        res = prepare_blob(kind, blob, size)
        assert isinstance(res, ContentFailure) and not res.waiting, kind


def test_join_targets() -> None:
    from deeproom.errors import ValidationError
    from deeproom.scenes.commands import parse_target

    assert parse_target("http://127.0.0.1:8765/lab") == ("http://127.0.0.1:8765", "lab", None)
    assert parse_target("deeproom://127.0.0.1:9/lab?invite=a.b") == ("http://127.0.0.1:9", "lab", "a.b")
    with pytest.raises(ValidationError):
        parse_target("lab")
