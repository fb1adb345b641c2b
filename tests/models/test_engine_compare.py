"""Comparing through the engine service, over a real relay on 127.0.0.1 with real clients:
a checkpoint difference as a panel (a watched run's checkpoints, and two opened checkpoints of one
architecture), an analysis on two models side by side, a watch() run's graph analysed through the
service, and a labeling run's cloud labelled and retrained through the steer path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from deeproom.net import BackgroundClient
from deeproom.placement import overlapping
from tests.squares import COLOURS, SIZE, Peer, SmallResNet

pytestmark = [pytest.mark.timeout(300)]

# --- a watched run: graph analyses, steering as actions, checkpoint difference as a panel --------


@pytest.fixture
def run_room(tmp_path: Path) -> Any:
    from deeproom.models.training import watch
    from deeproom.models.training.demo import DemoCNN, digits

    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, val = digits()
    model = DemoCNN()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    run = watch(model, room="lab", optimizer=opt, train_data=(train.x, train.y), val_data=(val.x[:300], val.y[:300]),
                data_dir=tmp_path, publish_every_s=0.3, embed=False)
    member = Peer(BackgroundClient(run.url, room="lab", name="member").wait_ready(30))
    state = {"i": 0}

    def step() -> None:
        """One step of the user's own loop (steering and snapshots happen between steps)."""
        i = state["i"] % (len(train.y) - 64)
        state["i"] += 64
        loss = nn.functional.cross_entropy(model(train.x[i : i + 64]), train.y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(loss=loss)

    try:
        yield {"run": run, "member": member, "engine": run.link.participant_id, "step": step}
    finally:
        member.client.close()
        run.close()


def test_a_watched_runs_graph_declares_analyses_and_a_member_gets_feature_maps(run_room: dict[str, Any]) -> None:
    run, mo, eid, step = run_room["run"], run_room["member"], run_room["engine"], run_room["step"]
    for _ in range(3):
        step()
    src = mo.wait(lambda: mo.client.room.panels["run.graph"].content.source if "run.graph" in mo.client.room.panels
                  else None)
    declared = {a["name"] for a in src["actions"]}
    assert {"feature_maps", "filters", "gradcam", "scorecam", "freeze", "unfreeze"} <= declared, declared
    assert "close_model" not in declared and src["engine"] == eid and src["run"] == "run"
    assert len(json.dumps(src)) <= 16 * 1024

    mo.ask(eid, "feature_maps", "run.graph", {"layer": "conv1"}, "fm1")
    end = mo.final("fm1", between=step)  # the weights are taken between two steps of the user's loop
    assert end["state"] == "done", end
    assert "waiting for the run's next step" in [e["message"] for e in mo.events if e["request_id"] == "fm1"]
    meta, arrays = mo.blob(end["result_panel"])
    assert meta["layer"] == "conv1" and arrays["maps"].shape == (16, 8, 8)
    result = mo.client.room.panels[end["result_panel"]]
    assert result.owner == eid and result.content.source["step"] >= 3 and result.content.source["from"] == "run.graph"

    # a layer click from an app without a provider ({"cmd": "open_layer"}) opens that layer's panels
    mo.client.send_event("steer", {"cmd": "open_layer", "panel_id": "run.graph", "layer": "conv2"}, to=eid).result(30)
    mo.wait(lambda: {"feature-maps-conv2", "filters-conv2", "grad-cam-conv2"} <= set(mo.client.room.panels),
            between=step)
    # steering as an action, and the legacy payload, both still steer the run
    mo.ask(eid, "freeze", "run.graph", {"layer": "conv1"}, "fr1")
    assert mo.final("fr1", between=step)["state"] == "done"
    assert "conv1" in run.freezer.frozen_layers
    mo.client.send_event("steer", {"cmd": "set_lr", "lr": 0.0005}, to=eid).result(30)
    mo.wait(lambda: run.optimizer.param_groups[0]["lr"] == 0.0005, between=step)
    mo.ask(eid, "freeze", "run.graph", {"layer": "no_such_layer"}, "fr2")
    end = mo.final("fr2", between=step)
    assert end["state"] == "failed" and "no_such_layer" in end["message"]
    mo.ask(eid, "set_lr", "run.metrics", {"lr": -1}, "lr1")
    assert mo.final("lr1")["state"] == "refused"  # refused at once, without waiting for a step
    assert overlapping(mo.client.room) == []
    names = {a["name"] for a in run.engine.declare("latent_cloud")["actions"]}
    assert {"retrain", "retrain_misclassified", "retrain_low_confidence"} <= names
    mo.ask(eid, "stop", "run.metrics", {}, "st1")
    assert mo.final("st1", between=step)["state"] == "done" and run.stopped
    mo.ask(eid, "pause", "run.metrics", {}, "p1")  # a stopped run would never get to it: refused, not queued
    end = mo.final("p1")
    assert end["state"] == "refused" and "stopped" in end["message"]


def test_checkpoint_difference_of_a_run_is_a_panel_zero_where_frozen(run_room: dict[str, Any]) -> None:
    run, mo, eid, step = run_room["run"], run_room["member"], run_room["engine"], run_room["step"]
    mo.ask(eid, "freeze", "run.graph", {"layer": "conv1"}, "f1")
    assert mo.final("f1", between=step)["state"] == "done"
    mo.ask(eid, "save_checkpoint", "run.metrics", {}, "s1")
    assert mo.final("s1", between=step)["state"] == "done"
    for _ in range(15):
        step()
    mo.ask(eid, "save_checkpoint", "run.metrics", {}, "s2")
    assert mo.final("s2", between=step)["state"] == "done"
    a, b = run.checkpoint_names()
    # the metrics panel now offers the difference of the two
    mo.wait(lambda: any(x["name"] == "compare_checkpoints" for x in
                        mo.client.room.panels["run.metrics"].content.source.get("actions", [])), between=step)
    decl = next(x for x in mo.client.room.panels["run.metrics"].content.source["actions"]
                if x["name"] == "compare_checkpoints")
    assert set(decl["params"][0]["choices"]) == {a, b} and decl["kind"] == "metrics"
    mo.ask(eid, "compare_checkpoints", "run.metrics", {"a": a, "b": b}, "c1")
    assert mo.final("c1", between=step)["state"] == "done"
    meta, arrays = mo.blob(f"run.diff.{a}.{b}")
    assert meta["kind"] == "metrics" and meta["x"] == "layer" and meta["what"] == "checkpoint_difference"
    rel = dict(zip(meta["layers"], arrays["relative_change"].tolist(), strict=True))
    assert rel["conv1"] == 0.0, rel  # frozen: not a single weight moved
    assert rel["conv2"] > 1e-3 and rel["fc1"] > 1e-3, rel
    assert float(arrays["filter_change:conv1"].max()) == 0.0 and float(arrays["filter_change:conv2"].max()) > 0
    assert all(t["layer"] != "conv1" for t in meta["top_filters"]) and meta["top_filters"]
    p = meta["predictions"]
    assert 0 <= p["accuracy_a"] <= 1 and 0 <= p["accuracy_b"] <= 1 and p["n"] == 300
    assert "acc_a" in meta["series"] and arrays["acc_b"][0] == pytest.approx(p["accuracy_b"])
    assert overlapping(mo.client.room) == []


# --- two opened models: the same analysis side by side, and their weight difference --------------


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two checkpoints of one architecture (the second trained on with conv1 frozen), an MLP, image data."""
    from PIL import Image

    from deeproom.models.bench import export_onnx
    from deeproom.models.engine import ClientLink
    from deeproom.models.engine.hosts import ModelsHost

    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for label, (name, colour) in enumerate(COLOURS.items()):
        (root / "data" / name).mkdir(parents=True)
        for i in range(40):
            img = rng.uniform(0, 0.25, (SIZE, SIZE, 3)).astype(np.float32)
            y, x = (int(v) for v in rng.integers(1, SIZE - 6, 2))
            img[y : y + 5, x : x + 5] = colour
            if i < 8:
                Image.fromarray((img * 255).astype(np.uint8)).save(root / "data" / name / f"{i:02d}.png")
            xs.append(img.transpose(2, 0, 1))
            ys.append(label)
    x, yt = torch.tensor(np.stack(xs)), torch.tensor(ys)
    torch.manual_seed(0)
    model = SmallResNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def train(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), yt).backward()
            opt.step()

    train(3)
    (root / "early.onnx").write_bytes(export_onnx(model.eval(), torch.zeros(1, 3, SIZE, SIZE)))
    model.conv1.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train(40)
    (root / "late.onnx").write_bytes(export_onnx(model.eval(), torch.zeros(1, 3, SIZE, SIZE)))
    mlp = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    (root / "mlp.onnx").write_bytes(export_onnx(mlp, torch.zeros(1, 20)))

    host = BackgroundClient(None, room="cmp", name="Host", data_dir=root / "host")
    host.wait_ready(60)
    link = ClientLink(host.url, "cmp", "engine", data_dir=root / "engine")
    engine = ModelsHost(link, [root / "early.onnx", root / "late.onnx", root / "mlp.onnx"], data=root / "data").start()
    member = Peer(BackgroundClient(host.url, room="cmp", name="Mo", data_dir=root / "mo").wait_ready(60))
    try:
        assert engine.ready.wait(180) and engine.failed is None, engine.failed
        yield {"engine": engine, "engine_id": link.participant_id, "member": member}
    finally:
        engine.close()
        member.client.close()
        host.close()


def _source(mo: Peer, panel: str, has: str) -> dict[str, Any]:
    return mo.wait(lambda: mo.client.room.panels[panel].content.source if panel in mo.client.room.panels and any(
        a["name"] == has for a in mo.client.room.panels[panel].content.source.get("actions", [])) else None)


def test_the_same_analysis_on_both_models_side_by_side(two_models: dict[str, Any]) -> None:
    from deeproom.models.tasks import model_facts

    mo: Peer = two_models["member"]
    eid = two_models["engine_id"]
    src = _source(mo, "graph-1", "gradcam_both")
    both = next(a for a in src["actions"] if a["name"] == "gradcam_both")
    other = next(p for p in both["params"] if p["name"] == "other")
    assert other["choices"] == ["m2"] and both["group"] == "Both models"  # the MLP takes another input
    assert len(json.dumps(src)) <= 16 * 1024
    mlp = _source(mo, "graph-3", "filters")
    reasons = {u["name"]: u["reason"] for u in mlp["unavailable"]}
    assert "no image input" in reasons["gradcam_both"] and "compare_weights" in reasons
    assert not any(a["name"].endswith("_both") for a in mlp["actions"])

    facts = model_facts(two_models["engine"].service.hosted["m1"].model)
    layer = [n for n, (t, s) in facts.layers.items() if t == "Relu" and s is not None and len(s) == 4][-1]
    mo.ask(eid, "gradcam_both", "graph-1", {"layer": layer, "target": 1, "other": "m2"}, "b1")
    end = mo.final("b1")
    assert end["state"] == "done", end
    first, second = end["result_panels"]
    assert end["result_panel"] == first and first != second
    (_, a1), (_, a2) = mo.blob(first), mo.blob(second)
    s1, s2 = mo.client.room.panels[first].content.source, mo.client.room.panels[second].content.source
    assert s1["model_key"] == "m1" and s2["model_key"] == "m2"
    assert s1["input"] == s2["input"] and s1["params"] == s2["params"] == {"layer": layer, "target": 1}
    assert np.array_equal(a1["image"], a2["image"])  # the same input
    assert not np.array_equal(a1["cam"], a2["cam"])  # two different models
    assert overlapping(mo.client.room) == []
    p1, p2 = mo.client.room.panels[first].transform.position, mo.client.room.panels[second].transform.position
    assert abs(p1[1] - p2[1]) < 0.05 or abs(p1[0] - p2[0]) < 0.05  # beside each other: same row or column

    mo.ask(eid, "gradcam_both", "graph-1", {"layer": layer, "other": "m3"}, "b2")
    assert mo.final("b2")["state"] == "refused"

    # another input chosen on the first model's strip: both panels follow it (still the same input)
    before = (mo.client.room.panels[first].content.refs, mo.client.room.panels[second].content.refs)
    mo.ask(eid, "choose_input", "inputs-m1", {"index": 9}, "in1")
    assert mo.final("in1")["state"] == "done"
    mo.wait(lambda: mo.client.room.panels[first].content.refs != before[0]
            and mo.client.room.panels[second].content.refs != before[1])
    s1, s2 = mo.client.room.panels[first].content.source, mo.client.room.panels[second].content.source
    assert s1["input"]["index"] == s2["input"]["index"] == 9 and s2["both"] == ["m1", "m2"]
    (_, a1), (_, a2) = mo.blob(first), mo.blob(second)
    assert np.array_equal(a1["image"], a2["image"])


def test_weight_difference_of_two_opened_checkpoints(two_models: dict[str, Any]) -> None:
    mo: Peer = two_models["member"]
    eid = two_models["engine_id"]
    src = _source(mo, "graph-1", "compare_weights")
    decl = next(a for a in src["actions"] if a["name"] == "compare_weights")
    assert decl["params"][0]["choices"] == ["m2"]
    mo.ask(eid, "compare_weights", "graph-1", {"other": "m2"}, "w1")
    end = mo.final("w1")
    assert end["state"] == "done", end
    meta, arrays = mo.blob(end["result_panel"])
    rel = dict(zip(meta["layers"], arrays["relative_change"].tolist(), strict=True))
    assert rel["conv1"] == 0.0 and rel["conv3"] > 1e-3 and rel["fc"] > 1e-3, rel
    p = meta["predictions"]
    assert p["n"] == 16 and p["accuracy_b"] >= p["accuracy_a"] and "acc_a" in meta["series"]
    assert overlapping(mo.client.room) == []
    mo.ask(eid, "compare_weights", "graph-1", {"other": "m3"}, "w2")
    end = mo.final("w2")
    assert end["state"] == "refused" and "cannot be compared" in end["message"]


# --- a labeling run's cloud: label and retrain through the steer path ---------------------------


def test_a_labeling_clouds_label_and_retrain_actions(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    from deeproom.models.training.hosting import LabelEngine
    from deeproom.models.training.latent import LabelingLoop, LabelingSession
    from deeproom.models.training.link import RelayLink

    torch.set_num_threads(1)
    d = load_digits()
    x = torch.from_numpy(d.images.reshape(-1, 64).astype(np.float32)[:400] / 16.0)
    session = LabelingSession(x, torch.from_numpy(d.target[:400]), seed=0)
    session.pretrain(2)
    link = RelayLink(None, "lab", "labeling", data_dir=tmp_path / "relay")
    loop = LabelingLoop(session, link=link, name="labels", rounds=3)
    loop.engine = LabelEngine(loop, link)
    loop.start()
    mo = Peer(BackgroundClient(link.url, room="lab", name="member").wait_ready(30))
    try:
        src = _source(mo, "labels.latent", "label")
        names = {a["name"]: a for a in src["actions"]}
        assert set(names) == {"label", "retrain"} and names["label"]["on"] == "selection"
        assert {"name": "ids", "type": "selection"} in names["label"]["params"] and len(src["classes"]) == 10
        eid = src["engine"]
        mo.ask(eid, "label", "labels.latent", {"ids": [0, 1, 2], "label": 3}, "l1")
        assert mo.final("l1")["state"] == "done"
        assert session.labels[[0, 1, 2]].tolist() == [3, 3, 3]
        mo.ask(eid, "retrain", "labels.latent", {"ids": [0, 1, 5]}, "r1")
        assert mo.final("r1")["state"] == "done"
        assert any(e.get("type") == "retrained" and e["labelled_in_selection"] == 2 for e in loop.events)
        mo.ask(eid, "retrain", "labels.latent", {"ids": [10, 11]}, "r2")
        end = mo.final("r2")
        assert end["state"] == "failed" and "no" in end["message"] and "label" in end["message"]
        mo.ask(eid, "label", "labels.latent", {"ids": [4], "label": 99}, "l2")
        assert mo.final("l2")["state"] == "refused"
        # the legacy payload still labels
        mo.client.send_event("steer", {"cmd": "label_ids", "ids": [7], "label": 1}, to=eid).result(30)
        mo.wait(lambda: int(session.labels[7]) == 1)
    finally:
        mo.client.close()
        loop.close()
        link.close()
