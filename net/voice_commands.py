"""Voice's part of the command line: `deeproom bench voice` and the audio checks of `doctor`.

Light at import (argparse only); aiortc, Janus and the relay are imported when a
command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from deeproom.config import Config


def register(commands: Any, bench: Any) -> None:
    b = bench.add_parser(
        "voice",
        help="voice mouth-to-ear latency over loopback, and a real Janus SFU with 1 speaker and N listeners",
    )
    b.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run (default 8)")
    b.add_argument("--listeners", default="10,30",
                   help="SFU runs: listener counts, comma-separated (default 10,30; empty: no SFU runs)")
    b.add_argument("--procs", type=int, default=2,
                   help="processes the SFU listeners are spread over (default 2)")
    b.set_defaults(func=cmd_bench_voice)


def cmd_bench_voice(args: argparse.Namespace, config: Config) -> int:
    import asyncio
    import logging
    import statistics

    from deeproom.bench import emit
    from deeproom.errors import DeepRoomError
    from deeproom.net.voice.bench import bench_mesh, bench_sfu
    from deeproom.net.voice.janus import find_janus
    from deeproom.net.voice.netns import Namespace, available

    logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        counts = [int(x) for x in str(args.listeners).split(",") if x.strip()]
    except ValueError:
        print(f"--listeners must be whole numbers separated by commas; got {args.listeners!r}")
        return 2
    if any(not 1 <= n <= 100 for n in counts):
        print("--listeners: each count must be in [1, 100]")
        return 2
    # Two rounds, the tuned and the baseline configuration taking turns, so that the
    # load other work puts on the machine falls on both alike; medians are reported.
    runs: dict[str, list[dict[str, Any]]] = {"tuned": [], "base": []}
    for _ in range(2):
        print("mesh: two peers through a relay on 127.0.0.1 (receive buffer 2 frames on loopback) ...", flush=True)
        runs["tuned"].append(asyncio.run(bench_mesh(args.seconds)))
        print(f"  {runs['tuned'][-1]}", flush=True)
        print("baseline: the same mesh with aiortc's default receive buffer (4 frames) ...", flush=True)
        runs["base"].append(asyncio.run(bench_mesh(args.seconds, receive_buffer_frames=4)))
        print(f"  {runs['base'][-1]}", flush=True)

    def med(kind: str, key: str) -> float:
        return round(float(statistics.median(r[key] for r in runs[kind])), 2)

    result: dict[str, Any] = {
        "mouth_to_ear_ms": med("tuned", "mouth_to_ear_ms"),
        "mouth_to_ear_p90_ms": med("tuned", "mouth_to_ear_p90_ms"),
        "dominant_hz": med("tuned", "dominant_hz"),
        "frames_lost_pct": med("tuned", "frames_lost_pct"),
        "frames_late_dropped_pct": med("tuned", "frames_late_dropped_pct"),
        "bursts": sum(r["bursts"] for r in runs["tuned"]),
        "setup_ms": med("tuned", "setup_ms"),
        "baseline_aiortc_buffer4_mouth_to_ear_ms": med("base", "mouth_to_ear_ms"),
        "baseline_aiortc_buffer4_frames_lost_pct": med("base", "frames_lost_pct"),
    }
    result["latency_vs_baseline_ratio"] = round(result["mouth_to_ear_ms"] / result["baseline_aiortc_buffer4_mouth_to_ear_ms"], 2)
    result["mouth_to_ear_target_ms"] = 150
    why = available() or (None if find_janus() else "janus is not installed")
    if counts and why:
        result["sfu_skipped"] = why
    for n in counts if not why else []:
        print(f"SFU: Janus in a network namespace, 1 speaker -> {n} listeners ...", flush=True)
        try:
            with Namespace.create() as ns:
                r = ns.run_inside(lambda ns=ns, n=n: bench_sfu(ns, n, args.seconds, max(1, args.procs)), timeout=300)  # type: ignore[misc]
        except (DeepRoomError, TimeoutError, RuntimeError) as exc:
            result[f"sfu{n}_error"] = str(exc)[:300]
            continue
        print(f"  {r}", flush=True)
        for k, v in r.items():
            result[f"sfu{n}_{k}"] = v
    if counts and f"sfu{counts[0]}_cpu_pct" in result:
        # the names for the first (smallest) run; baseline: the direct mesh in this run
        result["sfu_cpu_pct"] = result[f"sfu{counts[0]}_cpu_pct"]
        result["sfu_mouth_to_ear_ms"] = result[f"sfu{counts[0]}_mouth_to_ear_ms"]
        # same receive buffer (aiortc's 4) on both sides of this ratio
        result["sfu_vs_mesh_latency_ratio"] = round(
            result["sfu_mouth_to_ear_ms"] / result["baseline_aiortc_buffer4_mouth_to_ear_ms"], 2
        )
    emit(result)
    return 0


def doctor_checks() -> list[tuple[str, Callable[[], str]]]:
    def audio() -> str:
        from deeproom.net.voice.devices import describe_devices
        from deeproom.net.voice.errors import NoAudioDevice

        try:
            return describe_devices()
        except NoAudioDevice as exc:
            return str(exc)

    def janus() -> str:
        from deeproom.net.voice.janus import find_janus
        from deeproom.net.voice.netns import available

        path = find_janus()
        if path is None:
            return "janus not installed (only teaching rooms above the mesh threshold need it)"
        why = available()
        return f"janus at {path}" + (f"; test namespaces unavailable: {why}" if why else "")

    return [("voice audio", audio), ("voice SFU", janus)]
