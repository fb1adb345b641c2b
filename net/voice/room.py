"""Voice in a DeepRoom room: a VoiceSession driven by a RoomClient.

This is where the room's state decides what voice does:
- who is in the room (the roster) → which links the mesh keeps;
- the room's voice mode (off / mesh / sfu / auto with a threshold, default 6)
  → mesh or SFU, switched live without anyone rejoining the room;
- roles and mutes → the host and presenters are always heard (open mic); in
  the SFU (teaching) mode students use push-to-talk; a participant muted by the
  host, or everyone under "mute all", sends silence;
- poses → where each voice is placed (the speaker's head) and where we listen.

The relay hands out SFU access: the host's voice (the host with the smallest id,
so exactly one) creates the SFU room with a fresh pin and sends its address to
each participant as a "signal" event; only access from a host or presenter is
accepted, so nobody else can redirect the room's voice. The SFU the host's voice uses
is its own `sfu_url`, else the one the relay announced in its join ack
(`RoomClient.sfu_url`, from `deeproom serve --sfu URL|auto`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from deeproom.net.voice.janus import ensure_room, new_pin, room_number
from deeproom.net.voice.local import TalkMode
from deeproom.net.voice.segments import SpeakerRecording
from deeproom.net.voice.session import VoiceConfig, VoiceSession
from deeproom.net.voice.signalling import RelaySignalling, VoiceSignal
from deeproom.net.voice.spatial import SpatialMixer
from deeproom.presence import Pose
from deeproom.state import Role, Room, VoiceMode

log = logging.getLogger("deeproom.voice.room")

_LEADS = (Role.HOST, Role.PRESENTER)


def wanted_mode(room: Room, mesh_limit: int) -> str:
    """"off", "mesh" or "sfu" for this room as it is now."""
    mode = room.settings.voice
    if mode is VoiceMode.OFF:
        return "off"
    if mode is VoiceMode.MESH:
        return "mesh"
    if mode is VoiceMode.SFU:
        return "sfu"
    return "sfu" if len(room.participants) > mesh_limit else "mesh"


def sfu_coordinator(room: Room) -> str | None:
    """The participant whose voice opens the SFU room: the host with the smallest id."""
    hosts = sorted(p.id for p in room.participants.values() if p.role is Role.HOST)
    return hosts[0] if hosts else None


class RoomVoice:
    """A participant's voice in a relay room. Async context manager; closing twice is safe."""

    def __init__(
        self,
        client: Any,
        source: MediaStreamTrack,
        config: VoiceConfig | None = None,
        *,
        sfu_url: str | None = None,
        mixer: SpatialMixer | None = None,
    ) -> None:
        self.client = client
        self.config = config or VoiceConfig()
        self.sfu_url = sfu_url
        self.signal = RelaySignalling(client, accept=self._accept)
        self.session = VoiceSession(self.signal, source, self.config, mixer)
        self.user_muted = False
        self.user_talk_mode: TalkMode | None = None
        self._announced: dict[str, Any] | None = None
        self._last_pose = Pose()
        self._last_pose_given = False
        self._unsubs: list[Callable[[], Any]] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._closed = False
        self._waiting_sfu = 0  # sync rounds spent in SFU mode without access
        self._last_roster: frozenset[str] = frozenset()
        self.recording = SpeakerRecording(client)
        """Our own voice, uploaded in segments while the room's `recording` setting is on."""
        self.signal.on_signal(self._on_ask)

    @property
    def mixer(self) -> SpatialMixer:
        return self.session.mixer

    @property
    def speaking(self) -> bool:
        return self.session.local.speaking

    async def __aenter__(self) -> RoomVoice:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self.session.start()
        sub = self.client.observe(lambda _change: self._dirty.set())
        self._unsubs.append(sub.unsubscribe)
        self._unsubs.append(self.client.on_poses(self._on_poses))
        self.session.on_speaking(self._on_speaking)
        if self.config.publish:
            self.session.local.tap(self.recording.tap)
        self._dirty.set()
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop(), name="room-voice-sync")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for u in self._unsubs:
            with contextlib.suppress(Exception):
                u()
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync_task
        await self.recording.close()  # the partial segment goes up while the client is still connected
        await self.session.close()

    # -- the user's controls ---------------------------------------------------
    def set_muted(self, muted: bool) -> None:
        self.user_muted = muted
        self._dirty.set()

    def press_to_talk(self, pressed: bool) -> None:
        self.session.press_to_talk(pressed)

    def set_talk_mode(self, mode: TalkMode | str | None) -> None:
        """The user's own choice (None: what the room decides)."""
        self.user_talk_mode = None if mode is None else TalkMode(mode)
        self._dirty.set()

    def set_volume(self, participant_id: str, volume: float) -> None:
        self.session.set_volume(participant_id, volume)

    def publish_pose(self, pose: Pose) -> None:
        """Publish our pose with the speaking flag filled in, and listen from the head."""
        self._last_pose = pose
        self._last_pose_given = True
        self.mixer.set_listener(pose.head_position, pose.head_rotation)
        self.client.publish_pose(dataclasses.replace(pose, speaking=self.speaking))

    # -- what the room says ------------------------------------------------------
    def _on_poses(self, poses: dict[str, Pose]) -> None:
        for pid, pose in poses.items():
            self.mixer.set_position(pid, pose.head_position)

    def _on_speaking(self, speaking: bool) -> None:
        # Re-send our latest pose with the new flag at once (not waiting for the next
        # frame's pose) -- but only a pose the application gave us, never a made-up one.
        if self._last_pose_given:
            self.client.publish_pose(dataclasses.replace(self._last_pose, speaking=speaking))

    def _accept(self, sender: str, payload: dict[str, Any]) -> bool:
        """Only a host or presenter may tell us where the SFU is; anyone in the room may call."""
        p = self.client.room.participants.get(sender)
        if p is None:
            return False
        if payload.get("voice") == "sfu" and p.role not in _LEADS:
            log.warning("ignored SFU access from %s (%s): only hosts and presenters hand it out", sender, p.role.value)
            return False
        return True

    def _dirty_roster(self, room: Room) -> bool:
        roster = frozenset(room.participants)
        changed = roster != self._last_roster
        self._last_roster = roster
        return changed

    def _on_ask(self, sender: str, payload: dict[str, Any]) -> None:
        if payload.get("voice") == "ask" and self._announced is not None:
            msg = VoiceSignal("sfu", 0, sfu=self._announced)
            asyncio.get_running_loop().create_task(self.signal.send(sender, msg.to_dict()))

    async def _sync_loop(self) -> None:
        while True:
            # wake on every room change, and now and then to repair what a lost message broke
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), 1.0)
            self._dirty.clear()
            try:
                await self._sync()
            except Exception as exc:  # a failed step is retried on the next change
                log.warning("voice could not follow the room: %r", exc)
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def _sync(self) -> None:
        room: Room = self.client.room
        me = room.participants.get(self.client.participant_id)
        if me is None:
            return
        self.recording.set_on(room.settings.recording and self.config.publish)
        lead = me.role in _LEADS
        forced_mute = me.muted or (room.settings.muted_all and not lead)
        self.session.set_muted(self.user_muted or forced_mute)
        mode = wanted_mode(room, self.config.mesh_limit)
        if self.user_talk_mode is not None:
            self.session.set_talk_mode(self.user_talk_mode)
        else:
            self.session.set_talk_mode(TalkMode.PUSH if mode == "sfu" and not lead else TalkMode.OPEN)
        if mode == "off":
            await self.session.set_peers([])
            await self.session.use_sfu(None)
            return
        await self.session.set_peers(room.participants)
        coordinator = sfu_coordinator(room)
        if coordinator != self.client.participant_id:
            if mode == "sfu" and self.session.sfu is None and coordinator is not None:
                self._waiting_sfu += 1
                if self._waiting_sfu % 2 == 0:  # no access yet after a while: ask for it
                    await self.signal.send(coordinator, VoiceSignal("ask", 0).to_dict())
            else:
                self._waiting_sfu = 0
            return
        sfu_url = self.sfu_url or getattr(self.client, "sfu_url", None)  # ours, or the one the relay announced
        if mode == "sfu" and sfu_url:
            if self._announced is None or self._announced["url"] != sfu_url:
                access = {"url": sfu_url, "room": room_number(room.id), "pin": new_pin()}
                await ensure_room(access["url"], access["room"], access["pin"])
                self._announced = access
            await self.session.use_sfu(self._announced)
            if self._dirty_roster(room):
                await self.session.announce_sfu(self._announced)  # late joiners get it too
        elif mode == "mesh" and self._announced is not None:
            self._announced = None
            await self.session.announce_sfu(None)
            await self.session.use_sfu(None)


__all__ = ["RoomVoice", "VoiceSignal", "sfu_coordinator", "wanted_mode"]
