"""`deeproom bench render`: the room at scale, against one Entity per item, in one run.

One room holds a 70,000-point latent cloud with thumbnails, a 10,000-node model
graph (fully expanded: the worst case) and a 20,000-tile feature-map wall. We
measure the time to build it (blobs prepared by the content worker, meshes built),
the median frame time and the draw calls per frame; then, in the same process and
window, the same 20,000 tiles as one Ursina Entity each (with our room hidden):
its build time and median frame time; then our wall alone. `speedup` = naive frame /
our frame for the same 20,000 tiles; `speedup_whole_room` = naive frame / our frame for
the whole room (cloud, graph and wall together). The cloud is also measured up close,
where its level of detail draws thumbnails (`closeup_frame_ms`, `thumbnails_drawn`).

`draw_calls` counts the Geoms that are drawn (visible GeomNodes' geoms under the
3D scene and the 2D overlay); each is one draw call for Panda's GL back end (an
upper bound: the count is taken before view-frustum culling).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np

from deeproom.content import encode_content
from deeproom.document import new_room
from deeproom.scenes.geometry import facing_quat

HOST = "bench-host"


def _cloud_blob(n: int, rng: np.random.Generator) -> bytes:
    from sklearn.datasets import load_digits

    d = load_digits()
    pick = rng.integers(0, len(d.images), n)
    labels = d.target[pick].astype(np.int16)
    centres = rng.normal(size=(10, 3)) * 3
    pos = (centres[labels] + rng.normal(size=(n, 3))).astype(np.float32)
    thumbs = (d.images[pick] * 16).clip(0, 255).astype(np.uint8)
    return encode_content({"kind": "latent_cloud", "classes": [str(i) for i in range(10)]},
                          {"positions": pos, "labels": labels, "predictions": labels,
                           "confidence": np.ones(n, np.float16), "thumbnails": thumbs})


def _graph_blob(n: int, rng: np.random.Generator) -> bytes:
    width = 8
    nodes = []
    edges = []
    for i in range(n):
        rank, order = divmod(i, width)
        nodes.append({"id": i, "name": f"op{i}", "op": ["Conv", "Relu", "BatchNorm", "Add"][i % 4],
                      "group": i // 200, "shape": [1], "params": int(rng.integers(1, 10000)), "rank": rank, "order": order})
        if rank:
            edges.append([i - width, i])
        if rank > 3 and i % 7 == 0:
            edges.append([i - 3 * width, i])  # skip connections
    groups = [{"id": g, "name": f"block{g}", "parent": None} for g in range((n + 199) // 200)]
    return encode_content({"kind": "model_graph", "nodes": nodes, "edges": edges, "groups": groups, "title": "big"}, {})


def _wall_blob(n: int, rng: np.random.Generator) -> bytes:
    maps = rng.normal(size=(n, 8, 8)).astype(np.float16)
    return encode_content({"kind": "feature_maps", "layer": "wall"}, {"maps": maps})


def count_draws(app: Any) -> int:
    """Geoms drawn by visible GeomNodes under the 3D scene and the 2D overlay."""
    total = 0
    for root in (app.ursina.render, app.ursina.render2d):
        for np_ in root.find_all_matches("**/+GeomNode"):
            if np_.is_hidden():
                continue
            total += np_.node().get_num_geoms()
    return total


def _median_frame(app: Any, frames: int) -> float:
    times = []
    for _ in range(frames):
        t = time.perf_counter()
        app.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000.0


def run_bench(frames: int = 40, size: tuple[int, int] = (1280, 720), points: int = 70_000, nodes: int = 10_000,
              tiles: int = 20_000) -> int:
    from deeproom.bench import emit
    from deeproom.scenes.app import AppOptions, RoomApp
    from deeproom.scenes.runner import content_settled
    from deeproom.scenes.session import LocalSession
    from deeproom.scenes.views import CloudView, GraphView

    rng = np.random.default_rng(0)
    doc = new_room("bench", name="render bench", host_id=HOST, host_name="Bench")
    session = LocalSession(doc, HOST)
    t_blobs = time.perf_counter()
    blobs = {"cloud": _cloud_blob(points, rng), "graph": _graph_blob(nodes, rng), "wall": _wall_blob(tiles, rng)}
    blob_s = time.perf_counter() - t_blobs
    placement = {
        "cloud": ("latent_cloud", [0.0, 1.4, 2.2], (1.8, 1.4)),
        "graph": ("model_graph", [-2.4, 1.6, 3.0], (2.6, 1.6)),
        "wall": ("feature_maps", [2.4, 1.6, 3.0], (2.6, 1.6)),
    }
    app = RoomApp(session, options=AppOptions(offscreen=True, size=size, start_position=(0.0, 1.5, 0.6)))
    app.start()
    app.rig.look_at((0.0, 1.4, 3.0))  # type: ignore[union-attr]
    t0 = time.perf_counter()
    for pid, (kind, pos, sz) in placement.items():
        sha = session.put_blob(blobs[pid]).result()
        doc.apply({"op": "add_panel", "panel_id": pid, "kind": kind, "title": f"{pid} ({kind})",
                   "transform": {"position": pos, "rotation": list(facing_quat(pos, (0.0, 1.5, 0.6)))},
                   "size": list(sz), "content": {"source": {"bench": pid}, "refs": [sha]}}, HOST)
    while not (content_settled(app) and all(v.content is not None and v.content_key for v in app.panels.values())):
        app.step()
        if time.perf_counter() - t0 > 600:
            raise RuntimeError("the bench room did not build within 600 s")
    graph_view = app.panels["graph"]
    if isinstance(graph_view.content, GraphView) and graph_view.content.collapsed:
        graph_view.graph_collapsed = set()  # the worst case: every one of the 10,000 nodes drawn
        graph_view.show(graph_view.prepared, graph_view.content_key or "")
    build_s = time.perf_counter() - t0
    app.step(5)
    time.sleep(0.3)
    app.step(5)  # let the cloud's level of detail pick its thumbnails
    frame_ms = _median_frame(app, frames)
    draws = count_draws(app)
    graph_nodes = len(graph_view.content.layout.nodes) if isinstance(graph_view.content, GraphView) and graph_view.content.layout else 0
    app.save_snapshot("snapshots/bench-render.png")
    # Up close to the cloud: its level of detail swaps dots for thumbnails near the viewer.
    app.rig.teleport((0.15, 1.45, 0.95), None)  # type: ignore[union-attr]
    app.rig.look_at((0.0, 1.4, 2.2))  # type: ignore[union-attr]
    app.step(3)
    time.sleep(0.3)
    app.step(3)
    closeup_ms = _median_frame(app, frames)
    closeup_draws = count_draws(app)
    cloud = app.panels["cloud"].content
    thumbs = cloud.thumbs_shown if isinstance(cloud, CloudView) else 0
    app.save_snapshot("snapshots/bench-render-closeup.png")
    app.rig.teleport((0.0, 1.5, 0.6), None)  # type: ignore[union-attr]
    app.rig.look_at((0.0, 1.4, 3.0))  # type: ignore[union-attr]

    # Our wall alone, for a like-for-like ratio of the same 20,000 tiles.
    for pid, v in app.panels.items():
        if pid != "wall":
            v.root.disable()
    app.step(3)
    wall_frame_ms = _median_frame(app, frames)
    for v in app.panels.values():
        v.root.enable()

    # The same 20,000 tiles as one Entity each, our room hidden.
    from ursina import Entity, color

    app.scene_root.hide()
    wall_view = app.panels["wall"]
    t_naive = time.perf_counter()
    naive_root = Entity(position=wall_view.root.position, rotation=wall_view.root.rotation)
    w, h = wall_view.size
    cols = math.ceil(math.sqrt(tiles * w / h))
    rows = math.ceil(tiles / cols)
    tw, th = w / cols, h / rows
    means = rng.random(tiles)
    from deeproom.scenes.colormap import sequential

    cols_rgb = sequential(means)
    ents = []
    for i in range(tiles):
        r, k = divmod(i, cols)
        c = cols_rgb[i]
        ents.append(Entity(parent=naive_root, model="quad", scale=(tw * 0.84, th * 0.84),
                           position=((k + 0.5) * tw - w / 2, h / 2 - (r + 0.5) * th, -0.003),
                           color=color.rgb(c[0] / 255, c[1] / 255, c[2] / 255)))
    naive_build_s = time.perf_counter() - t_naive
    app.step(2)
    naive_frame_ms = _median_frame(app, max(5, frames // 4))
    naive_draws = count_draws(app)
    app.save_snapshot("snapshots/bench-render-naive.png")
    app.close()
    emit({
        "bench": "render",
        "size": f"{size[0]}x{size[1]}",
        "points": points, "graph_nodes": nodes, "graph_nodes_drawn": graph_nodes, "tiles": tiles,
        "thumbnails_drawn": thumbs,
        "frame_ms": round(frame_ms, 2),
        "draw_calls": draws,
        "closeup_frame_ms": round(closeup_ms, 2),
        "closeup_draw_calls": closeup_draws,
        "build_s": round(build_s, 2),
        "blob_encode_s": round(blob_s, 2),
        "wall_only_frame_ms": round(wall_frame_ms, 2),
        "naive_frame_ms": round(naive_frame_ms, 2),
        "naive_build_s": round(naive_build_s, 2),
        "naive_draw_calls": naive_draws,
        # like for like: the same 20,000 tiles, one mesh vs one Entity each
        "speedup": round(naive_frame_ms / wall_frame_ms, 2),
        # the whole room (cloud + graph + wall) against the naive wall alone
        "speedup_whole_room": round(naive_frame_ms / frame_ms, 2),
        "renderer": "llvmpipe (Mesa, CPU)" if "llvmpipe" in app.ursina.win.get_gsg().get_driver_renderer() else
        app.ursina.win.get_gsg().get_driver_renderer(),
    })
    return 0
