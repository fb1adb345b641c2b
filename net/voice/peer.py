"""One WebRTC connection carrying voice: Opus only, no ICE servers, chosen host addresses.

Used both for a direct link to another participant (mesh) and for a link to the
SFU. What arrives is decoded by aiortc, turned into mono float frames and handed
to a sink (the spatial mixer, a recorder) under the speaker's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

from deeproom.net.voice.audio import frame_to_mono
from deeproom.net.voice.ice import LOOPBACK, host_addresses

FrameSink = Callable[[str, np.ndarray, float], None]
MAX_LAG_S = 0.12  # how far behind its schedule a decoded frame may be and still be played
SETTLE_LATE_S = 1.0  # frames late for this long in a row: accept the new lag rather than go silent


def opus_only() -> list:
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


class VoiceLink:
    """One RTCPeerConnection with (at most) one outgoing and any incoming audio tracks."""

    def __init__(
        self,
        label: str,
        sink: FrameSink,
        *,
        send: MediaStreamTrack | None,
        receive: bool = True,
        addresses: Sequence[str] = LOOPBACK,
        speaker_of: Callable[[MediaStreamTrack], str] | None = None,
        prefetch: int | None = None,
    ) -> None:
        self.label = label
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.addresses = tuple(addresses)
        self.created = time.monotonic()
        self.last_rx = 0.0
        self.frames_rx = 0
        self.frames_late = 0  # dropped for arriving too far behind schedule
        self.lag_resets = 0  # times a lasting lag was accepted (a machine too loaded to catch up)
        self.connected = False
        self._sink = sink
        self._speaker_of = speaker_of or (lambda _t: label)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._send = send
        self._receive = receive
        self.on_state: Callable[[str], None] | None = None
        self._prefetch = prefetch

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                t = asyncio.get_running_loop().create_task(self._pull(track), name=f"voice-rx-{label}")
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

        @self.pc.on("connectionstatechange")
        def _on_state() -> None:
            state = self.pc.connectionState
            self.connected = state == "connected"
            if self.on_state is not None:
                self.on_state(state)

    def _add_transceiver(self) -> None:
        direction = "sendrecv" if self._send and self._receive else "sendonly" if self._send else "recvonly"
        tr = self.pc.addTransceiver(self._send if self._send is not None else "audio", direction=direction)
        tr.setCodecPreferences(opus_only())
        self._tune_receiver(tr.receiver)

    def _tune_receiver(self, receiver: Any) -> None:
        """Hold `prefetch` frames in aiortc's audio jitter buffer instead of its fixed 4 (80 ms).

        aiortc has no setting for it; the buffer is made in the receiver's constructor
        and first used when a packet arrives, so it is replaced here, before any does.
        Fewer frames: lower latency, less tolerance of network jitter (fine on a LAN).
        """
        if self._prefetch is None:
            return
        attr = "_RTCRtpReceiver__jitter_buffer"
        if not hasattr(receiver, attr):  # another aiortc version: keep its default
            return
        from aiortc.jitterbuffer import JitterBuffer

        setattr(receiver, attr, JitterBuffer(capacity=16, prefetch=self._prefetch))

    async def create_offer(self) -> str:
        self._add_transceiver()
        with host_addresses(self.addresses):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept_offer(self, sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for tr in self.pc.getTransceivers():
            if tr.kind == "audio":
                if self._send is not None and tr.sender.track is None:
                    tr.sender.replaceTrack(self._send)
                    tr.direction = "sendrecv" if self._receive else "sendonly"
                elif self._send is None:
                    tr.direction = "recvonly"
                with contextlib.suppress(Exception):
                    tr.setCodecPreferences(opus_only())
                self._tune_receiver(tr.receiver)
                break
        with host_addresses(self.addresses):
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def _pull(self, track: MediaStreamTrack) -> None:
        speaker = self._speaker_of(track)
        best: float | None = None  # smallest (arrival - media time) seen: the least-delayed frame
        late_since: float | None = None  # when the current run of late frames began
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.perf_counter()
            self.last_rx = time.monotonic()
            self.frames_rx += 1
            if frame.pts is not None and frame.time_base is not None:
                # A starved event loop leaves decoded frames queued inside aiortc; playing
                # them late would keep the whole conversation late for good. Frames further
                # behind their schedule than MAX_LAG_S are dropped instead (a short gap).
                # If every frame stays late for SETTLE_LATE_S (a sender or receiver too
                # loaded ever to catch up), that lag becomes the schedule: late voice
                # beats none.
                offset = now - float(frame.pts * frame.time_base)
                if best is not None:
                    best += 2e-5  # follow up to 1,000 ppm of clock drift between machines
                if best is None or offset < best or offset - best > 10.0:  # 10 s: a new stream
                    best = offset
                elif offset - best > MAX_LAG_S:
                    late_since = now if late_since is None else late_since
                    if now - late_since < SETTLE_LATE_S:
                        self.frames_late += 1
                        continue
                    best, self.lag_resets = offset, self.lag_resets + 1
                late_since = None
            self._sink(speaker, frame_to_mono(frame), now)

    @property
    def remote_sends(self) -> bool:
        """Whether the other side said it sends audio (False for a listen-only peer: its SDP
        says recvonly or inactive); True while that is not known yet."""
        desc = self.pc.remoteDescription
        if desc is None:
            return True
        return not any(line.strip() in ("a=recvonly", "a=inactive") for line in desc.sdp.splitlines())

    def stalled(self, after_s: float) -> bool:
        """No audio for `after_s` seconds (or never connected within it)."""
        last = self.last_rx or self.created
        return time.monotonic() - last > after_s

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in list(self._tasks):
            t.cancel()
        if self._send is not None:
            self._send.stop()
        await self.pc.close()
