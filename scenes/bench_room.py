"""`deeproom bench room`: does the room reach everything the engine can compute?

Last line of output: one JSON object.

- `analyses_in_engine`: the registry's analyses that apply to a CNN with labelled data
  (`models.tasks.applicable_analyses`); `analyses_in_menu`: how many of them a person
  finds in the app's action menus (panel, layer, selection and tile menus, built by
  `scenes.actions.menu_entries` from what the engine declares for that model). Target:
  equal. Also for a ViT (`vit_analyses_in_engine`, `vit_analyses_in_menu`).
- `compute_s`, `action_to_panel_s`, `action_overhead_s`, `overlapping_panels`: need the
  engine service (one Grad-CAM alone vs click-to-drawn in the app, twelve analyses
  opened) — null, with the reason in `missing`, until it is in the tree.
- `readable_group_labels_ratio`: from `deeproom.scenes.graph_readability` (the graph
  view) — null with the reason until it is in the tree.
- `tsne_*`, `embed_70k_s`: from `deeproom.models.embedding_bench.embedding_bench()` — null
  with the reason until it is in the tree.
- `peak_rss_mb`: this process's peak resident memory.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from deeproom.scenes.actions import menu_entries

CONTEXTS = (None, "layer", "selection", "tile")
TIMING_KEYS = ("compute_s", "action_to_panel_s", "action_overhead_s", "overlapping_panels")
EMBED_KEYS = ("tsne_s_2k", "tsne_baseline_s_2k", "tsne_s_10k", "tsne_baseline_s_10k", "embed_70k_s")


def _cnn_with_data() -> tuple[Any, Any]:
    import torch
    from torch import nn

    from deeproom.models.datasets import ImageDataset
    from deeproom.models.loading import load_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    model = load_model(net, input_shape=(1, 3, 32, 32), name="bench-cnn")
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(64, 3, 32, 32, generator=g), torch.arange(64) % 4,
                        ("cat", "dog", "bird", "fish"), "bench-images")
    return model, data


def _vit() -> Any:
    import torch

    from deeproom.models.loading import load_model
    from deeproom.models.zoo import TinyViT

    torch.manual_seed(0)
    return load_model(TinyViT().eval(), input_shape=(1, 1, 8, 8), name="bench-vit")


def menu_names(model: Any, data: Any, role: str = "host") -> set[str]:
    """The action names a person with `role` can pick in any of the model's menus."""
    from deeproom.models.tasks import declared_actions

    actions, unavailable = declared_actions(model, data)
    source = {"actions": actions, "unavailable": unavailable}
    names: set[str] = set()
    for on in CONTEXTS:
        ok, _ = menu_entries(source, on, role)
        names |= {a.name for a in ok}
    return names


def reach(model: Any, data: Any) -> tuple[int, int, list[str]]:
    """(analyses the engine can run here, how many of them a menu offers, the ones it misses)."""
    from deeproom.models.tasks import applicable_analyses

    engine = set(applicable_analyses(model, data))
    menu = menu_names(model, data)
    return len(engine), len(engine & menu), sorted(engine - menu)


def _optional(module: str, attr: str) -> tuple[Any, str | None]:
    try:
        return getattr(importlib.import_module(module), attr), None
    except (ImportError, AttributeError) as exc:
        return None, f"{module}.{attr} is not in this tree yet ({type(exc).__name__})"


DEFAULT_EYE = (0.0, 1.7, -1.4)
"""Where `deeproom open` puts the viewer (scenes/commands.py)."""
SIZE = (1280, 720)
"""The window `deeproom open` opens."""
REPEATS = 3
"""Grad-CAMs timed both ways (median)."""


def _dense_onnx(folder: Path) -> Path:
    """The zoo's DenseNet-121 as an ONNX file, its widths scaled down (growth 4, init 8: the same
    graph, the same layer and group names, exported in seconds)."""
    import torch

    from deeproom.models.bench import export_onnx
    from deeproom.models.zoo import densenet121

    path = folder / "densenet121.onnx"
    path.write_bytes(export_onnx(densenet121(growth=4, init=8).eval(), torch.zeros(1, 3, 224, 224)))
    return path


class RoomBench:
    """One offscreen app on an embedded relay, the engine as its own participant (as `deeproom
    open` runs them), driven by rendered clicks."""

    def __init__(self, folder: Path, log: Any) -> None:
        from deeproom.models.engine import ClientLink
        from deeproom.models.engine.service import EngineService
        from deeproom.net import BackgroundClient
        from deeproom.scenes.app import AppOptions, RoomApp
        from deeproom.scenes.session import RelaySession

        self.log = log
        self.client = BackgroundClient(None, room="bench", name="You", data_dir=folder / "you")
        self.client.wait_ready(60)
        self.session = RelaySession(self.client)
        self.link = ClientLink(self.client.url, "bench", "DeepRoom engine", data_dir=folder / "engine")
        self.service = EngineService(self.link, notify=lambda text, error: None)
        self.app = RoomApp(self.session, options=AppOptions(offscreen=True, size=SIZE, start_position=DEFAULT_EYE))
        self.app.start()

    def close(self) -> None:
        self.service.close()
        self.link.close()
        self.app.close()
        self.session.close()

    def until(self, check: Any, timeout: float) -> bool:
        from deeproom.scenes.runner import content_settled

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.app.step()
            if check() and content_settled(self.app):
                return True
            time.sleep(0.005)
        return False

    def host(self, key: str, model: Any, data: Any, panel: str) -> None:
        from deeproom.models.engine.hosts import side_by_side

        self.service.host_model(key, model, data, title=model.name, graph_panel=panel, transform=side_by_side(0, 1),
                                strip=False)
        if not self.until(lambda: panel in self.app.panels and self.app.panels[panel].content is not None, 300):
            raise RuntimeError(f"the graph panel {panel} was never drawn")

    def view_default(self) -> None:
        rig: Any = self.app.rig
        rig.teleport(DEFAULT_EYE, 0.0)
        self.app.step(3)

    def click(self, world: Any, *, context: bool = False) -> None:
        app = self.app
        at = app.world_to_screen(world)
        if at is None:
            raise RuntimeError(f"{world} is not on screen")
        ray = app.screen_ray(*at)
        if context:
            app.pointer_context(*ray)
        else:
            app.pointer_press(*ray)
            app.pointer_release(*ray)

    def menu_pick(self, want: Any) -> None:
        """Click the first row of the open menu that `want(what, value)` accepts."""
        app = self.app
        row = next(i for i, (what, v) in enumerate(app.menus.rows) if want(what, v))
        g = app.menus.geometry
        assert g is not None
        self.click(g.frame().world(*g.row_centre(row)))

    def gradcam_by_clicks(self, panel: str, layer: str, target: int) -> float:
        """Right-click `layer` where it is drawn, pick Grad-CAM and class `target` by rendered
        clicks; seconds from the last click until the result panel is drawn on screen."""
        app = self.app
        view = app.panels[panel]
        content: Any = view.content
        i = next(k for k, nd in enumerate(content.layout.nodes) if nd.name == layer)
        self.click(view.frame().world(float(content.world[i, 0]), float(content.world[i, 1])), context=True)
        app.step()
        self.menu_pick(lambda what, v: what == "action" and v.name == "gradcam")
        app.step()
        t0 = time.monotonic()
        while app.menus.is_open and app.menus.picker is not None:
            p = app.menus.picker
            t0 = time.monotonic()
            self.menu_pick(lambda what, v, p=p: what == "value" and (p.type != "class" or v == target))
        sent = app.menus.sent[-1]
        if sent["action"] != "gradcam":
            raise RuntimeError(f"the clicks sent {sent['action']!r}")
        rid = sent["request_id"]
        if not self.until(lambda: rid in app.menus.drawn_at, 300):
            raise RuntimeError(f"Grad-CAM {rid} was never drawn: {app.menus.reports[-3:]}")
        return app.menus.drawn_at[rid] - t0

    def open_through_actions(self, panel: str, names: list[str], layers: dict[str, str]) -> list[str]:
        """Send each declared action (as its menu would: defaults, the layer `layers[name]`,
        class 0); wait until every result panel is drawn. Returns the result panel ids."""
        from deeproom.scenes import actions as act

        app = self.app
        view = app.panels[panel]
        specs = {a.name: a for a in act.parse_actions(view.panel.content.source)[0]}
        rids = []
        for name in names:
            spec = specs[name]
            flow = act.ActionFlow(panel, self.service.engine_id, spec, {})
            for p in spec.params:
                if p.type == "layer":
                    flow.choose(p, layers.get(name))
                elif p.type == "class":
                    flow.choose(p, 0)
                else:
                    rows = act.param_options(p)
                    flow.choose(p, p.default if p.default is not None else rows[0][1] if rows else None)
            rids.append(app.menus.send(flow))
        ends = ("done", "failed", "refused", "cancelled")

        def finished() -> bool:
            over = {r.request_id for r in app.menus.reports if r.state in ends}
            return all(r in over for r in rids) and all(
                r in app.menus.drawn_at or any(x.request_id == r and x.state != "done" for x in app.menus.reports)
                for r in rids)

        if not self.until(finished, 900):
            raise RuntimeError("the analyses did not all finish")
        sent = {s["request_id"]: s["params"] for s in app.menus.sent}
        failed = [f"{r.action} {sent.get(r.request_id)}: {r.message}" for r in app.menus.reports if r.request_id in rids and r.state != "done"
                  and r.state in ends]
        if failed:
            self.log(f"not opened: {failed}")
        return [r.result_panel for r in app.menus.reports if r.request_id in rids and r.state == "done" and r.result_panel]


def measure_room(out: dict[str, Any], missing: dict[str, str], log: Any) -> None:
    """compute_s, action_to_panel_s, action_overhead_s, overlapping_panels,
    readable_group_labels_ratio: one app, one relay, one engine, this process."""
    import statistics
    import tempfile

    from deeproom.models.loading import load_model
    from deeproom.models.tasks import applicable_analyses, applies, model_facts, time_analysis
    from deeproom.placement import overlapping

    with tempfile.TemporaryDirectory(prefix="deeproom-bench-room-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        dense = load_model(_dense_onnx(folder))
        bench = RoomBench(folder, log)
        try:
            ratio_fn, why = _optional("deeproom.scenes.graph_readability", "readable_group_labels_ratio")
            bench.host("dense", dense, None, "graph-dense")
            bench.view_default()
            if ratio_fn is None:
                out["readable_group_labels_ratio"] = None
                missing["readable_group_labels_ratio"] = why or ""
            else:
                out["readable_group_labels_ratio"] = round(float(ratio_fn(bench.app, panel_ids=["graph-dense"])), 3)
            log(f"DenseNet-121 at the default view: {out['readable_group_labels_ratio']} of the group labels "
                f"readable ({time.perf_counter() - t0:.1f} s)")
            bench.app.apply({"op": "remove_panel", "panel_id": "graph-dense"}).result(30)
            bench.until(lambda: "graph-dense" not in bench.app.panels, 60)

            cnn, data = _cnn_with_data()
            bench.host("cnn", cnn, data, "graph-1")
            bench.view_default()
            layer = [n for n, (t, shape) in model_facts(cnn).layers.items()  # the last with a spatial map
                     if shape is not None and len(shape) == 4 and shape[-1] > 1 and shape[-2] > 1][-1]
            compute, clicked = [], []
            for k in range(REPEATS):  # other classes: nothing cached, the same work both ways
                s, _ = time_analysis(cnn, "gradcam", {"layer": layer, "index": 0, "target": k}, dataset=data)
                compute.append(s)
                clicked.append(bench.gradcam_by_clicks("graph-1", layer, k))
                bench.view_default()
            out["compute_s"] = round(statistics.median(compute), 4)
            out["action_to_panel_s"] = round(statistics.median(clicked), 4)
            out["action_overhead_s"] = round(out["action_to_panel_s"] - out["compute_s"], 4)
            log(f"Grad-CAM on {layer}: {compute} s alone, {clicked} s click to drawn")

            names = [n for n in applicable_analyses(cnn, data) if n != "gradcam"][:12]
            facts = model_facts(cnn)
            where = {n: layer if applies(n, cnn, layer, data) is None else
                     next((x for x in facts.layers if applies(n, cnn, x, data) is None), layer)
                     for n in names}  # the layer a person would right-click for it
            shown = bench.open_through_actions("graph-1", names, where)
            room = bench.app.room
            assert room is not None
            out["opened_panels"] = len(shown)
            out["overlapping_panels"] = len(overlapping(room))
            log(f"{len(shown)} analyses opened through the actions; {out['overlapping_panels']} overlapping pairs "
                f"among {len(room.panels)} panels")
        finally:
            bench.close()


def run_bench(*, quick: bool = False, log: Any = print) -> int:
    out: dict[str, Any] = {}
    missing: dict[str, str] = {}
    t0 = time.perf_counter()
    cnn, data = _cnn_with_data()
    out["analyses_in_engine"], out["analyses_in_menu"], lost = reach(cnn, data)
    out["vit_analyses_in_engine"], out["vit_analyses_in_menu"], vit_lost = reach(_vit(), None)
    if lost or vit_lost:
        missing["menu"] = f"the menu misses {lost + vit_lost}"
    log(f"reach: CNN {out['analyses_in_menu']}/{out['analyses_in_engine']} in the menus, "
        f"ViT {out['vit_analyses_in_menu']}/{out['vit_analyses_in_engine']} ({time.perf_counter() - t0:.1f} s)")
    for key in (*TIMING_KEYS, "readable_group_labels_ratio"):
        out[key] = None
    try:
        measure_room(out, missing, log)
    except Exception as exc:  # the JSON line still comes, saying why
        missing["room"] = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
    embedding_bench, why = _optional("deeproom.models.embedding_bench", "embedding_bench")
    if embedding_bench is None:
        for key in EMBED_KEYS:
            out[key] = None
        missing["embeddings"] = why or ""
    else:
        res = embedding_bench(quick=quick, log=log)
        for key in EMBED_KEYS:
            out[key] = res.get(key)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["missing"] = missing
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_bench(quick="--quick" in sys.argv))
