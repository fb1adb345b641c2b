"""`deeproom bench replay`: what recording costs the relay, what it costs on disk, how fast a seek is.

- record_cpu_ratio: the relay's CPU with recording on / off, from one relay process under one
  load (N clients at R Hz, 3 of them speaking: while the room records they upload Ogg Opus
  segments as blobs and announce them with `voice_segment`), the host switching recording on
  and off in alternating windows (`bench_load`); each window's figures, the load average and
  the other processes' CPU are reported next to it;
- bytes_per_participant_minute: presence and voice per participant per minute, as that run
  recorded them (timelines; voice blobs kept by the recordings) over the minutes it recorded;
  without the relay run, the synthetic recording's presence plus the voice a speaker's client
  uploads per minute (measured below) times `speakers` / clients;
- seek_ms: median of random seeks in a synthetic recording (`--minutes`, 30 participants at
  30 Hz, a panel move a second, a summon a minute);
- replay_position_err_ticks: in the synthetic recording, how many ticks the replayed panel
  position lags the written one at random times (0 when every state is where it was written);
- voice_bytes_per_speaker_minute: Ogg Opus bytes per minute of a speaker's turn (a pure tone,
  which Opus codes at ~49 kb/s against ~32 kb/s for speech: an upper figure);
- replay_tone_err_pct: two real aiortc voices on a real relay (in this process, 127.0.0.1)
  speak a 440 Hz then a 660 Hz tone while the room records; the recording is replayed
  (`ReplaySession` + `ReplayVoice`, its mixer pulled in real time) and the dominant
  frequency in the middle of each speaker's part is measured: the worse relative error, %;
  `replay_tone_side_ok`: each came from its speaker's side (avatar left / right);
- peak_rss_mb: this process's peak RSS.
"""

from __future__ import annotations

import asyncio
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from deeproom.document import new_room
from deeproom.net.recording.bench_load import WindowPlan, run_windows, summarize, voice_segment_s
from deeproom.net.voice.segments import SEGMENT_S
from deeproom.ops import SYSTEM
from deeproom.presence import Pose, encode_pose
from deeproom.recording import (
    CHAPTER,
    EVENT,
    POSES,
    SNAPSHOT,
    UPDATE,
    Player,
    PresenceChunk,
    TimelineWriter,
    encode_snapshot,
    read_timeline,
)

SNAPSHOT_S = 20.0
SPEAKERS = 3
"""Of the relay run's clients, how many speak (the issue's load: 30 clients, 3 speaking)."""
TONES = (440.0, 660.0)


def synthetic_recording(
    path: Path, minutes: float, participants: int = 30, hz: float = 30.0, seed: int = 0
) -> list[tuple[float, float]]:
    """Write a synthetic recording; returns (t, x) of every panel move written."""
    rng = random.Random(seed)
    doc = new_room("synthetic", name="synthetic", host_id="host", host_name="Host")
    doc.apply({"op": "add_panel", "panel_id": "p1", "kind": "metrics", "title": "Loss"}, SYSTEM)
    w = TimelineWriter(path, {"room_id": "synthetic", "started_wall": time.time()})
    w.append(SNAPSHOT, 0.0, encode_snapshot(0, doc.update_since(None)))
    ids = [f"p{i:02d}" for i in range(participants)]
    moves: list[tuple[float, float]] = []
    updates = 0
    last_snap = 0.0
    duration = minutes * 60.0
    period = 1.0 / hz
    n_ticks = int(duration * hz)
    chunk: PresenceChunk | None = None
    for k in range(n_ticks):
        t = k * period
        poses = {
            pid: encode_pose(Pose(head_position=(rng.uniform(-3, 3), 1.6, rng.uniform(-3, 3))))
            for pid in ids
        }
        if chunk is None or t - chunk.t0 >= 1.0:
            if chunk is not None:
                w.append(POSES, chunk.t0, chunk.encode())
            chunk = PresenceChunk(t, poses)
            # once a second: a panel move; once a minute: a summon
            x = round(rng.uniform(-5, 5), 3)
            w.append(
                UPDATE,
                t,
                doc.apply(
                    {"op": "move_panel", "panel_id": "p1", "transform": {"position": [x, 1.5, 2]}},
                    SYSTEM,
                ),
            )
            updates += 1
            moves.append((t, x))
            if int(t) % 60 == 0:
                w.append(
                    EVENT, t, b'{"kind": "summon", "sender": "host", "payload": {"panel_id": "p1"}}'
                )
                w.append(CHAPTER, t, b'{"title": "summon to p1", "kind": "summon"}')
            if t - last_snap >= SNAPSHOT_S:
                w.append(SNAPSHOT, t, encode_snapshot(updates, doc.update_since(None)))
                last_snap = t
        else:
            chunk.add(t, poses)
    if chunk is not None:
        w.append(POSES, chunk.t0, chunk.encode())
    w.close()
    return moves


def measure_seeks(
    path: Path, moves: list[tuple[float, float]], seeks: int, seed: int = 1
) -> dict[str, Any]:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    tl = read_timeline(path)
    open_ms = (time.perf_counter() - t0) * 1000
    player = Player(tl)
    times = []
    lag_ticks = []
    move_times = [m[0] for m in moves]
    import bisect

    for _ in range(seeks):
        t = rng.uniform(0, tl.duration)
        s = time.perf_counter()
        state = player.seek(t)
        _ = state.room.panels["p1"].transform.position, len(state.poses)
        times.append((time.perf_counter() - s) * 1000)
        x = state.room.panels["p1"].transform.position[0]
        i = bisect.bisect_right(move_times, t) - 1
        # ticks between the move that should be showing and the one that is
        shown = max(
            (j for j in range(max(0, i - 5), i + 1) if abs(moves[j][1] - x) < 1e-6), default=None
        )
        lag_ticks.append(
            0 if shown == i else 30 * (t - moves[shown][0]) if shown is not None else 1e9
        )
    player.close()
    return {
        "seek_ms": round(statistics.median(times), 2),
        "seek_p95_ms": round(sorted(times)[int(0.95 * len(times)) - 1], 2),
        "open_ms": round(open_ms, 1),
        "replay_position_err_ticks": round(max(lag_ticks), 2),
        "synthetic_bytes": path.stat().st_size,
    }


def relay_windows(clients: int, rate: float, plan: WindowPlan, workdir: Path) -> dict[str, Any]:
    """One relay process, recording switched on and off in windows (`bench_load`); what it recorded."""
    from deeproom.net import bench_relay as br

    data = workdir / "relay"
    data.mkdir()
    server = br._Server("relay", data, 30.0)
    try:
        out = run_windows(server.url, server.proc.pid, clients, rate, plan, SPEAKERS)
    finally:
        server.stop()
    rec_dir = data / "recordings"
    blobs = rec_dir / "blobs"
    out["recordings"] = (
        sum(1 for d in rec_dir.iterdir() if d.is_dir() and d != blobs) if rec_dir.is_dir() else 0
    )
    out["timeline_bytes"] = (
        sum(f.stat().st_size for f in rec_dir.glob("*/timeline.drrec")) if rec_dir.is_dir() else 0
    )
    out["voice_bytes_kept"] = (
        sum(f.stat().st_size for f in blobs.rglob("*") if f.is_file()) if blobs.is_dir() else 0
    )
    return out


async def _record_voices(data_dir: Path, speak_s: float) -> dict[str, Any]:
    """Two real voices (aiortc, loopback ICE) on a relay in this process: each speaks its tone in turn
    while the room records; returns the recording's id and when each spoke (recording clock)."""
    from deeproom.net import EmbeddedRelay, RoomClient
    from deeproom.net.recording import hooks
    from deeproom.net.voice import ToneTrack, VoiceConfig
    from deeproom.net.voice.room import RoomVoice

    out: dict[str, Any] = {"spoke": []}
    sides = ((-2.0, 1.6, 2.0), (2.0, 1.6, 2.0))
    async with (
        EmbeddedRelay(data_dir=data_dir, leave_grace_s=0.5) as relay,
        RoomClient(relay.url, room="bench-voice", name="A") as a,
        RoomClient(relay.url, room="bench-voice", name="B") as b,
        RoomVoice(a, ToneTrack(TONES[0], amplitude=0.5), VoiceConfig()) as va,
        RoomVoice(b, ToneTrack(TONES[1], amplitude=0.5), VoiceConfig()) as vb,
    ):
        voices = (va, vb)
        for v in voices:
            v.set_muted(True)
            # whole segments inside each speaker's turn: their bytes are speech's
            v.recording.segment_s = 2.0
        for v, at in zip(voices, sides, strict=True):
            v.publish_pose(Pose(head_position=at))
        await _until(
            lambda: (
                b.participant_id in a.room.participants and a.participant_id in b.room.participants
            )
        )
        await a.apply({"op": "set_recording", "recording": True})
        await _until(lambda: va.recording.on and vb.recording.on)
        rec = hooks.recorder_of(relay.server.rooms["bench-voice"])
        assert rec is not None
        for v, at in zip(voices, sides, strict=True):
            for _ in range(3):
                v.publish_pose(Pose(head_position=at))
                await asyncio.sleep(0.1)
            v.set_muted(False)
            t0 = rec.now()
            await asyncio.sleep(speak_s)
            v.set_muted(True)
            out["spoke"].append((v.client.participant_id, t0, rec.now(), at[0] < 0))
            await asyncio.sleep(0.5)
        await a.apply({"op": "set_recording", "recording": False})
        await _until(lambda: not va.recording.on and not vb.recording.on)
        await _until(lambda: va.recording.pending == 0 and vb.recording.pending == 0, 30.0)
        out["id"] = rec.id
        out["errors"] = va.recording.errors + vb.recording.errors
    return out


async def _until(check: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"bench replay: condition not met within {timeout} s")
        await asyncio.sleep(0.02)


def measure_voice(workdir: Path, speak_s: float = 4.0) -> dict[str, Any]:
    """Record two real voices, replay them through the replay's mixer, measure the tones heard."""
    import numpy as np

    from deeproom.net.recording.store import RecordingStore
    from deeproom.net.voice import dominant_hz, rms
    from deeproom.net.voice.spatial import render_live

    # the replay's own voice path (no Ursina is imported by these two modules)
    from deeproom.scenes.replay import ReplaySession
    from deeproom.scenes.replay_voice import attach_voice

    data = workdir / "voice"
    live = asyncio.run(_record_voices(data, speak_s))
    store = RecordingStore(data / "recordings")
    tl = store.open(live["id"])
    errs, sides_ok = [], True
    for (_pid, t0, t1, left), hz in zip(live["spoke"], TONES, strict=True):
        session = ReplaySession(
            tl, data / "recordings" / "blobs", at=(t0 + t1) / 2 - 0.5, playing=True
        )
        voice = attach_voice(session, speakers=False)
        voice.listen((0.0, 1.6, 0.0), (1.0, 0.0, 0.0, 0.0))
        try:
            heard = asyncio.run(render_live(voice.mixer, 1.0))
        finally:
            session.close()
        sound = heard[np.abs(heard).max(axis=1) > 1e-3]
        if len(sound) < len(heard) // 2:
            errs.append(100.0)
            sides_ok = False
            continue
        errs.append(abs(dominant_hz(sound.mean(axis=1)) - hz) / hz * 100)
        louder_left = rms(sound[:, 0]) > rms(sound[:, 1])
        sides_ok = sides_ok and louder_left == left
    # what a speaker uploads per minute of talking: the segments wholly inside a turn (no silence in them)
    whole = [
        seg
        for seg in tl.voice
        for pid, t0, t1, _ in live["spoke"]
        if seg.participant == pid and t0 - 0.05 <= seg.start and seg.end <= t1 + 0.05
    ]
    voice_bytes = sum(seg.bytes for seg in whole)
    voice_s = sum(seg.duration for seg in whole)
    return {
        "replay_tone_err_pct": round(max(errs), 3),
        "replay_tone_side_ok": sides_ok,
        "voice_segments": len(tl.voice),
        "voice_upload_errors": len(live["errors"]),
        "voice_bytes_per_speaker_minute": round(voice_bytes / (voice_s / 60.0))
        if voice_s
        else None,
    }


def run_bench(
    *,
    clients: int,
    rate: float,
    seconds: float,
    minutes: float,
    seeks: int,
    relay: bool,
    windows: int = 9,
    settle: float = 1.0,
) -> dict[str, Any]:
    """`seconds`: per window of the relay run (`windows` of them, the first `settle` s of each discarded)."""
    plan = WindowPlan(windows, seconds, settle, voice_segment_s(seconds, SEGMENT_S))
    if relay:
        try:
            plan.check(clients, SPEAKERS)
        except ValueError as exc:
            raise SystemExit(f"deeproom bench replay: {exc}") from None
    result: dict[str, Any] = {
        "bench": "replay",
        "clients": clients,
        "rate": rate,
        "speakers": SPEAKERS,
        "windows": windows,
        "window_s": seconds,
        "settle_s": settle,
        "voice_segment_s": plan.segment_s,
        "minutes": minutes,
    }
    with tempfile.TemporaryDirectory(prefix="deeproom-bench-replay-") as tmp:
        work = Path(tmp)
        if relay:
            run = relay_windows(clients, rate, plan, work)
            result.update(summarize(run["windows"]))
            result["p99_ms"] = run["p99_ms"]
            per_minute = clients * run["recorded_s"] / 60.0
            result["recorded_s"] = run["recorded_s"]
            result["recordings"] = run["recordings"]
            result["voice_segments_sent"] = run["voice_segments_sent"]
            result["voice_errors"] = run["voice_errors"]
            result["voice_segments_late"] = run["voice_segments_late"]
            result["clients_dropped"] = run["clients_dropped"]
            result["presence_bytes_per_participant_minute"] = round(
                run["timeline_bytes"] / per_minute
            )
            result["voice_bytes_per_participant_minute"] = round(
                run["voice_bytes_kept"] / per_minute
            )
            result["window_figures"] = run["windows"]
        else:
            result["record_cpu_ratio"] = None
            result["presence_bytes_per_participant_minute"] = None
            result["voice_bytes_per_participant_minute"] = None
        path = work / "synthetic.drrec"
        t0 = time.perf_counter()
        moves = synthetic_recording(path, minutes)
        result["synthetic_write_s"] = round(time.perf_counter() - t0, 1)
        result.update(measure_seeks(path, moves, seeks))
        if result["presence_bytes_per_participant_minute"] is None:
            result["presence_bytes_per_participant_minute"] = round(
                result["synthetic_bytes"] / (30 * minutes)
            )
        result.update(measure_voice(work))
    if result["voice_bytes_per_participant_minute"] is None:
        # no relay run: 3 of `clients` speaking all the time
        per_speaker = result["voice_bytes_per_speaker_minute"] or 0
        result["voice_bytes_per_participant_minute"] = round(
            per_speaker * min(SPEAKERS, clients) / clients
        )
    result["bytes_per_participant_minute"] = (
        result["presence_bytes_per_participant_minute"]
        + result["voice_bytes_per_participant_minute"]
    )
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result
