"""Recorded voice replayed: two real aiortc voices through a real relay on 127.0.0.1, recorded, replayed.

Host (avatar on the listener's left) speaks a 440 Hz tone, then Bo (on the right) a 660 Hz
tone; each client uploads its own voice as Ogg Opus segments while the room records. The
replay's mixer, pulled in real time as a sound card would, plays at each chosen time the
right speaker's tone (within 1.5 %) from that speaker's side; seeking, pausing and speed
are followed (at 0.5x and 2x the voice is time-stretched at its own pitch); export -> import elsewhere still plays; deletion removes the voice blobs;
a damaged segment is reported and skipped while the rest plays.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.recording import RecordingStore, hooks
from deeproom.net.voice import ToneTrack, VoiceConfig, dominant_hz, rms
from deeproom.net.voice.room import RoomVoice
from deeproom.net.voice.spatial import render_live
from deeproom.presence import Pose
from deeproom.recording import Timeline
from deeproom.scenes.replay import ReplaySession
from deeproom.scenes.replay_voice import attach_voice
from tests.net.conftest import TONE_TOLERANCE, eventually, voiced

pytestmark = pytest.mark.timeout(240)

SPEAK_S = 3.0
HOST_AT = (-2.0, 1.6, 2.0)  # ahead and to the left of a listener at (0, 1.6, 0) facing +z
BO_AT = (2.0, 1.6, 2.0)  # ahead and to the right


async def _record(data_dir: Path) -> dict[str, Any]:
    live: dict[str, Any] = {}
    cfg = VoiceConfig(record=True)
    async with EmbeddedRelay(data_dir=data_dir, leave_grace_s=0.5) as relay, \
            RoomClient(relay.url, room="talk", name="Host") as host, \
            RoomClient(relay.url, room="talk", name="Bo") as bo, \
            RoomVoice(host, ToneTrack(440.0, amplitude=0.5), cfg) as hv, \
            RoomVoice(bo, ToneTrack(660.0, amplitude=0.5), cfg) as bv:
        hv.set_muted(True)
        bv.set_muted(True)
        for v in (hv, bv):
            v.recording.segment_s = 2.0  # several segments per speaker, cut while speaking

        async def poses() -> None:
            while True:
                hv.publish_pose(Pose(head_position=HOST_AT))
                bv.publish_pose(Pose(head_position=BO_AT))
                await asyncio.sleep(0.1)

        pose_task = asyncio.get_running_loop().create_task(poses())
        try:
            hid, bid = host.participant_id, bo.participant_id
            await eventually(lambda: hid in bv.session.recorders and bid in hv.session.recorders, timeout=30)
            await host.apply({"op": "set_recording", "recording": True})
            await eventually(lambda: hv.recording.on and bv.recording.on)
            rec = hooks.recorder_of(relay.server.rooms["talk"])
            assert rec is not None
            await asyncio.sleep(0.6)
            hv.set_muted(False)
            live["host_on"] = rec.now()
            await asyncio.sleep(SPEAK_S)
            hv.set_muted(True)
            live["host_off"] = rec.now()
            await asyncio.sleep(0.6)
            bv.set_muted(False)
            live["bo_on"] = rec.now()
            await asyncio.sleep(SPEAK_S)
            bv.set_muted(True)
            live["bo_off"] = rec.now()
            # what Bo heard live is the host's 440 Hz (the voice itself went through aiortc)
            live["bo_heard_hz"] = dominant_hz(voiced(bv.session.recorders[hid].samples))
            await asyncio.sleep(0.5)
            await host.apply({"op": "set_recording", "recording": False})
            # each speaker flushes its last segment when it sees the setting turn off
            await eventually(lambda: not hv.recording.on and not bv.recording.on)
            await eventually(lambda: hv.recording.pending == 0 and bv.recording.pending == 0, timeout=30)
            live["sent"] = {hid: list(hv.recording.sent), bid: list(bv.recording.sent)}
            live["errors"] = hv.recording.errors + bv.recording.errors
            live["id"], live["host"], live["bo"] = rec.id, hid, bid
        finally:
            pose_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pose_task
    return live


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data = tmp_path_factory.mktemp("voice") / "relay"
    live = asyncio.run(_record(data))
    return data, live


def _hear(tl: Timeline, blobs: Path, at: float, seconds: float = 0.8, **kw: Any) -> tuple[np.ndarray, list[str]]:
    """Play the replay from `at` and pull its voice mixer in real time for `seconds`: [n, 2]."""
    session = ReplaySession(tl, blobs, at=at, playing=kw.pop("playing", True), speed=kw.pop("speed", 1.0))
    voice = attach_voice(session, speakers=False)
    voice.listen((0.0, 1.6, 0.0), (1.0, 0.0, 0.0, 0.0))
    try:
        out = asyncio.run(render_live(voice.mixer, seconds))
    finally:
        session.close()
    return out, voice.reports


def _tone_side(stereo: np.ndarray) -> tuple[float, str]:
    sound = voiced(stereo)
    assert len(sound) > 0.5 * len(stereo), f"only {len(sound) / max(1, len(stereo)):.0%} of the replay carried sound"
    hz = dominant_hz(sound.mean(axis=1))
    left, right = rms(sound[:, 0]), rms(sound[:, 1])
    return hz, "left" if left > 2 * right else "right" if right > 2 * left else "centre"


def test_each_client_recorded_its_own_voice_in_segments(recorded: tuple[Path, dict[str, Any]]) -> None:
    data, live = recorded
    assert abs(live["bo_heard_hz"] - 440.0) < 440.0 * TONE_TOLERANCE
    assert live["errors"] == []
    tl = RecordingStore(data / "recordings").open(live["id"])
    assert tl.damage is None and tl.ended == "stopped by the host"
    by = {p: [s for s in tl.voice if s.participant == p] for p in (live["host"], live["bo"])}
    for pid, segs in by.items():
        assert len(segs) >= 2, f"{pid}: {segs}"
        assert [s.sha for s in segs] == [s.sha for s in live["sent"][pid]]  # nothing refused, nothing extra
        for s in segs:
            assert (data / "recordings" / "blobs" / s.sha[:2] / s.sha[2:]).is_file()
    # the host's voice spans its speaking time (silent segments are not uploaded)
    host_cover = (min(s.start for s in by[live["host"]]), max(s.end for s in by[live["host"]]))
    assert host_cover[0] <= live["host_on"] + 0.1 and host_cover[1] >= live["host_off"] - 0.1
    bo_cover = (min(s.start for s in by[live["bo"]]), max(s.end for s in by[live["bo"]]))
    assert bo_cover[0] <= live["bo_on"] + 0.1 and bo_cover[1] >= live["bo_off"] - 0.1


def test_replay_plays_the_right_speaker_from_their_side_and_follows_the_timeline(
        recorded: tuple[Path, dict[str, Any]]) -> None:
    data, live = recorded
    store = RecordingStore(data / "recordings")
    tl, blobs = store.open(live["id"]), data / "recordings" / "blobs"
    hz, side = _tone_side(_hear(tl, blobs, live["host_on"] + 0.8)[0])
    assert abs(hz - 440.0) < 440.0 * TONE_TOLERANCE and side == "left", (hz, side)
    hz, side = _tone_side(_hear(tl, blobs, live["bo_on"] + 0.8)[0])
    assert abs(hz - 660.0) < 660.0 * TONE_TOLERANCE and side == "right", (hz, side)
    # between the two, and paused: silence
    gap = (live["host_off"] + live["bo_on"]) / 2
    assert rms(_hear(tl, blobs, gap - 0.1, 0.3)[0][int(0.1 * 48000):]) < 0.01
    assert rms(_hear(tl, blobs, live["host_on"] + 1.0, 0.5, playing=False)[0]) < 1e-4
    # at 2x and at 0.5x the voice is time-stretched, its pitch kept; beyond 4x (skimming) it is muted
    for speed in (2.0, 0.5):
        hz, side = _tone_side(_hear(tl, blobs, live["host_on"] + 0.5, 0.6, speed=speed)[0])
        assert abs(hz - 440.0) < 440.0 * TONE_TOLERANCE and side == "left", (speed, hz, side)
    assert rms(_hear(tl, blobs, live["host_on"] + 1.0, 0.5, speed=8.0)[0]) < 1e-4
    # at 2x from the silence before the second speaker: their tone follows, from the right
    # (0.2 s of the replay's time before it is 0.1 s at 2x; the rest leaves room for a slow start)
    fast = _hear(tl, blobs, live["bo_on"] - 0.2, 1.4, speed=2.0)[0]
    hz, side = _tone_side(fast[int(0.6 * 48000):])
    assert abs(hz - 660.0) < 660.0 * TONE_TOLERANCE and side == "right", (hz, side)

    # a seek while playing: the voice jumps with the playhead
    session = ReplaySession(tl, blobs, at=live["host_on"] + 0.5, playing=True)
    voice = attach_voice(session, speakers=False)
    voice.listen((0.0, 1.6, 0.0), (1.0, 0.0, 0.0, 0.0))
    try:
        before = asyncio.run(render_live(voice.mixer, 0.5))
        session.seek(live["bo_on"] + 0.8)
        asyncio.run(render_live(voice.mixer, 0.2))  # the seek lands (a tick) and the queue turns over
        after = asyncio.run(render_live(voice.mixer, 0.6))
    finally:
        session.close()
    assert abs(_tone_side(before)[0] - 440.0) < 440.0 * TONE_TOLERANCE
    hz, side = _tone_side(after)
    assert abs(hz - 660.0) < 660.0 * TONE_TOLERANCE and side == "right", (hz, side)


def test_export_import_plays_and_delete_removes_the_voice(recorded: tuple[Path, dict[str, Any]],
                                                          tmp_path: Path) -> None:
    data, live = recorded
    src = RecordingStore(data / "recordings")
    archive = src.export(live["id"], tmp_path / "talk.drrec.tar")
    elsewhere = RecordingStore(tmp_path / "other" / "recordings")
    result = elsewhere.import_(archive)
    assert result.damage == []
    tl = elsewhere.open(result.id)
    assert len(tl.voice) == len(src.open(live["id"]).voice)
    hz, side = _tone_side(_hear(tl, tmp_path / "other" / "recordings" / "blobs", live["bo_on"] + 0.8)[0])
    assert abs(hz - 660.0) < 660.0 * TONE_TOLERANCE and side == "right"

    # deleting the imported copy removes its voice blobs (nothing else there uses them)
    shas = {s.sha for s in tl.voice}
    removed = elsewhere.delete(result.id)
    assert shas <= set(removed)
    assert not any(elsewhere.blob_path(s).exists() for s in shas)
    assert all(src.blob_path(s).exists() for s in shas)  # the original is untouched


def test_a_damaged_segment_is_reported_and_skipped_the_rest_plays(recorded: tuple[Path, dict[str, Any]],
                                                                 tmp_path: Path) -> None:
    data, live = recorded
    src = RecordingStore(data / "recordings")
    store = RecordingStore(tmp_path / "copy" / "recordings")
    rid = store.import_(src.export(live["id"], tmp_path / "a.tar")).id
    tl = store.open(rid)
    bad = max((s for s in tl.voice if s.participant == live["host"]), key=lambda s: min(s.end, live["host_off"])
              - max(s.start, live["host_on"]))
    t = max(bad.start, live["host_on"]) + 0.2
    assert min(bad.end, live["host_off"]) - t > 0.6
    path = store.blob_path(bad.sha)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 :] = b"\x00" * (len(raw) - len(raw) // 2)
    path.write_bytes(bytes(raw))
    heard, reports = _hear(tl, store.root / "blobs", t, 0.5)
    assert rms(heard) < 1e-3
    assert len(reports) == 1 and f"voice of {live['host']}" in reports[0] and "damaged and skipped" in reports[0]
    hz, side = _tone_side(_hear(tl, store.root / "blobs", live["bo_on"] + 0.8)[0])
    assert abs(hz - 660.0) < 660.0 * TONE_TOLERANCE and side == "right"

    # the original recording, deleted: its voice blobs go (no other recording in its store uses them)
    shas = {s.sha for s in src.open(live["id"]).voice}
    src.delete(live["id"])
    assert not any(src.blob_path(s).exists() for s in shas)
    shutil.rmtree(tmp_path / "copy")
