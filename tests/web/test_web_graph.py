"""The model graph in the browser, laid out and clicked as the app does it.

A Python participant publishes a 74-layer graph with nested groups; the page (real headless
Chromium, real relay) must open it collapsed exactly as `scenes.graph_layout` does (same boxes,
same places), draw the collapsed groups as teal boxes, expand a group on a click on its box and
collapse it again on a click on its plate's name strip — each time the same layout as Python's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from deeproom.content import encode_content
from deeproom.net import RoomClient
from deeproom.scenes import graph_layout

from .conftest import Browsers, eventually, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SIZE = (2.4, 1.1)


def graph_meta() -> dict[str, Any]:
    """A stem, four blocks of 18 layers (conv, norm, relu) under one "features" group, a head."""
    nodes: list[dict[str, Any]] = [
        {"id": "stem", "name": "features.conv0", "op": "conv", "group": "features", "params": 864}
    ]
    groups = [{"id": "features", "name": "features", "parent": None}]
    edges: list[list[str]] = []
    prev = "stem"
    for b in range(4):
        gid = f"features.block{b}"
        groups.append({"id": gid, "name": gid, "parent": "features"})
        for k in range(18):
            nid = f"b{b}_{k}"
            op = ("conv", "norm", "relu")[k % 3]
            nodes.append(
                {
                    "id": nid,
                    "name": f"{gid}.{op}{k}",
                    "op": op,
                    "group": gid,
                    "params": 9216 if op == "conv" else 64,
                }
            )
            edges.append([prev, nid])
            if k % 6 == 5:
                edges.append([f"b{b}_{k - 5}", nid])  # a residual skip
            prev = nid
    nodes.append({"id": "head", "name": "classifier", "op": "linear", "params": 10250})
    edges.append([prev, "head"])
    for i, n in enumerate(nodes):
        n["rank"] = i
        n["order"] = 0
    return {"kind": "model_graph", "nodes": nodes, "edges": edges, "groups": groups}


def python_layout(meta: dict[str, Any], collapsed: set[str]) -> graph_layout.GraphLayout:
    face = (SIZE[0] * 0.96, SIZE[1] * 0.92)  # GraphView.face
    return graph_layout.layout_graph(meta, collapsed, face)


def assert_same_layout(page: dict[str, Any], meta: dict[str, Any], collapsed: set[str]) -> None:
    lay = python_layout(meta, collapsed)
    want = {
        nd.key: (float(lay.positions[i, 0]), float(lay.positions[i, 1]))
        for i, nd in enumerate(lay.nodes)
    }
    assert page["plates"] == [p.group for p in lay.plates] and page["rows"] == lay.rows
    got = page["at"]
    assert set(got) == set(want)
    for key, (x, y) in want.items():
        assert got[key] == pytest.approx([x, y], abs=2e-4), key


def teal(px: np.ndarray) -> int:
    """Pixels of a collapsed group's box (60, 190, 200 lit): green and blue well above red."""
    p = px.reshape(-1, 3).astype(int)
    return int(((p[:, 1] > 2.2 * p[:, 0] + 10) & (p[:, 2] > 2.2 * p[:, 0] + 10)).sum())


async def click_at(b: Browsers, d: Any, xy: list[float]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    def run() -> None:
        canvas = d.find_element("css selector", "canvas")
        w, h = canvas.size["width"], canvas.size["height"]
        ActionChains(d).move_to_element_with_offset(
            canvas, int(xy[0] - w / 2), int(xy[1] - h / 2)
        ).click().perform()

    await asyncio.to_thread(run)


async def test_graph_opens_collapsed_and_groups_expand_and_collapse_like_the_app(
    relay, browsers: Browsers
) -> None:
    meta = graph_meta()
    async with RoomClient(
        relay.url, room="graph", name="Alice", participant_id="alice", participant_key="k" * 20
    ) as alice:
        sha = await alice.put_blob(encode_content(meta, {}))
        await alice.apply(
            {
                "op": "add_panel",
                "panel_id": "g",
                "kind": "model_graph",
                "title": "a 74-layer graph",
                "transform": {"position": [0.0, 1.6, 3.0]},
                "size": list(SIZE),
                "content": {"source": {}, "refs": [sha]},
            }
        )
        d = await browsers.open(page_url(relay.url, "graph", name="Browser"))

        async def graph() -> dict[str, Any] | None:
            p = (await browsers.state(d)).get("panels", {}).get("g")
            return p["graph"] if p and p["status"] == "drawn" and p["graph"] else None

        g = await eventually(graph, timeout=30)
        opened = graph_layout.default_collapsed(meta)
        assert opened == {
            "features.block0",
            "features.block1",
            "features.block2",
            "features.block3",
        }
        assert set(g["collapsed"]) == opened
        assert sorted(g["groups"]) == sorted(opened) and set(g["plates"]) == {"features"}
        assert_same_layout(g, meta, opened)

        await browsers.js(d, "window.deeproom.face('g', 1.6)")
        await asyncio.sleep(0.4)
        rect = (await browsers.state(d))["panels"]["g"]["rect"]
        shot = await browsers.screenshot(d)
        face = shot[int(rect[1]) : int(rect[3]), int(rect[0]) : int(rect[2])]
        assert teal(face) > 400, "collapsed groups are teal boxes"

        # a click on block1's box expands it, in place
        xy = await browsers.js(
            d,
            "return window.deeproom.screenPoint('g', ...arguments[0])",
            g["at"]["g:features.block1"],
        )
        await click_at(browsers, d, xy)
        g2 = await eventually(lambda: _changed(browsers, d, g["boxes"]), timeout=5)
        assert set(g2["collapsed"]) == opened - {"features.block1"}
        assert g2["boxes"] == g["boxes"] - 1 + 18 and "features.block1" in g2["plates"]
        assert_same_layout(g2, meta, opened - {"features.block1"})
        await asyncio.sleep(0.3)
        shot2 = await browsers.screenshot(d)
        assert teal(shot2[int(rect[1]) : int(rect[3]), int(rect[0]) : int(rect[2])]) < teal(face), (
            "one teal box fewer"
        )

        # a click on its plate's name strip collapses it again
        strip = g2["plateAt"]["features.block1"]
        xy = await browsers.js(d, "return window.deeproom.screenPoint('g', ...arguments[0])", strip)
        await click_at(browsers, d, xy)
        g3 = await eventually(lambda: _changed(browsers, d, g2["boxes"]), timeout=5)
        assert set(g3["collapsed"]) == opened
        assert_same_layout(g3, meta, opened)
        # a click is not a move: the viewer's page sent nothing
        assert alice.room.panels["g"].transform.position == pytest.approx((0.0, 1.6, 3.0))


async def _changed(b: Browsers, d: Any, boxes: int) -> dict[str, Any] | None:
    g = (await b.state(d))["panels"]["g"]["graph"]
    return g if g["boxes"] != boxes else None
