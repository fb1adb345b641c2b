"""`deeproom bench voice`: mouth-to-ear latency, pitch and loss over a loopback mesh, and
the SFU's cost and latency with one speaker and 10 / 30 listeners.

Mouth-to-ear: the sender is a train of 440 Hz bursts paced like a microphone
(each frame handed over when its last sample is "captured"); at the receiver the
spatial mixer is pulled in real time in 20 ms blocks, as a sound card would pull
it, and a burst is heard when its first loud sample leaves the mixer. The
difference between the two instants, per burst, median over bursts (and
listeners). The sound card's own buffer is not included (there is none here).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from deeproom.net.voice.audio import SAMPLE_RATE, SilenceTrack, ToneTrack, dominant_hz
from deeproom.net.voice.peer import VoiceLink
from deeproom.net.voice.session import VoiceConfig
from deeproom.net.voice.spatial import SpatialMixer

BLOCK = 960
THRESHOLD = 0.05


class OutputProbe:
    """Pulls mixers in real time and notes when each burst starts at the output."""

    def __init__(self, mixers: dict[str, SpatialMixer]) -> None:
        self.mixers = mixers
        self.onsets: dict[str, list[float]] = {k: [] for k in mixers}
        self.loud: dict[str, list[np.ndarray]] = {k: [] for k in mixers}
        self._quiet: dict[str, int] = dict.fromkeys(mixers, 10**9)
        self.late_blocks = 0

    async def run(self, seconds: float) -> None:
        t0 = time.perf_counter()
        n = round(seconds * SAMPLE_RATE / BLOCK)
        for i in range(n):
            due = t0 + (i + 1) * BLOCK / SAMPLE_RATE
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -BLOCK / SAMPLE_RATE:
                self.late_blocks += 1
            now = time.perf_counter()
            for name, mixer in self.mixers.items():
                mono = mixer.render(BLOCK).mean(axis=1)
                idx = np.flatnonzero(np.abs(mono) > THRESHOLD)
                if len(idx):
                    if self._quiet[name] >= 100 * SAMPLE_RATE // 1000:  # 100 ms of quiet before a burst
                        self.onsets[name].append(now + idx[0] / SAMPLE_RATE)
                    self._quiet[name] = BLOCK - 1 - int(idx[-1])
                    self.loud[name].append(mono)
                else:
                    self._quiet[name] += BLOCK


def latencies_ms(tone: ToneTrack, onsets: list[float]) -> list[float]:
    sent = [tone.sample_time(i) for i in tone.onset_samples(tone.samples_sent)]
    out = []
    period = (tone.period or SAMPLE_RATE) / SAMPLE_RATE
    for r in onsets:
        before = [s for s in sent if s <= r]
        if before and r - before[-1] < period:
            out.append((r - before[-1]) * 1000)
    return out


async def loss_pct(links: list[VoiceLink]) -> float:
    lost = received = 0
    for link in links:
        report = await link.pc.getStats()
        for st in report.values():
            if getattr(st, "type", "") == "inbound-rtp":
                lost += max(0, int(st.packetsLost))
                received += int(st.packetsReceived)
    return 100.0 * lost / max(1, lost + received)


def burst_tone() -> ToneTrack:
    return ToneTrack(440.0, amplitude=0.4, onset_s=1.0, burst_s=0.3, period_s=1.0)


async def bench_mesh(seconds: float = 8.0, receive_buffer_frames: int | None = None) -> dict[str, Any]:
    """Two participants through a real relay on 127.0.0.1, a direct link between them."""
    from deeproom.net import EmbeddedRelay, RoomClient
    from deeproom.net.voice.room import RoomVoice

    tone = burst_tone()
    with tempfile.TemporaryDirectory(prefix="deeproom-bench-voice-") as tmp:
        async with (
            EmbeddedRelay(host="127.0.0.1", port=0, data_dir=Path(tmp)) as relay,
            RoomClient(relay.url, room="bench", name="A") as ca,
            RoomClient(relay.url, room="bench", name="B") as cb,
        ):
            t_join = time.perf_counter()
            cfg = VoiceConfig(receive_buffer_frames=receive_buffer_frames)
            async with RoomVoice(ca, tone, cfg) as a, RoomVoice(cb, SilenceTrack(), cfg) as b:
                pid = ca.participant_id
                b.mixer.set_position(pid, (0.0, 1.6, 1.0))
                while not (pid in b.session.links and b.session.links[pid].frames_rx):
                    await asyncio.sleep(0.01)
                    if time.perf_counter() - t_join > 20:
                        raise TimeoutError("the two peers did not connect within 20 s")
                setup_ms = (time.perf_counter() - t_join) * 1000
                probe = OutputProbe({"B": b.mixer})
                await probe.run(seconds)
                lat = latencies_ms(tone, probe.onsets["B"])
                heard = np.concatenate(probe.loud["B"]) if probe.loud["B"] else np.zeros(64)
                lost = await loss_pct([b.session.links[pid]])
                rx = b.session.links[pid]
                late_pct = 100.0 * rx.frames_late / max(1, rx.frames_rx)
                _ = a
    if not lat:
        raise RuntimeError("no tone burst was heard at the receiver")
    return {
        "mouth_to_ear_ms": round(float(statistics.median(lat)), 1),
        "mouth_to_ear_p90_ms": round(float(np.percentile(lat, 90)), 1),
        "bursts": len(lat),
        "dominant_hz": round(dominant_hz(heard), 1),
        "frames_lost_pct": round(lost, 2),
        "frames_late_dropped_pct": round(late_pct, 2),
        "setup_ms": round(setup_ms, 1),
    }


async def bench_sfu(ns: Any, listeners: int, seconds: float = 6.0, procs: int = 2) -> dict[str, Any]:
    """One speaker, `listeners` listen-only seats spread over `procs` processes, through a real
    Janus in namespace `ns`. Listeners live in their own processes so that the clients'
    Python (30 aiortc connections decoding Opus) does not sit on the speaker's event loop."""
    import json
    import sys

    import psutil

    from deeproom.net import EmbeddedRelay, RoomClient
    from deeproom.net.voice.janus import JanusServer
    from deeproom.net.voice.room import RoomVoice

    tone = burst_tone()
    workers: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory(prefix="deeproom-bench-sfu-") as tmp:
        async with (
            JanusServer(ns.address, namespace=ns) as janus,
            EmbeddedRelay(host="127.0.0.1", port=0, data_dir=Path(tmp)) as relay,
            contextlib.AsyncExitStack() as stack,
        ):
            cfg = VoiceConfig(addresses=(ns.address,))
            host = await stack.enter_async_context(RoomClient(relay.url, room="lecture", name="Teacher"))
            await host.apply({"op": "set_voice", "mode": "sfu"})
            await stack.enter_async_context(RoomVoice(host, tone, cfg, sfu_url=janus.url))
            tid = host.participant_id
            shares = [listeners // procs + (1 if i < listeners % procs else 0) for i in range(procs)]
            try:
                for i, n in enumerate(x for x in shares if x):
                    argv = ns.exec_args(
                        sys.executable, "-m", "deeproom.net.voice.bench_worker", "--relay", relay.url,
                        "--room", "lecture", "--listeners", str(n), "--address", ns.address,
                        "--speaker", tid, "--seconds", str(seconds), "--tag", f"W{i}-",
                    )
                    errlog = open(Path(tmp) / f"worker{i}.log", "wb")  # noqa: SIM115 - the child keeps it
                    workers.append(await asyncio.create_subprocess_exec(
                        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errlog,
                    ))
                    errlog.close()
                for i, w in enumerate(workers):
                    assert w.stdout is not None
                    line = await asyncio.wait_for(w.stdout.readline(), 120)
                    if line.strip() != b"ready":
                        await w.wait()
                        why = (Path(tmp) / f"worker{i}.log").read_text(errors="replace").strip().splitlines()[-12:]
                        raise RuntimeError(f"a listener process failed to start: {why}")
                assert janus.pid is not None
                jproc = psutil.Process(janus.pid)
                j0, w0 = jproc.cpu_times(), time.perf_counter()
                for w in workers:
                    assert w.stdin is not None
                    w.stdin.write(b"go\n")
                    await w.stdin.drain()
                results = []
                for w in workers:
                    assert w.stdout is not None
                    results.append(json.loads(await asyncio.wait_for(w.stdout.readline(), seconds + 60)))
                j1, w1 = jproc.cpu_times(), time.perf_counter()
                rss = jproc.memory_info().rss / 2**20
                for w in workers:
                    await w.wait()
            finally:
                for w in workers:
                    if w.returncode is None:
                        w.kill()
                        await w.wait()
    wall = w1 - w0
    lat = [x for r in results for on in r["onsets"].values() for x in latencies_ms(tone, on)]
    lost = sum(r["lost"] for r in results)
    received = sum(r["received"] for r in results)
    if not lat:
        raise RuntimeError("no tone burst was heard through the SFU")
    return {
        "cpu_pct": round(100 * ((j1.user - j0.user) + (j1.system - j0.system)) / wall, 1),
        "mouth_to_ear_ms": round(float(statistics.median(lat)), 1),
        "mouth_to_ear_p90_ms": round(float(np.percentile(lat, 90)), 1),
        "frames_lost_pct": round(100.0 * lost / max(1, lost + received), 2),
        "frames_late_dropped_pct": round(
            100.0 * sum(r["frames_late"] for r in results) / max(1, sum(r["frames_rx"] for r in results)), 2
        ),
        "janus_rss_mb": round(rss, 1),
        "listener_procs": len(workers),
        "late_blocks": sum(r["late_blocks"] for r in results),
    }
