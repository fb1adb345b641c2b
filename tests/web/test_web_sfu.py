"""The page's voice through a real Janus SFU, inside a network namespace of its own
(Janus never gathers on loopback; see tests/net/test_voice_sfu.py). The relay announces
the SFU in its join ack; the Python host's voice creates the SFU room and hands the page
its access; the page hears the host's 440 Hz tone through Janus, and, holding
push-to-talk (a member in an SFU room), is heard by the host."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.voice import ToneTrack, VoiceConfig
from deeproom.net.voice.audio import SAMPLE_RATE, dominant_hz, rms, write_wav
from deeproom.net.voice.janus import JanusServer, find_janus
from deeproom.net.voice.netns import Namespace, available
from deeproom.net.voice.room import RoomVoice

from .conftest import Browsers, eventually, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_browser_voice_through_the_sfu(tmp_path: Path) -> None:
    why = available()
    if why:
        pytest.skip(f"SFU tests need network namespaces: {why}")
    if find_janus() is None:
        pytest.fail("janus is not installed (it is listed in tools/system-packages.txt)")
    mic = tmp_path / "mic.wav"
    t = np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE
    write_wav(mic, (0.5 * np.sin(2 * np.pi * 660.0 * t)).astype(np.float32))

    async def scenario(ns: Namespace) -> None:
        browsers = Browsers()  # started from this thread: Chromium lives in the namespace too
        try:
            async with JanusServer(ns.address, namespace=ns) as janus, \
                    EmbeddedRelay(host="127.0.0.1", port=0, data_dir=tmp_path / "relay", sfu_url=janus.url) as relay, \
                    RoomClient(relay.url, room="sfu", name="Teacher", participant_id="aa-teacher",
                               participant_key="k" * 20) as host:
                await host.apply({"op": "set_voice", "mode": "sfu"})
                cfg = VoiceConfig(record=True, addresses=(ns.address,))
                async with RoomVoice(host, ToneTrack(440.0, 0.4), cfg, sfu_url=janus.url) as teacher:
                    d = await browsers.open(page_url(relay.url, "sfu", id="mm-browser", voice="1"), extra=(
                        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                        f"--use-file-for-fake-audio-capture={mic}"))

                    async def through_sfu() -> dict | None:
                        s = (await browsers.state(d)).get("voice") or {}
                        sfu = s.get("sfu")
                        return s if sfu and "aa-teacher" in sfu["feeds"] else None

                    s = await eventually(through_sfu, timeout=60, interval=0.2)
                    assert s["sfu"]["url"] == janus.url and not s["links"]  # no direct links
                    assert s["pushToTalk"] and not s["sending"]  # a member in an SFU room: push-to-talk

                    async def tone() -> bool:
                        p = await browsers.js(d, "return window.deeproom.peak('aa-teacher')")
                        return bool(p and p["db"] is not None and p["db"] > -60 and abs(p["hz"] - 440) < 15)

                    await eventually(tone, timeout=30, interval=0.2)
                    await browsers.js(d, "window.deeproom.page.voice.pressToTalk(true)")

                    def heard() -> np.ndarray:
                        rec = teacher.session.recorders.get("mm-browser")
                        return np.zeros(0, np.float32) if rec is None else rec.samples[-SAMPLE_RATE // 2:]

                    await eventually(lambda: rms(heard()) > 0.05, timeout=40, interval=0.2)
                    assert abs(dominant_hz(heard()) - 660) < 15
                    assert teacher.session.mode == "sfu"
        finally:
            browsers.close()

    with Namespace.create() as ns:
        ns.run_inside(lambda: scenario(ns), timeout=220)
