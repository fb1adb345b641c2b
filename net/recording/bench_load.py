"""`deeproom bench replay`'s relay load: recording switched on and off in windows of one run.

What recording costs the relay is small next to what the shared machine's other work does
to a CPU figure from one minute to the next, so both sides of the ratio come from the
same relay process under the same load, interleaved: the room's host (a real
`RoomClient`) applies `set_recording` true and false at the start of alternating windows
(off, on, off, ..., off: an odd count, so the on-windows and off-windows sit around the
same middle and a steady drift in the background load cancels), the first `settle_s` of
each window is discarded (a recording's start writes a snapshot, its stop the last
presence and a snapshot) and the relay's CPU (psutil on its PID) is read over the rest.

The load: `clients` participants at `rate` Hz. The host and `speakers` others are
`RoomClient`s in this process (poses through the client's own pose path, head only, so
that bench relay's generator still reads every batch the fast way); the rest are bench
relay's raw-websocket participants (`deeproom.net.bench_clients.generator_proc`, one
process). While the room records, each speaker does what `SpeakerRecording` does: every
segment, one Ogg Opus blob uploaded (`RoomClient.put_blob`) and announced
(`send_event("voice_segment", {sha, duration_s, age_s})`); when recording stops, the
partial segment is encoded and uploaded too. The full segments are encoded once, before
the load starts, by the real encoder (`encode_ogg_opus`) from a tone, each a little
different so that every upload is a new blob (the relay keeps a blob once by hash).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ROOM = "bench"


@dataclass(frozen=True)
class WindowPlan:
    """How the run alternates recording."""

    windows: int = 9
    """Windows in the run, odd (off first and last); at least 3."""
    window_s: float = 5.0
    """Seconds per window."""
    settle_s: float = 1.0
    """Seconds discarded after each window starts (after each switch)."""
    segment_s: float = 2.0
    """Seconds of voice per segment (10 s in a room; see `voice_segment_s`)."""

    def recording(self, i: int) -> bool:
        return i % 2 == 1

    def check(self, clients: int, speakers: int) -> None:
        """ValueError saying what is wrong with this plan for `clients` of whom `speakers` speak."""
        if self.windows < 3 or self.windows % 2 == 0:
            raise ValueError(
                f"--windows must be odd and at least 3 (off first and last); got {self.windows}"
            )
        if not 0 <= self.settle_s < self.window_s:
            raise ValueError(
                f"--settle must be in [0, --seconds); got {self.settle_s:g} of {self.window_s:g}"
            )
        if not 0.5 <= self.segment_s <= 12.0:
            raise ValueError(
                f"a voice segment lasts 0.5 to 12 s (windows of 1 to 24 s); got {self.segment_s:g}"
            )
        if clients < speakers + 2:
            raise ValueError(
                f"--clients must be at least {speakers + 2} (a host, {speakers} speakers, one more)"
            )


def voice_segment_s(window_s: float, real_s: float) -> float:
    """Segment length for windows of `window_s`: the real one, or 0.4 of a window when that is shorter.
    A speaker's segments are cut from the switch on, so with the default settle (0.2 of a window)
    an on-window's measured part holds two uploads per speaker, 0.8 of a window of audio: as many
    bytes a second as the real cadence, more uploads and events (the voice path's cost overstated)."""
    return round(min(real_s, 0.4 * window_s), 3)


@dataclass
class Window:
    """One window's figures."""

    recording: bool
    relay_cpu_pct: float = 0.0
    """The relay's CPU (user + system) over the measured part, % of one core."""
    machine_cpu_pct: float = 0.0
    """All cores busy, % of one core (2 cores: up to 200)."""
    clients_cpu_pct: float = 0.0
    """The generator process and this one (the RoomClients), % of one core."""
    other_cpu_pct: float = 0.0
    """What the rest of the machine used: machine - relay - clients."""
    load_avg_1min: float = 0.0
    voice_segments: int = 0
    """Voice segments announced during the whole window."""
    relay_tick_late_mean_ms: float | None = None
    machine_full: bool = False
    """Every core was busy (85 % or more): the relay got what it could, not all it wanted."""
    measured_s: float = 0.0


@dataclass
class _Speaker:
    client: Any
    segments: list[bytes]
    hz: float
    segment_s: float
    sent: int = 0
    bytes_sent: int = 0
    errors: list[str] = field(default_factory=list)
    late: int = 0
    """Segments the relay refused for beginning after the stop (a segment boundary passed between
    the relay's stop and this client hearing of it: what a real client meets too)."""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    one_at_a_time: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the room's recording setting as a publishing voice does: segments while it is on."""
        from deeproom.net.voice.segments import encode_ogg_opus

        k = 0
        while not stop.is_set():
            if not self.client.room.settings.recording:
                await asyncio.sleep(0.01)
                continue
            started = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                if not self.client.room.settings.recording or stop.is_set():
                    took = now - started
                    # the partial segment, flushed as a client does when recording stops
                    if took >= 0.02:
                        data = encode_ogg_opus(_tone(self.hz + k, took))
                        self._upload(data, started, took)
                    break
                if now - started >= self.segment_s:
                    self._upload(self.segments[k % len(self.segments)], started, self.segment_s)
                    k += 1
                    started += self.segment_s

    def _upload(self, data: bytes, started: float, duration: float) -> None:
        task = asyncio.get_running_loop().create_task(self._send(data, started, duration))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, data: bytes, started: float, duration: float) -> None:
        # As `SpeakerRecording._upload`: the blob, then the event naming it. One at a time: the
        # speakers share this process's address, which the relay lets upload 4 blobs at once
        # (on their own machines each would have its own).
        async with self.one_at_a_time:
            await self._send_now(data, started, duration)

    async def _send_now(self, data: bytes, started: float, duration: float) -> None:
        from deeproom.errors import NotFound

        try:
            sha = await self.client.put_blob(data)
            await self.client.wait_connected(30.0)
            await self.client.send_event(
                "voice_segment",
                {
                    "sha": sha,
                    "duration_s": round(duration, 6),
                    "age_s": round(time.monotonic() - started, 6),
                },
            )
            self.sent += 1
            self.bytes_sent += len(data)
        except NotFound as exc:
            if "stopped recording" in str(exc):
                self.late += 1
            else:
                self.errors.append(f"NotFound: {exc}")
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")


def _tone(hz: float, seconds: float) -> np.ndarray:
    from deeproom.net.voice.audio import SAMPLE_RATE

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _segments(speaker: int, count: int, segment_s: float) -> tuple[float, list[bytes]]:
    """`count` distinct full segments of a speaker's tone (real Opus in Ogg, encoded now)."""
    from deeproom.net.voice.segments import encode_ogg_opus

    hz = 300.0 + 110.0 * speaker
    return hz, [encode_ogg_opus(_tone(hz + k, segment_s)) for k in range(count)]


def _sample(relay: Any, gens: list[Any], me: Any) -> tuple[float, float, float, float]:
    import psutil

    from deeproom.net.bench_relay import _busy, _cpu

    return (
        time.monotonic(),
        _cpu(relay),
        sum(_cpu(g) for g in gens) + _cpu(me),
        _busy(psutil.cpu_times()),
    )


def run_windows(
    url: str,
    relay_pid: int,
    clients: int,
    rate: float,
    plan: WindowPlan,
    speakers: int,
    warmup_s: float = 2.0,
) -> dict[str, Any]:
    """The whole windowed load against the relay at `url` (process `relay_pid`); see the module."""
    plan.check(clients, speakers)
    return asyncio.run(_run(url, relay_pid, clients, rate, plan, speakers, warmup_s))


async def _run(
    url: str,
    relay_pid: int,
    clients: int,
    rate: float,
    plan: WindowPlan,
    speakers: int,
    warmup_s: float,
) -> dict[str, Any]:
    import psutil

    from deeproom.net import RoomClient
    from deeproom.net.bench_clients import bench_key, generator_proc, probe_ids
    from deeproom.net.bench_relay import SATURATED_PCT, _gather, _stats, _tick_figures
    from deeproom.state import Role

    loop = asyncio.get_running_loop()
    ids = [f"c{i:03d}" for i in range(clients)]
    mine, theirs = ids[: 1 + speakers], ids[1 + speakers :]
    # the host joins first: it makes the room and holds the switch
    room_clients = []
    for pid in mine:
        c = RoomClient(
            url,
            room=ROOM,
            name=pid,
            participant_id=pid,
            participant_key=bench_key(pid),
            connect_timeout=60,
        )
        await c.connect()
        room_clients.append(c)
    host, voices = room_clients[0], room_clients[1:]
    workers: list[Any] = []
    stop = asyncio.Event()
    speaker_objs: list[_Speaker] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        if host.role is not Role.HOST:
            raise RuntimeError(
                f"the bench host joined as {host.role}; the room {ROOM!r} existed already"
            )
        on_windows = plan.windows // 2
        count = math.ceil(on_windows * plan.window_s / plan.segment_s) + 1
        for i, c in enumerate(voices):
            hz, segs = _segments(i, count, plan.segment_s)
            speaker_objs.append(_Speaker(c, segs, hz, plan.segment_s))

        ctx = mp.get_context("spawn")
        ready, results = ctx.Queue(), ctx.Queue()
        go = ctx.Event()
        times = ctx.Array("d", 4)
        probes = probe_ids(clients) & set(theirs)
        workers = [
            ctx.Process(
                target=generator_proc,
                args=(url, "relay", theirs, clients, rate, probes, ready, go, times, results, None),
                daemon=True,
            )
        ]
        for w in workers:
            w.start()
        await loop.run_in_executor(None, _gather, ready, workers, len(workers), 300, "join")
        relay = psutil.Process(relay_pid)
        gens = [psutil.Process(w.pid) for w in workers]
        me = psutil.Process(os.getpid())

        start = time.time() + 0.3
        t0 = start + warmup_s
        t1 = t0 + plan.windows * plan.window_s
        times[0], times[1], times[2], times[3] = start, t0, t1, t1 + 0.3
        go.set()
        tasks.append(loop.create_task(_poses(room_clients, speakers, rate, start, t1 + 0.3)))
        tasks.extend(loop.create_task(s.run(stop)) for s in speaker_objs)

        windows: list[Window] = []
        on_s = 0.0
        switched_on = 0.0
        for i in range(plan.windows):
            await _sleep_until(t0 + i * plan.window_s)
            want = plan.recording(i)
            if host.room.settings.recording != want:
                await host.apply({"op": "set_recording", "recording": want})
                if want:
                    switched_on = time.monotonic()
                else:
                    on_s += time.monotonic() - switched_on
            sent0 = sum(s.sent for s in speaker_objs)
            await _sleep_until(t0 + i * plan.window_s + plan.settle_s)
            a = _sample(relay, gens, me)
            stats0 = await loop.run_in_executor(None, _stats, url)
            load = os.getloadavg()[0]
            await _sleep_until(t0 + (i + 1) * plan.window_s - 0.05)
            stats1 = await loop.run_in_executor(None, _stats, url)
            b = _sample(relay, gens, me)
            wall = b[0] - a[0]
            relay_pct, clients_pct, machine_pct = (100.0 * (b[k] - a[k]) / wall for k in (1, 2, 3))
            windows.append(
                Window(
                    recording=want,
                    relay_cpu_pct=round(relay_pct, 2),
                    machine_cpu_pct=round(machine_pct, 1),
                    clients_cpu_pct=round(clients_pct, 1),
                    other_cpu_pct=round(max(0.0, machine_pct - relay_pct - clients_pct), 1),
                    load_avg_1min=round(load, 2),
                    voice_segments=sum(s.sent for s in speaker_objs) - sent0,
                    relay_tick_late_mean_ms=_tick_figures(stats0, stats1).get(
                        "relay_tick_late_mean_ms"
                    ),
                    machine_full=machine_pct >= SATURATED_PCT * (os.cpu_count() or 1),
                    measured_s=round(wall, 2),
                )
            )
        if host.room.settings.recording:
            await host.apply({"op": "set_recording", "recording": False})
            on_s += time.monotonic() - switched_on
        await asyncio.sleep(0.1)
        stop.set()
        for t in tasks:
            await t
        pending = [t for s in speaker_objs for t in s.tasks]
        if pending:
            await asyncio.wait(pending, timeout=30)
        reports = await loop.run_in_executor(
            None, _gather, results, workers, len(workers), 120, "report"
        )
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for c in room_clients:
            await c.close()
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
    lat = (
        np.concatenate([np.frombuffer(r["latencies"], dtype=np.float32) for r in reports]) * 1000.0
    )
    return {
        "windows": [asdict(w) for w in windows],
        "recorded_s": round(on_s, 2),
        "voice_segments_sent": sum(s.sent for s in speaker_objs),
        "voice_bytes_sent": sum(s.bytes_sent for s in speaker_objs),
        "voice_errors": [e for s in speaker_objs for e in s.errors][:5],
        "voice_segments_late": sum(s.late for s in speaker_objs),
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "clients_dropped": sum(r["dropped"] for r in reports),
        "clients_errors": sum(r["errors"] for r in reports),
    }


async def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _poses(
    room_clients: list[Any], speakers: int, rate: float, start: float, end: float
) -> None:
    """The RoomClients' poses at `rate` (head only, as the generator's; the speakers' say they speak)."""
    from deeproom.presence import Pose

    await _sleep_until(start)
    period = 1.0 / rate
    k = 0
    t = time.monotonic()
    while time.time() < end:
        now = time.time()
        for i, c in enumerate(room_clients):
            c.publish_pose(Pose(speaking=0 < i <= speakers, seq=k, sent_at=now))
        k += 1
        t += period
        await asyncio.sleep(max(0.0, t - time.monotonic()))


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratio (mean relay CPU of the on-windows over that of the off-windows), each on-window
    against its two neighbours, and the background next to it."""
    on = [w for w in windows if w["recording"]]
    off = [w for w in windows if not w["recording"]]
    mean_on = statistics.fmean(w["relay_cpu_pct"] for w in on) if on else 0.0
    mean_off = statistics.fmean(w["relay_cpu_pct"] for w in off) if off else 0.0
    pairs = []
    for i, w in enumerate(windows):
        if w["recording"] and 0 < i < len(windows) - 1:
            around = (windows[i - 1]["relay_cpu_pct"] + windows[i + 1]["relay_cpu_pct"]) / 2
            if around > 0:
                pairs.append(round(w["relay_cpu_pct"] / around, 3))
    others = [w["other_cpu_pct"] for w in windows]
    loads = [w["load_avg_1min"] for w in windows]
    return {
        "record_cpu_ratio": round(mean_on / mean_off, 3) if mean_off > 0 else None,
        "record_cpu_ratio_neighbours": pairs,
        "record_cpu_ratio_neighbours_median": statistics.median(pairs) if pairs else None,
        "relay_cpu_pct_record": round(mean_on, 2),
        "relay_cpu_pct_plain": round(mean_off, 2),
        "windows_on": len(on),
        "windows_off": len(off),
        "windows_machine_full": sum(1 for w in windows if w.get("machine_full")),
        "other_cpu_pct_record": round(statistics.fmean(w["other_cpu_pct"] for w in on), 1)
        if on
        else None,
        "other_cpu_pct_plain": round(statistics.fmean(w["other_cpu_pct"] for w in off), 1)
        if off
        else None,
        "other_cpu_pct_range": [min(others), max(others)] if others else None,
        "load_avg_1min_range": [min(loads), max(loads)] if loads else None,
    }
