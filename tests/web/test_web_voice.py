"""Voice between the browser's own WebRTC and aiortc peers (the Python voice), through
the relay's `signal` events: the page hears a 440 Hz tone from a Python peer (a WebAudio
analyser in the page), and a Python peer hears the browser (Chromium's fake capture
device playing a 660 Hz file)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.net import RoomClient
from deeproom.net.voice import ToneTrack, VoiceConfig
from deeproom.net.voice.audio import SAMPLE_RATE, dominant_hz, rms, write_wav
from deeproom.net.voice.room import RoomVoice

from .conftest import Browsers, eventually, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def fake_mic(path: Path, hz: float = 660.0, seconds: float = 4.0) -> tuple[str, ...]:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    write_wav(path, (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32))
    return ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={path}")


@contextlib.asynccontextmanager
async def python_voice(url: str, room: str, pid: str, source: Any) -> AsyncIterator[RoomVoice]:
    async with RoomClient(url, room=room, name=pid, participant_id=pid, participant_key="k" * 20) as c, \
            RoomVoice(c, source, VoiceConfig(record=True)) as v:
        yield v


@pytest.mark.parametrize("python_id", ["aa-python", "zz-python"])  # the Python peer offers / the browser offers
async def test_browser_hears_a_python_tone_and_python_hears_the_browser(relay, browsers: Browsers, tmp_path: Path,
                                                                        python_id: str) -> None:
    async with python_voice(relay.url, "vox", python_id, ToneTrack(440.0, amplitude=0.5)) as py:
        d = await browsers.open(page_url(relay.url, "vox", id="mm-browser", voice="1"), extra=fake_mic(tmp_path / "mic.wav"))

        async def tone() -> dict | None:
            p = await browsers.js(d, f"return window.deeproom.peak({python_id!r})")
            return p if p and abs(p["hz"] - 440) < 15 and p["db"] > -60 else None

        peak = await eventually(tone, timeout=30, interval=0.2)
        assert abs(peak["hz"] - 440) < 15

        def browser_heard() -> np.ndarray:
            rec = py.session.recorders.get("mm-browser")
            return np.zeros(0, np.float32) if rec is None else rec.samples[-SAMPLE_RATE // 2:]

        await eventually(lambda: rms(browser_heard()) > 0.05, timeout=30, interval=0.2)
        assert abs(dominant_hz(browser_heard()) - 660) < 15


async def test_browser_without_a_microphone_sends_silence_and_still_hears(relay, browsers: Browsers) -> None:
    async with python_voice(relay.url, "vox2", "aa-python", ToneTrack(440.0, amplitude=0.5)) as py:
        d = await browsers.open(page_url(relay.url, "vox2", id="mm-browser", voice="1"))

        async def tone() -> bool:
            p = await browsers.js(d, "return window.deeproom.peak('aa-python')")
            return bool(p and abs(p["hz"] - 440) < 15 and p["db"] > -60)

        await eventually(tone, timeout=30, interval=0.2)
        state = await browsers.state(d)
        assert state["voice"]["source"].startswith("silence")
        await eventually(lambda: "mm-browser" in py.session.recorders, timeout=20)
        assert py.session.restarts <= 1  # silence keeps the link alive
