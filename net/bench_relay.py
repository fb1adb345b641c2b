"""`deeproom bench relay`: poses from N participants through a real relay.

The relay runs as its own process (`deeproom serve`), the participants in one or a few
generator processes (`deeproom.net.bench_clients`: hundreds per process on one event
loop, speaking the wire protocol over raw websockets, so that the relay, not the load
generator, is what runs out of CPU). Each participant joins the room, then sends poses at
the given rate, each stamped with its send time and a sequence number. Every participant
counts the batches and entries it receives (and confirms them, as the protocol's flow
control asks); a few probe participants also decode every batch and record how old each
new pose is on arrival (p50/p99).

delivered_ratio = batch entries received in the window / entries the relay scheduled
for every recipient (recipients it skipped for being backed up count as not delivered).
pose_coverage = distinct poses the probes received / poses the others sent in the window
(below 1 by design: a pose overtaken within one tick is never sent). The relay's CPU is
reported next to the generator's and the whole machine's, and `limited_by` names what
ran out (relay, generator, machine). The same load is then sent through a naive relay
that forwards every pose to every peer at once (the baseline), in the same run.

Also run as `python -m deeproom.net.bench_relay naive --port P` to start that
naive relay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from deeproom.config import Config
from deeproom.net.procs import stop_process

ROOM = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"relay did not listen on {port} within {timeout} s")


def _stop_process(proc: subprocess.Popen[bytes], log: Any) -> None:
    """Stop a process this bench started, by its PID (terminate, then kill), and close its log."""
    stop_process(proc)
    log.close()


# --- the naive relay (baseline) ----------------------------------------------------------


def naive_main(port: int) -> None:
    """Forward every pose to every other client in the room, at once."""
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"])
    names: dict[str, bytes] = {}

    @sio.on("join")
    async def join(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        await sio.enter_room(sid, str(data["room"]))
        key = str(data["participant_id"]).encode()
        names[sid] = bytes((len(key),)) + key
        return {"ok": True}

    @sio.on("pose")
    async def pose(sid: str, data: bytes) -> None:
        await sio.emit("pose", names[sid] + data, room=ROOM, skip_sid=sid)

    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- one run ---------------------------------------------------------------------------------


def _key(pid: str) -> str:
    from deeproom.net.bench_clients import bench_key

    return bench_key(pid)


def _run_load(url: str, mode: str, n: int, rate: float, seconds: float, procs: int, server_pid: int,
              warmup: float = 2.0, password: str | None = None, hostile: int = 0,
              data_dir: Path | None = None, more_nodes: tuple[tuple[str, int], ...] = (),
              redis_pid: int | None = None, hostile_window_s: float = 0.0, pose_frames: int = 1) -> dict[str, Any]:
    """One load. `more_nodes`: (url, pid) of further relay nodes sharing the room through Redis
    (`redis_pid`); the clients are then split across all nodes. `procs`: generator processes
    (participants of `deeproom.net.bench_clients`, many per process). `hostile_window_s` > 0: the
    hostile clients act only in every other window of the measured time (`bench_hostile.Phases`),
    and the result's `phases` compares the windows with and without them. `pose_frames`: how the
    participants send poses (1: compact poses, 2: `pose` events; the naive relay always gets 2)."""
    import psutil

    from deeproom.net.bench_clients import generator_proc, probe_ids
    from deeproom.net.bench_hostile import hostile_proc

    ctx = mp.get_context("spawn")
    ready, results, hostile_results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    times = ctx.Array("d", 4)
    ids = [f"c{i:03d}" for i in range(n)]
    procs = max(1, min(procs, n))
    groups = [ids[i::procs] for i in range(procs)]
    urls = [url, *(u for u, _ in more_nodes)]
    target: str | list[str] = url if not more_nodes else urls
    probes = probe_ids(n)
    workers = [ctx.Process(target=generator_proc,
                           args=(target, mode, g, n, rate, probes, ready, go, times, results, password, pose_frames),
                           daemon=True)
               for g in groups if g]
    hostiles = []
    if hostile:
        assert password is not None
        h_ids = [f"h{i:03d}" for i in range(hostile)]
        hostiles.append(ctx.Process(target=hostile_proc, args=(url, h_ids, [_key(h) for h in h_ids], password, ready,
                                                               go, times, hostile_results, 1.0, hostile_window_s),
                                    daemon=True))
    for w in workers + hostiles:
        w.start()
    server = psutil.Process(server_pid)
    nodes_ps = [server, *(psutil.Process(pid) for _, pid in more_nodes)]
    redis_ps = psutil.Process(redis_pid) if redis_pid is not None else None
    sampler = _RssSampler(server)
    try:
        _gather(ready, workers + hostiles, len(workers) + len(hostiles), 300, "join")
        state0 = _store_state(data_dir) if data_dir is not None else None
        rss_before = server.memory_info().rss
        now = time.time()
        start = now + 0.3
        times[0], times[1], times[2], times[3] = start, start + warmup, start + warmup + seconds, start + warmup + seconds + 0.3
        sampler.start()
        go.set()
        time.sleep(max(0.0, times[1] - time.time()))
        procs_ps = [psutil.Process(w.pid) for w in workers]
        hostile_ps = [psutil.Process(w.pid) for w in hostiles]
        def snapshot() -> tuple[Any, ...]:
            """The wall clock, CPU times, the relays' counters and the relay's RSS, read together (CPU
            times first: a loaded relay can take a while to answer /health)."""
            return (time.monotonic(), _cpu(server), [_cpu(p) for p in nodes_ps],
                    _cpu(redis_ps) if redis_ps is not None else 0.0, [_cpu(p) for p in procs_ps],
                    sum(_cpu(p) for p in hostile_ps), psutil.cpu_times(),
                    _stats(url) if mode == "relay" else {}, [_stats(u) for u in urls[1:]] if mode == "relay" else [],
                    server.memory_info().rss)

        wall0, cpu0, ncpu0, rcpu0, gcpu0, hcpu0, machine0, stats0, more0, rss0 = snapshot()
        marks = _phase_marks(server, url, times[1], times[2], hostile_window_s) if hostile_window_s > 0 else []
        time.sleep(max(0.0, times[2] - time.time()))
        wall1, cpu1, ncpu1, rcpu1, gcpu1, hcpu1, machine1, stats1, more1, rss1 = snapshot()
        sent = entries = batches_in = disconnected = probes_n = probe_sent = probe_delivered = skipped = errors = 0
        lat: list[np.ndarray] = []
        arrived: list[np.ndarray] = []
        cross_lat: list[np.ndarray] = []
        lags: list[np.ndarray] = []
        for r in _gather(results, workers, len(workers), 120, "report"):
            sent += r["sent"]
            probes_n += r["probes"]
            probe_sent += r["probe_sent"]
            probe_delivered += r["probe_delivered"]
            disconnected += r["dropped"]
            skipped += r["slots_skipped"]
            errors += r["errors"]
            if stats0:
                # entries of the batches the relay made between the two snapshots
                batches = np.frombuffer(r["batches"], dtype=np.float64).reshape(-1, 2)
                inside = (batches[:, 0] > stats0["time"]) & (batches[:, 0] <= stats1["time"])
                entries += int(batches[inside, 1].sum())
                batches_in += int(inside.sum())
            lat.append(np.frombuffer(r["latencies"], dtype=np.float32))
            pairs = np.frombuffer(r["arrivals"], dtype=np.float64).reshape(-1, 2)
            arrived.append(np.repeat(pairs[:, 0], pairs[:, 1].astype(np.int64)))
            cross_lat.append(np.frombuffer(r["cross"], dtype=np.float32))
            lags.append(np.frombuffer(r["lag_ms"], dtype=np.float64))
        tally: dict[str, int] = {}
        if hostiles:
            tally = json.loads(_gather(hostile_results, hostiles, 1, 120, "report")[0][1])
        state1 = _store_state(data_dir) if data_dir is not None else None
        rss_after = server.memory_info().rss
    finally:
        sampler.stop()
        for w in workers + hostiles:
            w.join(10)
            if w.is_alive():
                w.kill()
    latencies = np.concatenate(lat) * 1000.0 if lat else np.zeros(0)
    arrivals = np.concatenate(arrived) if arrived else np.zeros(0)
    lag = np.concatenate(lags) if lags else np.zeros(0)
    all_poses = sent * (n - 1)
    # what the probes should have seen: every pose the others sent in the window
    probe_expected = probes_n * sent - probe_sent
    if mode == "relay":
        # The relay sends each participant's latest pose once per tick; what it scheduled
        # for everyone (skipped, backed-up recipients included) is what was expected.
        # (several nodes: their counts summed; batches are counted inside node 1's window)
        expected = stats1["entries_scheduled"] - stats0["entries_scheduled"]
        expected += sum(b["entries_scheduled"] - a["entries_scheduled"] for a, b in zip(more0, more1, strict=True))
        received = entries
    else:
        expected, received = probe_expected, probe_delivered
    cpu = cpu1 - cpu0
    wall = wall1 - wall0
    gen_cpu = [b - a for a, b in zip(gcpu0, gcpu1, strict=True)]
    node_cpu = [b - a for a, b in zip(ncpu0, ncpu1, strict=True)]
    machine_busy = _busy(machine1) - _busy(machine0)
    multi: dict[str, Any] = {}
    if more_nodes:
        crossed = np.concatenate(cross_lat) * 1000.0 if cross_lat else np.zeros(0)
        ticks = (stats1.get("ticks", 0) - stats0.get("ticks", 0)
                 + sum(b.get("ticks", 0) - a.get("ticks", 0) for a, b in zip(more0, more1, strict=True)))
        multi = {
            "nodes": len(urls),
            "cross_node_p50_ms": round(float(np.percentile(crossed, 50)), 2) if crossed.size else None,
            "cross_node_p99_ms": round(float(np.percentile(crossed, 99)), 2) if crossed.size else None,
            "cross_node_samples": int(crossed.size),
            "per_node_cpu_pct": [round(100.0 * c / wall, 1) for c in node_cpu],
            "nodes_us_per_delivery": round(1e6 * sum(node_cpu) / received, 2) if received else None,
            "nodes_us_per_batch": round(1e6 * sum(node_cpu) / batches_in, 1) if batches_in else None,
            "redis_cpu_pct": round(100.0 * (rcpu1 - rcpu0) / wall, 1),
            # each node publishes one batch per room per tick (its own clients' changed poses)
            "redis_publishes_per_s": round(ticks / wall, 1),
            "redis_us_per_publish": round(1e6 * (rcpu1 - rcpu0) / ticks, 1) if ticks else None,
        }
    relay_pcts = [100.0 * c / wall for c in node_cpu]
    gen_pcts = [100.0 * c / wall for c in gen_cpu]
    lag_p99 = float(np.percentile(lag, 99)) if lag.size else None
    machine_pct = 100.0 * machine_busy / wall
    return {
        "expected": expected,
        "delivered": received,
        "delivered_ratio": round(received / expected, 4) if expected else 0.0,
        "batches_delivered": batches_in,
        "poses_sent_x_peers": all_poses,
        "distinct_poses_delivered": probe_delivered,
        "pose_coverage": round(probe_delivered / probe_expected, 4) if probe_expected else 0.0,
        "probes": probes_n,
        "latency_samples": int(latencies.size),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies.size else None,
        "server_cpu_pct": round(100.0 * cpu / wall, 1),
        "us_per_delivery": round(1e6 * cpu / received, 2) if received else None,
        "us_per_batch": round(1e6 * cpu / batches_in, 1) if batches_in else None,
        "batches_per_s": round(batches_in / wall, 1),
        "entries_per_s": round(received / wall, 1),
        "generator_procs": len(workers),
        "pose_frames": pose_frames if mode == "relay" else 2,
        "compact_poses_in_per_s": round((stats1.get("compact_poses_in", 0) - stats0.get("compact_poses_in", 0)) / wall, 1)
        if stats0 else None,
        "generator_cpu_pct": round(sum(gen_pcts), 1),
        "generator_busiest_proc_cpu_pct": round(max(gen_pcts), 1) if gen_pcts else None,
        "generator_lag_p99_ms": round(lag_p99, 2) if lag_p99 is not None else None,
        "generator_slots_skipped": skipped,
        "clients_cpu_pct": round(sum(gen_pcts), 1),
        "hostile_cpu_pct": round(100.0 * (hcpu1 - hcpu0) / wall, 1),
        "machine_cpu_pct": round(machine_pct, 1),
        "other_cpu_pct": round(max(0.0, machine_pct - sum(relay_pcts) - sum(gen_pcts)
                                   - 100.0 * (hcpu1 - hcpu0 + rcpu1 - rcpu0) / wall), 1),
        "limited_by": _limited_by(relay_pcts, gen_pcts, lag_p99, machine_pct, rate),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "server_rss_start_mb": round(rss0 / 2**20, 1),
        "server_rss_end_mb": round(rss1 / 2**20, 1),
        "server_rss_growth_mb": round((rss_after - rss_before) / 2**20, 1),
        "server_peak_rss_mb": round(max(sampler.peak, rss_after) / 2**20, 1),
        **sampler.figures(times[1], times[2]),
        "state_changes": _state_changes(state0, state1) if state0 is not None and state1 is not None else None,
        **(_tick_figures(stats0, stats1) if stats0 else {}),
        **(_relay_rates(stats0, stats1, wall) if stats0 else {}),
        "hostile_tally": tally,
        **({"phases": _phase_figures(marks, latencies, arrivals, times[1], hostile_window_s)} if marks else {}),
        "normal_clients_dropped": disconnected,
        "normal_clients_errors": errors,
        **multi,
    }


PHASE_SETTLE_S = 1.0
"""Left out at the start of each phase window: hostile work still finishing, or only starting."""


def _phase_marks(server: Any, url: str, t0: float, t1: float, window: float) -> list[dict[str, Any]]:
    """Relay CPU, the machine's busy time and the relay's counters at the measured part of each phase
    window (from `PHASE_SETTLE_S` into it to its end); sleeps through the windows. Window k is
    hostile when k is odd."""
    import psutil

    marks: list[dict[str, Any]] = []
    k = 0
    while t0 + k * window < t1 - 1e-6:
        begin, end = t0 + k * window + PHASE_SETTLE_S, min(t1, t0 + (k + 1) * window)
        if end - begin < 0.5:
            break
        sample: dict[str, Any] = {"k": k, "hostile": k % 2 == 1}
        for edge, at in (("0", begin), ("1", end)):
            time.sleep(max(0.0, at - time.time()))
            sample["wall" + edge] = time.monotonic()
            sample["cpu" + edge] = _cpu(server)
            sample["machine" + edge] = _busy(psutil.cpu_times())
            with contextlib.suppress(Exception):
                sample["stats" + edge] = _stats(url)
        marks.append(sample)
        k += 1
    return marks


def _phase_figures(marks: list[dict[str, Any]], latencies: np.ndarray, arrivals: np.ndarray, t0: float,
                   window: float) -> dict[str, Any]:
    """The normal clients' latency and the relay's CPU and tick lateness, in the hostile windows
    against the quiet ones of the same run."""
    out: dict[str, Any] = {"window_s": window, "settle_s": PHASE_SETTLE_S}
    k = np.floor((arrivals - t0) / window)
    into = arrivals - (t0 + k * window)
    measured = {int(m["k"]) for m in marks}
    in_marks = np.isin(k, list(measured)) & (into >= PHASE_SETTLE_S)
    for name, hostile in (("quiet", False), ("hostile", True)):
        mine = [m for m in marks if m["hostile"] == hostile]
        sel = in_marks & ((k % 2 == 1) == hostile)
        lat = latencies[sel] if latencies.size == arrivals.size else np.zeros(0)
        wall = sum(m["wall1"] - m["wall0"] for m in mine)
        cpu = sum(m["cpu1"] - m["cpu0"] for m in mine)
        machine = sum(m["machine1"] - m["machine0"] for m in mine)
        with_stats = [m for m in mine if "stats0" in m and "stats1" in m]
        ticks = sum(m["stats1"]["ticks"] - m["stats0"]["ticks"] for m in with_stats)
        late10 = sum(m["stats1"]["ticks_late_10ms"] - m["stats0"]["ticks_late_10ms"] for m in with_stats)
        late_ms = sum(m["stats1"]["tick_late_total_ms"] - m["stats0"]["tick_late_total_ms"] for m in with_stats)
        out[name] = {
            "windows": len(mine),
            "samples": int(lat.size),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            "p99_by_window_ms": [round(float(np.percentile(latencies[in_marks & (k == m["k"])], 99)), 1)
                                 if np.any(in_marks & (k == m["k"])) else None for m in mine],
            "relay_cpu_pct": round(100.0 * cpu / wall, 1) if wall else None,
            "machine_cpu_pct": round(100.0 * machine / wall, 1) if wall else None,
            "tick_late_mean_ms": round(late_ms / ticks, 2) if ticks else None,
            "ticks_late_10ms_pct": round(100.0 * late10 / ticks, 2) if ticks else None,
        }
    return out


SATURATED_PCT = 85.0
"""A process at or above this share of one core is taken as saturated (one event loop = one core)."""


def _cpu(proc: Any) -> float:
    """User + system CPU seconds of a process so far."""
    t = proc.cpu_times()
    return float(t[0] + t[1])


def _busy(times: Any) -> float:
    """CPU seconds the whole machine spent running something (all cores; Linux counts guest time in user)."""
    return float(times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0))


def _limited_by(relay_pcts: list[float], gen_pcts: list[float], lag_p99_ms: float | None, machine_pct: float,
                rate: float) -> list[str]:
    """What ran out during the window: "relay" (a relay process near a full core), "generator" (a
    generator process near a full core, or, with cores to spare, its send timer more than a pose
    period late at p99), "machine" (every core busy: whoever is measured got less CPU than it
    wanted, and a late timer is the machine's doing). Empty: nothing."""
    out = []
    machine_full = machine_pct >= SATURATED_PCT * (os.cpu_count() or 1)
    if any(p >= SATURATED_PCT for p in relay_pcts):
        out.append("relay")
    late = lag_p99_ms is not None and lag_p99_ms > 1000.0 / rate
    if any(p >= SATURATED_PCT for p in gen_pcts) or (late and not machine_full):
        out.append("generator")
    if machine_full:
        out.append("machine")
    return out


def _relay_rates(stats0: dict[str, Any], stats1: dict[str, Any], wall: float) -> dict[str, Any]:
    """The relay's own counts over the window, per second."""
    return {
        "relay_poses_in_per_s": round((stats1["poses_in"] - stats0["poses_in"]) / wall, 1),
        "relay_batches_out_per_s": round((stats1["batches_out"] - stats0["batches_out"]) / wall, 1),
        "relay_skipped_backed_up": stats1.get("skipped_backed_up", 0) - stats0.get("skipped_backed_up", 0),
    }


def _tick_figures(stats0: dict[str, Any], stats1: dict[str, Any]) -> dict[str, Any]:
    """How late the relay's presence ticks started in the window (its loop busy, or no CPU for it)."""
    ticks = stats1.get("ticks", 0) - stats0.get("ticks", 0)
    if ticks <= 0:
        return {}
    return {
        "relay_ticks": ticks,
        "relay_tick_late_mean_ms": round((stats1["tick_late_total_ms"] - stats0["tick_late_total_ms"]) / ticks, 2),
        "relay_ticks_late_10ms_pct": round(100.0 * (stats1["ticks_late_10ms"] - stats0["ticks_late_10ms"]) / ticks, 2),
        "relay_ticks_late_50ms_pct": round(100.0 * (stats1["ticks_late_50ms"] - stats0["ticks_late_50ms"]) / ticks, 2),
        "relay_expelled": stats1.get("expelled", 0) - stats0.get("expelled", 0),
        "relay_connects_refused": stats1.get("connects_refused", 0) - stats0.get("connects_refused", 0),
        "relay_refused": stats1.get("refused", 0) - stats0.get("refused", 0),
        "relay_dropped_ping_timeout": stats1.get("dropped_ping_timeout", 0) - stats0.get("dropped_ping_timeout", 0),
    }


class _RssSampler:
    """The relay's largest RSS while the load runs (sampled 4 times a second on a thread), and
    one (time, RSS) sample every `every_s` seconds."""

    def __init__(self, proc: Any, every_s: float = 10.0) -> None:
        import threading

        self.proc, self.peak = proc, 0
        self.every_s = every_s
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = 0.0
        while not self._stop.wait(0.25):
            with contextlib.suppress(Exception):
                rss = self.proc.memory_info().rss
                self.peak = max(self.peak, rss)
                if time.time() - last >= self.every_s:
                    last = time.time()
                    self.series.append((last, rss))

    def figures(self, t0: float, t1: float) -> dict[str, Any]:
        """RSS through the window [t0, t1]: a sample every 30 s or so, and its growth over the
        second half (a relay holding flat memory grows ~0 there, whatever it took at the start)."""
        inside = [(t, r) for t, r in self.series if t0 <= t <= t1]
        if len(inside) < 2:
            return {}
        step = max(1, round(30.0 / self.every_s))
        mid = min(inside, key=lambda tr: abs(tr[0] - (t0 + t1) / 2))
        return {
            "server_rss_series_mb": [[round(t - t0), round(r / 2**20, 1)] for t, r in inside[::step]],
            "server_rss_growth_second_half_mb": round((inside[-1][1] - mid[1]) / 2**20, 1),
        }

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


def _store_state(data_dir: Path) -> dict[str, Any]:
    """What the relay has stored: rooms, update-log entries, room records and blobs (read-only)."""
    import hashlib
    import sqlite3

    db = sqlite3.connect(f"file:{data_dir / 'deeproom.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        rooms = {str(r[0]) for r in db.execute("SELECT id FROM rooms")}
        updates = int(db.execute("SELECT COUNT(*) FROM room_updates").fetchone()[0])
        try:
            records = {str(r[0]): hashlib.sha256(str(r[1]).encode()).hexdigest()
                       for r in db.execute("SELECT room_id, meta FROM relay_rooms")}
        except sqlite3.OperationalError:
            records = {}
    finally:
        db.close()
    blob_dir = data_dir / "blobs"
    blobs = {p.name for p in blob_dir.rglob("*") if p.is_file() and not p.name.startswith(".")} if blob_dir.exists() else set()
    return {"rooms": rooms, "updates": updates, "records": records, "blobs": blobs}


def _state_changes(before: dict[str, Any], after: dict[str, Any]) -> int:
    """How many stored things changed: rooms made or lost, log entries, room records, blobs."""
    return (len(before["rooms"] ^ after["rooms"]) + abs(after["updates"] - before["updates"])
            + sum(1 for k in before["records"].keys() | after["records"].keys()
                  if before["records"].get(k) != after["records"].get(k))
            + len(before["blobs"] ^ after["blobs"]))


def _gather(q: Any, workers: list[Any], count: int, timeout: float, what: str) -> list[Any]:
    """`count` items from `q`, failing clearly if a client process dies or stalls."""
    import queue as queue_mod

    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        try:
            out.append(q.get(timeout=0.5))
        except queue_mod.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a client process failed (exit {dead[0]}) before it could {what}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"client processes did not {what} within {timeout:g} s") from None
    return out


def _stats(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url + "/health", timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


class _Server:
    """A relay (real or naive) in its own process, stopped by PID."""

    def __init__(self, mode: str, data_dir: Path, tick_hz: float = 30.0, extra: tuple[str, ...] = ()) -> None:
        self.port = _free_port()
        if mode == "relay":
            cmd = [sys.executable, "-m", "deeproom.cli", "--data-dir", str(data_dir), "serve", "--port", str(self.port),
                   "--capacity", "500", "--tick-hz", str(tick_hz), *extra]
        else:
            cmd = [sys.executable, "-m", "deeproom.net.bench_relay", "naive", "--port", str(self.port)]
        self.log = open(data_dir / f"{mode}-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        _stop_process(self.proc, self.log)


class _Redis:
    """A real redis-server on a free port (no persistence: a bench), stopped by PID."""

    def __init__(self, data_dir: Path) -> None:
        import shutil

        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("--nodes needs redis-server (listed in tools/system-packages.txt)")
        self.port = _free_port()
        self.log = open(data_dir / f"redis-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(data_dir), "--protected-mode", "yes"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        _stop_process(self.proc, self.log)


def _measure_nodes(n: int, nodes: int, rate: float, seconds: float, procs: int, workdir: Path,
                   tick_hz: float = 30.0, pose_frames: int = 1) -> dict[str, Any]:
    """One load of n clients split across `nodes` relay processes sharing the room through a
    real redis-server (client cNNN on node NNN % nodes)."""
    data = workdir / f"nodes{nodes}-{n}-{time.monotonic_ns()}"
    data.mkdir()
    redis = _Redis(data)
    servers: list[_Server] = []
    try:
        for i in range(nodes):
            d = data / f"node{i}"
            d.mkdir()
            servers.append(_Server("relay", d, tick_hz, ("--redis", redis.url)))
        first, rest = servers[0], servers[1:]
        return _run_load(first.url, "relay", n, rate, seconds, max(procs, nodes), first.proc.pid,
                         more_nodes=tuple((s.url, s.proc.pid) for s in rest), redis_pid=redis.proc.pid,
                         pose_frames=pose_frames)
    finally:
        for srv in servers:
            srv.stop()
        redis.stop()


SWEEP_SIZES = (10, 20, 30, 40, 50, 60, 70, 80, 100, 125, 150, 200, 250, 300)
"""Room sizes the single-node sweep tries, in order, up to --sweep-max (all of them);
`max_clients_p99_le_100ms` is the largest size that met p99 <= 100 ms with delivered >= 0.95
before two sizes in a row missed it."""

SWEEP_KEYS = ("p50_ms", "p99_ms", "delivered_ratio", "server_cpu_pct", "us_per_delivery", "us_per_batch",
              "batches_per_s", "entries_per_s", "generator_cpu_pct", "generator_busiest_proc_cpu_pct",
              "generator_lag_p99_ms", "machine_cpu_pct", "other_cpu_pct", "limited_by", "load_avg_1min",
              "relay_tick_late_mean_ms", "normal_clients_dropped")
"""What each sweep point keeps of its run."""


NODE_BUDGET = 0.6
"""Share of a core a relay node is planned to use in the projections (headroom for bursts, joins, GC)."""


def _cost_model(points: list[dict[str, Any]]) -> dict[str, float] | None:
    """Relay CPU (µs per second) = a × batches/s + b × entries/s, least squares through the origin over
    the sweep runs that delivered ≥ 0.95 of what was scheduled (an overloaded relay skips recipients).
    a: µs per client tick (its pose in, its batch out: per-message costs); b: µs per entry of a batch
    (copying and encoding it). None with fewer than two usable runs."""
    ok = [p for p in points if p.get("delivered_ratio", 0) >= 0.95 and p.get("batches_per_s")]
    if len(ok) < 2:
        return None
    x = np.array([[p["batches_per_s"], p["entries_per_s"]] for p in ok], dtype=np.float64)
    y = np.array([p["server_cpu_pct"] * 1e4 for p in ok], dtype=np.float64)  # % of a core -> µs per s
    a, b = np.linalg.lstsq(x, y, rcond=None)[0]
    if b < 0:  # noise: all of it per client tick
        a, b = float(np.dot(x[:, 0], y) / np.dot(x[:, 0], x[:, 0])), 0.0
    elif a < 0:
        a, b = 0.0, float(np.dot(x[:, 1], y) / np.dot(x[:, 1], x[:, 1]))
    return {"us_per_client_tick": round(float(a), 1), "us_per_entry": round(float(b), 3), "runs": len(ok)}


def _fitted_projection(model: dict[str, float], people: int, rate: float, tick_hz: float) -> dict[str, Any]:
    """Cores and nodes for one room of `people` from the fitted costs, and the largest room one relay
    process holds within `NODE_BUDGET` of its core. Split over nodes, each node serves its share of
    the clients, but each of their batches still carries every participant (b does not shrink), and
    the cost of taking in the other nodes' poses (measured by --nodes) is left out."""
    r = min(rate, tick_hz)
    a, b = model["us_per_client_tick"], model["us_per_entry"]
    total = (a * people * r + b * people * (people - 1) * r) / 1e6
    # largest N with a·N·r + b·N·(N-1)·r <= NODE_BUDGET·1e6 (the quadratic's positive root)
    qa, qb, qc = b * r, (a - b) * r, -NODE_BUDGET * 1e6
    one_node = (-qb + (qb * qb - 4 * qa * qc) ** 0.5) / (2 * qa) if qa > 0 else -qc / qb
    per_node = NODE_BUDGET * 1e6 / (r * (a + b * (people - 1)))
    return {
        f"projected_{people}_deliveries_per_s": int(people * (people - 1) * r),
        f"projected_{people}_relay_cores": round(total, 2),
        f"projected_{people}_clients_per_node": int(per_node),
        f"projected_{people}_nodes": int(np.ceil(people / per_node)),
        "projected_single_node_max_clients": int(one_node),
    }


BENCH_PASSWORD = "bench-password"


def _measure(mode: str, n: int, rate: float, seconds: float, procs: int, workdir: Path,
             tick_hz: float = 30.0, secure: bool = False, hostile: int = 0,
             hostile_window_s: float = 0.0, pose_frames: int = 1) -> dict[str, Any]:
    """One load on a fresh relay. `secure`: the room has a password and an owner, every id a key
    (as the hostile run needs; its normal-only twin is made the same way)."""
    data = workdir / f"{mode}-{n}-{time.monotonic_ns()}"
    data.mkdir()
    # In a secure run nobody may leave during the load (a leave would count as a state change).
    server = _Server(mode, data, tick_hz, ("--leave-grace", "1000000") if secure else ())
    try:
        if secure:
            asyncio.run(_make_room(server.url))
        return _run_load(server.url, mode, n, rate, seconds, procs, server.proc.pid,
                         password=BENCH_PASSWORD if secure else None, hostile=hostile,
                         data_dir=data if secure else None, hostile_window_s=hostile_window_s,
                         pose_frames=pose_frames)
    finally:
        server.stop()


async def _make_room(url: str) -> None:
    """The bench room, created by an owner (its host) with a password, before anyone else joins."""
    import socketio

    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(url, transports=["websocket"], wait_timeout=30)
    try:
        ack = await sio.call("join", {"room": ROOM, "name": "owner", "participant_id": "owner", "key": _key("owner"),
                                      "password": BENCH_PASSWORD}, timeout=60)
        if not (isinstance(ack, dict) and ack.get("ok") and ack.get("role") == "host"):
            raise RuntimeError(f"could not create the bench room: {ack}")
    finally:
        await sio.disconnect()


HOSTILE_WINDOW_S = 4.0
"""Length of each window of the hostile run: quiet and hostile windows alternate."""
HOSTILE_WINDOWS = 8
"""Windows in the hostile run at least (half of them hostile)."""


def _hostile_figures(hostile: int, normal: dict[str, Any], hr: dict[str, Any]) -> dict[str, Any]:
    """The hostile run's figures: the normal clients' p99 in its hostile windows against its quiet
    windows (same relay, same clients, same background load), and the separate normal-only run."""
    quiet, loud = hr["phases"]["quiet"], hr["phases"]["hostile"]
    ratio = round(loud["p99_ms"] / quiet["p99_ms"], 3) if loud["p99_ms"] and quiet["p99_ms"] else None
    return {
        "hostile_clients": hostile,
        "normal_p99_ms": quiet["p99_ms"],
        "hostile_p99_ms": loud["p99_ms"],
        "hostile_p99_ratio": ratio,
        "normal_p50_ms": quiet["p50_ms"],
        "hostile_p50_ms": loud["p50_ms"],
        "hostile_windows": hr["phases"],
        "normal_only_run_p99_ms": normal["p99_ms"],
        "normal_relay_cpu_pct": quiet["relay_cpu_pct"],
        "hostile_relay_cpu_pct": loud["relay_cpu_pct"],
        # entries the relay scheduled include the hostile members' own batches, which they never
        # confirm (so they are skipped): coverage is what the normal clients' probes missed
        "hostile_delivered_ratio": hr["delivered_ratio"],
        "hostile_pose_coverage": hr["pose_coverage"],
        "hostile_state_changes": hr["state_changes"],
        "hostile_normal_clients_dropped": hr["normal_clients_dropped"],
        "relay_rss_growth_mb": hr["server_rss_growth_mb"],
        "relay_peak_rss_mb": hr["server_peak_rss_mb"],
        "hostile_run_relay_cpu_pct": hr["server_cpu_pct"],
        "hostile_normal_clients_cpu_pct": hr["clients_cpu_pct"],
        "hostile_process_cpu_pct": hr["hostile_cpu_pct"],
        "hostile_run_load_avg_1min": hr["load_avg_1min"],
        "hostile_run_other_cpu_pct": hr["other_cpu_pct"],
        "normal_state_changes": normal["state_changes"],
        "normal_tick_late_mean_ms": quiet["tick_late_mean_ms"],
        "hostile_tick_late_mean_ms": loud["tick_late_mean_ms"],
        "normal_ticks_late_10ms_pct": quiet["ticks_late_10ms_pct"],
        "hostile_ticks_late_10ms_pct": loud["ticks_late_10ms_pct"],
        "hostile_relay_refused": hr.get("relay_refused"),
        "hostile_relay_expelled": hr.get("relay_expelled"),
        "hostile_relay_connects_refused": hr.get("relay_connects_refused"),
        "hostile_tally": hr["hostile_tally"],
    }


COMPARE_KEYS = ("us_per_batch", "server_cpu_pct", "p50_ms", "p99_ms", "delivered_ratio", "batches_per_s",
                "compact_poses_in_per_s", "generator_cpu_pct", "other_cpu_pct", "load_avg_1min", "limited_by")
"""What each run of the pose-form comparison keeps."""


def _compare_pose_frames(main: dict[str, Any], forms: list[int], n: int, rate: float, seconds: float, procs: int,
                         work: Path, tick: float, rounds: int) -> dict[str, Any]:
    """The same load with each pose form, in one invocation: the main run (the first form) and then
    runs alternating the forms (`rounds` per form in all, main included: A B, A B B A, ...), so a
    change in the machine's background load falls on both. Reports each run and, per form, the
    median relay CPU per delivered batch (`us_per_batch`: one client tick, its pose in and its batch
    out) as `us_per_batch_pose_frames_<form>`."""
    runs: dict[int, list[dict[str, Any]]] = {f: [] for f in forms}
    runs[forms[0]].append(main)
    order: list[int] = []
    for k in range(rounds):
        order += forms if k % 2 == 0 else forms[::-1]
    for f in order[1:]:  # the first is the main run
        run = _measure("relay", n, rate, seconds, procs, work, tick, pose_frames=f)
        print(f"frames={f} N={n}: {run}", flush=True)
        runs[f].append(run)
    out: dict[str, Any] = {"pose_frames_runs": {str(f): [{k: r.get(k) for k in COMPARE_KEYS} for r in rs]
                                                for f, rs in runs.items()}}
    for f, rs in runs.items():
        costs = [r["us_per_batch"] for r in rs if r.get("us_per_batch")]
        out[f"us_per_batch_pose_frames_{f}"] = round(float(np.median(costs)), 1) if costs else None
        out[f"server_cpu_pct_pose_frames_{f}"] = round(float(np.median([r["server_cpu_pct"] for r in rs])), 1)
        p99s = [r["p99_ms"] for r in rs if r.get("p99_ms") is not None]
        out[f"p99_ms_pose_frames_{f}"] = round(float(np.median(p99s)), 2) if p99s else None
    one, two = out.get("us_per_batch_pose_frames_1"), out.get("us_per_batch_pose_frames_2")
    if one and two:
        out["us_per_batch_1_vs_2"] = round(one / two, 3)
    return out


def run_bench(args: argparse.Namespace, config: Config) -> int:
    from deeproom.bench import emit

    n, rate, seconds, procs = int(args.clients), float(args.rate), float(args.seconds), max(1, int(args.procs))
    tick = float(getattr(args, "tick_hz", 30.0))
    hostile = int(getattr(args, "hostile", 0) or 0)
    forms = list(dict.fromkeys(int(f) for f in (getattr(args, "pose_frames", None) or [1])))
    frames = forms[0]  # the form of every run but the comparison's
    if n < 2:
        raise SystemExit("--clients must be at least 2 (poses go to the others)")
    with tempfile.TemporaryDirectory(prefix="deeproom-bench-relay-") as tmp:
        work = Path(tmp)
        main = _measure("relay", n, rate, seconds, procs, work, tick, secure=hostile > 0, pose_frames=frames)
        main.pop("hostile_tally")
        print(f"relay   N={n}: {main}", flush=True)
        result: dict[str, Any] = {"bench": "relay", "clients": n, "rate_hz": rate, "tick_hz": tick, "seconds": seconds, **main}
        if len(forms) > 1:
            result.update(_compare_pose_frames(main, forms, n, rate, seconds, procs, work, tick,
                                               int(getattr(args, "compare_rounds", 1) or 1)))
        if hostile:
            hr = _measure("relay", n, rate, max(seconds, HOSTILE_WINDOWS * HOSTILE_WINDOW_S), procs, work, tick,
                          secure=True, hostile=hostile, hostile_window_s=HOSTILE_WINDOW_S, pose_frames=frames)
            print(f"hostile N={n}+{hostile}: {hr}", flush=True)
            result.update(_hostile_figures(hostile, main, hr))
        if not args.no_baseline:
            base = _measure("naive", n, rate, seconds, procs, work)
            print(f"naive   N={n}: {base}", flush=True)
            result.update({
                "baseline_p50_ms": base["p50_ms"],
                "baseline_p99_ms": base["p99_ms"],
                "baseline_delivered_ratio": base["delivered_ratio"],
                "baseline_server_cpu_pct": base["server_cpu_pct"],
                "baseline_us_per_delivery": base["us_per_delivery"],
            })
            if base["p99_ms"] and main["p99_ms"]:
                result["p99_vs_baseline"] = round(main["p99_ms"] / base["p99_ms"], 3)
        nodes = int(getattr(args, "nodes", 1) or 1)
        if nodes > 1:
            # the same load (same room size, rate, seconds) split across nodes through Redis; the
            # single-node figures are the main run's above, measured in this same invocation
            mr = _measure_nodes(n, nodes, rate, seconds, procs, work, tick, pose_frames=frames)
            print(f"nodes={nodes} N={n}: {mr}", flush=True)
            result.update({
                "nodes": nodes,
                "clients_per_node": n // nodes,
                "cross_node_p50_ms": mr["cross_node_p50_ms"],
                "cross_node_p99_ms": mr["cross_node_p99_ms"],
                "cross_node_samples": mr["cross_node_samples"],
                "multi_node_p99_ms": mr["p99_ms"],
                "multi_node_delivered_ratio": mr["delivered_ratio"],
                "per_node_cpu_pct": mr["per_node_cpu_pct"],
                "nodes_us_per_delivery": mr["nodes_us_per_delivery"],
                "nodes_us_per_batch": mr["nodes_us_per_batch"],
                "multi_node_generator_cpu_pct": mr["generator_cpu_pct"],
                "multi_node_other_cpu_pct": mr["other_cpu_pct"],
                "multi_node_limited_by": mr["limited_by"],
                "multi_node_load_avg_1min": mr["load_avg_1min"],
                "redis_cpu_pct": mr["redis_cpu_pct"],
                "redis_publishes_per_s": mr["redis_publishes_per_s"],
                "redis_us_per_publish": mr["redis_us_per_publish"],
                "multi_node_clients_dropped": mr["normal_clients_dropped"],
                "single_node_p99_ms": main["p99_ms"],
                "single_node_cpu_pct": main["server_cpu_pct"],
            })
        if args.sweep:
            best, misses, knee_found = None, 0, False
            sweep: list[dict[str, Any]] = []
            sweep_max = int(getattr(args, "sweep_max", 300) or 300)
            for size in (x for x in SWEEP_SIZES if x <= sweep_max):
                r = _measure("relay", size, rate, max(3.0, seconds / 2), procs, work, tick, pose_frames=frames)
                print(f"sweep   N={size}: {r}", flush=True)
                sweep.append({k: r.get(k) for k in SWEEP_KEYS} | {"clients": size})
                if r["p99_ms"] is not None and r["p99_ms"] <= 100.0 and r["delivered_ratio"] >= 0.95:
                    if not knee_found:
                        best, misses = size, 0
                else:
                    # on a shared machine one short window can miss by a moment's load: the
                    # knee is where two sizes in a row miss; the sweep goes on to --sweep-max
                    # (the larger rooms show how it degrades and what each client costs)
                    misses += 1
                    knee_found = knee_found or misses >= 2
            result["sweep"] = sweep
            result["sweep_max"] = sweep_max
            result["sweep_pose_frames"] = frames
            result["max_clients_p99_le_100ms"] = best
            after = [p for p in sweep if best is None or p["clients"] > best]
            # what ran out just past the knee: the relay, the generator, or the machine (others' load)
            result["knee_limited_by"] = sorted({x for p in after[:2] for x in p["limited_by"]})
            result["sweep_generator_limited"] = any("generator" in p["limited_by"] for p in sweep)
        model = _cost_model(result.get("sweep", []))
        result["projection_basis"] = "fit"
        if model is None and main["us_per_batch"]:
            # one point: the main run's relay CPU per delivered batch taken as all per client tick
            # (what the sweep's fits find: the entries inside a batch cost next to nothing)
            model = {"us_per_client_tick": main["us_per_batch"], "us_per_entry": 0.0, "runs": 1}
            result["projection_basis"] = "main_run_per_batch"
        if model is not None:
            result["cost_model"] = model
            result.update(_fitted_projection(model, 300, rate, tick))
        if args.memory_seconds > 0:
            mem = _measure("relay", n, rate, float(args.memory_seconds), procs, work, tick, secure=hostile > 0,
                           hostile=hostile, pose_frames=frames)
            print(f"memory  N={n}{f'+{hostile} hostile' if hostile else ''} {args.memory_seconds}s: {mem}", flush=True)
            result["memory_seconds"] = args.memory_seconds
            result["memory_rss_start_mb"] = mem["server_rss_start_mb"]
            result["memory_rss_end_mb"] = mem["server_rss_end_mb"]
            result["memory_rss_growth_mb"] = mem["server_rss_growth_mb"]
            result["memory_peak_rss_mb"] = mem["server_peak_rss_mb"]
            result["memory_rss_series_mb"] = mem.get("server_rss_series_mb")
            result["memory_rss_growth_second_half_mb"] = mem.get("server_rss_growth_second_half_mb")
            result["memory_p99_ms"] = mem["p99_ms"]
            result["memory_normal_clients_dropped"] = mem["normal_clients_dropped"]
            result["memory_relay_dropped_ping_timeout"] = mem.get("relay_dropped_ping_timeout")
            result["memory_tick_late_mean_ms"] = mem.get("relay_tick_late_mean_ms")
            result["memory_load_avg_1min"] = mem["load_avg_1min"]
            if hostile:
                result["memory_hostile_state_changes"] = mem["state_changes"]
                result["memory_hostile_tally"] = mem["hostile_tally"]
        result["cpu_count"] = os.cpu_count()
        emit(result)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m deeproom.net.bench_relay")
    parser.add_argument("mode", choices=["naive"])
    parser.add_argument("--port", type=int, required=True)
    naive_main(parser.parse_args().port)
