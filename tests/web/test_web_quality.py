"""Adaptive render resolution (`net/web/src/quality.js`) in real headless Chromium.

The page measures what each drawn frame costs its main thread (from the frame's start to
the next animation frame) and lowers the renderer's pixel ratio while frames are slow. To
make frames slow on purpose the tests use the page's `quality.burn(ms)` hook: after each
render it keeps the main thread busy for `ms` per million pixels of the drawing buffer, as
a slower software rasterizer would (real work, so fewer pixels really are cheaper). On top
of it runs the page's real cost: SwiftShader and software compositing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from deeproom.net import RoomClient

from .conftest import KINDS, SIZE, Browsers, eventually, fill_room, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SMALL = (640, 360)  # small enough that, unburnt, a frame is fast on a loaded 2-core machine
BURN = 250.0  # ms per megapixel: 58 ms at 640x360, 28 ms at 0.7 of it


async def open_room(
    relay: Any, browsers: Browsers, room: str, size: tuple[int, int], **query: str
) -> Any:
    async with RoomClient(
        relay.url, room=room, name="Host", participant_id="aa-host", participant_key="k" * 20
    ) as host:
        await fill_room(host)
    d = await browsers.open(page_url(relay.url, room, **query), width=size[0], height=size[1])

    async def drawn() -> Any:
        s = await browsers.state(d)
        return (
            s
            if s.get("allDrawnAt") is not None and len(s.get("panels", {})) == len(KINDS)
            else None
        )

    await eventually(drawn, timeout=60)
    return d


async def quality(b: Browsers, d: Any) -> dict[str, Any]:
    return dict((await b.state(d))["quality"])


async def fps(b: Browsers, d: Any, seconds: float = 2.5) -> float:
    """Frames the page drew per second of wall clock (drawing every frame)."""
    f0, t0 = (await b.state(d))["frames"], time.monotonic()
    await asyncio.sleep(seconds)
    return ((await b.state(d))["frames"] - f0) / (time.monotonic() - t0)


async def test_slow_frames_lower_the_scale_and_fast_frames_bring_it_back(
    relay, browsers: Browsers
) -> None:
    d = await open_room(relay, browsers, "q-auto", SMALL)
    q = await quality(browsers, d)
    assert q["mode"] == "auto" and q["label"] == f"Res {round(q['scale'] * 100)}% auto"

    # full resolution, slow frames: the cost the page would pay without adapting
    await asyncio.to_thread(
        d.find_element("id", "quality").click
    )  # the top bar's toggle: auto → full
    assert (await quality(browsers, d))["mode"] == "full"
    await browsers.js(
        d, "window.deeproom.quality.burn(arguments[0]); window.deeproom.continuous(true)", BURN
    )
    await asyncio.sleep(1.0)
    fps_full = await fps(browsers, d)
    q = await quality(browsers, d)
    assert q["scale"] == 1 and q["canvas"] == list(SMALL) and q["lastCostMs"] > 50, q

    # back to auto with the same slow frames: the scale drops, the canvas shrinks, frames get cheaper
    await asyncio.to_thread(d.find_element("id", "quality").click)

    async def dropped() -> dict[str, Any] | None:
        q = await quality(browsers, d)
        return q if q["scale"] < 1 else None

    q = await eventually(dropped, timeout=10)
    drop_ms = q["changes"][-1][0]
    await asyncio.sleep(1.5)  # let it reach the scale it settles at
    fps_auto = await fps(browsers, d)
    q = await quality(browsers, d)
    assert q["scale"] == 0.7, q["changes"]  # the floor: 58 ms of burn alone at 1, 42 at 0.85
    assert q["canvas"] == [int(SMALL[0] * 0.7), int(SMALL[1] * 0.7)]  # three.js floors
    assert q["label"] == "Res 70% auto"
    print(f"burnt frames: {fps_full:.1f} fps at full, {fps_auto:.1f} fps at {q['scale']}")
    assert fps_auto > 1.3 * fps_full, (fps_auto, fps_full, q)
    # what the page measured agrees: its frames now cost less than a frame's period at full
    period_ms = 1000 / fps_full
    assert q["medianCostMs"] is not None and q["medianCostMs"] < 0.8 * period_ms, (q, fps_full)

    # fast frames again: after a stretch of them it climbs back to 1, one step at a time
    await browsers.js(d, "window.deeproom.quality.burn(0)")

    async def back() -> dict[str, Any] | None:
        q = await quality(browsers, d)
        return q if q["scale"] == 1 else None

    q = await eventually(back, timeout=30)
    ups = [c for c in q["changes"] if c[0] > drop_ms]
    assert [c[1] for c in ups][-2:] == [0.85, 1], q["changes"]
    assert ups[-1][0] - ups[-2][0] >= 2000, q["changes"]  # a stretch of fast frames between raises
    assert q["canvas"] == list(SMALL) and q["label"] == "Res 100% auto"
    # and it stays there: no oscillation while frames remain fast
    n = len(q["changes"])
    await asyncio.sleep(3)
    q = await quality(browsers, d)
    assert len(q["changes"]) == n and q["scale"] == 1, q["changes"]
    await browsers.js(d, "window.deeproom.continuous(false)")


async def test_quality_full_pins_full_resolution(relay, browsers: Browsers) -> None:
    d = await open_room(relay, browsers, "q-full", SMALL, quality="full")
    await browsers.js(
        d, "window.deeproom.quality.burn(arguments[0]); window.deeproom.continuous(true)", BURN * 2
    )
    await asyncio.sleep(4)
    q = await quality(browsers, d)
    await browsers.js(d, "window.deeproom.continuous(false)")
    assert q["lastCostMs"] > 100, q  # the frames were slow ...
    assert q["mode"] == "full" and q["scale"] == 1 and q["changes"] == [], (
        q
    )  # ... and nothing changed
    assert q["canvas"] == list(SMALL) and q["pixelRatio"] == 1 and q["label"] == "Res 100% full"


def title_strokes(
    shot: np.ndarray, boxes: dict[str, tuple[int, int, int, int]]
) -> tuple[int, float]:
    """Glyph strokes of the panel titles: along each title's box, columns with a bright (text)
    pixel form runs; runs that blur into each other count as one. And the median contrast
    (99th percentile luminance minus the box's median)."""
    runs, contrast = 0, []
    for left, top, right, bottom in boxes.values():
        lum = shot[top:bottom, left:right].astype(float) @ np.array([0.299, 0.587, 0.114])
        ink = (lum > 128).any(axis=0)
        runs += int(ink[0]) + int(np.sum(ink[1:] & ~ink[:-1]))
        contrast.append(float(np.percentile(lum, 99) - np.median(lum)))
    return runs, float(np.median(contrast))


async def test_panel_titles_stay_legible_at_the_floor(relay, browsers: Browsers) -> None:
    d = await open_room(relay, browsers, "q-text", (1280, 720), quality="full")
    floor = await browsers.js(d, "return window.deeproomWire.SCALES.at(-1)")
    top = SIZE[1] / 2 + 0.06  # the title sprite's centre above the panel's, 0.07 m high
    boxes = {}
    for pid in KINDS:
        left, up = await browsers.js(
            d, "return window.deeproom.screenPoint(...arguments)", pid, -SIZE[0] / 2, top + 0.035
        )
        right, down = await browsers.js(
            d, "return window.deeproom.screenPoint(...arguments)", pid, SIZE[0] / 2, top - 0.035
        )
        boxes[pid] = (int(left), int(up), int(right) + 1, int(down) + 1)
    measured = {}
    for scale in (1, floor, 0.5):
        await browsers.js(d, "window.deeproom.quality.pin(arguments[0])", scale)
        await eventually(lambda s=scale: _canvas_is(browsers, d, s), timeout=5)
        await asyncio.sleep(0.5)  # a frame or two after the resize
        measured[scale] = title_strokes(await browsers.screenshot(d), boxes)
    print("title strokes, contrast:", measured)
    full, at_floor, half = measured[1], measured[floor], measured[0.5]
    assert full[0] >= 4 * len(KINDS) and full[1] > 80, (
        measured
    )  # the titles are there at full resolution
    assert at_floor[0] >= 0.8 * full[0] and at_floor[1] >= 0.7 * full[1], measured
    # the measure tells blur from text: at half resolution the strokes run together
    assert half[0] < 0.7 * full[0], measured


async def _canvas_is(b: Browsers, d: Any, scale: float) -> bool:
    q = await quality(b, d)
    return bool(
        q["canvas"][0] == int(1280 * scale) and q["label"] == f"Res {round(scale * 100)}% pinned"
    )


async def test_the_decision_settles_without_oscillating(relay, browsers: Browsers) -> None:
    """RenderQuality fed frame costs that grow with pixels (the page's own class, in the page)."""
    d = await open_room(relay, browsers, "q-unit", SMALL)
    result = await browsers.js(
        d,
        """
        const { RenderQuality } = window.deeproomWire;
        function run(fixed, perPixel, noise, seconds) {
          const q = new RenderQuality('auto');
          let now = 0, seed = 1;
          const rand = () => { seed = (seed * 16807) % 2147483647; return seed / 2147483647; };
          while (now < seconds * 1000) {
            const cost = fixed + perPixel * q.scale ** 2 + noise * (rand() - 0.5);
            now += Math.max(cost, 16.7);
            q.record(Math.max(cost, 16.7), now);
          }
          return { scale: q.scale, changes: q.changes.map((c) => c[1]) };
        }
        return { fast: run(10, 25, 6, 60), slow: run(12, 60, 10, 60), noisy: run(10, 38, 30, 120),
                 hopeless: run(80, 40, 10, 60) };
    """,
    )
    assert result["fast"] == {"scale": 1, "changes": []}  # 35 ms frames: nothing to do
    assert result["slow"]["scale"] == 0.7 and result["slow"]["changes"] == [
        0.7
    ]  # 72 ms → 41 ms, stays
    assert len(result["noisy"]["changes"]) <= 3, result[
        "noisy"
    ]  # 48 ms ± 15 at 1: at most a drop and a raise or two
    assert result["hopeless"] == {"scale": 0.7, "changes": [0.7]}  # the floor, however slow
    refused = await browsers.js(
        d,
        """
        try { new window.deeproomWire.RenderQuality('low'); return null; } catch (e) { return e.message; }""",
    )
    assert refused == 'quality must be one of auto, full, got "low"'
