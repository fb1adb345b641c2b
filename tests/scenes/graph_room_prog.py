"""The scene side of tests/scenes/test_graph_readable.py (run in its own process: Ursina
is one app per process). `python graph_room_prog.py opened` opens densenet121.onnx and
resnet50.onnx from the current folder the way `deeproom open` does (same viewpoint,
1280x720) and reports label heights, a click that expands a group, a collapse, a search
and jump; `python graph_room_prog.py huge` opens a 10,001-node graph. The last line of
output is one JSON object."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from deeproom.document import new_room
from deeproom.scenes.app import AppOptions, RoomApp
from deeproom.scenes.bench_render import count_draws
from deeproom.scenes.graph_layout import PLATE_HEADER
from deeproom.scenes.graph_readability import (
    READABLE_CAP_PX,
    group_label_heights,
    readable_group_labels_ratio,
)
from deeproom.scenes.runner import content_settled
from deeproom.scenes.session import LocalSession
from deeproom.scenes.views import GraphView

DEFAULT_EYE = (0.0, 1.7, -1.4)  # where `deeproom open` puts the viewer (scenes/commands.py)


def settle(app: RoomApp, timeout: float = 120.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.step()
        if content_settled(app) and app.panels:
            app.step(3)
            return True
        time.sleep(0.01)
    return False


def panel_crop(app: RoomApp, pid: str) -> np.ndarray:
    """Screen pixels well inside a panel's face."""
    view = app.panels[pid]
    f = view.frame()
    # the inner 85 % of the face: a selected panel's outline (and, the panel being turned,
    # the corners of its screen box) are not the content
    pts = [app.world_to_screen(f.world(su * f.half_width, sv * f.half_height)) for su in (-0.85, 0.85)
           for sv in (-0.8, 0.8)]
    xs = sorted(p[0] for p in pts if p is not None)
    ys = sorted(p[1] for p in pts if p is not None)
    img = app.screenshot()
    return img[int(ys[1]) : int(ys[-2]), int(xs[1]) : int(xs[-2]), :3].astype(np.int16)


def changed(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels that differ by more than a little between two crops of one panel."""
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float((np.abs(a[:h, :w] - b[:h, :w]).max(axis=2) > 24).mean())


def click_local(app: RoomApp, pid: str, u: float, v: float) -> None:
    p = app.world_to_screen(app.panels[pid].frame().world(u, v))
    assert p is not None
    app.pointer_press(*app.screen_ray(*p))
    app.pointer_release()
    app.step(3)


def opened() -> dict[str, Any]:
    from deeproom.scenes.open_models import ModelsEngine

    doc = new_room("o", name="opened", host_id="host", host_name="Host")
    session = LocalSession(doc, "host")
    engine = ModelsEngine(session, [Path("densenet121.onnx"), Path("resnet50.onnx")])
    app = RoomApp(session, options=AppOptions(offscreen=True, size=(1280, 720), start_position=DEFAULT_EYE),
                  provider=engine)
    app.start()
    engine.start()
    end = time.monotonic() + 300
    while time.monotonic() < end and not (engine.ready.is_set() and len(app.panels) == 2 and settle(app, 5)):
        app.step()
    out: dict[str, Any] = {"screen": list(app.screen_size())}
    dense, res = app.panels["graph-1"].content, app.panels["graph-2"].content
    assert isinstance(dense, GraphView) and isinstance(res, GraphView) and dense.layout and res.layout
    out["title"] = app.panels["graph-1"].panel.title
    out["threshold"] = READABLE_CAP_PX
    out["dense_ratio"] = readable_group_labels_ratio(app, panel_ids=["graph-1"])
    out["res_ratio"] = readable_group_labels_ratio(app, panel_ids=["graph-2"])
    out["labels"] = [[s.panel_id, s.text, round(s.cap_px, 2), s.on_screen] for s in group_label_heights(app)]
    out["dense_boxes"] = len(dense.layout.nodes)
    out["dense_groups"] = [nd.label.split("\n")[0] for nd in dense.layout.nodes if nd.collapsed]
    out["res_groups"] = [nd.label.split("\n")[0] for nd in res.layout.nodes if nd.collapsed]
    out["rows"] = dense.layout.rows
    app.save_snapshot("opened.png")

    # a click on denseblock3 expands it (the app's click path), in place: its 24 dense layers appear
    before = panel_crop(app, "graph-1")
    i = next(k for k, nd in enumerate(dense.layout.nodes) if nd.label.startswith("denseblock3"))
    gid = dense.layout.nodes[i].group
    click_local(app, "graph-1", float(dense.world[i, 0]), float(dense.world[i, 1]))
    dense = app.panels["graph-1"].content
    assert isinstance(dense, GraphView) and dense.layout
    out["expanded_boxes"] = len(dense.layout.nodes)
    out["expanded_layers"] = sum(1 for nd in dense.layout.nodes if nd.label.startswith("denselayer"))
    expanded = panel_crop(app, "graph-1")
    out["expand_changed"] = changed(before, expanded)
    app.save_snapshot("expanded.png")
    # its plate's name strip: a click there (the app's click path) collapses it in place
    plate = next(p for p in dense.layout.plates if p.group == gid)
    out["plate_label"] = plate.label
    strip = PLATE_HEADER * dense.layout.text_height
    u, v = (plate.lo[0] + plate.hi[0]) / 2, plate.hi[1] - strip / 2
    out["plate_click"] = dense.click(u, v)
    click_local(app, "graph-1", u, v)
    out["collapsed_kept"] = str(gid) in dense.collapsed and app.panels["graph-1"].graph_collapsed == dense.collapsed
    out["toggle_api"] = [sorted(dense.toggle_group(str(gid)) ^ dense.collapsed), str(gid) not in dense.collapsed]
    dense.toggle_group(str(gid))
    app.step(3)
    out["collapsed_boxes"] = len(dense.layout.nodes)
    out["collapse_restores"] = changed(before, panel_crop(app, "graph-1"))

    # search and jump: denselayer17 of the third dense block, hidden in the collapsed block
    hits = dense.find("DenseLayer17")
    out["hits"] = [h.name for h in hits]
    key = hits[0].key
    local = dense.focus(key)
    app.step(3)
    world = app.panels["graph-1"].to_world(np.asarray(local))
    screen = app.world_to_screen(world)
    out["focus"] = {"selected": dense.layout.nodes[dense.selected].name if dense.selected is not None else None,
                    "screen": list(screen) if screen else None,
                    "visible_layers": sum(1 for nd in dense.layout.nodes if nd.label.startswith("denselayer"))}
    # looking at it from the viewpoint the view suggests makes its label readable
    from deeproom.scenes.geometry import viewpoint_facing

    eye, target = viewpoint_facing(app.panels["graph-1"].frame(), world, 1.2)
    rig: Any = app.rig
    rig.teleport(tuple(float(c) for c in eye), None)
    rig.look_at(tuple(float(c) for c in target))
    app.step(3)
    mid = app.world_to_screen(world)
    out["jump_centre"] = list(mid) if mid else None
    app.save_snapshot("focused.png")
    engine.close()
    app.close()
    return out


def huge() -> dict[str, Any]:
    from deeproom.models.bench import deep_onnx_model
    from deeproom.models.graph import extract_onnx_graph, graph_blob

    proto = deep_onnx_model(2000)  # 10,001 nodes; bare names: grouped by repeated structure
    for nd in proto.graph.node:
        nd.name = ""
    blob = graph_blob(extract_onnx_graph(proto, "deep"))
    doc = new_room("h", name="huge", host_id="host", host_name="Host")
    session = LocalSession(doc, "host")
    sha = session.put_blob(blob).result()
    doc.apply({"op": "add_panel", "panel_id": "graph", "kind": "model_graph", "title": "deep", "size": [2.4, 1.4],
               "transform": {"position": [0.0, 1.6, 2.8]}, "content": {"source": {}, "refs": [sha]}}, "host")
    app = RoomApp(session, options=AppOptions(offscreen=True, size=(640, 360), start_position=(0.0, 1.6, 0.0)))
    app.start()
    out: dict[str, Any] = {"settled": settle(app)}
    view = app.panels["graph"].content
    assert isinstance(view, GraphView) and view.layout
    out["nodes"] = len(view.index)
    out["boxes"] = len(view.layout.nodes)
    out["draws"] = count_draws(app)
    before = panel_crop(app, "graph")
    t = time.perf_counter()
    view.set_collapsed(set())
    out["expand_all_s"] = time.perf_counter() - t
    app.step(3)
    out["boxes_all"] = len(view.layout.nodes)
    out["draws_all"] = count_draws(app)
    out["changed"] = changed(before, panel_crop(app, "graph"))
    out["inside"] = bool((np.abs(view.world[:, 0]) <= view.width / 2).all() and (np.abs(view.world[:, 1]) <= view.height / 2).all())
    hits = view.find("block1.1999")
    out["hits"] = [h.name for h in hits]
    view.set_collapsed(view.collapsed | {"0"})
    local = view.focus(hits[0].key)
    out["focus_boxes"] = len(view.layout.nodes)
    out["focus_inside"] = abs(local[0]) <= view.width / 2 and abs(local[1]) <= view.height / 2
    app.save_snapshot("huge.png")
    app.close()
    return out


if __name__ == "__main__":
    result = opened() if sys.argv[1] == "opened" else huge()
    print(json.dumps(result), flush=True)
