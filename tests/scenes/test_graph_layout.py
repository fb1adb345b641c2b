"""The graph panel's layout without Ursina: how a real architecture opens, rows that
wrap to fit a panel with the largest labels, search and jump, and a 10,001-node graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from deeproom.content import decode_content
from deeproom.models.graph import extract_torch_graph, graph_blob
from deeproom.models.zoo import densenet121, resnet50
from deeproom.scenes import graph_layout as gl


def _meta(model: torch.nn.Module) -> dict[str, Any]:
    meta, _ = decode_content(graph_blob(extract_torch_graph(model.eval(), torch.zeros(1, 3, 32, 32))))
    return dict(meta)


@pytest.fixture(scope="module")
def dense() -> gl.GraphIndex:
    return gl.GraphIndex(_meta(densenet121(growth=4, init=8)))


def _overlap(lay: gl.GraphLayout) -> bool:
    lo, hi = lay.positions[:, :2] - lay.half[:, :2], lay.positions[:, :2] + lay.half[:, :2]
    for i in range(len(lo)):
        sep = (hi[i] <= lo[i + 1 :]).any(axis=1) | (lo[i] >= hi[i + 1 :]).any(axis=1)
        if not sep.all():
            return True
    return False


def test_densenet_opens_as_its_blocks_in_rows_that_fill_the_panel(dense: gl.GraphIndex) -> None:
    collapsed = gl.default_collapsed(dense)
    lay = gl.layout_graph(dense, collapsed, (2.3, 1.0))
    groups = [nd.label.split("\n") for nd in lay.nodes if nd.collapsed]
    assert [g[0] for g in groups] == ["denseblock1", "transition1", "denseblock2", "transition2", "denseblock3",
                                      "transition3", "denseblock4"]
    assert [g[1] for g in groups if g[0].startswith("dense")] == [f"{7 * k} ops" for k in (6, 12, 24, 16)]  # BN, ReLU, conv, BN, ReLU, conv, cat
    assert len(lay.nodes) <= gl.VISIBLE_BUDGET and lay.rows > 1
    # every box inside the panel, none overlapping, every box labelled
    assert (np.abs(lay.positions[:, 0]) + lay.half[:, 0] <= 1.15 + 1e-6).all()
    assert (np.abs(lay.positions[:, 1]) + lay.half[:, 1] <= 0.5 + 1e-6).all()
    assert not _overlap(lay) and lay.labelled == list(range(len(lay.nodes)))
    # wrapping is what makes the text big: one row forces much smaller text
    one_row = gl.layout_graph(dense, collapsed, (2.3, 1.0), rows=1)
    assert lay.text_height > 2 * one_row.text_height
    # a group's box is wide enough for its label at the chosen text height
    for i, nd in enumerate(lay.nodes):
        if nd.collapsed:
            longest = max(len(s) for s in nd.label.split("\n"))
            assert 2 * lay.half[i, 0] >= longest * gl.CHAR_WIDTH * lay.text_height


def test_resnet_opens_as_its_bottlenecks_and_small_graphs_open_whole() -> None:
    ix = gl.GraphIndex(_meta(resnet50(width=4)))
    lay = gl.layout_graph(ix, gl.default_collapsed(ix), (2.3, 1.0))
    assert [nd.label.split("\n")[0] for nd in lay.nodes if nd.collapsed] == \
        [f"layer{s}.{b}" for s, n in enumerate((3, 4, 6, 3), 1) for b in range(n)]
    chain = {"nodes": [{"id": i, "name": f"n{i}", "op": "Conv", "group": 0, "rank": i} for i in range(gl.SMALL_GRAPH)],
             "edges": [[i, i + 1] for i in range(gl.SMALL_GRAPH - 1)], "groups": [{"id": 0, "name": "g", "parent": None}]}
    assert gl.default_collapsed(chain) == set()


def test_expand_collapse_relayouts_and_plates_mark_expanded_groups(dense: gl.GraphIndex) -> None:
    collapsed = gl.default_collapsed(dense)
    block3 = next(g for g, name in dense.group_name.items() if name == "features.denseblock3")
    lay = gl.layout_graph(dense, collapsed - {block3}, (2.3, 1.0))
    assert sum(1 for nd in lay.nodes if nd.label.startswith("denselayer")) == 24
    plates = [p for p in lay.plates if p.group == block3]
    assert plates and all(p.label == "denseblock3" for p in plates)
    inner = [i for i, nd in enumerate(lay.nodes) if nd.label.startswith("denselayer")]
    for i in inner:  # each dense layer's box lies on one of its block's plates
        x, y = lay.positions[i, :2]
        assert any(p.lo[0] <= x <= p.hi[0] and p.lo[1] <= y <= p.hi[1] for p in plates)
    # nested plates: the outer one frames the inner one's name strip; all inside the panel
    features = next(g for g, name in dense.group_name.items() if name == "features")
    for p in plates:
        outer = next(q for q in lay.plates if q.group == features and q.lo[1] <= p.lo[1] <= q.hi[1])
        assert outer.hi[1] >= p.hi[1] + gl.PLATE_HEADER * lay.text_height - 1e-6
        assert outer.lo[0] < p.lo[0] and outer.hi[0] > p.hi[0]
    assert all(abs(v) <= 1.15 + 1e-6 for p in lay.plates for v in (p.lo[0], p.hi[0]))
    assert all(abs(v) <= 0.5 + 1e-6 for p in lay.plates for v in (p.lo[1], p.hi[1]))
    top = max(plates, key=lambda p: p.hi[1])
    hit = gl.plate_at(lay, (top.lo[0] + top.hi[0]) / 2, top.hi[1] - 1e-4)
    assert hit is not None and hit.group == block3
    assert not _overlap(lay)


def test_search_ranks_whole_names_first_and_jump_expands_what_hides_the_hit(dense: gl.GraphIndex) -> None:
    hits = gl.find(dense, "DENSELAYER2")
    assert hits[0].name == "features.denseblock1.denselayer2" and hits[0].kind == "group"
    assert {h.name for h in hits[:4]} == {f"features.denseblock{b}.denselayer2" for b in range(1, 5)}
    assert all("denselayer2" in h.name.lower() for h in hits) and gl.find(dense, "  ") == []
    conv = gl.find(dense, "denseblock3.denselayer5.conv2")[0]
    assert conv.kind == "layer"
    collapsed = gl.default_collapsed(dense)
    shown = gl.expand_to(dense, collapsed, conv.key)
    lay = gl.layout_graph(dense, shown, (2.3, 1.0))
    assert conv.key in [nd.key for nd in lay.nodes]
    assert collapsed - shown == {g for g, n in dense.group_name.items()
                                 if n in ("features.denseblock3", "features.denseblock3.denselayer5")}
    with pytest.raises(KeyError):
        gl.expand_to(dense, collapsed, "n:nope")


def test_ten_thousand_nodes_lay_out_inside_the_panel() -> None:
    n = 10_000
    nodes = [{"id": i, "name": f"layer{i}", "op": "Conv", "group": i // 100, "rank": i} for i in range(n)]
    edges = [[i, i + 1] for i in range(n - 1)] + [[i, i + 3] for i in range(0, n - 3, 7)]
    groups = [{"id": g, "name": f"stage{g // 10}.block{g}", "parent": None} for g in range(n // 100)]
    ix = gl.GraphIndex({"nodes": nodes, "edges": edges, "groups": groups})
    assert len(gl.layout_graph(ix, gl.default_collapsed(ix), (2.6, 1.6)).nodes) == 100
    lay = gl.layout_graph(ix, set(), (2.6, 1.6))
    assert len(lay.nodes) == n and lay.rows > 10 and lay.labelled == []
    assert (np.abs(lay.positions[:, 0]) + lay.half[:, 0] <= 1.3 + 1e-6).all()
    assert (np.abs(lay.positions[:, 1]) + lay.half[:, 1] <= 0.8 + 1e-6).all()
    ranks = np.array([nd.rank for nd in lay.nodes])
    assert (np.diff(ranks) >= 0).all() and ranks[-1] == n - 1
