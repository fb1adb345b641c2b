"""The browser client in real headless Chromium against a real relay.

A Python participant (RoomClient) hosts a room with every panel kind; the page
(served by the relay at /r/ROOM) joins it through the same protocol, reads the
room with Yjs and draws it with three.js. Checked by pixels of the screenshot and
by the page's own state (`window.deeproom.state()`).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import numpy as np
import pytest

from deeproom.content import encode_content
from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.web_serve import page_link

from .conftest import (
    IMAGE_RGB,
    KINDS,
    SIZE,
    Browsers,
    eventually,
    every_kind_blobs,
    fill_room,
    free_port,
    page_url,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

BACKGROUND = np.array((13, 16, 24))


def region(shot: np.ndarray, rect: list[float], inset: float = 0.12) -> np.ndarray:
    """The pixels inside a panel's screen rectangle, a margin off its edges."""
    left, top, right, bottom = rect
    dx, dy = (right - left) * inset, (bottom - top) * inset
    return shot[int(top + dy):int(bottom - dy), int(left + dx):int(right - dx)]


def colours(px: np.ndarray) -> int:
    return len(np.unique(px.reshape(-1, 3) // 8, axis=0))


def near(px: np.ndarray, rgb: tuple[int, int, int], tol: int = 24) -> float:
    """Share of pixels within tol of a colour."""
    return float((np.abs(px.reshape(-1, 3).astype(int) - np.array(rgb)).max(axis=1) <= tol).mean())


async def all_drawn(b: Browsers, d: object, n: int) -> dict:
    async def check() -> dict | None:
        s = await b.state(d)
        panels = s.get("panels", {})
        if len(panels) == n and all(p["status"] != "waiting" for p in panels.values()):
            return s
        return None

    return await eventually(check, timeout=30)


async def test_page_draws_every_panel_kind(relay, browsers: Browsers) -> None:
    async with RoomClient(relay.url, room="web1", name="Alice", participant_id="alice", participant_key="k" * 20) as alice:
        await fill_room(alice)
        d = await browsers.open(page_url(relay.url, "web1", name="Browser"))
        state = await all_drawn(browsers, d, len(KINDS))
        assert state["joined"] and state["role"] == "viewer"  # no invite: the page asks for viewer
        assert {k: p["status"] for k, p in state["panels"].items()} == {k: "drawn" for k in KINDS}
        await asyncio.sleep(0.3)  # a few frames after the last texture upload
        state = await browsers.state(d)
        shot = await browsers.screenshot(d)
        assert shot.shape[:2] == (720, 1280)
        for kind, p in state["panels"].items():
            px = region(shot, p["rect"])
            assert px.size, f"{kind} is off screen: {p['rect']}"
            assert near(px, tuple(BACKGROUND), 6) < 0.5, f"{kind} panel is not drawn"
            assert colours(region(shot, p["rect"], 0.02)) >= 2, f"{kind} panel is blank"
        # what each kind must show
        assert near(region(shot, state["panels"]["image"]["rect"]), IMAGE_RGB) > 0.5
        cm = region(shot, state["panels"]["confusion_matrix"]["rect"], 0.02)
        assert near(cm, (253, 231, 37), 30) > 0.02, "the largest count is viridis yellow"
        cloud = region(shot, state["panels"]["latent_cloud"]["rect"], 0.05)
        assert near(cloud, (31, 119, 180), 40) > 0.001 and near(cloud, (255, 127, 14), 40) > 0.001, "label colours"
        assert near(region(shot, state["panels"]["note"]["rect"]), (40, 38, 30), 6) > 0.5, "a note's paper"
        assert colours(region(shot, state["panels"]["metrics"]["rect"], 0.02)) >= 4
        assert colours(region(shot, state["panels"]["model_graph"]["rect"], 0.02)) >= 4


async def test_corrupt_blob_shows_an_error_card_on_that_panel(relay, browsers: Browsers) -> None:
    async with RoomClient(relay.url, room="web2", name="Alice", participant_id="alice", participant_key="k" * 20) as alice:
        blobs = every_kind_blobs()
        good = {"image": blobs["image"]}
        await fill_room(alice, good)
        bad = {
            "bad_magic": b"NOPE" + b"\0" * 20,
            "bad_shape": encode_content({"kind": "image"}, {"image": np.zeros((4, 4, 3), np.uint8)})[:-10],
            "bad_kind": encode_content({"kind": "image"}, {"nope": np.zeros(3, np.uint8)}),
        }
        for i, (pid, blob) in enumerate(bad.items()):
            sha = await alice.put_blob(blob)
            await alice.apply({"op": "add_panel", "panel_id": pid, "kind": "image", "title": pid,
                               "transform": {"position": [-1.45 + 1.45 * i, 1.0, 3.0]}, "size": list(SIZE),
                               "content": {"refs": [sha]}})
        d = await browsers.open(page_url(relay.url, "web2"))
        state = await all_drawn(browsers, d, 4)
        assert state["panels"]["image"]["status"] == "drawn"
        for pid in bad:
            assert state["panels"][pid]["status"] == "error", pid
        assert "bad magic" in state["panels"]["bad_magic"]["message"]
        assert "does not match" in state["panels"]["bad_shape"]["message"]
        assert "needs an array 'image'" in state["panels"]["bad_kind"]["message"]
        await asyncio.sleep(0.3)
        shot = await browsers.screenshot(d)
        for pid in bad:
            assert near(region(shot, state["panels"][pid]["rect"], 0.05), (92, 24, 30), 10) > 0.4, f"{pid}: red card"
        assert near(region(shot, state["panels"]["image"]["rect"]), IMAGE_RGB) > 0.5


async def test_python_move_reaches_the_browser_within_a_second(relay, browsers: Browsers) -> None:
    async with RoomClient(relay.url, room="web3", name="Alice", participant_id="alice", participant_key="k" * 20) as alice:
        await fill_room(alice, {"image": every_kind_blobs()["image"]})
        d = await browsers.open(page_url(relay.url, "web3"))
        await all_drawn(browsers, d, 1)
        for x in (0.5, -0.5, 1.25):
            t0 = time.time()
            await alice.apply({"op": "move_panel", "panel_id": "image", "transform": {"position": [x, 1.4, 3.0]}})

            async def moved(x: float = x) -> dict | None:
                p = (await browsers.state(d))["panels"]["image"]
                return p if abs(p["position"][0] - x) < 1e-4 else None

            p = await eventually(moved, timeout=1.0, interval=0.01)
            assert p["movedAt"] / 1000 - t0 < 1.0


async def test_viewer_browser_cannot_edit_and_member_can(relay, browsers: Browsers) -> None:
    async with RoomClient(relay.url, room="web4", name="Alice", participant_id="alice", participant_key="k" * 20) as alice:
        await fill_room(alice, {"image": every_kind_blobs()["image"]})
        viewer_link = await alice.create_invite_link(role="viewer")
        member_link = await alice.create_invite_link(role="member")
        v_url, m_url = page_link(viewer_link), page_link(member_link)
        assert v_url.startswith(relay.url + "/r/web4?invite=") and m_url.startswith(relay.url + "/r/web4?invite=")
        v = await browsers.open(v_url + "&id=viewer1&name=Viewer")
        m = await browsers.open(m_url + "&id=member1&name=Member")
        sv = await all_drawn(browsers, v, 1)
        sm = await all_drawn(browsers, m, 1)
        assert sv["role"] == "viewer" and not sv["canEdit"]
        assert sm["role"] == "member" and sm["canEdit"]
        # The viewer's page sends a move anyway (as a hostile page could): the relay refuses it.
        ack = await browsers.js(v, "return await window.deeproom.op({op: 'move_panel', panel_id: 'image', "
                                   "transform: {position: [2, 1, 3]}})")
        assert ack["ok"] is False and ack["error"]["type"] == "PermissionDenied"
        await asyncio.sleep(0.3)
        assert alice.room.panels["image"].transform.position == pytest.approx((-2.9, 2.2, 3.0))
        # Dragging on the viewer's screen moves nothing either.
        rect = sv["panels"]["image"]["rect"]
        await drag(browsers, v, rect, 200)
        await asyncio.sleep(0.5)
        assert alice.room.panels["image"].transform.position == pytest.approx((-2.9, 2.2, 3.0))
        # The member drags the panel: everyone sees it move.
        await drag(browsers, m, sm["panels"]["image"]["rect"], 200)
        await eventually(lambda: alice.room.panels["image"].transform.position[0] > -2.5, timeout=5)
        # Raise hand from the viewer's page: the Python host sees it.
        await browsers.js(v, "document.querySelector('#hand').click()")
        await eventually(lambda: alice.room.participants["viewer1"].hand_raised, timeout=5)


async def drag(b: Browsers, d: Any, rect: list[float], dx: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    x, y = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2

    def run() -> None:
        body = d.find_element("css selector", "canvas")
        w, h = body.size["width"], body.size["height"]
        ActionChains(d).move_to_element_with_offset(body, int(x - w / 2), int(y - h / 2)).click_and_hold() \
            .move_by_offset(dx // 2, 0).pause(0.15).move_by_offset(dx // 2, 0).pause(0.15).release().perform()

    await asyncio.to_thread(run)


async def test_served_page_and_bundle(relay) -> None:
    def get(path: str) -> tuple[int, bytes, dict]:
        try:
            with urllib.request.urlopen(relay.url + path, timeout=5) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    status, body, headers = await asyncio.to_thread(get, "/r/my-room")
    assert status == 200 and b"/web/deeproom.js" in body and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, body, _ = await asyncio.to_thread(get, "/web/deeproom.js")
    assert status == 200 and len(body) > 100_000
    status, _, _ = await asyncio.to_thread(get, "/")
    assert status == 200
    status, _, _ = await asyncio.to_thread(get, "/r/" + "x" * 65)
    assert status == 404


async def test_page_without_webgl_says_what_is_missing(relay, browsers: Browsers) -> None:
    d = await browsers.open(page_url(relay.url, "web5"), extra=("--disable-3d-apis",))
    missing = await eventually(lambda: browsers.js(d, "return window.deeproom && window.deeproom.missing"), timeout=10)
    assert any("WebGL 2" in m for m in missing)
    text = await browsers.js(d, "return document.body.innerText")
    assert "cannot open a DeepRoom room" in text and "WebGL 2" in text


async def test_relay_going_away_shows_a_banner_and_the_page_reconnects(tmp_path, browsers: Browsers) -> None:
    port = free_port()
    async with EmbeddedRelay(data_dir=tmp_path / "r", port=port, leave_grace_s=5.0) as relay:
        async with RoomClient(relay.url, room="web6", name="Alice", participant_id="alice", participant_key="k" * 20) as alice:
            await fill_room(alice, {"image": every_kind_blobs()["image"]})
        d = await browsers.open(page_url(relay.url, "web6"))
        await all_drawn(browsers, d, 1)
    banner = await eventually(lambda: _banner(browsers, d), timeout=10)
    assert "reconnecting" in banner
    async with EmbeddedRelay(data_dir=tmp_path / "r", port=port, leave_grace_s=5.0) as relay:
        async def back() -> bool:
            s = await browsers.state(d)
            return bool(s.get("joined")) and s.get("banner") is None

        await eventually(back, timeout=20)
        async with RoomClient(relay.url, room="web6", name="Alice", participant_id="alice", participant_key="k" * 20) as alice:
            await alice.apply({"op": "move_panel", "panel_id": "image", "transform": {"position": [0.0, 1.5, 3.0]}})

            async def moved() -> bool:
                return abs((await browsers.state(d))["panels"]["image"]["position"][0]) < 1e-4

            await eventually(moved, timeout=5)


async def _banner(b: Browsers, d: object) -> str | None:
    return (await b.state(d)).get("banner")
