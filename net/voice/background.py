"""Voice for the render thread: a RoomVoice run on a BackgroundClient's event loop.

The scene (Ursina, in `scenes/`) holds a BackgroundClient; `BackgroundVoice(bg)` puts
voice beside it. Its methods are safe to call from any thread and never block: they
post to the client's loop. Notices meant for the user ("could not open the
microphone; you can still listen") go into the client's inbox as
`Inbound("voice", text)`, drained once per frame like everything else. Playback is
pulled by the sound card from the spatial mixer, so nothing runs per frame.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from deeproom.net.voice.audio import SilenceTrack
from deeproom.net.voice.devices import AudioDevices, open_devices
from deeproom.net.voice.session import VoiceConfig
from deeproom.net.voice.spatial import SpatialMixer


class BackgroundVoice:
    """Voice on a BackgroundClient's loop. `close()` is safe twice."""

    def __init__(
        self,
        bg: Any,
        *,
        config: VoiceConfig | None = None,
        sfu_url: str | None = None,
        source: Callable[[], MediaStreamTrack] | None = None,
        use_devices: bool = True,
    ) -> None:
        """`source`: makes the outgoing track (default: the microphone, or silence without one)."""
        from deeproom.net.background import Inbound

        self._bg = bg
        self._Inbound = Inbound
        self.mixer = SpatialMixer()
        self.voice: Any = None
        self.devices: AudioDevices | None = None
        self._closed = False
        bg.wait_ready()
        # BackgroundClient owns the loop and the client; voice must live on the same loop.
        self._loop: asyncio.AbstractEventLoop = bg._loop
        self.ready = asyncio.run_coroutine_threadsafe(
            self._start(config or VoiceConfig(), sfu_url, source, use_devices), self._loop
        )

    async def _start(
        self, config: VoiceConfig, sfu_url: str | None, source: Callable[[], MediaStreamTrack] | None, use_devices: bool
    ) -> None:
        from dataclasses import replace

        from deeproom.net.voice.room import RoomVoice

        track: MediaStreamTrack | None = source() if source is not None else None
        if use_devices:
            self.devices = open_devices(self.mixer)
            for msg in self.devices.messages:
                self._bg.inbox.put(self._Inbound("voice", msg))
            if track is None:
                track = self.devices.microphone
        if track is None:
            track = SilenceTrack()
            config = replace(config, publish=False)
        self.voice = RoomVoice(self._bg._need(), track, config, sfu_url=sfu_url, mixer=self.mixer)
        # a recorded room that could not take a segment of our voice: the user is told, once per segment
        self.voice.recording.on_error = lambda msg: self._bg.inbox.put(self._Inbound("voice", msg))
        await self.voice.start()

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            if self.voice is not None:
                fn(self.voice, *args)

        self._loop.call_soon_threadsafe(run)

    def set_muted(self, muted: bool) -> None:
        self._post(lambda v, m: v.set_muted(m), muted)

    def press_to_talk(self, pressed: bool) -> None:
        self._post(lambda v, p: v.press_to_talk(p), pressed)

    def set_talk_mode(self, mode: str | None) -> None:
        self._post(lambda v, m: v.set_talk_mode(m), mode)

    def set_volume(self, participant_id: str, volume: float) -> None:
        self.mixer.set_volume(participant_id, volume)  # the mixer is thread-safe

    def publish_pose(self, pose: Any) -> None:
        """Use instead of bg.publish_pose: adds the speaking flag and moves the listener."""
        self._post(lambda v, p: v.publish_pose(p), pose)

    @property
    def speaking(self) -> bool:
        return bool(self.voice is not None and self.voice.speaking)

    @property
    def mode(self) -> str | None:
        """How this voice is carried now: "mesh" (direct links) or "sfu"; None before it started."""
        return None if self.voice is None else str(self.voice.session.mode)

    @property
    def talk_mode(self) -> str | None:
        """"open" (heard whenever not muted) or "push" (only while the talk key is held)."""
        return None if self.voice is None else self.voice.session.local.talk_mode.value

    @property
    def sfu_url(self) -> str | None:
        """The SFU this room's voice can switch to (ours or the relay's), None if there is none."""
        if self.voice is None:
            return None
        return self.voice.sfu_url or getattr(self.voice.client, "sfu_url", None)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True

        async def stop() -> None:
            if self.voice is not None:
                await self.voice.close()
            if self.devices is not None:
                self.devices.close()

        if self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(stop(), self._loop)
            try:
                fut.result(timeout)
            except (concurrent.futures.TimeoutError, Exception):
                pass
