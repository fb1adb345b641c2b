"""Microphone and speakers through sounddevice (PortAudio: Linux, macOS, Windows).

`open_devices()` never raises for a missing device: it returns what it could open
and a clear message for what it could not, so the room works without voice (no
microphone: listen only; no speakers: nothing is played, others still hear us).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from deeproom.net.voice.audio import FRAME_SAMPLES, SAMPLE_RATE, make_frame
from deeproom.net.voice.errors import NoAudioDevice
from deeproom.net.voice.spatial import SpatialMixer


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the module loads PortAudio when imported
        raise NoAudioDevice(
            f"PortAudio is not available ({exc}); install libportaudio2 (Debian/Ubuntu) to use voice"
        ) from None
    return sounddevice


def describe_devices() -> str:
    """One line on the default input and output (for `deeproom doctor`); raises NoAudioDevice."""
    sd = _sounddevice()
    found = []
    for kind in ("input", "output"):
        try:
            dev = sd.query_devices(kind=kind)
            found.append(f"{kind}: {dev['name']}")
        except Exception:
            found.append(f"{kind}: none")
    if all(f.endswith("none") for f in found):
        raise NoAudioDevice("no microphone and no speakers found; the room works without voice")
    return ", ".join(found)


class MicrophoneTrack(MediaStreamTrack):
    """The default microphone, 48 kHz mono, in 20 ms frames."""

    kind = "audio"

    def __init__(self, device: int | str | None = None) -> None:
        super().__init__()
        sd = _sounddevice()
        self._owner_loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=10)
        self._pts = 0
        try:
            self._stream = sd.InputStream(
                samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=FRAME_SAMPLES,
                device=device, callback=self._on_audio,
            )
            self._stream.start()
        except Exception as exc:
            raise NoAudioDevice(f"could not open the microphone ({exc}); you can still listen") from None

    def _on_audio(self, indata: np.ndarray, frames: int, _time: Any, _status: Any) -> None:
        block = indata[:, 0].copy()
        self._owner_loop.call_soon_threadsafe(self._put, block)

    def _put(self, block: np.ndarray) -> None:
        if self._queue.full():  # never let latency build up
            self._queue.get_nowait()
        self._queue.put_nowait(block)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        block = await self._queue.get()
        frame = make_frame(block, self._pts)
        self._pts += len(block)
        return frame

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(Exception):
            self._stream.stop()
            self._stream.close()


class Speakers:
    """Plays the spatial mixer on the default output (stereo); the sound card pulls it."""

    def __init__(self, mixer: SpatialMixer, device: int | str | None = None) -> None:
        sd = _sounddevice()
        self.mixer = mixer
        try:
            self._stream = sd.OutputStream(
                samplerate=SAMPLE_RATE, channels=2, dtype="float32", blocksize=FRAME_SAMPLES,
                device=device, latency="low", callback=self._on_audio,
            )
            self._stream.start()
        except Exception as exc:
            raise NoAudioDevice(f"could not open the speakers ({exc}); others still hear you") from None

    def _on_audio(self, outdata: np.ndarray, frames: int, _time: Any, _status: Any) -> None:
        outdata[:] = self.mixer.render(frames)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.stop()
            self._stream.close()


@dataclass
class AudioDevices:
    """What could be opened; `messages` says what could not and what that means."""

    microphone: MicrophoneTrack | None
    speakers: Speakers | None
    messages: list[str]

    def close(self) -> None:
        if self.microphone is not None:
            self.microphone.stop()
        if self.speakers is not None:
            self.speakers.close()


def open_devices(mixer: SpatialMixer) -> AudioDevices:
    """Open the default microphone and speakers; never raises for missing devices."""
    mic: MicrophoneTrack | None = None
    spk: Speakers | None = None
    messages = []
    try:
        mic = MicrophoneTrack()
    except NoAudioDevice as exc:
        messages.append(f"voice: {exc}")
    try:
        spk = Speakers(mixer)
    except NoAudioDevice as exc:
        messages.append(f"voice: {exc}")
    return AudioDevices(mic, spk, messages)
