"""The local voice: one source (microphone, tone, file) gated by mute and push-to-talk,
watched for voice activity, and fanned out to every connection that sends it.

One pump task reads the source once per 20 ms frame; each outgoing connection gets
its own track fed from a small queue (the oldest frame is dropped if a connection
falls behind, so latency never piles up). Muted or not pressed, silence is sent
rather than nothing, so the receivers' timing and our liveness checks stay steady.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from enum import StrEnum

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from deeproom.net.voice.audio import FRAME_SAMPLES, frame_to_mono, make_frame
from deeproom.net.voice.vad import VoiceActivity


class TalkMode(StrEnum):
    OPEN = "open"  # heard whenever not muted
    PUSH = "push"  # heard only while the talk key is held


class OutgoingTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, owner: LocalVoice) -> None:
        super().__init__()
        self._owner = owner
        self.queue: asyncio.Queue[AudioFrame] = asyncio.Queue(maxsize=3)

    def offer(self, frame: AudioFrame) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(frame)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await self.queue.get()

    def stop(self) -> None:
        super().stop()
        self._owner._outputs.discard(self)


class LocalVoice:
    """What this participant says, as heard by others."""

    def __init__(self, source: MediaStreamTrack) -> None:
        self.source = source
        self.muted = False
        self.talk_mode = TalkMode.OPEN
        self.talk_pressed = False
        self.vad = VoiceActivity()
        self.speaking = False
        self.frames_sent = 0
        self._outputs: set[OutgoingTrack] = set()
        self._speaking_handlers: list[Callable[[bool], None]] = []
        self._taps: list[Callable[[np.ndarray, float], None]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def audible(self) -> bool:
        """Whether others hear us right now."""
        return not self.muted and (self.talk_mode is TalkMode.OPEN or self.talk_pressed)

    def on_speaking(self, handler: Callable[[bool], None]) -> None:
        self._speaking_handlers.append(handler)

    def track(self) -> OutgoingTrack:
        """A new track for one more connection."""
        out = OutgoingTrack(self)
        self._outputs.add(out)
        self._run_pump()
        return out

    def tap(self, handler: Callable[[np.ndarray, float], None]) -> None:
        """`handler(samples, captured)` with every frame as sent (silence while not audible) and
        the time.monotonic() it was captured; the source is read even with no connection open
        (a recorded room hears a speaker who is alone in it)."""
        self._taps.append(handler)
        self._run_pump()

    def _run_pump(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="voice-local-pump")

    async def _pump(self) -> None:
        while True:
            try:
                frame = await self.source.recv()
            except MediaStreamError:
                return
            samples = frame_to_mono(frame)
            if not self.audible:
                samples = np.zeros_like(samples)
            speaking = self.vad.update(samples)
            if speaking != self.speaking:
                self.speaking = speaking
                for h in list(self._speaking_handlers):
                    h(speaking)
            pts = frame.pts if frame.pts is not None else self.frames_sent * FRAME_SAMPLES
            for out in list(self._outputs):
                out.offer(make_frame(samples, pts))
            if self._taps:
                now = time.monotonic()
                for tap in list(self._taps):
                    tap(samples, now)
            self.frames_sent += 1

    async def close(self) -> None:
        for out in list(self._outputs):
            out.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.source.stop()
