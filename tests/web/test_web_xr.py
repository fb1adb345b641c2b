"""Enter VR in the browser.

Headless Chromium on Linux has no XR runtime, so two honest checks instead of a headset:

- plain Chromium: `navigator.xr.isSessionSupported('immersive-vr')` says no and the page
  offers no "Enter VR" button;
- Chromium with IWER (Meta's Immersive Web Emulation Runtime, an npm package bundled into
  net/web/dist/xr-emulation.js and injected before the page's own scripts): a complete WebXR
  runtime in the page, so the page's code and three.js's WebXRManager run unchanged. The button
  appears, a click asks for an immersive-vr session with the page's features, three.js takes
  the session's frame loop (frames arrive with an XRFrame and keep coming with nothing
  changing in the room) and draws both eyes: the panel straight ahead is on the left and on the
  right half of the canvas. Ending the session (as a headset's own exit does) puts the page back
to drawing only on change.

With the emulated headset's controllers (IWER's Quest 3 pair, as a headset reports them): each
hand has a laser ending on the panel it points at; the room sees the active hand's ray as this
participant's pointer (a Python client reads it from the poses); a member's trigger on the panel,
a swing of the controller and a release moves the panel for everyone, along the ray at the
distance it was grabbed; a press without a swing is a click; once the host makes them a viewer,
the same swing moves nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.net import RoomClient
from deeproom.net.bench_web import IMAGE_RGB, chrome
from deeproom.net.web_serve import WEB_DIR, page_link

from .conftest import HEIGHT, WIDTH, Browsers, eventually, every_kind_blobs, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

EMULATION = WEB_DIR / "dist" / "xr-emulation.js"


def red(px: np.ndarray) -> np.ndarray:
    """Where the image panel's red is (x, y of each pixel)."""
    hit = np.abs(px.astype(int) - np.array(IMAGE_RGB)).max(axis=2) <= 30
    ys, xs = np.nonzero(hit)
    return np.stack([xs, ys], axis=1)


async def room_with_an_image_ahead(url: str, room: str) -> RoomClient:
    alice = RoomClient(
        url, room=room, name="Alice", participant_id="alice", participant_key="k" * 20
    )
    await alice.connect()
    sha = await alice.put_blob(every_kind_blobs()["image"])
    await alice.apply(
        {
            "op": "add_panel",
            "panel_id": "image",
            "kind": "image",
            "title": "ahead",
            "transform": {"position": [0.0, 1.6, 2.5]},
            "size": [1.3, 0.95],
            "content": {"source": {}, "refs": [sha]},
        }
    )
    return alice


async def drawn(b: Browsers, d: Any) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        s = await b.state(d)
        p = s.get("panels", {}).get("image")
        return s if p and p["status"] == "drawn" and s["xr"]["supported"] is not None else None

    return await eventually(check, timeout=30)


async def test_no_xr_runtime_no_enter_vr_button(relay, browsers: Browsers) -> None:
    alice = await room_with_an_image_ahead(relay.url, "xr1")
    try:
        d = await browsers.open(page_url(relay.url, "xr1"))
        s = await drawn(browsers, d)
        assert s["xr"] == {
            "button": False,
            "presenting": False,
            "sessions": 0,
            "frames": 0,
            "supported": False,
            "input": {"hands": [], "pointing": None, "dragging": None, "clicks": 0, "moves": 0},
        }
        assert await browsers.js(d, "return document.querySelector('#vr').hidden") is True
    finally:
        await alice.close()


async def test_enter_vr_with_an_emulated_headset(relay, browsers: Browsers) -> None:
    alice = await room_with_an_image_ahead(relay.url, "xr2")
    try:
        d = await emulated_headset(browsers, page_url(relay.url, "xr2"))
        s = await drawn(browsers, d)
        assert (
            s["xr"]["supported"] is True and s["xr"]["button"] is True and not s["xr"]["presenting"]
        )
        flat = red(await browsers.screenshot(d))
        assert len(flat) > 1000 and abs(flat[:, 0].mean() - WIDTH / 2) < 80, (
            "one view: the panel in the middle"
        )

        await asyncio.to_thread(lambda: d.find_element("css selector", "#vr").click())
        s = await eventually(lambda: _presenting(browsers, d, True), timeout=10)
        asked = await browsers.js(d, "return window.__xrEmulation.requests")
        assert asked == [
            {"mode": "immersive-vr", "init": {"optionalFeatures": ["local-floor", "bounded-floor"]}}
        ]
        f0 = s["xr"]["frames"]
        await asyncio.sleep(1.0)  # nothing changes in the room, yet XR draws every frame
        s = await browsers.state(d)
        assert s["xr"]["frames"] - f0 >= 5 and s["drawReasons"]["continuous"] >= 5
        assert await browsers.js(d, "return document.querySelector('#vr').textContent") == "Exit VR"
        stereo = red(await browsers.screenshot(d))
        left, right = stereo[stereo[:, 0] < WIDTH / 2], stereo[stereo[:, 0] >= WIDTH / 2]
        assert len(left) > 300 and len(right) > 300, "both eyes see the panel"
        assert right[:, 0].mean() - left[:, 0].mean() > WIDTH / 4, "one view per half of the canvas"

        # the headset's own exit (IWER shows the session over the page, as a headset takes the display)
        await browsers.js(d, "window.deeproom.page.scene.renderer.xr.getSession().end()")
        await eventually(lambda: _presenting(browsers, d, False), timeout=10)
        assert (
            await browsers.js(d, "return document.querySelector('#vr').textContent") == "Enter VR"
        )
        await asyncio.sleep(0.5)
        f1 = (await browsers.state(d))["frames"]
        await asyncio.sleep(1.0)
        assert (await browsers.state(d))["frames"] == f1, (
            "out of VR a still room draws nothing again"
        )
    finally:
        await alice.close()


async def _presenting(b: Browsers, d: Any, want: bool) -> dict[str, Any] | None:
    s = await b.state(d)
    return s if s["xr"]["presenting"] is want else None


async def emulated_headset(browsers: Browsers, url: str) -> Any:
    """Chromium with IWER injected before the page's scripts (a WebXR runtime in the page)."""
    # `make web` (run by `make test`) builds it; a missing build is a failure, not a skip
    assert EMULATION.exists(), f"{EMULATION} is not built (make web: npm ci and the build)"
    d = await asyncio.to_thread(chrome, WIDTH, HEIGHT)
    browsers.drivers.append(d)
    await asyncio.to_thread(
        d.execute_cdp_cmd,
        "Page.addScriptToEvaluateOnNewDocument",
        {"source": Path(EMULATION).read_text()},
    )
    await asyncio.to_thread(d.get, url)
    return d


RIGHT = "window.__xrEmulation.device.controllers.right"


async def test_controllers_point_click_and_move_panels_in_vr(relay, browsers: Browsers) -> None:
    alice = await room_with_an_image_ahead(relay.url, "xr3")
    try:
        link = await alice.create_invite_link(role="member")
        d = await emulated_headset(browsers, page_link(link) + "&id=vrmember&name=Quest")
        s = await drawn(browsers, d)
        assert s["role"] == "member" and s["xr"]["button"]
        await asyncio.to_thread(lambda: d.find_element("css selector", "#vr").click())

        async def pointing() -> dict[str, Any] | None:
            st = await browsers.state(d)
            i = st["xr"]["input"]
            return st if st["xr"]["presenting"] and sorted(i["hands"]) == ["left", "right"] and i["pointing"] == "image" else None

        await eventually(pointing, timeout=15)
        # the controllers' rays come straight ahead from the hands (IWER's default pose): the
        # room sees the pointer leave the right hand towards the panel (+z, room coordinates)
        async def seen() -> Any:
            p = alice.poses.get("vrmember")
            return p if p is not None and p.pointer is not None else None

        pose = await eventually(seen, timeout=10)
        assert pose.pointer.direction[2] > 0.95 and abs(pose.pointer.origin[0] - pose.head_position[0]) > 0.05
        x0 = alice.room.panels["image"].transform.position

        # press without a swing: a click, nothing moves
        await browsers.js(d, f"{RIGHT}.updateButtonValue('trigger', 1)")
        await xr_frames_pass(browsers, d, 2)  # IWER applies a button's value at the next frame
        await browsers.js(d, f"{RIGHT}.updateButtonValue('trigger', 0)")
        await eventually(lambda: _input(browsers, d, "clicks", 1), timeout=10)
        assert (await browsers.state(d))["xr"]["input"]["moves"] == 0

        # trigger, swing 10 degrees to the right, release: the panel follows the ray
        await browsers.js(d, f"{RIGHT}.updateButtonValue('trigger', 1)")
        await eventually(lambda: _dragging(browsers, d, "image"), timeout=10)
        for deg in (3, 6, 10):
            await browsers.js(d, f"{RIGHT}.quaternion.set(0, {-np.sin(np.radians(deg) / 2)}, 0, {np.cos(np.radians(deg) / 2)})")
            await xr_frames_pass(browsers, d, 3)  # the page drew the panel there (slow frames on a loaded machine)
        await browsers.js(d, f"{RIGHT}.updateButtonValue('trigger', 0)")
        await eventually(lambda: _dragging(browsers, d, None), timeout=10)

        async def moved() -> Any:
            t = alice.room.panels["image"].transform.position
            return t if abs(t[0] - x0[0]) > 0.25 else None

        x1 = await eventually(moved, timeout=10)
        # 10 degrees at ~2.8 m: ~0.5 m sideways, height and depth about the same
        assert 0.3 < abs(x1[0] - x0[0]) < 0.8 and abs(x1[1] - x0[1]) < 0.1 and abs(x1[2] - x0[2]) < 0.3, (x0, x1)
        assert (await browsers.state(d))["xr"]["input"]["moves"] >= 1

        # a viewer's swing moves nothing
        await alice.apply({"op": "set_role", "participant_id": "vrmember", "role": "viewer"})
        await eventually(lambda: _role(browsers, d, "viewer"), timeout=10)
        await browsers.js(d, f"{RIGHT}.quaternion.set(0, 0, 0, 1)")
        await xr_frames_pass(browsers, d, 2)
        moves = (await browsers.state(d))["xr"]["input"]["moves"]
        await browsers.js(d, f"{RIGHT}.updateButtonValue('trigger', 1)")
        await xr_frames_pass(browsers, d, 2)
        await browsers.js(d, f"{RIGHT}.quaternion.set(0, {np.sin(np.radians(10) / 2)}, 0, {np.cos(np.radians(10) / 2)})")
        await xr_frames_pass(browsers, d, 3)
        await browsers.js(d, f"{RIGHT}.updateButtonValue('trigger', 0)")
        await xr_frames_pass(browsers, d, 2)
        await asyncio.sleep(0.5)
        st = await browsers.state(d)
        assert st["xr"]["input"]["moves"] == moves and st["xr"]["input"]["dragging"] is None
        assert alice.room.panels["image"].transform.position == x1
    finally:
        await alice.close()


async def xr_frames_pass(b: Browsers, d: Any, n: int) -> None:
    f0 = (await b.state(d))["xr"]["frames"]

    async def passed() -> bool:
        return (await b.state(d))["xr"]["frames"] >= f0 + n

    await eventually(passed, timeout=15)


async def _input(b: Browsers, d: Any, key: str, n: int) -> bool:
    return (await b.state(d))["xr"]["input"][key] >= n


async def _dragging(b: Browsers, d: Any, panel: str | None) -> bool:
    return (await b.state(d))["xr"]["input"]["dragging"] == panel


async def _role(b: Browsers, d: Any, role: str) -> bool:
    return (await b.state(d))["role"] == role
