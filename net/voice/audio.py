"""Audio frames for voice: sources (tone, array/WAV file, silence), a recorder, and analysis.

Everything here runs at 48 kHz in 20 ms frames of 16-bit mono, the shape Opus and
aiortc like best. Sources pace themselves like a microphone: a frame is handed out
when its last sample would have been captured, so timing measured from them
(mouth-to-ear) means what it would mean with a real microphone.
"""

from __future__ import annotations

import asyncio
import fractions
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from deeproom.net.voice.errors import VoiceError

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


def make_frame(samples: np.ndarray, pts: int) -> AudioFrame:
    """A mono s16 AudioFrame from float samples in [-1, 1] (clipped)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


def frame_to_mono(frame: AudioFrame) -> np.ndarray:
    """Float32 mono samples in [-1, 1] from any s16/flt frame (stereo is averaged)."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    data = arr.reshape(channels, -1) if frame.format.is_planar else arr.reshape(-1, channels).T
    out = data.astype(np.float32) / 32768.0 if data.dtype == np.int16 else data.astype(np.float32)
    return out.mean(axis=0) if channels > 1 else out[0]


class PacedTrack(MediaStreamTrack):
    """An audio track that hands out 20 ms frames in real time, like a microphone.

    Subclasses say what the samples are (`samples(start, n)`). `on_frame(t, start)` is
    called with the wall-clock time (time.perf_counter) at which each frame is handed
    out and the index of its first sample.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._t0: float | None = None
        self._next = 0
        self.on_frame: Callable[[float, int], None] | None = None

    def samples(self, start: int, n: int) -> np.ndarray:
        raise NotImplementedError

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.perf_counter()
        start = self._next
        self._next += FRAME_SAMPLES
        due = self._t0 + self._next / SAMPLE_RATE  # the frame's last sample is "captured"
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        now = time.perf_counter()
        if self.on_frame is not None:
            self.on_frame(now, start)
        return make_frame(self.samples(start, FRAME_SAMPLES), start)

    def sample_time(self, index: int) -> float:
        """Wall-clock time (perf_counter) at which sample `index` was "spoken"."""
        if self._t0 is None:
            raise VoiceError("the track has not started yet")
        return self._t0 + index / SAMPLE_RATE


class ToneTrack(PacedTrack):
    """A sine tone (default 440 Hz) starting after `onset_s` seconds of silence.

    With `burst_s` and `period_s` it is a train of bursts: on for `burst_s` at the
    start of every `period_s` (the onsets are `onset_samples(...)`), for latency runs.
    """

    def __init__(
        self,
        hz: float = 440.0,
        amplitude: float = 0.5,
        onset_s: float = 0.0,
        burst_s: float | None = None,
        period_s: float | None = None,
    ) -> None:
        super().__init__()
        if not 20.0 <= hz <= SAMPLE_RATE / 2:
            raise VoiceError(f"tone frequency must be in [20, {SAMPLE_RATE // 2}] Hz; got {hz}")
        if (burst_s is None) != (period_s is None) or (period_s is not None and not 0 < burst_s < period_s):  # type: ignore[operator]
            raise VoiceError("a burst train needs 0 < burst_s < period_s (or neither)")
        self.hz = hz
        self.amplitude = amplitude
        self.onset_sample = round(onset_s * SAMPLE_RATE)
        self.burst = None if burst_s is None else round(burst_s * SAMPLE_RATE)
        self.period = None if period_s is None else round(period_s * SAMPLE_RATE)

    def onset_samples(self, upto: int) -> list[int]:
        """Indices of the samples where the tone (or each burst) starts, below `upto`."""
        if self.period is None:
            return [self.onset_sample] if self.onset_sample < upto else []
        return list(range(self.onset_sample, upto, self.period))

    def samples(self, start: int, n: int) -> np.ndarray:
        idx = np.arange(start, start + n)
        out = self.amplitude * np.sin(2 * np.pi * self.hz * idx / SAMPLE_RATE)
        on = idx >= self.onset_sample
        if self.period is not None and self.burst is not None:
            on &= (idx - self.onset_sample) % self.period < self.burst
        out[~on] = 0.0
        return out.astype(np.float32)

    @property
    def samples_sent(self) -> int:
        return self._next


class ArrayTrack(PacedTrack):
    """Plays a float array (mono, 48 kHz), then silence (or loops)."""

    def __init__(self, samples: np.ndarray, loop: bool = False) -> None:
        super().__init__()
        self._data = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._looping = loop

    def samples(self, start: int, n: int) -> np.ndarray:
        if self._looping and len(self._data):
            idx = np.arange(start, start + n) % len(self._data)
            return self._data[idx]
        out = np.zeros(n, dtype=np.float32)
        chunk = self._data[start : start + n]
        out[: len(chunk)] = chunk
        return out


class SilenceTrack(ArrayTrack):
    def __init__(self) -> None:
        super().__init__(np.zeros(0, dtype=np.float32))


def read_wav(path: str | Path) -> np.ndarray:
    """Mono float32 samples of a 16-bit PCM WAV file at 48 kHz (stereo is averaged)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise VoiceError(f"{path}: only 16-bit PCM WAV is supported; got {8 * w.getsampwidth()}-bit")
        if w.getframerate() != SAMPLE_RATE:
            raise VoiceError(f"{path}: sample rate must be {SAMPLE_RATE} Hz; got {w.getframerate()}")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        ch = w.getnchannels()
    return (data.reshape(-1, ch).mean(axis=1) / 32768.0).astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray) -> None:
    """Write float samples ([n] mono or [n, 2] stereo) as 16-bit PCM at 48 kHz."""
    arr = np.asarray(samples, dtype=np.float32)
    ch = 1 if arr.ndim == 1 else arr.shape[1]
    pcm = (np.clip(arr, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


class FrameRecorder:
    """Collects what a remote track delivers: samples and the wall time each frame arrived."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.arrivals: list[float] = []
        self.frames = 0

    def add(self, samples: np.ndarray, arrived: float) -> None:
        self.chunks.append(samples)
        self.arrivals.append(arrived)
        self.frames += 1

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)

    def onset_time(self, threshold: float = 0.05) -> float | None:
        """Wall time at which the first loud sample left the receiver's decoder.

        Frames arrive in 20 ms bursts; a sample at offset k in a frame that arrived at
        t is played no earlier than t + k / rate, which is what is returned.
        """
        for chunk, t in zip(self.chunks, self.arrivals, strict=True):
            loud = np.flatnonzero(np.abs(chunk) > threshold)
            if len(loud):
                return t + loud[0] / SAMPLE_RATE
        return None

    def clear(self) -> None:
        self.chunks.clear()
        self.arrivals.clear()


def dominant_hz(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """The frequency with the most energy (Hann-windowed FFT, parabolic peak refinement)."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if len(x) < 64:
        raise VoiceError(f"need at least 64 samples to find a frequency; got {len(x)}")
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spec[0] = 0.0
    k = int(np.argmax(spec))
    if 0 < k < len(spec) - 1:
        a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        k_f = k + (0.5 * (a - c) / denom if denom != 0 else 0.0)
    else:
        k_f = float(k)
    return float(k_f * rate / len(x))


def rms(samples: np.ndarray) -> float:
    x = np.asarray(samples, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0
