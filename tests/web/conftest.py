"""Fixtures for the browser client tests: Debian's headless Chromium driven by selenium
(with Debian's chromedriver, no downloads), a real relay on 127.0.0.1 serving the page,
and a Python participant who fills a room with every panel kind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.net import EmbeddedRelay
from deeproom.net.bench_web import (  # noqa: F401 - re-exported to the tests
    IMAGE_RGB,
    SIZE,
    browser_missing,
    chrome,
    every_kind_blobs,
    fill_room,
)

WIDTH, HEIGHT = 1280, 720


def _skip_reason() -> str | None:
    return browser_missing()


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = _skip_reason()
    if reason:
        here = str(Path(__file__).parent)
        for item in items:
            if str(item.fspath).startswith(here):
                item.add_marker(pytest.mark.skip(reason=reason))


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


KINDS = list(every_kind_blobs())


def page_url(relay_url: str, room: str, **query: str) -> str:
    from urllib.parse import urlencode

    q = urlencode(query)
    return f"{relay_url}/r/{room}" + (f"?{q}" if q else "")
