"""Spatial voice: each voice placed at its speaker's avatar, mixed to stereo in numpy.

No HRTF: direction is equal-power panning (interaural level difference) plus a
small interaural time difference (the far ear hears up to ~0.6 ms later), and
distance follows OpenAL's inverse-distance-clamped model, so a near voice is
loud and a far one quiet. Gains move smoothly from one 20 ms block to the next
so moving avatars do not click. Coordinates are Ursina's: metres, y up, x right,
z forward; rotations are unit quaternions (w, x, y, z).

The mixer is fed decoded mono frames per speaker (from any thread) and rendered
by whoever plays audio: a sounddevice output callback, or a test that renders
to an array or a WAV file.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from deeproom.net.voice.audio import SAMPLE_RATE

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]

MAX_ITD_SAMPLES = 29  # ~0.6 ms at 48 kHz: head width / speed of sound


@dataclass(frozen=True, slots=True)
class DistanceModel:
    """OpenAL-style inverse distance, clamped."""

    reference_m: float = 1.0
    """Distance at which a voice has its full volume."""
    max_m: float = 30.0
    """Beyond this a voice gets no quieter."""
    rolloff: float = 1.0
    """How fast it gets quieter (1 = inverse distance)."""

    def gain(self, distance: float) -> float:
        d = min(max(distance, self.reference_m), self.max_m)
        return self.reference_m / (self.reference_m + self.rolloff * (d - self.reference_m))


def rotate(q: Quat, v: Vec3) -> Vec3:
    """Rotate vector v by unit quaternion q = (w, x, y, z)."""
    w, x, y, z = q
    vx, vy, vz = v
    # t = 2 * cross(q.xyz, v); v' = v + w t + cross(q.xyz, t)
    tx = 2 * (y * vz - z * vy)
    ty = 2 * (z * vx - x * vz)
    tz = 2 * (x * vy - y * vx)
    return (
        vx + w * tx + (y * tz - z * ty),
        vy + w * ty + (z * tx - x * tz),
        vz + w * tz + (x * ty - y * tx),
    )


def conjugate(q: Quat) -> Quat:
    return (q[0], -q[1], -q[2], -q[3])


def stereo_gains(
    listener_pos: Vec3, listener_rot: Quat, source_pos: Vec3, model: DistanceModel
) -> tuple[float, float, int]:
    """(left gain, right gain, far-ear delay in samples: >0 delays the left ear, <0 the right)."""
    rel = (source_pos[0] - listener_pos[0], source_pos[1] - listener_pos[1], source_pos[2] - listener_pos[2])
    local = rotate(conjugate(listener_rot), rel)
    dist = math.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
    g = model.gain(dist)
    if dist < 1e-6:
        return g * math.sqrt(0.5), g * math.sqrt(0.5), 0
    pan = local[0] / dist  # sine of the azimuth: -1 hard left, +1 hard right
    angle = (pan + 1.0) * math.pi / 4.0  # equal power: cos^2 + sin^2 = 1
    itd = round(MAX_ITD_SAMPLES * pan)
    return g * math.cos(angle), g * math.sin(angle), itd


class _Voice:
    def __init__(self) -> None:
        self.queue: deque[np.ndarray] = deque()
        self.queued = 0
        self.position: Vec3 = (0.0, 1.6, 0.0)
        self.volume = 1.0
        self.gains: tuple[float, float, int] | None = None
        self.tail = np.zeros(MAX_ITD_SAMPLES, dtype=np.float32)
        self.started = False


class SpatialMixer:
    """Mixes every remote voice to stereo for one listener. Thread-safe."""

    def __init__(self, distance: DistanceModel | None = None, jitter_ms: float = 20.0, max_buffer_ms: float = 200.0) -> None:
        self.distance = distance or DistanceModel()
        # aiortc already holds 4 frames (80 ms) in its own jitter buffer before decoding;
        # one more block here is enough to ride out scheduling jitter on our side.
        self._jitter = int(SAMPLE_RATE * jitter_ms / 1000)
        self._max = int(SAMPLE_RATE * max_buffer_ms / 1000)
        self._voices: dict[str, _Voice] = {}
        self._lock = threading.Lock()
        self.listener_pos: Vec3 = (0.0, 1.6, 0.0)
        self.listener_rot: Quat = (1.0, 0.0, 0.0, 0.0)
        self.master = 1.0
        self.underruns = 0
        self.dropped = 0  # samples dropped to keep latency bounded

    # -- what arrives ---------------------------------------------------------
    def push(self, speaker: str, samples: np.ndarray) -> None:
        """Queue decoded mono samples from `speaker` (drops the oldest past the buffer cap)."""
        with self._lock:
            v = self._voices.setdefault(speaker, _Voice())
            v.queue.append(np.asarray(samples, dtype=np.float32))
            v.queued += len(samples)
            while v.queued > self._max and len(v.queue) > 1:
                v.queued -= len(v.queue.popleft())

    def remove(self, speaker: str) -> None:
        with self._lock:
            self._voices.pop(speaker, None)

    # -- where everyone is ------------------------------------------------------
    def set_listener(self, position: Vec3, rotation: Quat = (1.0, 0.0, 0.0, 0.0)) -> None:
        with self._lock:
            self.listener_pos, self.listener_rot = tuple(position), tuple(rotation)  # type: ignore[assignment]

    def set_position(self, speaker: str, position: Vec3) -> None:
        with self._lock:
            self._voices.setdefault(speaker, _Voice()).position = tuple(position)  # type: ignore[assignment]

    def set_volume(self, speaker: str, volume: float) -> None:
        """Per-person volume, 0 (silent) to 4 (four times louder)."""
        if not 0.0 <= volume <= 4.0:
            from deeproom.net.voice.errors import VoiceError

            raise VoiceError(f"volume must be in [0, 4]; got {volume}")
        with self._lock:
            self._voices.setdefault(speaker, _Voice()).volume = volume

    def speakers(self) -> list[str]:
        with self._lock:
            return list(self._voices)

    # -- rendering --------------------------------------------------------------
    def _take(self, v: _Voice, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        if not v.started:
            # Wait for a little buffer before starting, so network jitter does not gap.
            if v.queued < self._jitter:
                return out
            v.started = True
        excess = v.queued - (self._jitter + n)
        if excess > 2 * n:
            # More queued than the jitter buffer needs (a burst after a stall, or nobody
            # pulled for a while): drop the oldest so latency does not stay high for good.
            self.dropped += excess
            self._discard(v, excess)
        filled = 0
        while filled < n and v.queue:
            head = v.queue[0]
            k = min(n - filled, len(head))
            out[filled : filled + k] = head[:k]
            filled += k
            if k == len(head):
                v.queue.popleft()
            else:
                v.queue[0] = head[k:]
            v.queued -= k
        if filled < n:
            self.underruns += 1
            v.started = False  # rebuffer
        return out

    @staticmethod
    def _discard(v: _Voice, k: int) -> None:
        while k > 0 and v.queue:
            head = v.queue[0]
            if len(head) <= k:
                v.queue.popleft()
                v.queued -= len(head)
                k -= len(head)
            else:
                v.queue[0] = head[k:]
                v.queued -= k
                k = 0

    def render(self, n: int) -> np.ndarray:
        """The next n stereo samples, float32 [n, 2]."""
        out = np.zeros((n, 2), dtype=np.float32)
        ramp = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
        with self._lock:
            for v in self._voices.values():
                mono = self._take(v, n)
                new = stereo_gains(self.listener_pos, self.listener_rot, v.position, self.distance)
                old = v.gains or new
                v.gains = new
                # interaural delay: prepend the last samples of the previous block
                ext = np.concatenate([v.tail, mono])
                v.tail = ext[-MAX_ITD_SAMPLES:].copy()
                itd = new[2]
                base = MAX_ITD_SAMPLES
                dl, dr = max(0, itd), max(0, -itd)  # the ear farther from the voice hears it later
                left = ext[base - dl : base - dl + n]
                right = ext[base - dr : base - dr + n]
                gl = (old[0] + (new[0] - old[0]) * ramp) * v.volume
                gr = (old[1] + (new[1] - old[1]) * ramp) * v.volume
                out[:, 0] += left * gl
                out[:, 1] += right * gr
        out *= self.master
        np.clip(out, -1.0, 1.0, out=out)
        return out


async def render_live(mixer: SpatialMixer, seconds: float, block: int = 960) -> np.ndarray:
    """Render the mixer in real time for `seconds` (as a sound card would pull it): [n, 2]."""
    import asyncio
    import time

    blocks = max(1, round(seconds * SAMPLE_RATE / block))
    out = np.zeros((blocks * block, 2), dtype=np.float32)
    t0 = time.perf_counter()
    for i in range(blocks):
        due = t0 + (i + 1) * block / SAMPLE_RATE
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        out[i * block : (i + 1) * block] = mixer.render(block)
    return out
