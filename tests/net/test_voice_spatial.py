"""Spatial voice: real peers through the real relay, mixed at the speaker's pose, rendered to a WAV file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.voice import SilenceTrack, ToneTrack, VoiceConfig, read_wav, write_wav
from deeproom.net.voice.audio import SAMPLE_RATE
from deeproom.net.voice.room import RoomVoice
from deeproom.net.voice.spatial import (
    MAX_ITD_SAMPLES,
    DistanceModel,
    SpatialMixer,
    render_live,
    stereo_gains,
)
from deeproom.presence import Pose

from .conftest import eventually, voiced, voiced_fraction

pytestmark = pytest.mark.timeout(120)


def db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(x.astype(np.float64) ** 2)) + 1e-20)


def yaw(deg: float) -> tuple[float, float, float, float]:
    """Rotation about y (up) by `deg` degrees, as (w, x, y, z)."""
    r = math.radians(deg) / 2
    return (math.cos(r), 0.0, math.sin(r), 0.0)


async def test_a_speaker_on_the_left_is_louder_on_the_left_channel(relay: EmbeddedRelay, tmp_path: Path) -> None:
    cfg = VoiceConfig(record=True)
    async with (
        RoomClient(relay.url, room="sp", name="A") as ca,
        RoomClient(relay.url, room="sp", name="B") as cb,
        RoomVoice(ca, ToneTrack(440.0, 0.4), cfg) as a,
        RoomVoice(cb, SilenceTrack(), cfg) as b,
    ):
        # A stands 3 m to B's left (Ursina: x right, z forward); poses travel through the relay.
        a.publish_pose(Pose(head_position=(-3.0, 1.6, 0.0)))
        b.publish_pose(Pose(head_position=(0.0, 1.6, 0.0)))
        pid = ca.participant_id
        await eventually(lambda: pid in cb.poses and cb.poses[pid].head_position[0] == -3.0, timeout=10)
        await eventually(lambda: pid in b.session.recorders and b.session.recorders[pid].frames > 25, timeout=20)
        await render_live(b.mixer, 0.2)
        left_file = tmp_path / "left.wav"
        write_wav(left_file, await render_live(b.mixer, 0.6))

        # now A walks round to B's right; the mix follows the pose
        a.publish_pose(Pose(head_position=(3.0, 1.6, 0.0)))
        await eventually(lambda: cb.poses[pid].head_position[0] == 3.0, timeout=10)
        await render_live(b.mixer, 0.1)
        right_file = tmp_path / "right.wav"
        write_wav(right_file, await render_live(b.mixer, 0.6))

    with __import__("wave").open(str(left_file)) as w:
        assert w.getnchannels() == 2
    # the blocks that carried the voice (on a loaded host a late frame renders as silence)
    assert voiced_fraction(read_stereo(left_file)) > 0.5 and voiced_fraction(read_stereo(right_file)) > 0.5
    left = voiced(read_stereo(left_file))
    right = voiced(read_stereo(right_file))
    assert db(left[:, 0]) - db(left[:, 1]) > 10.0
    assert db(right[:, 1]) - db(right[:, 0]) > 10.0
    assert abs(float(np.sqrt(np.mean(left**2))) - float(np.sqrt(np.mean(right**2)))) < 0.05  # same distance


def read_stereo(path: Path) -> np.ndarray:
    import wave

    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return data.reshape(-1, 2).astype(np.float32) / 32768.0


# -- the mixer's geometry, with exact expectations -------------------------------------------


def test_equal_power_panning_and_direction() -> None:
    m = DistanceModel()
    l_, r_, itd = stereo_gains((0, 0, 0), (1, 0, 0, 0), (0, 0, 1), m)  # straight ahead
    assert l_ == pytest.approx(r_) and l_**2 + r_**2 == pytest.approx(1.0) and itd == 0
    l_, r_, itd = stereo_gains((0, 0, 0), (1, 0, 0, 0), (-1, 0, 0), m)  # hard left
    assert l_ == pytest.approx(1.0) and r_ == pytest.approx(0.0, abs=1e-9) and itd == -MAX_ITD_SAMPLES
    l_, r_, itd = stereo_gains((0, 0, 0), (1, 0, 0, 0), (1, 0, 0), m)
    assert r_ == pytest.approx(1.0) and itd == MAX_ITD_SAMPLES
    # listener turned 90° to the right (yaw +90 about y): what was ahead (+z) is now on the left
    l_, r_, _ = stereo_gains((0, 0, 0), yaw(90), (0, 0, 1), m)
    assert l_ == pytest.approx(1.0, abs=1e-6) and r_ == pytest.approx(0.0, abs=1e-6)


def test_distance_attenuation_is_inverse_clamped() -> None:
    m = DistanceModel(reference_m=1.0, max_m=30.0, rolloff=1.0)
    assert m.gain(0.2) == 1.0
    assert m.gain(2.0) == pytest.approx(0.5)
    assert m.gain(4.0) == pytest.approx(0.25)
    assert m.gain(100.0) == pytest.approx(1 / 30)


def test_mixer_delays_the_far_ear_and_moves_without_clicks() -> None:
    mix = SpatialMixer(jitter_ms=0)
    click = np.zeros(960, np.float32)
    click[100] = 1.0
    mix.set_position("s", (-1.0, 1.6, 0.0))  # hard left of the default listener at (0, 1.6, 0)
    mix.push("s", click)
    out = mix.render(960)
    assert int(np.argmax(np.abs(out[:, 0]))) == 100
    assert float(np.abs(out[:, 1]).max()) < 1e-6  # equal power: nothing on the right
    # half left: the right ear hears it later by the interaural delay
    mix2 = SpatialMixer(jitter_ms=0)
    mix2.set_position("s", (-1.0, 1.6, 1.0))
    mix2.push("s", click)
    out2 = mix2.render(960)
    lag = int(np.argmax(np.abs(out2[:, 1]))) - int(np.argmax(np.abs(out2[:, 0])))
    assert lag == round(MAX_ITD_SAMPLES * math.sqrt(0.5))
    # a steady tone while the source jumps from left to right: gains ramp, no step
    mix3 = SpatialMixer(jitter_ms=0)
    tone = np.full(960 * 2, 0.5, np.float32)
    mix3.set_position("s", (-2.0, 1.6, 0.0))
    mix3.push("s", tone)
    mix3.render(960)
    mix3.set_position("s", (2.0, 1.6, 0.0))
    block = mix3.render(960)
    assert float(np.abs(np.diff(block[MAX_ITD_SAMPLES:, 0])).max()) < 0.01


def test_mixer_rejects_a_bad_volume_and_round_trips_wav(tmp_path: Path) -> None:
    from deeproom.net.voice import VoiceError

    with pytest.raises(VoiceError, match="volume must be in"):
        SpatialMixer().set_volume("s", 9.0)
    x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(4800) / SAMPLE_RATE)).astype(np.float32)
    write_wav(tmp_path / "t.wav", x)
    back = read_wav(tmp_path / "t.wav")
    assert np.abs(back - x).max() < 1e-4
