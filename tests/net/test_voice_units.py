"""Voice's pure parts: signal parsing, voice activity, frequency analysis, host-address choice."""

from __future__ import annotations

import asyncio

import aioice.ice
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deeproom.net.voice import (
    MemorySignalHub,
    SignalError,
    SilenceTrack,
    ToneTrack,
    VoiceConfig,
    VoiceError,
    VoiceSession,
    VoiceSignal,
    dominant_hz,
    host_addresses,
)
from deeproom.net.voice.audio import SAMPLE_RATE
from deeproom.net.voice.vad import VoiceActivity

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"


def test_signals_round_trip() -> None:
    for msg in (
        VoiceSignal("offer", 7, SDP),
        VoiceSignal("answer", 7, SDP),
        VoiceSignal("hello", 0),
        VoiceSignal("bye", 3),
        VoiceSignal("sfu", 0, sfu={"url": "http://10.213.0.1:8088/janus", "room": 5, "pin": "x"}),
        VoiceSignal("sfu", 0, sfu=None),
    ):
        assert VoiceSignal.from_dict(msg.to_dict()) == msg


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ("nope", "must be an object"),
        ({"voice": "shout", "link": 1}, "kind must be one of"),
        ({"voice": "offer", "link": -1, "sdp": SDP}, "link must be a whole number"),
        ({"voice": "offer", "link": True, "sdp": SDP}, "link must be a whole number"),
        ({"voice": "offer", "link": 1}, "needs an SDP"),
        ({"voice": "answer", "link": 1, "sdp": "x" * 10}, "needs an SDP"),
        ({"voice": "offer", "link": 1, "sdp": "v=0" + "x" * 70000}, "at most"),
        ({"voice": "hello", "link": 0, "sdp": SDP}, "carries no SDP"),
        ({"voice": "sfu", "link": 0, "sfu": {"url": "file:///etc/passwd", "room": 1, "pin": ""}}, "http"),
        ({"voice": "sfu", "link": 0, "sfu": {"url": "http://h/janus", "room": 0, "pin": ""}}, "positive"),
    ],
)
def test_bad_signals_are_refused_with_a_reason(payload: object, words: str) -> None:
    with pytest.raises(SignalError, match=words):
        VoiceSignal.from_dict(payload)


@given(st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=20), st.booleans())))
def test_arbitrary_json_never_crashes_the_parser(payload: dict[str, object]) -> None:
    try:
        VoiceSignal.from_dict(payload)
    except SignalError:
        pass


async def test_a_bad_signal_is_ignored_and_the_session_keeps_working() -> None:
    hub = MemorySignalHub()
    a_end, b_end = hub.endpoint("a"), hub.endpoint("b")
    async with VoiceSession(b_end, SilenceTrack(), VoiceConfig()) as b:
        await a_end.send("b", {"voice": "offer", "link": 1, "sdp": "garbage"})
        await a_end.send("b", {"voice": "offer", "link": 2, "sdp": "v=0\r\nnot really sdp"})
        await asyncio.sleep(0.2)
        assert not b._closed


def test_dominant_frequency_is_exact_for_tones() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for hz in (100.0, 440.0, 1234.5):
        assert dominant_hz(np.sin(2 * np.pi * hz * t)) == pytest.approx(hz, abs=0.5)
    with pytest.raises(VoiceError):
        dominant_hz(np.zeros(10))
    with pytest.raises(VoiceError, match="tone frequency"):
        ToneTrack(5.0)


def test_voice_activity_follows_speech_with_hangover() -> None:
    vad = VoiceActivity(hangover_frames=5)
    rng = np.random.default_rng(0)
    noise = lambda: 0.001 * rng.standard_normal(960)  # noqa: E731
    speech = lambda: 0.2 * rng.standard_normal(960)  # noqa: E731
    assert not any(vad.update(noise()) for _ in range(50))
    flags = [vad.update(speech()) for _ in range(10)]
    assert flags[0] is False and all(flags[2:])  # attack of two frames
    tail = [vad.update(noise()) for _ in range(10)]
    assert all(tail[:5]) and not tail[-1]


async def test_host_addresses_apply_only_inside_the_block() -> None:
    with host_addresses(["127.0.0.1"]):
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
    outside = aioice.ice.get_host_addresses(True, False)
    assert "127.0.0.1" not in outside  # aioice's own behaviour is left alone elsewhere
    with pytest.raises(VoiceError, match="IP address"), host_addresses(["localhost"]):
        pass


def test_missing_audio_devices_give_a_clear_message_not_a_crash() -> None:
    from deeproom.net.voice import SpatialMixer
    from deeproom.net.voice.devices import open_devices

    async def run() -> None:
        devices = open_devices(SpatialMixer())
        try:
            if devices.microphone is None:
                assert any("microphone" in m and "listen" in m for m in devices.messages)
            if devices.speakers is None:
                assert any("speakers" in m and "hear you" in m for m in devices.messages)
            assert len(devices.messages) == (devices.microphone is None) + (devices.speakers is None)
        finally:
            devices.close()

    asyncio.run(run())


def test_voice_modules_do_not_import_the_renderer() -> None:
    import subprocess
    import sys

    code = (
        "import sys, deeproom.net.voice, deeproom.net.voice.room, deeproom.net.voice.sfu, "
        "deeproom.net.voice.devices, deeproom.net.voice.bench, deeproom.net.voice_commands\n"
        "bad = [m for m in ('ursina', 'panda3d', 'xr', 'torch') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_an_unreachable_sfu_is_a_clear_error() -> None:
    import socket

    from deeproom.net.voice import SfuError
    from deeproom.net.voice.janus import JanusSession

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SfuError, match="unreachable"):
        async with JanusSession(f"http://127.0.0.1:{port}/janus"):
            pass


def test_voice_config_is_checked() -> None:
    with pytest.raises(VoiceError, match="mesh_limit"):
        VoiceConfig(mesh_limit=0)
    with pytest.raises(VoiceError, match="receive_buffer_frames"):
        VoiceConfig(receive_buffer_frames=40)


def test_receive_buffer_is_short_only_when_the_peer_must_be_on_this_machine() -> None:
    assert VoiceConfig().receive_prefetch == 2  # loopback only
    assert VoiceConfig(addresses=("10.213.0.1",)).receive_prefetch is None  # aiortc's own 4
    assert VoiceConfig(addresses=("10.213.0.1",), receive_buffer_frames=3).receive_prefetch == 3
