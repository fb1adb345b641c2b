"""Fixtures for the relay tests: real relays on 127.0.0.1, real clients, real redis-server."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.net import EmbeddedRelay
from deeproom.net.procs import stop_process


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[EmbeddedRelay]:
    async with EmbeddedRelay(data_dir=tmp_path / "relay", leave_grace_s=0.5) as r:
        yield r


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Wait until `check()` is truthy (returning it), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_relay_process(data_dir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """`deeproom serve` as a subprocess (stopped by PID by the caller)."""
    log = open(data_dir.parent / f"relay-{port}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "deeproom.cli", "--data-dir", str(data_dir), "serve", "--host", "127.0.0.1",
         "--port", str(port), "--leave-grace", "1", *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    return proc


class RedisNodes:
    """`deeproom serve --redis URL` processes sharing rooms (node i in `tmp/node<i+1>`), started
    and waited for on entry, stopped by PID on exit; `kill(i)` and `restart(i)` for outages."""

    def __init__(self, tmp: Path, redis_url: str, *extra: str, n: int = 2) -> None:
        self.dirs = [tmp / f"node{i + 1}" for i in range(n)]
        self.ports = [free_port() for _ in range(n)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.args = ("--redis", redis_url, *extra)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> RedisNodes:
        try:
            for d, port in zip(self.dirs, self.ports, strict=True):
                d.mkdir()
                self.procs.append(start_relay_process(d, port, *self.args))
            for proc, port in zip(self.procs, self.ports, strict=True):
                wait_for_port(port, proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            stop(proc)

    def kill(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait(10)

    def restart(self, i: int) -> None:
        self.procs[i] = start_relay_process(self.dirs[i], self.ports[i], *self.args)
        wait_for_port(self.ports[i], self.procs[i])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port} after {timeout} s")


def stop(proc: subprocess.Popen[Any], sig_kill: bool = False) -> None:
    stop_process(proc, kill=sig_kill)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free port, with its data in tmp_path; stopped by PID."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (it is listed in tools/system-packages.txt)")
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "always", "--dir", str(data), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


# -- what a voice test heard -------------------------------------------------------------
# Voice tests run in real time. On a loaded CI host a frame now and then arrives late and
# is concealed or dropped; the checks below are about *what* was heard (which tone, how
# loud relative to another rendering), so they look at the frames that carried sound and
# give the frequency a relative tolerance that still tells every tone the tests use apart
# (330, 440, 550, 660 Hz: >= 110 Hz between neighbours).
TONE_TOLERANCE = 0.015
FRAME = 960  # 20 ms at 48 kHz


def voiced(samples: Any, floor: float = 1e-3, frame: int = FRAME) -> np.ndarray:
    """The 20 ms frames of `samples` ([n] or [n, channels]) that carry sound, concatenated."""
    x = np.asarray(samples, dtype=np.float32)
    n = len(x) // frame * frame
    frames = x[:n].reshape(n // frame, frame, *x.shape[1:])
    peak = np.abs(frames).reshape(len(frames), -1).max(axis=1) if len(frames) else np.zeros(0)
    return frames[peak > floor].reshape(-1, *x.shape[1:])


def voiced_fraction(samples: Any, floor: float = 1e-3, frame: int = FRAME) -> float:
    n = len(samples) // frame
    return len(voiced(samples, floor, frame)) / (n * frame) if n else 0.0


def assert_tone(samples: Any, hz: float, min_rms: float = 0.15, min_voiced: float = 0.5) -> None:
    """`samples` are mostly sound, that sound is a tone of `hz`, at least `min_rms` loud."""
    from deeproom.net.voice import dominant_hz, rms

    share = voiced_fraction(samples)
    assert share >= min_voiced, f"only {share:.0%} of {len(samples)} samples carried sound"
    sound = voiced(samples)
    got = dominant_hz(sound)
    assert abs(got - hz) < hz * TONE_TOLERANCE, f"heard {got:.1f} Hz, expected {hz:.0f} Hz"
    assert rms(sound) > min_rms, f"the {hz:.0f} Hz tone arrived at rms {rms(sound):.3f}, expected > {min_rms}"


def assert_tone_soon(fetch: Callable[[], Any], hz: float, timeout: float = 10.0, **kw: Any) -> None:
    """`assert_tone` on the latest window from `fetch()`, retried until it holds or `timeout` passes.

    On a loaded machine a window can hold a late packet's concealment (a phase jump that moves
    the spectrum's peak by a few hertz); the speaker is still the right one if the next windows
    carry the tone. Fails with the last window's reason and how many windows were looked at."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        tries += 1
        try:
            assert_tone(fetch(), hz, **kw)
            return
        except AssertionError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{e} (in each of {tries} windows over {timeout:.0f} s)") from None
        time.sleep(0.3)
