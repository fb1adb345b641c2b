"""Real architectures group into their repeated blocks: DenseNet-121, ResNet-50 and an
Inception-style net, traced with torch.fx and exported to ONNX (the exporter's scoped
node names), and the same ONNX files with their node names removed (structure alone).

Widths are scaled down (the graphs are the full-depth ones) so exports take a second."""

from __future__ import annotations

import onnx
import pytest
import torch

from deeproom.content import decode_content
from deeproom.models.bench import export_onnx
from deeproom.models.graph import (
    ModelGraph,
    extract_onnx_graph,
    extract_torch_graph,
    find_blocks,
    graph_blob,
)
from deeproom.models.zoo import Inception, densenet121, resnet50

X = torch.zeros(1, 3, 32, 32)
MODELS = {
    "densenet121": lambda: densenet121(growth=4, init=8),
    "resnet50": lambda: resnet50(width=4),
    "inception": lambda: Inception(width=4),
}


@pytest.fixture(scope="module")
def graphs() -> dict[str, dict[str, ModelGraph]]:
    torch.manual_seed(0)
    out: dict[str, dict[str, ModelGraph]] = {}
    for name, make in MODELS.items():
        model = make().eval()
        proto = onnx.load_from_string(export_onnx(model, X))
        bare = onnx.ModelProto()
        bare.CopyFrom(proto)
        for nd in bare.graph.node:
            nd.name = ""
        out[name] = {"fx": extract_torch_graph(model, X), "onnx": extract_onnx_graph(proto, name),
                     "bare": extract_onnx_graph(bare, name)}
    return out


def _children(g: ModelGraph, parent_name: str | None) -> list[str]:
    pid = None if parent_name is None else next(gr.id for gr in g.groups if gr.name == parent_name)
    return [gr.name for gr in g.groups if gr.parent == pid]


def _within(g: ModelGraph, name: str, op: str) -> int:
    """Nodes of op type `op` (prefix, any case) inside group `name` at any depth."""
    parent = {gr.id: gr.parent for gr in g.groups}
    target = next(gr.id for gr in g.groups if gr.name == name)
    count = 0
    for n in g.nodes:
        gid = n.group
        while gid is not None and gid != target:
            gid = parent[gid]
        count += gid == target and n.op.lower().startswith(op)
    return count


def _ops(g: ModelGraph, name: str) -> int:
    return next(gr.ops for gr in g.groups if gr.name == name)


@pytest.mark.parametrize("source", ["fx", "onnx"])
def test_densenet121_groups_are_its_dense_blocks_and_layers(graphs: dict, source: str) -> None:
    g = graphs["densenet121"][source]
    assert _children(g, None) == ["features"]
    blocks = _children(g, "features")
    assert sorted(blocks) == sorted([f"features.denseblock{i}" for i in range(1, 5)]
                                    + [f"features.transition{i}" for i in range(1, 4)])
    layers = {b: _children(g, b) for b in blocks if "denseblock" in b}
    assert [len(layers[f"features.denseblock{i}"]) for i in range(1, 5)] == [6, 12, 24, 16]
    assert layers["features.denseblock3"][23] == "features.denseblock3.denselayer24"
    # every dense layer is the same six operations (BN folded into the next conv or not)
    per_layer = {_ops(g, ly) for b in layers.values() for ly in b}
    assert len(per_layer) == 1 and per_layer.pop() >= 5
    assert _ops(g, "features") == sum(1 for n in g.nodes if n.group is not None and g.groups[n.group].name.startswith("features"))
    assert _ops(g, "features.denseblock3") == 24 * _ops(g, "features.denseblock3.denselayer1")


@pytest.mark.parametrize("source", ["fx", "onnx"])
def test_resnet50_groups_are_its_stages_and_bottlenecks(graphs: dict, source: str) -> None:
    g = graphs["resnet50"][source]
    assert _children(g, None) == ["layer1", "layer2", "layer3", "layer4"]
    assert [len(_children(g, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert _children(g, "layer3")[5] == "layer3.5"
    # the first bottleneck of each stage has a projection: one more conv than the others
    assert _within(g, "layer2.0", "conv") == 4 and _within(g, "layer2.1", "conv") == 3


@pytest.mark.parametrize("source", ["fx", "onnx"])
def test_inception_groups_are_its_mixed_blocks(graphs: dict, source: str) -> None:
    g = graphs["inception"][source]
    mixed = [c for c in _children(g, "mixed") if "Mixed" in c]
    assert mixed == ["mixed.Mixed_5b", "mixed.Mixed_5c", "mixed.Mixed_5d", "mixed.Mixed_6b", "mixed.Mixed_6c",
                     "mixed.Mixed_6d", "mixed.Mixed_6e", "mixed.Mixed_6f", "mixed.Mixed_7b", "mixed.Mixed_7c"]
    # four parallel branches: each block holds 7 conv units and a pool and ends in one Concat
    assert _within(g, "mixed.Mixed_6c", "cat") + _within(g, "mixed.Mixed_6c", "concat") == 1
    assert _within(g, "mixed.Mixed_6c", "conv") == 7
    assert len(_children(g, "mixed.Mixed_6c")) == 7  # the ConvBN units (the pool is a bare op)


def test_onnx_without_names_is_grouped_by_repeated_structure(graphs: dict) -> None:
    dense = graphs["densenet121"]["bare"]
    assert all(not n.path for n in dense.nodes)
    runs = [(gr.name, len(_children(dense, gr.name))) for gr in dense.groups if gr.parent is None]
    assert [k for _, k in runs] == [6, 12, 24, 16]  # the dense blocks, one unit per dense layer
    res = graphs["resnet50"]["bare"]
    units = sorted(len(_children(res, gr.name)) for gr in res.groups
                   if gr.parent is None and gr.name.startswith("block"))
    # identical bottlenecks (no projection) in runs: layer1.1-2, layer2.1-3, layer3.1-5, layer4.1-2;
    # the first of each stage (with its projection) is a region of its own
    assert units == [2, 2, 3, 5]
    assert sum(1 for gr in res.groups if gr.name.startswith("region")) == 4
    inc = graphs["inception"]["bare"]
    biggest = max((gr for gr in inc.groups if gr.parent is None), key=lambda gr: len(_children(inc, gr.name)))
    assert len(_children(inc, biggest.name)) == 5  # Mixed_6b..6f: five identical inception blocks


def test_find_blocks_on_a_hand_made_chain() -> None:
    # conv relu conv add (skip over the middle) repeated 3 times, then a head: one run of 3 units
    from deeproom.models.graph import GraphNode, layered_layout

    ops = ["Input"] + ["Conv", "Relu", "Conv", "Add"] * 3 + ["Gemm"]
    nodes = [GraphNode(i, f"n{i}", op) for i, op in enumerate(ops)]
    edges = [(i, i + 1) for i in range(len(ops) - 1)] + [(4 * k, 4 * k + 4) for k in range(3)]
    rank, order = layered_layout(len(nodes), edges)
    for nd in nodes:
        nd.rank, nd.order = rank[nd.id], order[nd.id]
    groups = find_blocks(nodes, edges)
    assert [(g.name, g.parent) for g in groups] == [("block1", None), ("block1.0", 0), ("block1.1", 0), ("block1.2", 0)]
    assert [nodes[i].group for i in range(1, 5)] == [1, 1, 1, 1] and nodes[0].group is None and nodes[-1].group is None


def test_blob_carries_op_counts(graphs: dict) -> None:
    meta, _ = decode_content(graph_blob(graphs["resnet50"]["onnx"]))
    groups = {g["name"]: g for g in meta["groups"]}
    assert groups["layer3"]["ops"] == sum(groups[f"layer3.{k}"]["ops"] for k in range(6))
