"""Voice through a real Janus SFU, started by the test inside a network namespace of its own.

Janus never gathers ICE candidates on loopback, so each test creates a namespace
(its own `lo` plus a veth pair kept inside it, 10.213.0.1), runs Janus there via
`ip netns exec`, and runs the relay and every client on an event loop in a thread
that joined the namespace. Nothing touches the machine's interfaces; the namespace
is deleted and Janus stopped by PID afterwards, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.voice import SilenceTrack, ToneTrack, VoiceConfig, rms
from deeproom.net.voice.audio import SAMPLE_RATE
from deeproom.net.voice.janus import JanusServer, find_janus, janus_pids_alive
from deeproom.net.voice.netns import Namespace, available
from deeproom.net.voice.room import RoomVoice

from .conftest import assert_tone, eventually, voiced_fraction

T = TypeVar("T")
pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def in_namespace(fn: Callable[[Namespace], Awaitable[T]], timeout: float = 200) -> T:
    why = available()
    if why:
        pytest.skip(f"SFU tests need network namespaces: {why}")
    if find_janus() is None:
        pytest.fail("janus is not installed (it is listed in tools/system-packages.txt)")
    with Namespace.create() as ns:
        return ns.run_inside(lambda: fn(ns), timeout=timeout)


def heard(v: RoomVoice, speaker: str, seconds: float = 0.5) -> Any:
    rec = v.session.recorders.get(speaker)
    return rec.samples[-int(seconds * SAMPLE_RATE) :] if rec is not None else []


def test_janus_carries_one_speaker_to_ten_listeners(tmp_path: Path) -> None:
    async def scenario(ns: Namespace) -> None:
        async with (
            JanusServer(ns.address, namespace=ns) as janus,
            EmbeddedRelay(host="127.0.0.1", port=0, data_dir=tmp_path / "relay", leave_grace_s=0.5) as relay,
            contextlib.AsyncExitStack() as stack,
        ):
            pid = janus.pid
            assert pid is not None
            host = await stack.enter_async_context(RoomClient(relay.url, room="lecture", name="Teacher"))
            await host.apply({"op": "set_voice", "mode": "sfu"})
            cfg = VoiceConfig(record=True, addresses=(ns.address,))
            teacher = await stack.enter_async_context(
                RoomVoice(host, ToneTrack(440.0, 0.4), cfg, sfu_url=janus.url)
            )
            listeners = []
            for i in range(10):
                c = await stack.enter_async_context(RoomClient(relay.url, room="lecture", name=f"S{i}"))
                v = await stack.enter_async_context(
                    RoomVoice(c, SilenceTrack(), VoiceConfig(record=True, addresses=(ns.address,), publish=False))
                )
                listeners.append(v)
            tid = host.participant_id
            await eventually(lambda: all(len(heard(v, tid, 0.5)) >= SAMPLE_RATE // 2 for v in listeners), timeout=60)
            for v in listeners:
                assert v.session.mode == "sfu" and not v.session.links  # no direct links at all
                assert_tone(heard(v, tid, 0.5), 440.0)
                # candidates were our namespace's address, never loopback or the machine's
                sub = next(iter(v.session.sfu.subscribers.values()))
                cands = [ln for ln in sub.pc.remoteDescription.sdp.splitlines() if "candidate" in ln and "typ" in ln]
                assert cands and all(f" {ns.address} " in c for c in cands)
            assert teacher.session.sfu.publisher is not None
        assert not janus_pids_alive(pid)

    in_namespace(scenario)


def test_switch_from_mesh_to_sfu_without_rejoining_and_students_push_to_talk(tmp_path: Path) -> None:
    async def scenario(ns: Namespace) -> None:
        async with (
            JanusServer(ns.address, namespace=ns) as janus,
            EmbeddedRelay(host="127.0.0.1", port=0, data_dir=tmp_path / "relay", leave_grace_s=0.5) as relay,
            contextlib.AsyncExitStack() as stack,
        ):
            cfg = VoiceConfig(record=True, addresses=(ns.address,), mesh_limit=2)
            ch = await stack.enter_async_context(RoomClient(relay.url, room="class", name="Teacher"))
            teacher = await stack.enter_async_context(RoomVoice(ch, ToneTrack(440.0, 0.4), cfg, sfu_url=janus.url))
            cs = await stack.enter_async_context(RoomClient(relay.url, room="class", name="Student"))
            student = await stack.enter_async_context(RoomVoice(cs, ToneTrack(660.0, 0.4), cfg))
            tid, sid = ch.participant_id, cs.participant_id
            # two people: a direct mesh, everyone talks freely
            await eventually(lambda: len(heard(student, tid, 1.0)) >= SAMPLE_RATE and len(heard(teacher, sid, 1.0)) >= SAMPLE_RATE, timeout=20)
            assert student.session.mode == "mesh" and tid in student.session.links
            assert_tone(heard(teacher, sid), 660.0)
            sessions_before = (ch.stats["reconnects"], cs.stats["reconnects"])

            # a third joins: above the threshold of 2 the room moves to the SFU by itself
            late_stack = contextlib.AsyncExitStack()
            cl = await late_stack.enter_async_context(RoomClient(relay.url, room="class", name="Late"))
            late = await late_stack.enter_async_context(RoomVoice(cl, SilenceTrack(), cfg))
            await eventually(lambda: all(v.session.mode == "sfu" for v in (teacher, student, late)), timeout=30)
            await eventually(lambda: not student.session.links and not teacher.session.links, timeout=10)
            student.session.recorders.pop(tid, None)
            late.session.recorders.pop(tid, None)
            await eventually(lambda: len(heard(student, tid, 1.0)) >= SAMPLE_RATE and len(heard(late, tid, 1.0)) >= SAMPLE_RATE, timeout=30)
            assert_tone(heard(late, tid), 440.0)  # the instructor is always heard
            assert (ch.stats["reconnects"], cs.stats["reconnects"]) == sessions_before  # nobody rejoined
            assert cs.participant_id == sid

            # the student is on push-to-talk now: silent until the key is held
            await eventually(lambda: len(heard(late, sid, 0.5)) >= SAMPLE_RATE // 2, timeout=30)
            await asyncio.sleep(0.5)
            assert rms(heard(late, sid, 0.4)) < 0.01
            student.press_to_talk(True)
            await eventually(lambda: voiced_fraction(heard(late, sid, 0.4)) > 0.9, timeout=10)
            assert_tone(heard(late, sid, 0.4), 660.0)

            # the third leaves: back to two, back to a direct mesh, still without rejoining
            await late_stack.aclose()
            await eventually(lambda: teacher.session.mode == "mesh" and student.session.mode == "mesh", timeout=30)
            student.session.recorders.pop(tid, None)
            await eventually(lambda: tid in student.session.links and len(heard(student, tid, 1.0)) >= SAMPLE_RATE, timeout=30)
            assert_tone(heard(student, tid), 440.0)
            assert (ch.stats["reconnects"], cs.stats["reconnects"]) == sessions_before

    in_namespace(scenario)


def test_voice_comes_back_after_the_sfu_restarts(tmp_path: Path) -> None:
    async def scenario(ns: Namespace) -> None:
        janus = JanusServer(ns.address, namespace=ns, workdir=tmp_path / "janus")
        (tmp_path / "janus").mkdir()
        await janus.start()
        try:
            async with (
                EmbeddedRelay(host="127.0.0.1", port=0, data_dir=tmp_path / "relay", leave_grace_s=0.5) as relay,
                RoomClient(relay.url, room="r", name="T") as ch,
                RoomClient(relay.url, room="r", name="S") as cs,
            ):
                await ch.apply({"op": "set_voice", "mode": "sfu"})
                cfg = VoiceConfig(record=True, addresses=(ns.address,))
                async with (
                    RoomVoice(ch, ToneTrack(440.0, 0.4), cfg, sfu_url=janus.url) as _teacher,
                    RoomVoice(cs, SilenceTrack(), VoiceConfig(record=True, addresses=(ns.address,), publish=False)) as s,
                ):
                    tid = ch.participant_id
                    await eventually(lambda: len(heard(s, tid)) >= SAMPLE_RATE // 2, timeout=30)
                    old_pid = janus.pid
                    await janus.stop()
                    assert old_pid is not None and not janus_pids_alive(old_pid)
                    await asyncio.sleep(1.0)
                    await janus.start()  # a new process, a new session, no room: all rebuilt by the clients
                    s.session.recorders.pop(tid, None)
                    await eventually(lambda: len(heard(s, tid, 1.0)) >= SAMPLE_RATE, timeout=40)
                    assert_tone(heard(s, tid), 440.0)
                    assert s.session.sfu.restarts >= 1
        finally:
            await janus.stop()

    in_namespace(scenario)
