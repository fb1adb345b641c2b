"""Freezing chosen filters of a watched run from its filters panel, over a real relay on 127.0.0.1.

A member opens the filters of the run's `conv1` (the registry's `filters` analysis on the run's
graph); that panel declares `freeze_filter` / `unfreeze_filter` on a tile. Freezing filter 2 stops
exactly that filter's weights (and bias) from changing while the other filters keep training;
unfreezing it lets it change again. A bad filter index is refused or fails visibly, and training goes on.
"""

from __future__ import annotations

from typing import Any

import torch

from tests.models.test_engine_compare import run_room  # type: ignore[import-not-found]  # noqa: F401


def test_a_member_freezes_one_filter_from_the_runs_filters_panel(run_room: dict[str, Any]) -> None:  # noqa: F811
    run, mo, eid, step = run_room["run"], run_room["member"], run_room["engine"], run_room["step"]
    for _ in range(2):
        step()
    mo.wait(lambda: "run.graph" in mo.client.room.panels)
    mo.ask(eid, "filters", "run.graph", {"layer": "conv1"}, "f1")
    end = mo.final("f1", between=step)
    assert end["state"] == "done", end
    panel = end["result_panel"]
    src = mo.client.room.panels[panel].content.source
    decl = {a["name"]: a for a in src["actions"]}
    assert {"freeze_filter", "unfreeze_filter"} <= set(decl), src["actions"]
    assert decl["freeze_filter"]["on"] == "tile" and decl["freeze_filter"]["params"] == [{"name": "filter", "type": "tile"}]
    assert src["layer"] == "conv1"

    conv = run.model.conv1
    mo.ask(eid, "freeze_filter", panel, {"filter": 2}, "ff1")
    end = mo.final("ff1", between=step)
    assert end["state"] == "done", end
    assert run.freezer.frozen_filters == {"conv1": [2]} and "conv1" not in run.freezer.frozen_layers
    w0, b0 = conv.weight.detach().clone(), conv.bias.detach().clone()
    for _ in range(5):
        step()
    w1, b1 = conv.weight.detach(), conv.bias.detach()
    changed = [(w1[i] - w0[i]).abs().max().item() > 0 for i in range(w0.shape[0])]
    assert changed[2] is False and torch.equal(b1[2], b0[2]), changed
    assert all(c for i, c in enumerate(changed) if i != 2), changed  # the others keep training
    # the run's status says which filters are frozen (the metrics panel's per-layer row)
    mo.wait(lambda: mo.client.room.panels["run.metrics"].content.source["frozen"]["filters"] == {"conv1": [2]}
            if "run.metrics" in mo.client.room.panels else None, between=step)

    # a filter the layer does not have fails on the run's panel; training goes on
    mo.ask(eid, "freeze_filter", panel, {"filter": 999}, "ff2")
    end = mo.final("ff2", between=step)
    assert end["state"] == "failed" and "filters 0..15" in end["message"], end
    mo.ask(eid, "freeze_filter", panel, {"filter": "two"}, "ff3")
    assert mo.final("ff3")["state"] == "refused"

    mo.ask(eid, "unfreeze_filter", panel, {"filter": 2}, "uf1")
    assert mo.final("uf1", between=step)["state"] == "done"
    assert run.freezer.frozen_filters == {}
    w2 = conv.weight.detach().clone()
    for _ in range(3):
        step()
    assert (conv.weight.detach()[2] - w2[2]).abs().max().item() > 0

    # the graph's freeze takes an optional filters list too
    mo.ask(eid, "freeze", "run.graph", {"layer": "conv1", "filters": [0, 1]}, "fr1")
    assert mo.final("fr1", between=step)["state"] == "done"
    assert run.freezer.frozen_filters == {"conv1": [0, 1]}
