"""Speech played faster or slower at its own pitch: WSOLA time-scale modification, streamed.

    stretch = TimeStretch(source, start=48_000 * 30, speed=1.5)   # from 0:30, at 1.5x
    block = stretch.read(960)                                      # the next 20 ms to play

`source(first, n)` returns `n` mono float32 samples of the recording from sample index
`first` (silence outside what was recorded). Each output hop (10 ms) is a Hann-windowed
20 ms frame taken from the input near where the playhead is at that moment (advancing
`speed` hops of input per hop of output) and overlap-added; the frame is shifted within
±7.5 ms to the place whose waveform best continues the previous frame (the highest
cross-correlation with the previous frame's natural continuation, computed by FFT), so
voiced speech keeps its period and pitch instead of being resampled into a chipmunk or a
drone (Verhelst & Roelands, "An overlap-add technique based on waveform similarity
(WSOLA) for high quality time-scale modification of speech", ICASSP 1993).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

HOP = 480
"""Output samples per frame step (10 ms at 48 kHz); frames are two hops long."""
FRAME = 2 * HOP
SEEK = 360
"""How far (samples, each way) a frame may move to continue the previous one: 7.5 ms, half the
period of a 67 Hz voice."""
QUIET = 1e-6
"""Mean square below which the previous frame is silence: no search, the nominal place."""

_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)).astype(np.float32)
"""Periodic Hann: two of them a hop apart sum to one."""

Source = Callable[[int, int], np.ndarray]


class TimeStretch:
    """A source played at `speed` (0 < speed ≤ 8) from sample `start`, its pitch kept."""

    def __init__(self, source: Source, start: int, speed: float) -> None:
        if not 0 < speed <= 8:
            raise ValueError(f"speed must be in (0, 8]; got {speed:g}")
        self.source = source
        self.speed = float(speed)
        self.position = float(start)
        """The input sample the next frame is nominally taken from."""
        self._tail = np.zeros(HOP, np.float32)
        self._target: np.ndarray | None = None
        self._out = np.zeros(0, np.float32)

    def read(self, n: int) -> np.ndarray:
        """The next `n` output samples."""
        while len(self._out) < n:
            self._out = np.concatenate([self._out, self._hop()])
        out, self._out = self._out[:n], self._out[n:]
        return out

    def _hop(self) -> np.ndarray:
        p = round(self.position)
        x = np.asarray(self.source(p - SEEK, FRAME + 2 * SEEK), np.float32)
        k = SEEK
        t = self._target
        if t is not None and float(np.dot(t, t)) > QUIET * FRAME and float(np.dot(x, x)) > QUIET * len(x):
            k = best_offset(x, t)
        frame = x[k : k + FRAME] * _WINDOW
        out = self._tail + frame[:HOP]
        self._tail = frame[HOP:].copy()
        start = p - SEEK + k  # where the chosen frame began in the input
        # what would have followed the chosen frame one hop on: the next frame continues it
        nxt = start + HOP - (p - SEEK)
        if nxt + FRAME <= len(x):
            self._target = x[nxt : nxt + FRAME] * _WINDOW
        else:
            self._target = np.asarray(self.source(start + HOP, FRAME), np.float32) * _WINDOW
        self.position += HOP * self.speed
        return out


def best_offset(x: np.ndarray, target: np.ndarray) -> int:
    """The k in [0, len(x) - len(target)] where x[k:k+len(target)] correlates best with target."""
    lags = len(x) - len(target) + 1
    size = 1 << (len(x) + len(target) - 1).bit_length()
    spec = np.fft.rfft(x, size) * np.conj(np.fft.rfft(target, size))
    corr = np.fft.irfft(spec, size)[:lags]
    return int(np.argmax(corr))
