"""The Monado OpenXR runtime in a trixie folder: build it once, run it, stop it by PID.

Debian 12 packages no OpenXR runtime; Debian 13 packages Monado, with a null
compositor and a simulated headset (and simulated controllers). Its runtime library
needs trixie's libraries, so both `monado-service` and the XR client run inside a
debootstrapped trixie folder (`tools/monado/build-root.sh`, cached under
`.cache/xr-root`). Processes are started through `tools/monado/run-in-root.sh`, whose
mounts live in a private namespace and whose PID is the program's own, so stopping
a process by its PID also drops its mounts.

No ursina or panda3d here: the tests, `deeproom bench xr` and `deeproom doctor`
drive this from the host's interpreter.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from deeproom.net.procs import stop_process

from .errors import XRRootError

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "monado"
MONADO_RUNTIME_JSON = "/usr/share/openxr/1/openxr_monado.json"
# The IPC socket path must fit in a sockaddr_un (108 bytes); the chroot's /tmp is short.
_SOCKET_NAME = "monado_comp_ipc"


class RootCannotBeBuilt(XRRootError):
    """This host cannot build the folder at all (not root, no debootstrap)."""


@dataclass(frozen=True)
class MonadoRoot:
    """A trixie folder with Monado and the XR client's venv."""

    path: Path
    """Folder on the host (default `<repo>/.cache/xr-root`)."""

    @classmethod
    def default(cls) -> MonadoRoot:
        return cls(REPO / ".cache" / "xr-root")

    def is_built(self) -> bool:
        return (self.path / ".deeproom-venv").is_file() and (self.path / "usr/bin/monado-service").exists()

    def ensure_built(self, timeout: float = 1800.0, log: IO[str] | None = None) -> None:
        """Build the folder unless the stamps say it is current (a no-op then, quick).

        Raises RootCannotBeBuilt when this host lacks what the build needs, and
        XRRootError when the build itself failed."""
        if os.geteuid() != 0:
            if self.is_built():
                return
            raise RootCannotBeBuilt(
                f"building {self.path} needs root (debootstrap, chroot, mount namespaces); running as uid {os.geteuid()}"
            )
        for tool in ("debootstrap", "unshare", "chroot"):
            if shutil.which(tool) is None:
                raise RootCannotBeBuilt(f"building {self.path} needs '{tool}' (apt-get install debootstrap)")
        proc = subprocess.run(
            [str(TOOLS / "build-root.sh"), str(self.path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )
        if log is not None:
            log.write(proc.stdout)
        if proc.returncode == 3:
            raise RootCannotBeBuilt(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "cannot build")
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
            raise XRRootError(f"building {self.path} failed (exit {proc.returncode}):\n{tail}")

    def command(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """The host command line that runs `argv` inside the folder with `env` set."""
        return [
            str(TOOLS / "run-in-root.sh"), str(self.path),
            *(f"{k}={v}" for k, v in (env or {}).items()),
            *argv,
        ]

    def make_dir(self, prefix: str) -> tuple[Path, str]:
        """A fresh private folder inside the root's /tmp: (host path, path inside)."""
        host = Path(tempfile.mkdtemp(prefix=prefix, dir=self.path / "tmp"))
        host.chmod(0o700)
        return host, "/tmp/" + host.name

    def inside(self, host_path: Path) -> str:
        """The path inside the folder of a host path under it."""
        return "/" + str(host_path.resolve().relative_to(self.path.resolve()))


@dataclass
class MonadoService:
    """`monado-service` with the null compositor and a simulated headset.

    Use as a context manager (sync or async); stop() is safe to call twice. Monado
    25.0's simulated builder (SIMULATED_ENABLE) moves the headset on its own: it
    "wobbles", about ±5 cm sideways and a few degrees of yaw, pitch and roll over a
    16 s cycle around (0, 1.6, 0) -- enough for tests to see the view follow the head.
    (SIMULATED_ROTATE is read only by Monado's legacy prober, which then offers no
    controllers.) `controllers` names the simulated controller type for both hands
    ("simple"), or "" for none.
    """

    root: MonadoRoot
    controllers: str = "simple"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = 30.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    runtime_dir: Path | None = field(default=None, init=False)
    runtime_dir_inside: str = field(default="", init=False)
    log_path: Path | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def client_env(self) -> dict[str, str]:
        """What a client process inside the folder needs to find this service."""
        if not self.runtime_dir_inside:
            raise XRRootError("monado-service is not running (start() it first)")
        return {"XDG_RUNTIME_DIR": self.runtime_dir_inside, "XR_RUNTIME_JSON": MONADO_RUNTIME_JSON}

    def start(self) -> MonadoService:
        if self.process is not None:
            return self
        self.runtime_dir, self.runtime_dir_inside = self.root.make_dir("xrt-")
        self.log_path = self.runtime_dir.with_name(self.runtime_dir.name + ".log")
        env = {
            "XDG_RUNTIME_DIR": self.runtime_dir_inside,
            "XRT_COMPOSITOR_NULL": "true",
            "SIMULATED_ENABLE": "true",
            **({"SIMULATED_LEFT": self.controllers, "SIMULATED_RIGHT": self.controllers} if self.controllers else {}),
            **self.extra_env,
        }
        with open(self.log_path, "wb") as log:
            # monado-service waits on stdin with epoll and gives up on /dev/null: a pipe
            # that we hold open for its lifetime.
            self.process = subprocess.Popen(
                self.root.command(["monado-service"], env), stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
            )
        socket = self.runtime_dir / _SOCKET_NAME
        deadline = time.monotonic() + self.startup_timeout
        while not socket.exists():
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise XRRootError(f"monado-service exited with {self.process.returncode if self.process else '?'}:\n{tail}")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise XRRootError(f"monado-service did not open its socket within {self.startup_timeout:.0f} s:\n{tail}")
            time.sleep(0.05)
        return self

    def log_tail(self, lines: int = 25) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None
            self.runtime_dir_inside = ""

    def __enter__(self) -> MonadoService:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> MonadoService:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)
