"""The latent cloud in the browser, as the app draws it: thumbnails near the viewer, trails,
frames from the run that owns it (and from no one else).

A Python participant publishes a cloud whose thumbnails are half black (nothing else on the
page is pure black: a tinted image's black stays black) with a three-frame trail; the page shows dots from afar and
image quads once the viewer stands within 0.9 m, and a "stream" frame from the cloud's run
moves it and grows its trail.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest

from deeproom.content import encode_content
from deeproom.net import RoomClient

from .conftest import Browsers, eventually, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

N = 300


def black(px: np.ndarray) -> int:
    return int((px.reshape(-1, 3).max(axis=1) < 8).sum())


def region(shot: np.ndarray, rect: list[float]) -> np.ndarray:
    return shot[max(int(rect[1]), 0) : int(rect[3]), max(int(rect[0]), 0) : int(rect[2])]


def frame_event(positions: np.ndarray, run: str = "r") -> dict[str, Any]:
    pos16 = positions.astype("<f2")
    return {
        "run": run,
        "type": "embedding",
        "frame": 1,
        "step": 10,
        "layer": "fc",
        "n": int(pos16.shape[0]),
        "dims": int(pos16.shape[1]),
        "positions": base64.b64encode(pos16.tobytes()).decode(),
        "predictions": base64.b64encode(np.zeros(len(positions), "<i2").tobytes()).decode(),
    }


async def test_cloud_thumbnails_near_the_viewer_trails_and_frames(
    relay, browsers: Browsers
) -> None:
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(N, 3)).astype(np.float32)
    checks = np.zeros((N, 8, 8), np.uint8)
    checks[:, :4, :4] = checks[:, 4:, 4:] = 255  # two white and two black quarters
    trails = np.stack([pos * 0.8, pos * 0.9, pos]).astype(np.float32)
    blob = encode_content(
        {"kind": "latent_cloud", "classes": [str(i) for i in range(10)]},
        {
            "positions": pos,
            "labels": (np.arange(N) % 10).astype(np.int16),
            "thumbnails": checks,
            "trails": trails,
        },
    )
    async with RoomClient(
        relay.url, room="cloud", name="Alice", participant_id="alice", participant_key="k" * 20
    ) as alice:
        sha = await alice.put_blob(blob)
        source = {
            "kind": "live_training",
            "run": "r",
            "what": "latent_cloud",
            "owner": "alice",
            "engine": "alice",
        }
        await alice.apply(
            {
                "op": "add_panel",
                "panel_id": "c",
                "kind": "latent_cloud",
                "title": "cloud",
                "transform": {"position": [0.0, 1.6, 3.0]},
                "size": [1.3, 0.95],
                "content": {"source": source, "refs": [sha]},
            }
        )
        d = await browsers.open(page_url(relay.url, "cloud", name="Browser"))

        async def cloud() -> dict[str, Any] | None:
            p = (await browsers.state(d)).get("panels", {}).get("c")
            return p if p and p["cloud"] else None

        p = await eventually(cloud, timeout=30)
        assert (
            p["cloud"]["hasThumbnails"]
            and p["cloud"]["trailFrames"] == 3
            and p["cloud"]["thumbsShown"] == 0
        )
        await asyncio.sleep(0.3)
        far = black(region(await browsers.screenshot(d), p["rect"]))
        assert far < 20, "from 3 m the cloud is dots: no image quads"

        await browsers.js(d, "window.deeproom.face('c', 0.7)")

        async def near() -> dict[str, Any] | None:
            q = (await browsers.state(d))["panels"]["c"]
            return q if q["cloud"]["thumbsShown"] > 20 else None

        q = await eventually(near, timeout=10)
        assert q["cloud"]["thumbsShown"] <= 400
        await asyncio.sleep(0.3)
        assert black(await browsers.screenshot(d)) > 200, "the checks' black squares are drawn"

        # a frame from someone who is not the cloud's run changes nothing
        async with RoomClient(
            relay.url, room="cloud", name="Bob", participant_id="bob", participant_key="b" * 20
        ) as bob:
            await bob.send_event("stream", frame_event(pos[::-1].copy()))
            await eventually(lambda: _dropped(browsers, d), timeout=10)
        assert (await browsers.state(d))["panels"]["c"]["cloud"]["frames"] == 0

        # the run's own frame moves the cloud and grows its trail; the cloud contracted to a
        # third, so its trail reaches three times further than its points: both stay on the panel
        moved = (pos * 0.3 + 0.25).astype(np.float32)
        await alice.send_event("stream", frame_event(moved))

        async def taken() -> dict[str, Any] | None:
            c = (await browsers.state(d))["panels"]["c"]["cloud"]
            return c if c["frames"] == 1 else None

        c = await eventually(taken, timeout=10)
        assert c["trailFrames"] == 4
        assert c["first"] == pytest.approx(
            moved[0].astype(np.float16).astype(np.float32).tolist(), abs=1e-6
        )
        x0, y0, x1, y1 = c["extent"]
        half_w, half_h = 1.3 * 0.45 + 1e-3, 0.95 * 0.45 + 1e-3
        assert -half_w <= x0 and x1 <= half_w and -half_h <= y0 and y1 <= half_h, c["extent"]
        assert x1 - x0 > 1.3 * 0.8, "the widest trail frame spans the face"

        # a new blob for the cloud (a run publishes one every few seconds): the drawn cloud stays
        # until the new one is fetched, never a "waiting for content" card in between
        shown = (await browsers.state(d))["panels"]["c"]["placeholders"]
        blob2 = encode_content(
            {"kind": "latent_cloud", "classes": [str(i) for i in range(10)]},
            {"positions": moved, "labels": (np.arange(N) % 10).astype(np.int16)},
        )
        sha2 = await alice.put_blob(blob2)
        await alice.apply(
            {
                "op": "set_content",
                "panel_id": "c",
                "content": {"source": source, "refs": [sha2]},
            }
        )

        async def replaced() -> dict[str, Any] | None:
            q = (await browsers.state(d))["panels"]["c"]
            return q if q["cloud"] and not q["cloud"]["hasThumbnails"] else None

        q = await eventually(replaced, timeout=10)
        assert q["status"] == "drawn" and q["placeholders"] == shown


async def _dropped(b: Browsers, d: Any) -> bool:
    return (await b.state(d))["streamsDropped"] >= 1
