"""The issue's "Bad input" for the page that the other files do not cover: an engine without
WebRTC or WebSocket gets the page that says what is missing (not a half-working room).

Chromium cannot be started without them, so the test removes them from the page's global
scope before any of the page's scripts run (CDP `Page.addScriptToEvaluateOnNewDocument`),
which is what an engine that never had them looks like to the page.
"""

from __future__ import annotations

import asyncio

import pytest

from deeproom.net.bench_web import chrome

from .conftest import HEIGHT, WIDTH, Browsers, eventually, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.mark.parametrize(
    ("removed", "named"),
    [
        (["RTCPeerConnection"], ["WebRTC"]),
        (["RTCPeerConnection", "WebSocket"], ["WebRTC", "WebSocket"]),
    ],
)
async def test_page_without_webrtc_or_websocket_says_what_is_missing(
    relay, browsers: Browsers, removed: list[str], named: list[str]
) -> None:
    d = await asyncio.to_thread(chrome, WIDTH, HEIGHT)
    browsers.drivers.append(d)
    script = "".join(f"delete window.{name}; window.{name} = undefined;" for name in removed)
    await asyncio.to_thread(
        d.execute_cdp_cmd, "Page.addScriptToEvaluateOnNewDocument", {"source": script}
    )
    await asyncio.to_thread(d.get, page_url(relay.url, "bad1"))
    missing = await eventually(
        lambda: browsers.js(d, "return window.deeproom && window.deeproom.missing"), timeout=10
    )
    assert [m.split(" ")[0] for m in missing] == named
    text = await browsers.js(d, "return document.body.innerText")
    assert "cannot open a DeepRoom room" in text and all(n in text for n in named)
    assert await browsers.js(d, "return document.querySelector('canvas')") is None, (
        "no room behind it"
    )
