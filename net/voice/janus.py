"""Janus as the SFU: starting and stopping a server of our own, and its HTTP API.

`JanusServer` writes a configuration from the templates shipped in the package
(`deeproom/net/voice/janus_templates/*.jcfg.in`, read with importlib.resources, so
an installed wheel can start the SFU too) into a folder of its own (VideoRoom plugin and plain HTTP only, no STUN/TURN, candidates only on
the given address) and starts `janus` — inside one of our network namespaces when
given one — stopping it by PID (SIGTERM, then SIGKILL).

`JanusSession` speaks Janus's HTTP API (aiohttp): create a session, attach plugin
handles, send plugin messages, and long-poll for events, which are matched to the
request that caused them by transaction or handed to the handle's event queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from deeproom.net.voice.errors import SfuError
from deeproom.net.voice.netns import Namespace

TEMPLATE_NAMES = ("janus.jcfg", "janus.transport.http.jcfg", "janus.plugin.videoroom.jcfg")
JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")


def find_janus() -> str | None:
    return shutil.which("janus") or (str(Path("/usr/bin/janus")) if Path("/usr/bin/janus").exists() else None)


def _lib_dir() -> Path:
    for cand in (JANUS_LIB, *Path("/usr/lib").glob("*/janus")):
        if (cand / "plugins").is_dir():
            return cand
    raise SfuError("Janus plugins folder not found (expected /usr/lib/<arch>/janus); apt-get install janus")


def server_address(host: str | None = None) -> str:
    """The address a Janus of our own offers ICE candidates on: `host` when it is one
    concrete address that is not loopback (Janus never gathers on loopback), else the
    machine's first global IPv4 address (`ip -4 addr show scope global`)."""
    import ipaddress

    if host:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise SfuError(f"the SFU address must be an IP address; got {host!r}") from None
        if not (ip.is_loopback or ip.is_unspecified):
            return str(ip)
    ip_cmd = shutil.which("ip")
    if ip_cmd is not None:
        out = subprocess.run([ip_cmd, "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=10)
        for line in out.stdout.splitlines():
            m = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", line)
            if m:
                return m.group(1)
    raise SfuError(
        "no address to run the SFU on: Janus never offers loopback to its clients, and this machine has no "
        "global IPv4 address (pass one with --sfu-address)"
    )


def template(name: str) -> str:
    """The text of one Janus configuration template shipped in the package."""
    from importlib.resources import files

    src = files("deeproom.net.voice").joinpath("janus_templates", f"{name}.in")
    try:
        return src.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise SfuError(
            f"Janus config template {name}.in is missing from the installed deeproom package "
            "(deeproom/net/voice/janus_templates/); reinstall DeepRoom"
        ) from None


def render_config(values: dict[str, str]) -> dict[str, str]:
    """Each configuration file's name and text, the @KEY@ placeholders filled in from `values`.
    A placeholder left unfilled is an error (Janus would read it literally)."""
    out = {}
    for name in TEMPLATE_NAMES:
        text = template(name)
        for k, v in values.items():
            text = text.replace(k, v)
        left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
        if left:
            raise SfuError(f"{name}: no value for {', '.join(left)}")
        out[name] = text
    return out


class JanusServer:
    """A Janus process of our own. Async context manager; stopping twice is safe."""

    def __init__(
        self,
        address: str,
        *,
        namespace: Namespace | None = None,
        http_port: int = 8088,
        rtp_ports: tuple[int, int] = (20000, 40000),
        debug_level: int = 2,
        workdir: str | Path | None = None,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.http_port = http_port
        self.rtp_ports = rtp_ports
        self.debug_level = debug_level
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="deeproom-janus-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "janus.log"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.http_port}/janus"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def write_config(self) -> None:
        lib = _lib_dir()
        values = {
            "@DIR@": str(self.dir),
            "@PLUGINS@": str(lib / "plugins"),
            "@TRANSPORTS@": str(lib / "transports"),
            "@EVENTS@": str(lib / "events"),
            "@LOGGERS@": str(lib / "loggers"),
            "@DEBUG_LEVEL@": str(self.debug_level),
            "@RTP_PORTS@": f"{self.rtp_ports[0]}-{self.rtp_ports[1]}",
            "@ADDRESS@": self.address,
            "@HTTP_PORT@": str(self.http_port),
        }
        for name, text in render_config(values).items():
            (self.dir / name).write_text(text)

    async def start(self, ready_timeout: float = 15.0) -> None:
        exe = find_janus()
        if exe is None:
            raise SfuError("the 'janus' program is not installed; apt-get install janus (tools/system-packages.txt)")
        self.write_config()
        argv = [exe, "-F", str(self.dir), "-C", str(self.dir / "janus.jcfg"), "-L", str(self.log_path), "-N"]
        if self.namespace is not None:
            argv = self.namespace.exec_args(*argv)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise SfuError(f"janus exited with {self.proc.returncode} while starting; log: {self.log_tail()}")
                try:
                    async with http.get(self.url + "/info", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError, OSError):
                    pass
                if loop.time() > deadline:
                    await self.stop()
                    raise SfuError(f"janus did not answer on {self.url} within {ready_timeout} s; log: {self.log_tail()}")
                await asyncio.sleep(0.1)

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            for _ in range(50):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                proc.kill()
            proc.wait()

    def cleanup(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> JanusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        self.cleanup()


class JanusHandle:
    """One attached plugin handle."""

    def __init__(self, session: JanusSession, handle_id: int) -> None:
        self.session = session
        self.id = handle_id
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request (create, exists, ...): returns the plugin's data."""
        reply = await self.session._post(f"/{self.id}", {"janus": "message", "body": body})
        if reply.get("janus") != "success":
            raise SfuError(f"Janus refused {body.get('request')!r}: {reply.get('error', reply)}")
        data = reply.get("plugindata", {}).get("data", {})
        _raise_plugin_error(body, data)
        return data  # type: ignore[no-any-return]

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """An asynchronous plugin request: waits for its event; returns (data, jsep)."""
        tx = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.session._waiting[tx] = fut
        msg: dict[str, Any] = {"janus": "message", "body": body, "transaction": tx}
        if jsep is not None:
            msg["jsep"] = jsep
        try:
            reply = await self.session._post(f"/{self.id}", msg, transaction=tx)
            if reply.get("janus") == "error":
                raise SfuError(f"Janus refused {body.get('request')!r}: {reply.get('error')}")
            if reply.get("janus") == "event":  # answered at once
                event = reply
            else:
                event = await asyncio.wait_for(fut, timeout)
        finally:
            self.session._waiting.pop(tx, None)
        data = event.get("plugindata", {}).get("data", {})
        _raise_plugin_error(body, data)
        return data, event.get("jsep")

    async def detach(self) -> None:
        with contextlib.suppress(Exception):
            await self.session._post(f"/{self.id}", {"janus": "detach"})


def _raise_plugin_error(body: dict[str, Any], data: dict[str, Any]) -> None:
    if "error_code" in data or (data.get("videoroom") == "event" and "error" in data):
        raise SfuError(
            f"VideoRoom refused {body.get('request')!r}: {data.get('error', '?')} (code {data.get('error_code')})"
        )


class JanusSession:
    """A Janus session over HTTP with a long-poll task. Async context manager."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.id: int | None = None
        self.handles: dict[int, JanusHandle] = {}
        self.lost: asyncio.Event = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poll: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> JanusSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40))
        try:
            reply = await self._post("", {"janus": "create"})
        except BaseException:
            await self._http.close()
            raise
        if reply.get("janus") != "success":
            await self._http.close()
            raise SfuError(f"Janus would not create a session: {reply.get('error', reply)}")
        self.id = int(reply["data"]["id"])
        loop = asyncio.get_running_loop()
        self._poll = loop.create_task(self._long_poll(), name="janus-poll")
        self._keepalive = loop.create_task(self._keep_alive(), name="janus-keepalive")

    async def _post(self, path: str, msg: dict[str, Any], transaction: str | None = None) -> dict[str, Any]:
        if self._http is None:
            raise SfuError("the Janus session is not open")
        msg = dict(msg)
        msg.setdefault("transaction", transaction or secrets.token_hex(8))
        base = self.url if self.id is None else f"{self.url}/{self.id}"
        try:
            async with self._http.post(base + path, json=msg) as r:
                reply = await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            self.lost.set()
            raise SfuError(f"Janus at {self.url} is unreachable: {exc!r}") from None
        if not isinstance(reply, dict):
            raise SfuError(f"Janus sent something that is not an object: {reply!r:.200}")
        if reply.get("janus") == "error" and reply.get("error", {}).get("code") == 458:  # no such session
            self.lost.set()
        return reply

    async def attach(self, plugin: str = "janus.plugin.videoroom") -> JanusHandle:
        reply = await self._post("", {"janus": "attach", "plugin": plugin})
        if reply.get("janus") != "success":
            raise SfuError(f"Janus would not attach {plugin}: {reply.get('error', reply)}")
        h = JanusHandle(self, int(reply["data"]["id"]))
        self.handles[h.id] = h
        return h

    async def _long_poll(self) -> None:
        assert self._http is not None
        while not self._closed:
            try:
                async with self._http.get(f"{self.url}/{self.id}", params={"maxev": "10"}) as r:
                    payload = await r.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.lost.set()
                return
            events = payload if isinstance(payload, list) else [payload]
            for ev in events:
                if not isinstance(ev, dict):
                    continue
                if ev.get("janus") == "error":
                    self.lost.set()
                    return
                tx = ev.get("transaction")
                if ev.get("janus") == "event" and tx in self._waiting and not self._waiting[tx].done():
                    self._waiting[tx].set_result(ev)
                    continue
                h = self.handles.get(ev.get("sender", -1))
                if h is not None:
                    h.events.put_nowait(ev)

    async def _keep_alive(self) -> None:
        while not self._closed:
            await asyncio.sleep(10)
            with contextlib.suppress(SfuError):
                await self._post("", {"janus": "keepalive"})

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in (self._poll, self._keepalive):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if self._http is not None:
            if self.id is not None and not self.lost.is_set():
                with contextlib.suppress(Exception):
                    async with self._http.post(f"{self.url}/{self.id}", json={"janus": "destroy", "transaction": "bye"}):
                        pass
            await self._http.close()


async def ensure_room(url: str, room: int, pin: str, publishers: int = 64) -> None:
    """Create the audio-only VideoRoom `room` with `pin` unless it exists."""
    async with JanusSession(url) as s:
        h = await s.attach()
        data = await h.request({"request": "exists", "room": room})
        if not data.get("exists"):
            await h.request(
                {
                    "request": "create",
                    "room": room,
                    "pin": pin,
                    "publishers": publishers,
                    "audiocodec": "opus",
                    "description": f"deeproom voice {room}",
                    "permanent": False,
                    "is_private": True,
                }
            )


def new_pin() -> str:
    return secrets.token_urlsafe(12)


def room_number(room_id: str) -> int:
    """A stable VideoRoom number for a DeepRoom room id."""
    import zlib

    return zlib.crc32(room_id.encode()) % 2_000_000_000 + 1


def janus_pids_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
