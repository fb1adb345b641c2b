"""A speaker's own voice in a recorded room: Opus in Ogg segments, uploaded as blobs.

While the room's `recording` setting is on, each publishing participant encodes what it
sends (the same samples its connections get: silence while muted or not pressing the
talk key) as Opus in Ogg through PyAV, cuts a segment every `SEGMENT_S` seconds,
uploads it as a blob (the client's `put_blob`) and tells the relay with a
`voice_segment` event: the blob, how long the segment is, and how many seconds ago its
first sample was captured (the relay turns that into the recording's clock, so the
client's and the relay's clocks never need to agree). The relay checks all of it and
the recorder writes a voice-segment record (see `deeproom.net.recording.voice`).

Why the client: it costs each speaker one more Opus encode of audio it has anyway,
scales with speakers rather than listeners, needs no media on the relay's machine, and
works in a mesh and through the SFU alike (docs/recording.md).

A segment that carried no sound at all (muted the whole time) is not uploaded. When
recording turns off, the voice closes or the client leaves, the partial segment is
flushed and uploaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from deeproom.net.voice.audio import FRAME_SAMPLES, SAMPLE_RATE, TIME_BASE
from deeproom.net.voice.errors import VoiceError

log = logging.getLogger("deeproom.voice.segments")

SEGMENT_S = 10.0
"""Seconds of voice per segment."""
BITRATE = 32_000
"""Opus bits per second for recorded voice (speech is clear at 24-32 kb/s)."""
MAX_DECODED_S = 20.0
"""A segment that decodes to more audio than this is refused as damaged (a hostile blob)."""


class OggOpusWriter:
    """Encodes mono float samples at 48 kHz into one Ogg Opus file in memory."""

    def __init__(self, bitrate: int = BITRATE) -> None:
        self._buf = io.BytesIO()
        self._out: Any = av.open(self._buf, "w", format="ogg")
        stream: Any = self._out.add_stream("libopus", rate=SAMPLE_RATE)
        stream.layout = "mono"
        stream.bit_rate = bitrate
        self._stream = stream
        self.samples = 0
        self._pending = np.zeros(0, np.float32)
        self._closed = False

    def write(self, samples: np.ndarray) -> None:
        x = np.concatenate([self._pending, np.asarray(samples, np.float32).reshape(-1)])
        whole = len(x) // FRAME_SAMPLES * FRAME_SAMPLES
        for at in range(0, whole, FRAME_SAMPLES):
            self._encode(x[at : at + FRAME_SAMPLES])
        self._pending = x[whole:]

    def _encode(self, block: np.ndarray) -> None:
        pcm = (np.clip(block, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.samples
        frame.time_base = TIME_BASE
        self.samples += len(block)
        for packet in self._stream.encode(frame):
            self._out.mux(packet)

    def finish(self) -> bytes:
        """The Ogg file (a last partial frame is padded with silence)."""
        if self._closed:
            raise VoiceError("this segment is finished already")
        if len(self._pending):
            pad = np.zeros(FRAME_SAMPLES, np.float32)
            pad[: len(self._pending)] = self._pending
            self._encode(pad)
            self._pending = np.zeros(0, np.float32)
        for packet in self._stream.encode(None):
            self._out.mux(packet)
        self._out.close()
        self._closed = True
        return self._buf.getvalue()


def encode_ogg_opus(samples: np.ndarray, bitrate: int = BITRATE) -> bytes:
    """Mono float samples at 48 kHz as one Ogg Opus file."""
    w = OggOpusWriter(bitrate)
    w.write(samples)
    return w.finish()


def decode_ogg_opus(data: bytes, max_seconds: float = MAX_DECODED_S) -> np.ndarray:
    """Mono float32 samples at 48 kHz of an Ogg Opus file; VoiceError saying what is wrong when
    it is not one, is damaged, or holds more than `max_seconds` of audio."""
    if data[:4] != b"OggS":
        raise VoiceError(f"not an Ogg file (starts with {data[:4]!r})")
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), "r", format="ogg") as inp:
            if not inp.streams.audio:
                raise VoiceError("the Ogg file holds no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in inp.decode(audio=0):
                for out in resampler.resample(frame):
                    x = out.to_ndarray().reshape(-1).astype(np.float32)
                    chunks.append(x)
                    total += len(x)
                if total > limit:
                    raise VoiceError(f"it decodes to more than {max_seconds:g} s of audio")
    except (av.FFmpegError, ValueError, EOFError) as exc:
        raise VoiceError(f"it cannot be decoded as Ogg Opus ({exc})") from None
    if not chunks:
        raise VoiceError("it decodes to no audio")
    return np.concatenate(chunks)


@dataclass(frozen=True)
class SentSegment:
    """A segment this participant uploaded and announced (kept for tests and the benchmark)."""

    sha: str
    duration: float
    bytes: int


class SpeakerRecording:
    """This participant's own voice, cut into segments and uploaded while the room records.

    `tap(samples, captured)` is fed every 20 ms frame this participant sends (by
    `LocalVoice`), `set_on(on)` follows the room's setting; both run on the client's loop.
    `close()` flushes the partial segment and waits (bounded) for the uploads.
    """

    def __init__(self, client: Any, *, segment_s: float = SEGMENT_S, bitrate: int = BITRATE,
                 on_error: Callable[[str], None] | None = None) -> None:
        if not 0.5 <= segment_s <= 12.0:
            raise VoiceError(f"a voice segment lasts 0.5 to 12 s; got {segment_s:g}")
        self.client = client
        self.segment_s = segment_s
        self.bitrate = bitrate
        self.on_error = on_error
        self.on = False
        self.sent: list[SentSegment] = []
        self.errors: list[str] = []
        self.skipped_silent = 0
        self._writer: OggOpusWriter | None = None
        self._started = 0.0
        self._sound = False
        self._uploads: set[asyncio.Task[None]] = set()
        self._closed = False

    def set_on(self, on: bool) -> None:
        if on == self.on or self._closed:
            return
        self.on = on
        if not on:
            self.flush()

    def tap(self, samples: np.ndarray, captured: float) -> None:
        """One frame sent (`captured`: time.monotonic() when its last sample was captured)."""
        if not self.on or self._closed:
            return
        if self._writer is None:
            self._writer = OggOpusWriter(self.bitrate)
            self._started = captured - len(samples) / SAMPLE_RATE
            self._sound = False
        self._writer.write(samples)
        if not self._sound and bool(np.any(samples)):
            self._sound = True
        if self._writer.samples >= self.segment_s * SAMPLE_RATE:
            self.flush()

    def flush(self) -> None:
        """Finish the segment being written and upload it (nothing when there is none, or it was all silence)."""
        w, self._writer = self._writer, None
        if w is None:
            return
        samples = w.samples + len(w._pending)
        data = w.finish()
        if not self._sound or samples == 0:
            self.skipped_silent += 1
            return
        task = asyncio.get_running_loop().create_task(self._upload(data, self._started, samples / SAMPLE_RATE))
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)

    async def _upload(self, data: bytes, started: float, duration: float) -> None:
        try:
            sha = await self.client.put_blob(data)
            await self.client.wait_connected(30.0)
            await self.client.send_event("voice_segment", {
                "sha": sha, "duration_s": round(duration, 6), "age_s": round(time.monotonic() - started, 6)})
            self.sent.append(SentSegment(sha, duration, len(data)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the relay refused it, or the connection is gone for good
            message = f"voice segment of {duration:.1f} s not recorded: {exc}"
            log.warning("%s", message)
            self.errors.append(message)
            if self.on_error is not None:
                self.on_error(message)

    @property
    def pending(self) -> int:
        """Segments being uploaded now."""
        return len(self._uploads)

    async def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._uploads:
            _done, pending = await asyncio.wait(set(self._uploads), timeout=timeout)
            for t in pending:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
