"""Real architectures readable on the graph panel (issue 13, item 5).

`deeproom open densenet121.onnx resnet50.onnx`, as its engine and viewpoint do it, at
1280x720: DenseNet-121 opens with its dense blocks and transitions collapsed into
named boxes whose labels are readable from where the viewer stands (capital height
measured on the screen); a click expands a block in place and changes the picture,
collapsing restores it; search finds a layer hidden in a collapsed block and jumps to
it. A 10,001-node graph opens collapsed and expands fully within a few draws.
(The scene runs in tests/scenes/graph_room_prog.py, in a process of its own.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deeproom.scenes import graph_layout
from deeproom.scenes.graph_readability import READABLE_CAP_PX

PROG = Path(__file__).with_name("graph_room_prog.py")


def _run(folder: Path, mode: str, timeout: float = 600) -> dict[str, Any]:
    from tests.scenes.conftest import parse  # type: ignore[import-not-found]

    shutil.copy(PROG, folder / PROG.name)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.run([sys.executable, PROG.name, mode], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return parse(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    from deeproom.models.bench import export_onnx
    from deeproom.models.zoo import densenet121, resnet50

    folder = tmp_path_factory.mktemp("graph-open")
    torch.manual_seed(0)
    x = torch.zeros(1, 3, 32, 32)  # full-depth graphs, narrow widths: the export takes seconds
    (folder / "densenet121.onnx").write_bytes(export_onnx(densenet121(growth=4, init=8).eval(), x))
    (folder / "resnet50.onnx").write_bytes(export_onnx(resnet50(width=4).eval(), x))
    return _run(folder, "opened")


@pytest.mark.slow
def test_densenet_opens_collapsed_with_readable_group_labels(opened: dict[str, Any]) -> None:
    assert opened["screen"] == [1280, 720]
    assert opened["dense_groups"] == ["denseblock1", "transition1", "denseblock2", "transition2", "denseblock3",
                                      "transition3", "denseblock4"], opened
    assert opened["dense_boxes"] <= graph_layout.VISIBLE_BUDGET and opened["rows"] > 1
    dense = [lab for lab in opened["labels"] if lab[0] == "graph-1"]
    assert len(dense) == 7 and all(on for *_, on in dense), dense
    assert min(px for _, _, px, _ in dense) >= READABLE_CAP_PX, dense  # capital height in pixels
    assert opened["dense_ratio"] >= 0.9
    # ResNet-50 beside it opens as its sixteen bottlenecks
    assert opened["res_groups"] == [f"layer{s}.{b}" for s, n in enumerate((3, 4, 6, 3), 1) for b in range(n)]
    assert opened["res_ratio"] >= 0.9, opened["labels"]


@pytest.mark.slow
def test_a_click_expands_a_group_and_collapsing_restores_it(opened: dict[str, Any]) -> None:
    assert opened["expanded_layers"] == 24 and opened["expanded_boxes"] == opened["dense_boxes"] - 1 + 24
    assert opened["expand_changed"] > 0.05  # the panel looks different
    assert opened["plate_click"] is not None and opened["plate_click"].startswith("collapse:")
    assert opened["plate_label"] == "denseblock3"
    assert opened["collapsed_kept"]  # collapsed by the click; the panel keeps the state for rebuilds
    assert opened["toggle_api"] == [[], True]
    assert opened["collapsed_boxes"] == opened["dense_boxes"]
    assert opened["collapse_restores"] < 0.01


@pytest.mark.slow
def test_search_finds_a_hidden_layer_and_jumps_to_it(opened: dict[str, Any]) -> None:
    hits = opened["hits"]
    assert hits[0] == "features.denseblock3.denselayer17"  # the group (denseblock4 has 16 layers)
    assert len(hits) > 1 and all("denselayer17" in h for h in hits), hits  # then its layers
    focus = opened["focus"]
    assert focus["selected"] == "features.denseblock3.denselayer17" and focus["visible_layers"] == 24
    x, y = focus["screen"]
    assert 0 <= x <= 1280 and 0 <= y <= 720
    cx, cy = opened["jump_centre"]
    assert abs(cx - 640) < 2 and abs(cy - 360) < 2  # the jump looks straight at it


@pytest.mark.slow
def test_a_ten_thousand_node_graph_opens_and_expands(tmp_path: Path) -> None:
    out = _run(tmp_path, "huge")
    assert out["settled"] and out["nodes"] == 10_001
    assert out["boxes"] <= graph_layout.VISIBLE_BUDGET  # opens as its one repeated run (+ input)
    assert out["boxes_all"] == 10_001 and out["inside"]
    assert out["draws_all"] <= out["draws"] + 4  # boxes, plates and edges stay a couple of meshes
    assert out["changed"] > 0.02
    assert out["hits"][0] == "block1.1999" and out["focus_inside"]
