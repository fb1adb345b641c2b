"""A participant's voice in a room: a mesh of direct links, or the SFU, switched live.

`VoiceSession` owns the local voice (mute, push-to-talk, voice activity), one
`VoiceLink` per other participant in a small room, and an `SfuVoice` in a teaching
room; what it hears goes to the spatial mixer (and, in tests, to recorders).

Who offers: of two participants the one with the smaller id makes the offer, so
both never offer at once. A participant that (re)appears without an offer says
"hello" and the other side offers afresh; every offer carries a link number and a
newer link replaces an older one. That one mechanism covers a peer leaving and
rejoining, and a network hiccup: when a link goes quiet (no audio, even silence,
for `stall_s`) or never connects, it is replaced by a new connection with new ICE
credentials and candidates — an ICE restart by renegotiation, since aiortc does not
restart ICE on an existing connection.

Mesh to SFU: when told SFU access (by the participant who created the SFU room,
or by the application) the session joins the SFU first and drops the mesh links
only when the SFU carries audio, so nobody rejoins anything and speech is not cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from deeproom.net.voice.audio import FrameRecorder
from deeproom.net.voice.errors import SignalError, VoiceError
from deeproom.net.voice.ice import LOOPBACK, addresses_towards
from deeproom.net.voice.local import LocalVoice, TalkMode
from deeproom.net.voice.peer import VoiceLink
from deeproom.net.voice.signalling import SignalTransport, VoiceSignal
from deeproom.net.voice.spatial import SpatialMixer

log = logging.getLogger("deeproom.voice")


@dataclass(frozen=True, slots=True)
class VoiceConfig:
    """How a participant's voice behaves."""

    mesh_limit: int = 6
    """Most participants for a direct mesh; above it the room uses the SFU."""
    stall_s: float = 2.0
    """A link with no audio (not even silence) for this long is re-established."""
    connect_timeout_s: float = 8.0
    """A link that carries no audio this long after it was made is re-established."""
    addresses: tuple[str, ...] = LOOPBACK
    """Host addresses offered as ICE candidates (loopback unless in an SFU namespace)."""
    record: bool = False
    """Keep what each speaker sent in `recorders` (tests, benchmarks)."""
    publish: bool = True
    """Whether this participant sends voice at all (a listen-only seat when False)."""
    receive_buffer_frames: int | None = None
    """20 ms frames aiortc buffers before decoding. None: 2 when every host address is
    loopback (the peer can only be on this machine: no network jitter to absorb), else
    aiortc's own 4. Fewer frames, less latency (20 ms each), less tolerance of jitter."""

    @property
    def receive_prefetch(self) -> int | None:
        """What VoiceLink gets: a frame count, or None to leave aiortc's default alone."""
        if self.receive_buffer_frames is not None:
            return self.receive_buffer_frames
        import ipaddress

        return 2 if all(ipaddress.ip_address(a).is_loopback for a in self.addresses) else None

    def __post_init__(self) -> None:
        if not 1 <= self.mesh_limit <= 64:
            raise VoiceError(f"mesh_limit must be in [1, 64]; got {self.mesh_limit}")
        if self.receive_buffer_frames is not None and not 1 <= self.receive_buffer_frames <= 15:
            raise VoiceError(f"receive_buffer_frames must be in [1, 15] or None; got {self.receive_buffer_frames}")
        if self.stall_s <= 0 or self.connect_timeout_s <= 0:
            raise VoiceError("stall_s and connect_timeout_s must be positive")


class VoiceSession:
    """One participant's voice. Use as an async context manager; closing twice is safe."""

    def __init__(
        self,
        signal: SignalTransport,
        source: MediaStreamTrack,
        config: VoiceConfig | None = None,
        mixer: SpatialMixer | None = None,
    ) -> None:
        self.config = config or VoiceConfig()
        self.signal = signal
        self.pid = signal.participant_id
        self.local = LocalVoice(source)
        self.mixer = mixer or SpatialMixer()
        self.links: dict[str, VoiceLink] = {}
        self.recorders: dict[str, FrameRecorder] = {}
        self.peers: set[str] = set()
        self.restarts = 0
        self.sfu: Any = None  # SfuVoice when in SFU mode
        self.sfu_access: dict[str, Any] | None = None
        self._link_no = time.time_ns() // 1000  # grows across restarts of this process
        self._link_ids: dict[str, int] = {}
        self._asked: dict[str, float] = {}  # when we last asked a peer for an offer
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False
        self._started = False
        self._sfu_lock = asyncio.Lock()
        signal.on_signal(self._on_signal)

    # -- lifecycle ---------------------------------------------------------------
    async def __aenter__(self) -> VoiceSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if not self._started:
            self._started = True
            self._watchdog = asyncio.get_running_loop().create_task(self._watch(), name="voice-watchdog")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for t in list(self._tasks):
            t.cancel()
        for pid in list(self.links):
            await self._drop_link(pid, say_bye=True)
        if self.sfu is not None:
            await self.sfu.close()
            self.sfu = None
        await self.local.close()

    # -- controls ----------------------------------------------------------------
    def set_muted(self, muted: bool) -> None:
        self.local.muted = muted

    def set_talk_mode(self, mode: TalkMode | str) -> None:
        self.local.talk_mode = TalkMode(mode)

    def press_to_talk(self, pressed: bool) -> None:
        self.local.talk_pressed = pressed

    def set_volume(self, participant_id: str, volume: float) -> None:
        self.mixer.set_volume(participant_id, volume)

    def on_speaking(self, handler: Callable[[bool], None]) -> None:
        self.local.on_speaking(handler)

    @property
    def mode(self) -> str:
        return "sfu" if self.sfu is not None else "mesh"

    # -- what arrives --------------------------------------------------------------
    def _sink(self, speaker: str, samples: np.ndarray, arrived: float) -> None:
        self.mixer.push(speaker, samples)
        if self.config.record:
            self.recorders.setdefault(speaker, FrameRecorder()).add(samples, arrived)

    # -- roster --------------------------------------------------------------------
    async def set_peers(self, participant_ids: Iterable[str]) -> None:
        """Who else is in the room now (call on every change of the room's participants)."""
        new = {p for p in participant_ids if p != self.pid}
        gone, came = self.peers - new, new - self.peers
        self.peers = new
        for pid in gone:
            await self._drop_link(pid, say_bye=False)
            self.mixer.remove(pid)
        if self.sfu is not None:
            return
        for pid in sorted(came):
            await self._greet(pid)

    async def _greet(self, pid: str) -> None:
        if self.pid < pid:
            await self._offer(pid)
        else:
            self._asked[pid] = time.monotonic()
            await self._send(pid, VoiceSignal("hello", 0))

    # -- signalling ----------------------------------------------------------------
    def _on_signal(self, sender: str, payload: dict[str, Any]) -> None:
        if self._closed:
            return
        try:
            msg = VoiceSignal.from_dict(payload)
        except SignalError as exc:
            log.warning("ignored a bad voice signal from %s: %s", sender, exc)
            return
        self._spawn(self._handle(sender, msg))

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("voice task failed: %r", t.exception())

    async def _handle(self, sender: str, msg: VoiceSignal) -> None:
        if msg.kind == "sfu":
            await self.use_sfu(None if msg.sfu is None else dict(msg.sfu))
            return
        if self.sfu is not None and msg.kind in ("offer", "hello"):
            return  # in SFU mode there are no direct links
        if msg.kind == "offer":
            await self._answer(sender, msg)
        elif msg.kind == "answer":
            link = self.links.get(sender)
            if link is not None and self._link_ids.get(sender) == msg.link and link.pc.signalingState == "have-local-offer":
                await link.accept_answer(msg.sdp or "")
        elif msg.kind == "hello":
            if self.pid < sender:
                self.peers.add(sender)
                await self._offer(sender)
        elif msg.kind == "bye" and (self._link_ids.get(sender, -1) <= msg.link or msg.link == 0):
            await self._drop_link(sender, say_bye=False)

    async def _send(self, to: str, msg: VoiceSignal) -> None:
        try:
            await self.signal.send(to, msg.to_dict())
        except Exception as exc:  # the relay may be reconnecting; the watchdog retries
            log.warning("could not signal %s: %s", to, exc)

    def _new_link(self, pid: str, link_no: int) -> VoiceLink:
        track = self.local.track() if self.config.publish else None
        link = VoiceLink(
            pid, self._sink, send=track, addresses=self.config.addresses, prefetch=self.config.receive_prefetch
        )
        self.links[pid] = link
        self._link_ids[pid] = link_no
        return link

    async def _offer(self, pid: str) -> None:
        await self._drop_link(pid, say_bye=False)
        self._link_no += 1
        link = self._new_link(pid, self._link_no)
        try:
            sdp = await link.create_offer()
        except Exception as exc:  # e.g. our address is gone for a moment; the watchdog retries
            log.info("could not make an offer to %s: %r", pid, exc)
            await self._forget(pid, link)
            return
        if self.sfu is not None or self.links.get(pid) is not link:
            await self._forget(pid, link)  # the room moved to the SFU (or a newer link) meanwhile
            return
        await self._send(pid, VoiceSignal("offer", self._link_ids[pid], sdp))

    async def _answer(self, pid: str, msg: VoiceSignal) -> None:
        if self._link_ids.get(pid, -1) >= msg.link and pid in self.links:
            return  # an old or repeated offer
        await self._drop_link(pid, say_bye=False)
        self.peers.add(pid)
        link = self._new_link(pid, msg.link)
        sdp = await link.accept_offer(msg.sdp or "")
        if self.sfu is not None or self.links.get(pid) is not link:
            await self._forget(pid, link)
            return
        await self._send(pid, VoiceSignal("answer", msg.link, sdp))

    async def _forget(self, pid: str, link: VoiceLink) -> None:
        if self.links.get(pid) is link:
            del self.links[pid]
        await link.close()

    async def _drop_link(self, pid: str, say_bye: bool) -> None:
        link = self.links.pop(pid, None)
        if link is not None:
            if say_bye:
                await self._send(pid, VoiceSignal("bye", self._link_ids.get(pid, 0)))
            await link.close()

    # -- keeping links alive -----------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.sfu is not None:
                continue
            now = time.monotonic()
            for pid in sorted(self.peers):
                link = self.links.get(pid)
                if link is not None:
                    limit = self.config.stall_s if link.frames_rx else self.config.connect_timeout_s
                    if link.pc.connectionState == "connected" and not link.remote_sends:
                        continue  # a listen-only peer: silence here is right (its loss shows as "failed")
                    if not (link.stalled(limit) or link.pc.connectionState in ("failed", "closed")):
                        continue
                elif now - self._asked.get(pid, 0.0) < self.config.connect_timeout_s:
                    continue  # we said hello recently; give the offer time to come
                self.restarts += 1
                log.info("voice link to %s is quiet or missing; re-establishing", pid)
                if self.pid < pid:
                    await self._offer(pid)
                else:
                    await self._drop_link(pid, say_bye=False)
                    self._asked[pid] = now
                    await self._send(pid, VoiceSignal("hello", 0))

    # -- SFU -----------------------------------------------------------------------------
    async def use_sfu(self, access: dict[str, Any] | None) -> None:
        """Switch to the SFU room `access` ({url, room, pin}), or back to mesh with None."""
        async with self._sfu_lock:
            if access == self.sfu_access and (access is None) == (self.sfu is None):
                return
            from deeproom.net.voice.sfu import SfuVoice

            old = self.sfu
            self.sfu_access = access
            if access is None:
                self.sfu = None
                if old is not None:
                    await old.close()
                for pid in sorted(self.peers):
                    await self._greet(pid)
                return
            sfu = SfuVoice(
                access,
                self.pid,
                self._sink,
                send=self.local.track() if self.config.publish else None,
                addresses=await addresses_towards(str(access["url"]), self.config.addresses),
                stall_s=max(self.config.stall_s, 3.0),
                prefetch=self.config.receive_prefetch,
                new_track=self.local.track,
            )
            await sfu.start()
            self.sfu = sfu
            if old is not None:
                await old.close()
            # make before break: the mesh goes once the SFU is up
            for pid in list(self.links):
                await self._drop_link(pid, say_bye=False)

    async def announce_sfu(self, access: dict[str, Any] | None, to: Sequence[str] | None = None) -> None:
        """Tell participants (default: every peer) to use this SFU room (None: back to mesh)."""
        for pid in sorted(to if to is not None else self.peers):
            await self._send(pid, VoiceSignal("sfu", 0, sfu=access))

