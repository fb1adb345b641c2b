"""The engine service over a real relay on 127.0.0.1 with real clients: an engine hosts a small
residual ONNX model and a generated image folder; other participants ask for analyses by
"steer" and watch "stream" progress; results are placed by free_slot; roles are enforced."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from deeproom.content import decode_content
from deeproom.models.engine import ClientLink
from deeproom.models.engine.hosts import ModelsHost
from deeproom.models.tasks import applicable_analyses, model_facts
from deeproom.net import BackgroundClient
from deeproom.placement import overlapping
from tests.squares import COLOURS, SIZE, Peer, SmallResNet, square_image, train_on_squares


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An image folder (a red or a green square on noise: the class is the colour) and a model
    trained on it for a few steps, exported to ONNX; and a model without an image input."""
    from PIL import Image

    from deeproom.models.bench import export_onnx

    root = tmp_path_factory.mktemp("engine")
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for name, colour in COLOURS.items():
        (root / "data" / name).mkdir(parents=True)
        for i in range(12):
            img, _ = square_image(colour, rng)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / "data" / name / f"{i:02d}.png")
    for _ in range(256):
        label = int(rng.integers(0, 2))
        img, _ = square_image(list(COLOURS.values())[label], rng)
        xs.append(img.transpose(2, 0, 1))
        ys.append(label)
    x, y = torch.tensor(np.stack(xs)), torch.tensor(ys)
    torch.manual_seed(0)
    model = train_on_squares(SmallResNet(), x, y)
    (root / "resnet.onnx").write_bytes(export_onnx(model, torch.zeros(1, 3, SIZE, SIZE)))
    mlp = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    (root / "mlp.onnx").write_bytes(export_onnx(mlp, torch.zeros(1, 20)))
    return {"root": root, "model": root / "resnet.onnx", "mlp": root / "mlp.onnx", "data": root / "data"}


@pytest.fixture(scope="module")
def room(assets: dict[str, Any]) -> Iterator[dict[str, Any]]:
    host = BackgroundClient(None, room="svc", name="Host", data_dir=assets["root"] / "host")
    host.wait_ready(60)
    url = host.url
    link = ClientLink(url, "svc", "engine", data_dir=assets["root"] / "engine")
    engine = ModelsHost(link, [assets["model"], assets["mlp"]], data=assets["data"]).start()
    member = BackgroundClient(url, room="svc", name="Mo", data_dir=assets["root"] / "mo")
    member.wait_ready(60)
    token = host.call("create_invite", "viewer").result(30)
    viewer = BackgroundClient(url, room="svc", name="Vi", invite=token, data_dir=assets["root"] / "vi")
    viewer.wait_ready(60)
    try:
        assert engine.ready.wait(120) and engine.failed is None, engine.failed
        yield {"host": host, "engine": engine, "engine_id": link.participant_id, "member": Peer(member),
               "viewer": viewer}
    finally:
        engine.close()
        for c in (viewer, member, host):
            c.close()


def _last_conv(engine: ModelsHost) -> str:
    facts = model_facts(engine.service.hosted["m1"].model)
    return [n for n, (t, shape) in facts.layers.items() if t == "Relu" and shape is not None and len(shape) == 4][-1]


def _cam(peer: Peer, panel: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    p = peer.client.room.panels[panel]
    _, arrays = decode_content(peer.client.get_blob(p.content.refs[0]).result(30))
    return np.asarray(arrays["cam"], np.float32), np.asarray(arrays["image"]), dict(p.content.source)


def _peak_in_square(cam: np.ndarray, image: np.ndarray) -> bool:
    square = image.max(-1) > 200  # the square's pixels are the bright ones
    y, x = np.unravel_index(int(cam.argmax()), cam.shape)
    ys, xs = np.nonzero(square)
    return bool(ys.min() - 1 <= y <= ys.max() + 1 and xs.min() - 1 <= x <= xs.max() + 1)


def test_scorecam_by_steer_is_placed_streamed_and_on_the_object(room: dict[str, Any]) -> None:
    mo: Peer = room["member"]
    eid = room["engine_id"]
    layer = _last_conv(room["engine"])
    mo.wait(lambda: {"graph-1", "inputs-m1"} <= set(mo.client.room.panels))
    target = 0  # "green" sorts first: class 0 is green
    mo.ask(eid, "scorecam", "graph-1", {"layer": layer, "target": target}, "sc1")
    end = mo.final("sc1")
    assert end["state"] == "done", end
    states = mo.states("sc1")
    assert states[0] == "queued" and "running" in states and states[-1] == "done", states
    assert any(e["state"] == "running" and e["progress"] > 0 for e in mo.events if e["request_id"] == "sc1")
    result = end["result_panel"]
    mo.wait(lambda: result in mo.client.room.panels and mo.client.room.panels[result].content.refs)
    assert mo.client.room.panels[result].owner == eid
    assert overlapping(mo.client.room) == [], overlapping(mo.client.room)
    cam, image, source = _cam(mo, result)
    assert source["input"]["from"] == "data" and source["engine"] == eid and source["analysis"] == "scorecam"
    assert cam.std() > 0.05, "the map is uniform"
    assert _peak_in_square(cam, image)

    # choose another image (a red one, from the other class) on the strip: the map follows it
    strip = mo.client.room.panels["inputs-m1"]
    labels = decode_content(mo.client.get_blob(strip.content.refs[0]).result(30))[0]["tiles"]["labels"]
    other = labels.index("red")
    before = mo.client.room.panels[result].content.refs
    mo.ask(eid, "choose_input", "inputs-m1", {"index": other}, "in1")
    assert mo.final("in1")["state"] == "done"
    mo.wait(lambda: mo.client.room.panels[result].content.refs != before)
    cam2, image2, source2 = _cam(mo, result)
    assert source2["input"]["index"] == other and source2["input"]["label"] == "red"
    assert not np.array_equal(cam, cam2) and not np.array_equal(image, image2)
    # the panel keeps its class (green); asked for red, the same panel shows the red square
    before = mo.client.room.panels[result].content.refs
    mo.ask(eid, "scorecam", "graph-1", {"layer": layer, "target": 1}, "sc2")
    assert mo.final("sc2")["result_panel"] == result
    mo.wait(lambda: mo.client.room.panels[result].content.refs != before)
    cam3, image3, source3 = _cam(mo, result)
    assert np.array_equal(image3, image2) and source3["params"]["target"] == 1
    assert _peak_in_square(cam3, image3)
    assert overlapping(mo.client.room) == []


def test_viewer_is_refused_by_the_relay_and_member_by_the_engine(room: dict[str, Any]) -> None:
    from deeproom.errors import PermissionDenied

    mo: Peer = room["member"]
    eid = room["engine_id"]
    with pytest.raises(PermissionDenied):
        room["viewer"].send_event("steer", {"action": "gradcam", "panel_id": "graph-1", "params": {},
                                            "request_id": "v1"}, to=eid).result(30)
    mo.ask(eid, "close_model", "graph-1", {}, "cl1")
    end = mo.final("cl1")
    assert end["state"] == "refused" and "host" in end["message"], end
    assert "graph-1" in mo.client.room.panels  # nothing changed
    mo.ask(eid, "layercam", "graph-1", {"layer": "no-such-layer"}, "bad1")
    assert mo.final("bad1")["state"] == "refused"


def test_cancel_mid_job_leaves_no_panel(room: dict[str, Any]) -> None:
    mo: Peer = room["member"]
    eid = room["engine_id"]
    layer = _last_conv(room["engine"])
    mo.ask(eid, "feature_visualization", "graph-1", {"layer": layer, "channel": 3, "steps": 512}, "fv1")
    mo.wait(lambda: "running" in mo.states("fv1"))
    mo.ask(eid, "cancel", "graph-1", {}, "fv1")
    end = mo.final("fv1")
    assert end["state"] == "cancelled", end
    time.sleep(1.0)
    assert end["result_panel"] not in mo.client.room.panels
    assert not any(p.startswith("feature-visualization") for p in mo.client.room.panels)


def test_a_model_without_image_input_lists_image_analyses_as_unavailable(room: dict[str, Any]) -> None:
    mo: Peer = room["member"]
    mo.wait(lambda: "graph-2" in mo.client.room.panels)
    src = mo.client.room.panels["graph-2"].content.source
    unavailable = {u["name"]: u["reason"] for u in src["unavailable"]}
    for name in ("gradcam", "scorecam", "layercam", "saliency", "feature_maps", "confusion_matrix"):
        assert "no image input" in unavailable[name] and "(1, 20)" in unavailable[name], unavailable
    assert {a["name"] for a in src["actions"]} == {"filters", "filter_embedding", "close_model"}
    mo.ask(room["engine_id"], "gradcam", "graph-2", {"layer": "x"}, "mlp1")
    assert "no image input" in mo.final("mlp1")["message"]


def test_declared_actions_match_the_registry_for_a_cnn_and_a_vit(room: dict[str, Any]) -> None:
    from deeproom.models.datasets import load_digits
    from deeproom.models.loading import load_model
    from deeproom.models.tasks import declared_actions
    from deeproom.models.zoo import TinyViT

    mo: Peer = room["member"]
    h = room["engine"].service.hosted["m1"]
    declared = {a["name"] for a in mo.client.room.panels["graph-1"].content.source["actions"]}
    assert declared - {"close_model"} == set(applicable_analyses(h.model, h.dataset))
    assert {"gradcam", "scorecam", "layercam", "confusion_matrix", "embedding"} <= declared
    assert "attention" not in declared
    torch.manual_seed(0)
    vit = load_model(TinyViT().eval(), input_shape=(1, 1, 8, 8))
    from dataclasses import replace

    digits = replace(load_digits(), builtin=False)  # as if the user gave the digits with --data
    actions, unavailable = declared_actions(vit, digits)
    assert {a["name"] for a in actions} == set(applicable_analyses(vit, digits))
    att = next(a for a in actions if a["name"] == "attention")
    assert att["params"][0]["choices"][0].endswith("softmax") and unavailable == []
    for a in actions:  # every declaration is what the contract allows
        assert set(a) <= {"name", "label", "group", "role", "on", "params", "kind"}
        assert a["role"] in ("viewer", "member", "presenter", "host")


def test_confusion_matrix_panel_carries_per_class_scores(room: dict[str, Any]) -> None:
    mo: Peer = room["member"]
    mo.ask(room["engine_id"], "confusion_matrix", "graph-1", {}, "cm1")
    end = mo.final("cm1")
    assert end["state"] == "done", end
    mo.wait(lambda: end["result_panel"] in mo.client.room.panels)
    p = mo.client.room.panels[end["result_panel"]]
    meta, arrays = decode_content(mo.client.get_blob(p.content.refs[0]).result(30))
    assert meta["classes"] == ["green", "red"]
    assert arrays["precision"].shape == arrays["recall"].shape == arrays["f1"].shape == (2,)
    assert float(arrays["f1"].min()) > 0.9
    assert overlapping(mo.client.room) == []


def test_a_runs_three_panels_do_not_land_on_one_spot(room: dict[str, Any]) -> None:
    """watch() and label-demo publish through RelayLink: each new panel gets a free slot."""
    from deeproom.models.training.link import RelayLink

    link = RelayLink(room["host"].url, "svc", "run")
    try:
        for what, kind in (("metrics", "metrics"), ("cloud", "latent_cloud"), ("confusion", "confusion_matrix")):
            link.publish(f"run.{what}", kind, what, {"run": "run"}, lambda: ({"kind": "note", "text": "x"}, {}))
        assert link.flush(30)
        mo: Peer = room["member"]
        mo.wait(lambda: {"run.metrics", "run.cloud", "run.confusion"} <= set(mo.client.room.panels))
        assert overlapping(mo.client.room) == []
    finally:
        link.close()


def test_a_large_embedding_reports_progress_through_the_room(room: dict[str, Any], assets: dict[str, Any]) -> None:
    """An engine hosting 3,000 images: a t-SNE embedding asked for by steer streams running events
    with progress strictly between 0 and 1 (forward passes, then t-SNE iterations) before done,
    and the cloud it publishes has every point. (The 70,000-point run is embedding_bench's.)"""
    n = 3000
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, n)
    x = rng.integers(0, 64, (n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, label in enumerate(labels):  # the class's colour square somewhere on the noise
        img, _ = square_image(list(COLOURS.values())[int(label)], rng)
        x[i] = (img * 255).astype(np.uint8)
    data = assets["root"] / "big.npz"
    np.savez(data, x=x, y=labels, classes=np.array(list(COLOURS)))
    url = room["host"].url
    owner = BackgroundClient(url, room="big", name="Bo", data_dir=assets["root"] / "bo")
    owner.wait_ready(60)
    link = ClientLink(url, "big", "engine", data_dir=assets["root"] / "engine-big")
    engine = ModelsHost(link, [assets["model"]], data=data).start()
    try:
        assert engine.ready.wait(120) and engine.failed is None, engine.failed
        assert len(engine.service.hosted["m1"].dataset) == n
        bo = Peer(owner)
        eid = link.participant_id
        bo.wait(lambda: "graph-1" in bo.client.room.panels)
        layer = _last_conv(engine)
        bo.ask(eid, "embedding", "graph-1", {"layer": layer, "method": "tsne", "dims": 2}, "emb1")
        end = bo.final("emb1", timeout=600)
        assert end["state"] == "done", end
        mine = [e for e in bo.events if e.get("request_id") == "emb1"]
        assert mine[-1]["state"] == "done"
        between = [e["progress"] for e in mine[:-1] if e["state"] == "running" and 0 < e["progress"] < 1]
        assert len(between) >= 5, [(e["state"], e["progress"]) for e in mine]
        assert between == sorted(between) and between[-1] > 0.5  # it went forward, well into t-SNE
        assert any("t-SNE" in e.get("message", "") or "tsne" in e.get("message", "").lower() for e in mine), mine
        result = end["result_panel"]
        bo.wait(lambda: result in bo.client.room.panels and bo.client.room.panels[result].content.refs)
        meta, arrays = decode_content(bo.client.get_blob(bo.client.room.panels[result].content.refs[0]).result(60))
        assert meta["kind"] == "latent_cloud" and meta["method"] == "tsne"
        assert arrays["positions"].shape == (n, 2) and arrays["thumbnail_index"].tolist() == list(range(n))
        assert arrays["thumbnails"].shape == (n, SIZE, SIZE, 3)
    finally:
        engine.close()
        owner.close()


def test_open_options_reach_the_data_resize_mode_included(assets: dict[str, Any]) -> None:
    """`deeproom open --resize 8x16 --resize-mode pad|crop` as the host passes them (hosts.load_data_for)."""
    from deeproom.models.engine.hosts import load_data_for
    from deeproom.models.loading import load_model

    loaded = load_model(assets["model"])
    pad = load_data_for(assets["data"], assets["model"], loaded, {"size": "8x16", "resize": "pad", "channels": None})
    crop = load_data_for(assets["data"], assets["model"], loaded, {"size": "8x16", "resize": "crop"})
    assert tuple(pad.x.shape[1:]) == tuple(crop.x.shape[1:]) == (3, 8, 16)
    assert float(pad.x[:, :, :, :4].abs().max()) == 0 and float(pad.x[:, :, :, 4:12].max()) > 0.5  # black bars
    assert float(crop.x[:, :, :, :4].max()) > 0  # cropped: image to the edges
    from deeproom.models.errors import DatasetError

    with pytest.raises(DatasetError, match="resize"):
        load_data_for(assets["data"], assets["model"], loaded, {"resize": "squash"})
