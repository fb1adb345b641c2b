"""`deeproom bench replay`: what recording costs the relay, what it costs on disk, how fast a seek is.

- record_cpu_ratio: relay CPU with `serve --record` / without, the same load (bench relay's
  client processes: N clients at R Hz), both runs in this one invocation;
- bytes_per_participant_minute: the recording's bytes (presence; no voice is recorded yet)
  per participant per minute of that run;
- seek_ms: median of random seeks in a synthetic recording (`--minutes`, 30 participants at
  30 Hz, a panel move a second, a summon a minute);
- replay_position_err_ticks: in the synthetic recording, how many ticks the replayed panel
  position lags the written one at random times (0 when every state is where it was written);
- replay_tone_err_pct: null (voice is not recorded yet);
- peak_rss_mb: this process's peak RSS.
"""

from __future__ import annotations

import random
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from deeproom.document import new_room
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


def synthetic_recording(path: Path, minutes: float, participants: int = 30, hz: float = 30.0, seed: int = 0) -> list[tuple[float, float]]:
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
        poses = {pid: encode_pose(Pose(head_position=(rng.uniform(-3, 3), 1.6, rng.uniform(-3, 3)))) for pid in ids}
        if chunk is None or t - chunk.t0 >= 1.0:
            if chunk is not None:
                w.append(POSES, chunk.t0, chunk.encode())
            chunk = PresenceChunk(t, poses)
            # once a second: a panel move; once a minute: a summon
            x = round(rng.uniform(-5, 5), 3)
            w.append(UPDATE, t, doc.apply({"op": "move_panel", "panel_id": "p1", "transform": {"position": [x, 1.5, 2]}}, SYSTEM))
            updates += 1
            moves.append((t, x))
            if int(t) % 60 == 0:
                w.append(EVENT, t, b'{"kind": "summon", "sender": "host", "payload": {"panel_id": "p1"}}')
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


def measure_seeks(path: Path, moves: list[tuple[float, float]], seeks: int, seed: int = 1) -> dict[str, Any]:
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
        shown = max((j for j in range(max(0, i - 5), i + 1) if abs(moves[j][1] - x) < 1e-6), default=None)
        lag_ticks.append(0 if shown == i else 30 * (t - moves[shown][0]) if shown is not None else 1e9)
    player.close()
    return {"seek_ms": round(statistics.median(times), 2), "seek_p95_ms": round(sorted(times)[int(0.95 * len(times)) - 1], 2),
            "open_ms": round(open_ms, 1), "replay_position_err_ticks": round(max(lag_ticks), 2),
            "synthetic_bytes": path.stat().st_size}


def _relay_runs(clients: int, rate: float, seconds: float, workdir: Path) -> dict[str, Any]:
    from deeproom.net import bench_relay as br

    out: dict[str, Any] = {}
    for label, extra in (("plain", ()), ("record", ("--record",))):
        data = workdir / label
        data.mkdir()
        server = br._Server("relay", data, 30.0, extra)
        try:
            out[label] = br._run_load(server.url, "relay", clients, rate, seconds, 2, server.proc.pid)
        finally:
            server.stop()
        rec_dir = data / "recordings"
        out[f"{label}_bytes"] = sum(f.stat().st_size for f in rec_dir.rglob("*") if f.is_file()) if rec_dir.is_dir() else 0
    return out


def run_bench(*, clients: int, rate: float, seconds: float, minutes: float, seeks: int, relay: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "replay", "clients": clients, "rate": rate, "seconds": seconds, "minutes": minutes}
    with tempfile.TemporaryDirectory(prefix="deeproom-bench-replay-") as tmp:
        work = Path(tmp)
        if relay:
            runs = _relay_runs(clients, rate, seconds, work)
            plain, rec = runs["plain"]["server_cpu_pct"], runs["record"]["server_cpu_pct"]
            result["relay_cpu_pct_plain"] = plain
            result["relay_cpu_pct_record"] = rec
            result["record_cpu_ratio"] = round(rec / plain, 3) if plain else None
            result["p99_ms_plain"] = runs["plain"].get("p99_ms")
            result["p99_ms_record"] = runs["record"].get("p99_ms")
            result["bytes_per_participant_minute"] = round(runs["record_bytes"] / (clients * seconds / 60.0))
        else:
            result["record_cpu_ratio"] = None
            result["bytes_per_participant_minute"] = None
        path = work / "synthetic.drrec"
        t0 = time.perf_counter()
        moves = synthetic_recording(path, minutes)
        result["synthetic_write_s"] = round(time.perf_counter() - t0, 1)
        result.update(measure_seeks(path, moves, seeks))
        if result["bytes_per_participant_minute"] is None:
            result["bytes_per_participant_minute"] = round(result["synthetic_bytes"] / (30 * minutes))
    result["replay_tone_err_pct"] = None  # voice is not recorded yet
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result
