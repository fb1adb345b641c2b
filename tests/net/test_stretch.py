"""Time-stretched speech (net/voice/stretch.py): faster or slower, at its own pitch, without warble."""

from __future__ import annotations

import numpy as np
import pytest

from deeproom.net.voice import dominant_hz
from deeproom.net.voice.stretch import TimeStretch

SR = 48_000


def recording(*parts: tuple[float, float]) -> np.ndarray:
    """(hz, seconds) pieces one after another; hz 0 is silence."""
    return np.concatenate([0.5 * np.sin(2 * np.pi * hz * np.arange(int(s * SR)) / SR) for hz, s in parts]).astype(np.float32)


def source_of(sig: np.ndarray):  # type: ignore[no-untyped-def]
    def source(first: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        lo, hi = max(first, 0), min(first + n, len(sig))
        if hi > lo:
            out[lo - first : hi - first] = sig[lo:hi]
        return out

    return source


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0, 4.0])
def test_a_tone_keeps_its_pitch_and_the_change_comes_at_the_scaled_time(speed: float) -> None:
    sig = recording((440.0, 2.0), (660.0, 2.0))
    stretch = TimeStretch(source_of(sig), 0, speed)
    out = np.concatenate([stretch.read(960) for _ in range(round(4.0 / speed * 50))])
    assert len(out) == round(4.0 / speed * 50) * 960
    switch = 2.0 / speed  # seconds of output before the second tone
    first = out[int(0.2 * switch * SR) : int(0.8 * switch * SR)]
    second = out[int(1.2 * switch * SR) : int(1.8 * switch * SR)]
    assert abs(dominant_hz(first) - 440.0) < 440.0 * 0.015
    assert abs(dominant_hz(second) - 660.0) < 660.0 * 0.015
    # no warble: every 10 ms of the steady tone is as loud as the tone (0.5 / sqrt 2)
    blocks = first[: len(first) // 480 * 480].reshape(-1, 480)
    loud = np.sqrt((blocks**2).mean(axis=1))
    assert loud.min() > 0.354 * 0.9 and loud.max() < 0.354 * 1.1, (loud.min(), loud.max())


def test_silence_stays_silent_and_the_position_advances_by_speed() -> None:
    stretch = TimeStretch(source_of(recording((0.0, 1.0))), 1000, 2.0)
    assert not stretch.read(4800).any()
    assert stretch.position == pytest.approx(1000 + 4800 * 2.0)


def test_a_speed_outside_the_range_is_refused() -> None:
    for bad in (0.0, -1.0, 9.0):
        with pytest.raises(ValueError, match="speed"):
            TimeStretch(source_of(recording((0.0, 0.1))), 0, bad)
