"""Voice for the render thread: BackgroundVoice on real BackgroundClients and a real relay."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from deeproom.net import BackgroundClient, EmbeddedRelay
from deeproom.net.voice import ToneTrack, dominant_hz
from deeproom.net.voice.background import BackgroundVoice
from deeproom.net.voice.devices import describe_devices
from deeproom.net.voice.errors import NoAudioDevice
from deeproom.presence import Pose

pytestmark = pytest.mark.timeout(120)


def hear_through(a: BackgroundClient, b: BackgroundClient) -> tuple[float, list[str]]:
    """What a scene thread does: start voice, publish poses, pull the mixer like a sound card."""
    va = BackgroundVoice(a, source=lambda: ToneTrack(440.0, 0.4), use_devices=False)
    vb = BackgroundVoice(b, use_devices=True)  # no devices here: a notice, listen-only
    try:
        va.ready.result(20)
        vb.ready.result(20)
        va.publish_pose(Pose(head_position=(-2.0, 1.6, 0.0)))
        vb.publish_pose(Pose(head_position=(0.0, 1.6, 0.0)))
        deadline = time.monotonic() + 30
        out: list[np.ndarray] = []
        while time.monotonic() < deadline and len(out) < 25:
            block = vb.mixer.render(960)
            if np.abs(block).max() > 0.05:
                out.append(block)
            time.sleep(0.02)
        notices = [item.data for item in b.drain() if item.kind == "voice"]
        assert len(out) >= 25, "B heard nothing"
        heard = np.concatenate(out)
        assert float(np.abs(heard[:, 0]).mean()) > float(np.abs(heard[:, 1]).mean())  # A is on B's left
        return dominant_hz(heard.mean(axis=1)), notices
    finally:
        va.close()
        vb.close()
        va.close()  # twice is safe


async def test_background_voice_carries_a_tone_and_reports_missing_devices(relay: EmbeddedRelay) -> None:
    def scene_thread() -> tuple[float, list[str]]:
        with BackgroundClient(relay.url, room="bgv", name="A") as a:
            a.wait_ready(20)  # the host first: the room exists before the second one joins
            with BackgroundClient(relay.url, room="bgv", name="B") as b:
                return hear_through(a, b)

    hz, notices = await asyncio.get_running_loop().run_in_executor(None, scene_thread)
    assert abs(hz - 440.0) < 5.0
    try:
        describe_devices()
    except NoAudioDevice:
        assert notices and all(n.startswith("voice: ") for n in notices)
