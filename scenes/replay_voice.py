"""Recorded voices in a replay: each speaker heard from their recorded avatar, in step with the playhead.

    voice = attach_voice(session)            # a ReplaySession; opens the speakers if it can
    voice.mixer                              # the SpatialMixer the sound card (or a test) pulls

A recording holds each speaker's own voice as Ogg Opus segments (`Timeline.voice`). A
feeder thread of its own pushes, every 20 ms, the next 20 ms of every speaker's audio
at the playhead into the same `SpatialMixer` live voice uses, placed at that speaker's
recorded head (the poses the replay's worker posts); the viewer's head is the listener.
Segments are decoded off the render thread (one decoder thread, a few seconds ahead of
the playhead) and kept decoded near it.

Following the timeline: a seek (the playhead jumps) drops what was queued and goes on
from the new time; paused, nothing is pushed. At another speed (0.25x to 4x) each voice is
time-stretched at its own pitch (`net/voice/stretch.py`, WSOLA): a lecture at 2x sounds like
a fast speaker, not a chipmunk. Above 4x (skimming: `--speed` up to 64) voice is muted.

A damaged segment (its blob missing, its bytes not hashing to its name, not decodable,
or much shorter or longer than recorded) is reported once as a notice and is silence
there; the rest plays.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deeproom.errors import DeepRoomError
from deeproom.net.voice.audio import SAMPLE_RATE
from deeproom.net.voice.segments import decode_ogg_opus
from deeproom.net.voice.spatial import SpatialMixer
from deeproom.net.voice.stretch import TimeStretch
from deeproom.presence import Pose
from deeproom.recording import MAX_VOICE_SEGMENT_S, Timeline, VoiceSegment, format_clock

log = logging.getLogger("deeproom.replay.voice")

BLOCK = 960
"""Samples pushed per speaker per step (20 ms)."""
LOOKAHEAD_S = 0.04
"""How far ahead of the playhead audio is queued (the mixer's own buffer is one block)."""
RESYNC_S = 0.25
"""A playhead this far from where the feeder is counts as a seek: the queues are dropped."""
PREFETCH_S = 3.0
"""Segments starting this soon after the playhead are decoded ahead of time."""
KEEP_DECODED = 24
"""Decoded segments kept in memory (about 4 minutes of one speaker: 1.9 MB each)."""
LENGTH_SLACK_S = 0.1
VOICE_SPEEDS = (0.25, 4.0)
"""Speeds at which voice is played (time-stretched when not 1x); muted outside them."""


class ReplayVoice:
    """Recorded voices through a SpatialMixer, following a replay's playhead. `close()` is safe twice."""

    def __init__(self, timeline: Timeline, blobs_dir: str | Path | None, *, mixer: SpatialMixer | None = None,
                 notice: Callable[[str], None] | None = None) -> None:
        self.mixer = mixer or SpatialMixer()
        self.blobs_dir = Path(blobs_dir) if blobs_dir is not None else None
        self.notice = notice
        self.output: Any = None
        """The sound card pulling the mixer (closed with this), None when a test pulls it."""
        self.reports: list[str] = []
        """What was damaged and skipped, one line each (also sent to `notice`)."""
        segments = sorted(timeline.voice, key=lambda s: (s.start, s.participant))
        self.speakers = sorted({s.participant for s in segments})
        self._by_speaker: dict[str, list[VoiceSegment]] = {p: [s for s in segments if s.participant == p]
                                                           for p in self.speakers}
        self._starts = {p: [s.start for s in segs] for p, segs in self._by_speaker.items()}
        self._all = segments
        self._all_starts = [s.start for s in segments]
        self._by_sha = {s.sha: s for s in segments}
        self._lock = threading.Lock()
        self._clock: tuple[float, float, bool, float] = (0.0, time.monotonic(), False, 1.0)
        """(playhead, time.monotonic() when it was there, playing, speed)."""
        self._positions: dict[str, tuple[float, float, float]] = {}
        self._fed: float | None = None
        """Recording time up to which audio has been pushed; None: nothing queued."""
        self._speed = 1.0
        self._stretch: dict[str, TimeStretch] = {}
        """Per speaker, at speeds other than 1x: the time-stretcher feeding the mixer."""
        self._decoded: dict[str, concurrent.futures.Future[np.ndarray | None]] = {}
        self._decoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="deeproom-replay-voice-decode")
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deeproom-replay-voice", daemon=True)
        if self.speakers:
            self._thread.start()

    # --- what the replay tells it (any thread) ---------------------------------------------------

    def follow(self, t: float, playing: bool, speed: float, poses: Mapping[str, Pose]) -> None:
        """Where the playhead is now, and every recorded participant's pose there."""
        with self._lock:
            self._clock = (t, time.monotonic(), playing, speed)
        for pid, pose in poses.items():
            if pid in self._by_speaker and self._positions.get(pid) != pose.head_position:
                self._positions[pid] = pose.head_position
                self.mixer.set_position(pid, pose.head_position)

    def listen(self, position: tuple[float, float, float], rotation: tuple[float, float, float, float]) -> None:
        """The viewer's head: where the voices are heard from."""
        self.mixer.set_listener(position, rotation)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._decoder.shutdown(wait=False, cancel_futures=True)
        if self.output is not None:
            self.output.close()

    # --- the feeder --------------------------------------------------------------------------------

    def playhead(self) -> tuple[float, bool, float]:
        """(where the playhead is now, playing, speed), extrapolated from the last `follow`."""
        with self._lock:
            t, at, playing, speed = self._clock
        return (t + (time.monotonic() - at) * speed if playing else t), playing, speed

    def _run(self) -> None:
        step = BLOCK / SAMPLE_RATE
        due = time.perf_counter()
        while not self._closed.is_set():
            due += step
            wait = due - time.perf_counter()
            if wait > 0:
                self._closed.wait(wait)
            elif wait < -0.2:
                due = time.perf_counter()  # starved for a while: do not try to catch up
            try:
                self._step()
            except Exception as exc:  # never take the app down; say it once
                self._report(f"replay voice stopped: {type(exc).__name__}: {exc}")
                return

    def _step(self) -> None:
        head, playing, speed = self.playhead()
        if not playing or not VOICE_SPEEDS[0] <= speed <= VOICE_SPEEDS[1]:
            if self._fed is not None:
                self._drop_queued()
            return
        ahead = head + LOOKAHEAD_S * speed
        if self._fed is None or speed != self._speed or abs(self._fed - ahead) > RESYNC_S * max(speed, 1.0):
            if self._fed is not None:
                self._drop_queued()
            self._fed, self._speed = head, speed
            if abs(speed - 1.0) > 1e-9:
                start = round(head * SAMPLE_RATE)
                self._stretch = {pid: TimeStretch(self._source(pid), start, speed) for pid in self.speakers}
        self._prefetch(head)
        n = min(round((ahead - self._fed) * SAMPLE_RATE / speed), 10 * BLOCK)  # samples to play
        if n <= 0:
            return
        for pid in self.speakers:
            stretch = self._stretch.get(pid)
            self.mixer.push(pid, stretch.read(n) if stretch is not None else self.samples(pid, self._fed, n))
        self._fed += n * speed / SAMPLE_RATE

    def _source(self, pid: str) -> Callable[[int, int], np.ndarray]:
        return lambda first, n: self.samples(pid, first / SAMPLE_RATE, n)

    def _drop_queued(self) -> None:
        """A seek, pause or speed change: what was queued must not play."""
        self._fed = None
        self._stretch = {}
        for pid in self.speakers:
            self.mixer.remove(pid)
            pos = self._positions.get(pid)
            if pos is not None:
                self.mixer.set_position(pid, pos)

    # --- audio at a time ---------------------------------------------------------------------------

    def samples(self, pid: str, t0: float, n: int) -> np.ndarray:
        """Speaker `pid`'s recorded voice from recording time `t0`, `n` samples (silence where none)."""
        out = np.zeros(n, np.float32)
        segs = self._by_speaker.get(pid, [])
        t1 = t0 + n / SAMPLE_RATE
        i = max(0, bisect.bisect_right(self._starts.get(pid, []), t0) - 1)
        while i < len(segs) and segs[i].start < t1:
            seg = segs[i]
            i += 1
            if seg.end <= t0:
                continue
            pcm = self._pcm(seg)
            if pcm is None:
                continue
            first = round((t0 - seg.start) * SAMPLE_RATE)  # index in the segment of out[0]
            lo, hi = max(0, first), min(len(pcm), first + n)
            if hi > lo:
                out[lo - first : hi - first] = pcm[lo:hi]
        return out

    def _pcm(self, seg: VoiceSegment) -> np.ndarray | None:
        fut = self._decoded.get(seg.sha)
        if fut is None:
            fut = self._submit(seg)
        try:
            return fut.result(timeout=2.0)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return None

    def _submit(self, seg: VoiceSegment) -> concurrent.futures.Future[np.ndarray | None]:
        fut = self._decoder.submit(self._decode, seg)
        self._decoded[seg.sha] = fut
        return fut

    def _prefetch(self, head: float) -> None:
        # only the segments near the playhead are looked at (a long recording has thousands)
        lo = bisect.bisect_left(self._all_starts, head - MAX_VOICE_SEGMENT_S)
        hi = bisect.bisect_right(self._all_starts, head + PREFETCH_S)
        for seg in self._all[lo:hi]:
            if seg.end > head and seg.sha not in self._decoded:
                self._submit(seg)
        if len(self._decoded) > KEEP_DECODED:
            far = sorted(self._decoded, key=lambda sha: -_distance(self._by_sha[sha], head))
            for sha in far[: len(self._decoded) - KEEP_DECODED]:
                del self._decoded[sha]

    def _decode(self, seg: VoiceSegment) -> np.ndarray | None:
        where = f"voice of {seg.participant} at {format_clock(max(seg.start, 0.0))}"
        try:
            if self.blobs_dir is None:
                raise DeepRoomError("this recording has no blob store")
            path = self.blobs_dir / seg.sha[:2] / seg.sha[2:]
            try:
                data = path.read_bytes()
            except OSError:
                raise DeepRoomError("its segment is not in the recording's blob store") from None
            if hashlib.sha256(data).hexdigest() != seg.sha:
                raise DeepRoomError("its segment's bytes do not hash to its name (damaged on disk)")
            pcm = decode_ogg_opus(data)
            if abs(len(pcm) / SAMPLE_RATE - seg.duration) > LENGTH_SLACK_S:
                raise DeepRoomError(f"its segment holds {len(pcm) / SAMPLE_RATE:.2f} s of audio, "
                                    f"the timeline says {seg.duration:.2f} s")
            return pcm
        except DeepRoomError as exc:
            self._report(f"{where} is damaged and skipped: {exc}")
            return None
        except Exception as exc:  # a decoder's surprise on hostile bytes is damage too
            self._report(f"{where} is damaged and skipped: {type(exc).__name__}: {exc}")
            return None

    def _report(self, text: str) -> None:
        log.warning("%s", text)
        self.reports.append(text)
        if self.notice is not None:
            self.notice(text)


def _distance(seg: VoiceSegment, t: float) -> float:
    return 0.0 if seg.start <= t <= seg.end else min(abs(seg.start - t), abs(seg.end - t))


def attach_voice(session: Any, *, speakers: bool = True, mixer: SpatialMixer | None = None) -> ReplayVoice:
    """Give a ReplaySession its recorded voices (and, with `speakers`, open the sound card on the mixer;
    no sound card is a notice, not an error)."""
    from deeproom.scenes.session import Notice

    voice = ReplayVoice(session.timeline, session.blobs_dir, mixer=mixer,
                        notice=lambda text: session.inbox.put(Notice(text)))
    if speakers and voice.speakers:
        from deeproom.net.voice.devices import NoAudioDevice, Speakers

        try:
            out = Speakers(voice.mixer)
        except NoAudioDevice as exc:
            session.inbox.put(Notice(f"recorded voice is not played: {exc}"))
        else:
            voice.output = out
    session.voice = voice
    return voice
