"""A watched training run in the browser: curves, status, steering and the cloud, live.

A real `deeproom.watch()` run (a small CNN training on a thread of this process) streams into a
room on a real relay; the page (real headless Chromium, a viewer) must draw the run's panels and
keep them moving between the run's blobs, as the app does (scenes/live_runs.py): each `metrics`
delta on the pixels of the curves within a second, the run's status chip and the tag above its
panels, a freeze by another participant tagged ("Ann: freeze conv1"), tinted on the graph and
the metrics' layer rows; the embedding cloud moving with the run's frames, its trail growing,
image thumbnails near the viewer; and a "stream" claiming to be the run from anyone else dropped.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.net import RoomClient

from .conftest import Browsers, eventually, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def region(shot: np.ndarray, rect: list[float]) -> np.ndarray:
    return shot[max(int(rect[1]), 0) : int(rect[3]), max(int(rect[0]), 0) : int(rect[2])]


def share_near(px: np.ndarray, rgb: tuple[int, int, int], tol: int) -> float:
    return float((np.abs(px.reshape(-1, 3).astype(int) - np.array(rgb)).max(axis=1) <= tol).mean())


def grey(px: np.ndarray) -> int:
    """Trail pixels: equal channels, lighter than the panel's backdrop."""
    p = px.reshape(-1, 3).astype(int)
    return int(((p.max(axis=1) - p.min(axis=1) <= 6) & (p.min(axis=1) >= 50)).sum())


class Training:
    """A small CNN trained on a thread, watched into a room (`deeproom.watch`)."""

    def __init__(self, url: str, data_dir: Path) -> None:
        import torch
        from torch import nn

        from deeproom.models.training import watch

        torch.manual_seed(0)

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
                self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
                self.fc = nn.Linear(6 * 8 * 8, 3)

            def forward(self, x: Any) -> Any:
                return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))

        self.torch, self.nn = torch, nn
        self.model = Net()
        self.x, self.y = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.run = watch(
            self.model,
            room="live",
            server=url,
            optimizer=self.opt,
            train_data=(self.x, self.y),
            val_data=(self.x[:32], self.y[:32]),
            name="run",
            stats_every=2,
            publish_every_s=3.0,
            data_dir=data_dir,
            embed_layer="conv2",
            participant_name="Trainer",
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.train, daemon=True)
        self.thread.start()

    def train(self) -> None:
        i = 0
        while not self.stop.is_set() and not self.run.stopped:
            sl = slice((i * 16) % 96, (i * 16) % 96 + 16)
            xb, yb = self.x[sl], self.y[sl]
            loss = self.nn.functional.cross_entropy(self.model(xb), yb)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.run.log(loss=loss, acc=float((self.model(xb).argmax(1) == yb).float().mean()))
            i += 1
            if i % 30 == 0:
                self.run.epoch_end()
            self.stop.wait(0.04)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.run.close()


async def test_a_watched_run_is_live_in_the_browser(
    relay, browsers: Browsers, tmp_path: Path
) -> None:
    training = await asyncio.to_thread(Training, relay.url, tmp_path / "run")
    try:
        owner = training.run.link.participant_id
        d = await browsers.open(page_url(relay.url, "live", name="Browser"))

        async def drawn() -> dict[str, Any] | None:
            s = await browsers.state(d)
            p = s.get("panels", {})
            ok = (
                p.get("run.metrics", {}).get("live")
                and p.get("run.graph", {}).get("graph")
                and p.get("run.embedding", {}).get("cloud")
                and p.get("run.confusion", {}).get("status") == "drawn"
            )
            return s if ok else None

        s = await eventually(drawn, timeout=120)
        assert s["role"] == "viewer"
        assert s["panels"]["run.metrics"]["live"]["status"] == "running"
        assert s["panels"]["run.metrics"]["badge"] == "running"

        # --- the curves move with each delta, between the run's blobs
        await browsers.js(d, "window.deeproom.face('run.metrics', 1.3)")
        await asyncio.sleep(0.5)
        await browsers.js(d, "window.deeproom.live()")
        rect = (await browsers.state(d))["panels"]["run.metrics"]["rect"]
        before = region(await browsers.screenshot(d), rect)
        step0 = (await browsers.state(d))["panels"]["run.metrics"]["live"]["step"]
        log: list[list[Any]] = []

        async def deltas() -> bool:
            log.extend(await browsers.js(d, "return window.deeproom.live()"))
            return len([e for e in log if e[0] == "run.metrics" and e[1] > step0]) >= 3

        await eventually(deltas, timeout=20)
        after = region(await browsers.screenshot(d), rect)
        lat = [e[3] - e[2] for e in log if e[0] == "run.metrics"]
        assert max(lat) < 1000, f"a delta reached the drawn frame in {max(lat):.0f} ms"
        assert (np.abs(after.astype(int) - before.astype(int)) > 8).any(), (
            "the curves' pixels moved"
        )
        assert (await browsers.state(d))["panels"]["run.metrics"]["live"]["step"] > step0

        # --- someone else steers: a freeze is tagged, tinted on the graph and on the layer rows
        async with RoomClient(
            relay.url, room="live", name="Ann", participant_id="ann", participant_key="a" * 20
        ) as ann:
            await ann.send_event("steer", {"cmd": "freeze", "layer": "conv1"}, to=owner)

            async def frozen() -> dict[str, Any] | None:
                st = await browsers.state(d)
                p = st["panels"]
                return (
                    st
                    if "Ann: freeze conv1" in (p["run.metrics"]["badge"] or "")
                    and "conv1" in p["run.graph"]["graph"]["frozen"]
                    else None
                )

            s = await eventually(frozen, timeout=20)
            assert "Ann: freeze conv1" in s["panels"]["run.embedding"]["badge"]

            async def tinted() -> (
                bool
            ):  # the row turns ice blue once the run's next delta or blob says so
                shot = await browsers.screenshot(d)
                return (
                    share_near(region(shot, s["panels"]["run.metrics"]["rect"]), (40, 78, 110), 10)
                    > 0.005
                )

            await eventually(tinted, timeout=45, interval=0.3)  # the next delta: slow on a loaded machine

            # --- a stream that claims to be the run, from someone who is not it, is dropped
            dropped = s["streamsDropped"]
            await ann.send_event("stream", {"run": "run", "type": "status", "state": "failed"})
            await ann.send_event(
                "stream", {"run": "run", "type": "metrics", "rows": [{"step": 1e9, "loss": 99.0}]}
            )
            await eventually(lambda: _dropped(browsers, d, dropped + 2), timeout=10)
            p = (await browsers.state(d))["panels"]
            assert (
                "failed" not in (p["run.metrics"]["badge"] or "")
                and p["run.metrics"]["live"]["step"] < 1e9
            )

        # --- the embedding cloud moves with the run's frames; its trail grows; thumbnails near the viewer
        await browsers.js(d, "window.deeproom.face('run.embedding', 0.8)")
        c0 = (await browsers.state(d))["panels"]["run.embedding"]["cloud"]

        async def moved() -> dict[str, Any] | None:
            st = await browsers.state(d)
            c = st["panels"]["run.embedding"]["cloud"]
            return (
                st
                if c["framesApplied"] >= c0["framesApplied"] + 2  # the run's new blobs rebuild the cloud between
                and c["trailFrames"] >= 3
                and c["thumbsShown"] > 0
                else None
            )

        s = await eventually(moved, timeout=60)
        c = s["panels"]["run.embedding"]["cloud"]
        assert c["hasThumbnails"] and c["points"] == 96
        await asyncio.sleep(0.4)
        shot = await browsers.screenshot(d)
        assert grey(region(shot, s["panels"]["run.embedding"]["rect"])) > 50, "trails are drawn"
    finally:
        await asyncio.to_thread(training.close)


async def _dropped(b: Browsers, d: Any, n: int) -> bool:
    return (await b.state(d))["streamsDropped"] >= n
