"""Graph extraction: every skip connection found, groups from the module hierarchy,
a layered layout that respects edges, and the model_graph blob."""

from __future__ import annotations

import torch

from deeproom.content import decode_content
from deeproom.models.bench import deep_onnx_model, export_onnx
from deeproom.models.graph import (
    ModelGraph,
    extract_graph,
    extract_onnx_graph,
    extract_torch_graph,
    graph_blob,
    graph_from_exported,
    layered_layout,
)
from deeproom.models.loading import load_model
from deeproom.models.zoo import DigitsCNN, TinyResNet, TinyViT

X = torch.zeros(1, 1, 8, 8)


def _check_layout(g: ModelGraph) -> None:
    rank = {n.id: n.rank for n in g.nodes}
    assert all(rank[a] < rank[b] for a, b in g.edges)
    seen = {(n.rank, n.order) for n in g.nodes}
    assert len(seen) == len(g.nodes)  # no two nodes share a slot


def _adds_with_skip(g: ModelGraph) -> int:
    skip_dst = {b for _, b in g.skip_edges()}
    return sum(1 for n in g.nodes if n.op.lower() in ("add", "add_") and n.id in skip_dst)


def test_resnet_skips_from_torch_export_and_onnx() -> None:
    model = TinyResNet(blocks=3).eval()
    graphs = {
        "fx": extract_torch_graph(model, X),
        "export": graph_from_exported(torch.export.export(model, (X,))),
        "onnx": extract_graph(load_model(export_onnx(model, X))),
    }
    for how, g in graphs.items():
        _check_layout(g)
        # three residual blocks: three adds, each fed by exactly one skip edge
        adds = [n for n in g.nodes if n.op.lower() == "add"]
        assert len(adds) == 3, how
        assert _adds_with_skip(g) == 3, how
        assert len(g.skip_edges()) == 3, (how, [(g.nodes[a].name, g.nodes[b].name) for a, b in g.skip_edges()])
        names = {gr.name for gr in g.groups}
        assert {"layers.0", "layers.1", "layers.2"} <= names, (how, names)
        by_id = {gr.id: gr for gr in g.groups}
        assert by_id[next(gr.id for gr in g.groups if gr.name == "layers.1")].parent is not None
    onnx_g = graphs["onnx"]
    conv = next(n for n in onnx_g.nodes if n.name == "/stem/stem.0/Conv")
    assert conv.params == 8 * 9 + 8 and conv.shape == [-1, 8, 8, 8]  # BN folded; batch axis dynamic
    fx_g = graphs["fx"]
    assert fx_g.by_name("layers.1.conv1").params == 8 * 16 * 9 and fx_g.by_name("layers.1.conv1").shape == [1, 16, 4, 4]


def test_chain_has_no_skips_and_vit_has_residuals() -> None:
    g = extract_torch_graph(DigitsCNN().eval(), X)
    assert g.skip_edges() == [] and [n.rank for n in g.nodes] == list(range(len(g.nodes)))
    vit = TinyViT(depth=2).eval()
    g = extract_graph(load_model(export_onnx(vit, X)))
    _check_layout(g)
    residual_adds = {g.nodes[b].name for _, b in g.skip_edges() if g.nodes[b].op == "Add"}
    assert {"/blocks/blocks.0/Add", "/blocks/blocks.0/Add_1", "/blocks/blocks.1/Add", "/blocks/blocks.1/Add_1"} <= residual_adds
    names = {gr.name for gr in g.groups}
    assert {"blocks.0", "blocks.0.attn", "blocks.1.mlp"} <= names


def test_large_generated_graph_and_blob() -> None:
    g = extract_onnx_graph(deep_onnx_model(400), "deep")
    assert len(g.nodes) == 2001 and len(g.skip_edges()) == 400
    _check_layout(g)
    meta, arrays = decode_content(graph_blob(g))
    assert meta["kind"] == "model_graph" and len(meta["nodes"]) == 2001 and not arrays
    node = meta["nodes"][5]
    assert set(node) >= {"id", "name", "op", "group", "shape", "params", "rank", "order"}
    assert len(meta["edges"]) == len(g.edges) and meta["groups"][0].keys() == {"id", "name", "parent", "ops"}
    assert meta["groups"][0]["ops"] == 400 * 5 and meta["groups"][1]["ops"] == 5  # "layers", then "layers.0"


def test_ten_thousand_nodes_without_names_group_into_one_run() -> None:
    proto = deep_onnx_model(2000)
    for nd in proto.graph.node:
        nd.name = ""
    g = extract_onnx_graph(proto, "deep")
    assert len(g.nodes) == 10_001
    top = [gr for gr in g.groups if gr.parent is None]
    assert [(gr.name, gr.ops) for gr in top] == [("block1", 10_000)]
    assert sum(1 for gr in g.groups if gr.parent == top[0].id) == 2000


def test_layered_layout_diamond() -> None:
    rank, order = layered_layout(4, [(0, 1), (0, 2), (1, 3), (2, 3), (0, 3)])
    assert rank == [0, 1, 1, 2] and sorted(order[1:3]) == [0, 1]
