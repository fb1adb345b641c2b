"""Voice faults with real peers: a network hiccup inside a namespace of our own -> the link is
re-established with fresh ICE (a restart by renegotiation) and the tone is heard again."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.voice import SilenceTrack, ToneTrack, VoiceConfig, rms
from deeproom.net.voice.audio import SAMPLE_RATE
from deeproom.net.voice.netns import Namespace, available
from deeproom.net.voice.room import RoomVoice

from .conftest import assert_tone, eventually

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def test_voice_recovers_from_a_network_hiccup_by_restarting_ice(tmp_path: Path) -> None:
    why = available()
    if why:
        pytest.skip(f"needs network namespaces: {why}")

    async def scenario(ns: Namespace) -> None:
        cfg = VoiceConfig(record=True, addresses=(ns.address,), stall_s=1.0, connect_timeout_s=4.0)
        async with (
            EmbeddedRelay(host="127.0.0.1", port=0, data_dir=tmp_path / "relay", leave_grace_s=0.5) as relay,
            RoomClient(relay.url, room="r", name="A") as ca,
            RoomClient(relay.url, room="r", name="B") as cb,
            RoomVoice(ca, ToneTrack(440.0, 0.4), cfg) as a,
            RoomVoice(cb, SilenceTrack(), cfg) as b,
        ):
            pid = ca.participant_id
            await eventually(lambda: pid in b.session.recorders and b.session.recorders[pid].frames > 25, timeout=20)
            old_link = b.session.links[pid]
            # the hiccup: the only address voice uses disappears for 3 s (the relay, on lo, stays up)
            subprocess.run(["ip", "-n", ns.name, "addr", "del", f"{ns.address}/24", "dev", "drv0"], check=True)
            await asyncio.sleep(3.0)
            b.session.recorders[pid].clear()
            assert rms(b.session.recorders[pid].samples) == 0.0
            subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", "drv0"], check=True)
            # a second of what came after the hiccup; the last half of it is the tone again
            await eventually(lambda: len(b.session.recorders[pid].samples) >= SAMPLE_RATE, timeout=30)
            assert_tone(b.session.recorders[pid].samples[-SAMPLE_RATE // 2 :], 440.0)
            assert b.session.links[pid] is not old_link  # a new connection, new ICE credentials
            assert a.session.restarts + b.session.restarts >= 1
            assert ca.stats["reconnects"] == 0 and cb.stats["reconnects"] == 0  # nobody rejoined the room

    with Namespace.create() as ns:
        ns.run_inside(lambda: scenario(ns), timeout=150)
