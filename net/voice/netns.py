"""Network namespaces of our own, so the SFU and its clients talk without loopback.

Janus 1.1.2 never gathers ICE candidates on a loopback interface. So the SFU and
its clients run inside a network namespace we create: it holds its own `lo` and a
veth pair whose both ends stay inside it, one end carrying a private address
(10.213.0.1 by default; namespaces have separate stacks, so every namespace can
use the same one). Packets to that address never leave the namespace, let alone
the machine; the machine's own interfaces are not touched. Needs root
(CAP_SYS_ADMIN) and iproute2.

Code runs inside with `run_inside(ns, coroutine_function)`: a thread that joins the
namespace (setns is per thread on Linux) and runs its own asyncio loop there, so
every socket it opens lives in the namespace. Processes (Janus) start through
`ip netns exec`, which replaces itself with the program: its PID is the program's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from deeproom.net.voice.errors import NamespaceError

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _ip(*args: str) -> None:
    ip = shutil.which("ip")
    if ip is None:
        raise NamespaceError("the 'ip' command (iproute2) is needed for the SFU namespace; apt-get install iproute2")
    proc = subprocess.run([ip, *args], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)} failed: {proc.stderr.strip() or proc.returncode}")


def available() -> str | None:
    """None if namespaces can be made here, else why not (for skips and `doctor`)."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    return None


@dataclass
class Namespace:
    """A network namespace with one private address; delete it when done (safe twice)."""

    name: str
    address: str = "10.213.0.1"
    _deleted: bool = False

    @classmethod
    def create(cls, prefix: str = "drv", address: str = "10.213.0.1") -> Namespace:
        why = available()
        if why:
            raise NamespaceError(why)
        name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        ns = cls(name, address)
        _ip("netns", "add", name)
        try:
            _ip("-n", name, "link", "set", "lo", "up")
            # both ends of the veth pair stay inside: nothing is attached to the machine
            _ip("-n", name, "link", "add", "drv0", "type", "veth", "peer", "name", "drv1")
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", "drv0")
            _ip("-n", name, "link", "set", "drv0", "up")
            _ip("-n", name, "link", "set", "drv1", "up")
        except NamespaceError:
            ns.delete()
            raise
        return ns

    def exec_args(self, *argv: str) -> list[str]:
        """The command line that runs `argv` inside this namespace."""
        ip = shutil.which("ip") or "ip"
        return [ip, "netns", "exec", self.name, *argv]

    def delete(self) -> None:
        if self._deleted:
            return
        self._deleted = True
        self.stop_processes()
        try:
            _ip("netns", "del", self.name)
        except NamespaceError:
            pass

    def stop_processes(self) -> list[int]:
        """Stop (SIGTERM, then SIGKILL) every process still inside: only ones we started live here."""
        import signal
        import time

        ip = shutil.which("ip")
        if ip is None:
            return []
        out = subprocess.run([ip, "netns", "pids", self.name], capture_output=True, text=True, timeout=10)
        pids = [int(x) for x in out.stdout.split() if x.isdigit() and int(x) != os.getpid()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return pids

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def run_inside(self, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run the coroutine `fn()` on a fresh event loop in a thread inside the namespace."""
        import asyncio

        result: dict[str, Any] = {}

        def target() -> None:
            try:
                enter(self.name)
                result["value"] = asyncio.run(fn())  # type: ignore[arg-type]
            except BaseException as exc:
                result["error"] = exc

        t = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise NamespaceError(f"code inside namespace {self.name} did not finish in {timeout} s")
        if "error" in result:
            raise result["error"]
        return result["value"]  # type: ignore[no-any-return]


def enter(name: str) -> None:
    """Move the calling thread (only it) into network namespace `name`."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    path = f"/run/netns/{name}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise NamespaceError(f"no network namespace {name!r} ({exc})") from None
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NamespaceError(f"could not enter namespace {name!r}: {os.strerror(err)}")
    finally:
        os.close(fd)
