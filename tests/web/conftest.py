"""Fixtures for the browser client tests: Debian's headless Chromium driven by selenium
(with Debian's chromedriver, no downloads), a real relay on 127.0.0.1 serving the page,
and a Python participant who fills a room with every panel kind."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.content import encode_content
from deeproom.net import EmbeddedRelay
from deeproom.net.web_serve import BUNDLE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WIDTH, HEIGHT = 1280, 720


def _skip_reason() -> str | None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "chromium and chromium-driver are not installed (tools/system-packages.txt lists them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not BUNDLE.exists():
        return "the page's bundle is not built (make setup runs npm ci and esbuild)"
    return None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = _skip_reason()
    if reason:
        here = str(Path(__file__).parent)
        for item in items:
            if str(item.fspath).startswith(here):
                item.add_marker(pytest.mark.skip(reason=reason))


def chrome(width: int = WIDTH, height: int = HEIGHT, extra: tuple[str, ...] = ()) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader",
              f"--window-size={width},{height}", "--autoplay-policy=no-user-gesture-required",
              "--disable-features=WebRtcHideLocalIpsWithMdns", "--allow-loopback-in-peer-connection", *extra):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    d.set_script_timeout(30)
    return d


class Browsers:
    """Start browsers (each quit at teardown) and talk to them off the event loop."""

    def __init__(self) -> None:
        self.drivers: list[Any] = []

    async def open(self, url: str, *, extra: tuple[str, ...] = (), width: int = WIDTH, height: int = HEIGHT) -> Any:
        d = await asyncio.to_thread(chrome, width, height, extra)
        self.drivers.append(d)
        await asyncio.to_thread(d.get, url)
        return d

    @staticmethod
    async def js(d: Any, script: str, *args: Any) -> Any:
        return await asyncio.to_thread(d.execute_script, script, *args)

    async def state(self, d: Any) -> dict[str, Any]:
        return await self.js(d, "return window.deeproom && window.deeproom.state ? window.deeproom.state() : null") or {}

    async def screenshot(self, d: Any) -> np.ndarray:
        import io

        from PIL import Image

        png = await asyncio.to_thread(d.get_screenshot_as_png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def close(self) -> None:
        for d in self.drivers:
            try:
                d.quit()
            except Exception:
                pass


@pytest.fixture
def browsers() -> Iterator[Browsers]:
    b = Browsers()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[EmbeddedRelay]:
    async with EmbeddedRelay(data_dir=tmp_path / "relay", leave_grace_s=1.0) as r:
        yield r


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


IMAGE_RGB = (220, 40, 40)
"""The image panel shows a solid colour the test looks for."""


def every_kind_blobs() -> dict[str, bytes]:
    """One content blob per panel kind, as the engine writes them (docs/protocol.md §10)."""
    rng = np.random.default_rng(0)
    steps = np.arange(50, dtype=np.int64)
    img = np.zeros((16, 16, 3), np.uint8)
    img[:] = IMAGE_RGB
    nodes = [{"id": f"n{i}", "name": f"layer{i}", "op": ["conv", "relu", "linear"][i % 3], "rank": i} for i in range(8)]
    cloud = rng.normal(size=(600, 3)).astype(np.float32)
    return {
        "metrics": encode_content({"kind": "metrics", "series": ["loss", "acc"], "x": "step"},
                                  {"step": steps, "loss": np.exp(-steps / 20).astype(np.float32),
                                   "acc": (1 - np.exp(-steps / 15)).astype(np.float32)}),
        "confusion_matrix": encode_content({"kind": "confusion_matrix", "labels": ["a", "b", "c"]},
                                           {"matrix": np.array([[9, 1, 0], [2, 7, 1], [0, 0, 10]], np.int32)}),
        "feature_maps": encode_content({"kind": "feature_maps", "layer": "conv1"},
                                       {"maps": rng.normal(size=(8, 12, 12)).astype(np.float16)}),
        "filters": encode_content({"kind": "filters", "layer": "conv1"},
                                  {"filters": rng.normal(size=(16, 5, 5)).astype(np.float32)}),
        "grad_cam": encode_content({"kind": "grad_cam", "layer": "conv2", "target": 3, "method": "Grad-CAM"},
                                   {"image": (rng.random((28, 28)) * 255).astype(np.uint8),
                                    "cam": rng.random((7, 7)).astype(np.float32)}),
        "attention": encode_content({"kind": "attention", "layer": "attn0"},
                                    {"attention": rng.random((4, 10, 10)).astype(np.float16)}),
        "image": encode_content({"kind": "image"}, {"image": img}),
        "note": encode_content({"kind": "note", "text": "Hello from Python"}, {}),
        "model_graph": encode_content({"kind": "model_graph", "nodes": nodes,
                                       "edges": [[f"n{i}", f"n{i + 1}"] for i in range(7)]}, {}),
        "latent_cloud": encode_content({"kind": "latent_cloud", "classes": [str(i) for i in range(10)]},
                                       {"positions": cloud, "labels": (np.arange(600) % 10).astype(np.int16)}),
    }


KINDS = list(every_kind_blobs())
SIZE = (1.3, 0.95)


def slot(i: int) -> list[float]:
    """Two rows of five panels, 3 m in front of a viewer at the origin."""
    row, col = divmod(i, 5)
    return [-2.9 + 1.45 * col, 2.2 - 1.2 * row, 3.0]


async def fill_room(client: Any, blobs: dict[str, bytes] | None = None) -> dict[str, str]:
    """Add one panel per kind (id = kind) with its blob; returns panel id → sha."""
    blobs = blobs if blobs is not None else every_kind_blobs()
    shas = {}
    for i, (kind, blob) in enumerate(blobs.items()):
        sha = await client.put_blob(blob)
        shas[kind] = sha
        await client.apply({"op": "add_panel", "panel_id": kind, "kind": kind, "title": kind.replace("_", " "),
                            "transform": {"position": slot(i)}, "size": list(SIZE),
                            "content": {"source": {}, "refs": [sha]}})
    return shas


def page_url(relay_url: str, room: str, **query: str) -> str:
    from urllib.parse import urlencode

    q = urlencode(query)
    return f"{relay_url}/r/{room}" + (f"?{q}" if q else "")
