"""Hostile clients for `deeproom bench relay --hostile`: members of the bench room who try what must be refused.

Each hostile client joins the room as an ordinary member (with the room's password),
then, until the run ends, cycles through the classes below, a slice of a second each,
every client starting at a different class so that all classes run at once:

- join_storm: fresh connections, each trying joins that must fail (wrong password, a
  participant id bound to someone else's key, a malformed id) and a second join;
- flood: operations, events and poses far above the per-client rates;
- reserved_names: Socket.IO's own event names (`disconnect`, `connect`, ...) and the
  relay's outgoing ones (`update`, `poses`, ...) sent as client events;
- bad_strings: lone surrogates, control characters, over-long text, NaN, bytes where text
  belongs, in operations, events and ids;
- deep_nesting: payloads nested from 17 to 100,000 levels (sent as raw Socket.IO text);
- oversized: payloads over their caps, and a 3 MiB message (over Engine.IO's 2 MiB);
- upload_hoarding: a second connection begins as many 64 MiB uploads as it may, sends a
  few MiB into each and never finishes them.

Everything they send must be refused or dropped, so the room's stored state must not
change while they run (the bench compares the store before and after). Each client
comes from its own loopback address (127.0.1.x), so per-address limits see them apart
from the normal clients on 127.0.0.1.

The code here is deliberately independent of the relay's internals: it speaks the wire
protocol (docs/protocol.md) with python-socketio.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

ROOM = "bench"
CLASSES = ("join_storm", "flood", "reserved_names", "bad_strings", "deep_nesting", "oversized", "upload_hoarding")
RESERVED = ("connect", "disconnect", "connect_error", "message", "__disconnect_final", "update", "poses", "event",
            "error", "kicked", "*", "ping", "pa2", "join ")
_POSE = struct.Struct("<BBId7f")


def hostile_address(i: int) -> str:
    return f"127.0.1.{10 + i % 240}"


class Phases:
    """Hostile windows inside the measured window [t0, t1): `window` seconds each, the first one
    quiet, then on and off in turn (so the normal clients' latency with and without the hostile
    clients is measured in the same run, under the same background load)."""

    def __init__(self, t0: float, t1: float, window: float) -> None:
        self.t0, self.t1, self.window = t0, t1, window

    def index(self, t: float) -> int:
        return int((t - self.t0) // self.window)

    def active(self, t: float) -> bool:
        return self.t0 <= t < self.t1 and self.index(t) % 2 == 1

    def wait(self, t: float) -> float:
        """Seconds until the next hostile window starts (0 while in one; inf after the last)."""
        if self.active(t):
            return 0.0
        k = max(0, self.index(t) + 1) if t >= self.t0 else 1
        if k % 2 == 0:
            k += 1
        start = self.t0 + k * self.window
        return start - t if start < self.t1 else math.inf

    def end_of(self, t: float) -> float:
        """When the window holding `t` ends."""
        return min(self.t1, self.t0 + (self.index(t) + 1) * self.window)


class _Hostile:
    """One hostile participant and its tallies."""

    def __init__(self, url: str, pid: str, key: str, password: str, address: str, end: float) -> None:
        self.url, self.pid, self.key, self.password, self.address, self.end = url, pid, key, password, address, end
        self.sio: Any = None
        self.tally: Counter[str] = Counter()
        self.unique = 0

    def count(self, cls: str, outcome: str, n: int = 1) -> None:
        self.tally[f"{cls}.{outcome}"] += n

    async def open(self, join: bool = True, *, pid: str | None = None) -> Any:
        import aiohttp

        from deeproom.net.sio_client import RelaySocketClient

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(self.address, 0)))
        # python-socketio's client, minus its error on binary data of a connection it just left
        sio = RelaySocketClient(reconnection=False, http_session=session, request_timeout=10)
        sio.on("poses", lambda data: None)  # never confirmed: the relay stops sending after a few
        gone = asyncio.Event()
        sio.on("disconnect", lambda *reason: gone.set())

        def on_error(err: Any) -> None:
            if isinstance(err, dict) and "refused messages" in str(err.get("message", "")):
                self.count("relay", "expelled")  # out of strikes: disconnected, the address waits

        sio.on("error", on_error)
        sio._bench_gone = gone
        refused: list[Any] = []
        sio.on("connect_error", refused.append)
        try:
            await sio.connect(self.url, transports=["websocket"], wait_timeout=15)
            if join:
                ack = await sio.call("join", {"room": ROOM, "name": pid or self.pid, "participant_id": pid or self.pid,
                                              "key": self.key, "password": self.password}, timeout=30)
                if not (isinstance(ack, dict) and ack.get("ok")):
                    raise RuntimeError(f"hostile member {self.pid} could not join: {ack}")
        except BaseException:
            if refused:
                self.count("relay", "connect_refused")
            await _close(sio, session)
            raise
        sio._bench_session = session
        return sio

    async def ensure(self) -> Any:
        """The main connection, (re)joined if the relay dropped it."""
        if self.sio is None or not self.sio.connected:
            if self.sio is not None:
                await _close(self.sio, self.sio._bench_session)
                self.count("reconnect", "needed")
            self.sio = await self.open()
        return self.sio

    async def ask(self, cls: str, sio: Any, event: str, data: Any, timeout: float = 3.0) -> Any:
        """Send one message that must be refused; count what came back."""
        call = asyncio.ensure_future(sio.call(event, data, timeout=timeout))
        gone = asyncio.ensure_future(sio._bench_gone.wait())
        try:
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not call.done():  # the relay closed the connection: no answer will come
            call.cancel()
            self.count(cls, "dropped")
            return None
        try:
            ack = call.result()
        except Exception as exc:  # timeouts, a connection the relay closed
            self.count(cls, "no_answer" if "Timeout" in type(exc).__name__ else "dropped")
            return None
        if isinstance(ack, dict) and ack.get("ok") is False:
            self.count(cls, "refused")
            err = ack.get("error") or {}
            if isinstance(err, dict) and "join a room first" in str(err.get("message", "")):
                self.count(cls, "lost_session")  # e.g. a client "disconnect" event the relay believed
                await _close(sio, sio._bench_session)
        elif isinstance(ack, dict) and ack.get("ok") is True:
            self.count(cls, "accepted")
            if cls not in ("upload_hoarding",) and not cls.endswith("_probe"):
                what = data.get("op", {}).get("op") if event == "op" and isinstance(data.get("op"), dict) else data.get("kind")
                self.count(cls, f"accepted:{event}:{str(what)[:20]}")  # should never happen: say what got in
        else:
            self.count(cls, "odd_answer")
        return ack

    def fresh(self, stem: str) -> str:
        self.unique += 1
        return f"{stem}{self.pid}-{self.unique}"

    # --- the classes -----------------------------------------------------------------------

    async def join_storm(self, until: float) -> None:
        while time.time() < until:
            sio = None
            try:
                sio = await self.open(join=False)
                for msg in (
                    {"room": ROOM, "name": "intruder", "participant_id": self.fresh("x"), "password": "wrong"},
                    {"room": ROOM, "name": "thief", "participant_id": "c000", "key": "not-c000s-key",
                     "password": self.password},
                    {"room": "no room!", "name": "x", "participant_id": "x"},
                    {"room": ROOM, "name": "x", "participant_id": "x" * 65, "password": self.password},
                ):
                    await self.ask("join_storm", sio, "join", msg, timeout=10)
            except Exception:
                self.count("join_storm", "connect_failed")
            finally:
                if sio is not None:
                    await _close(sio, sio._bench_session)

    async def flood(self, until: float) -> None:
        sio = await self.ensure()
        answers: Counter[str] = Counter()

        def on_ack(*ack: Any) -> None:
            a = ack[0] if ack else None
            answers["refused" if isinstance(a, dict) and a.get("ok") is False else "accepted"] += 1

        seq = 0
        sent = 0
        while time.time() < until and sio.connected:
            for _ in range(10):  # ~500 ops/s, 250 events/s, 250 poses/s: far over 200, 100 and 60
                await sio.emit("op", {"id": self.fresh("f"), "op": {"op": "move_panel", "panel_id": "ghost",
                                                                     "transform": {}}}, callback=on_ack)
                await sio.emit("op", {"id": self.fresh("f"), "op": {"op": "rename_room", "room_name": "mine"}},
                               callback=on_ack)
                await sio.emit("event", {"kind": "summon", "payload": {"position": [0, 0, 0]}}, callback=on_ack)
                seq += 1
                await sio.emit("pose", _POSE.pack(1, 0, seq, time.time(), 0.0, 1.6, 0.0, 1.0, 0.0, 0.0, 0.0))
                sent += 3
            await asyncio.sleep(0.04)
        await asyncio.sleep(2.0)  # answers to a flood come late; the rest count as unanswered
        self.count("flood", "sent", sent)
        self.count("flood", "unanswered", sent - sum(answers.values()))
        for k, v in answers.items():
            self.count("flood", k, v)

    async def reserved_names(self, until: float) -> None:
        while time.time() < until:
            sio = await self.ensure()
            for name in RESERVED:
                await self.ask("reserved_names", sio, name, {"room": ROOM, "participant_id": self.pid}, timeout=1.0)
                if not sio.connected:
                    break
            await asyncio.sleep(0.05)

    async def bad_strings(self, until: float) -> None:
        while time.time() < until:
            sio = await self.ensure()
            for op in (
                {"op": "add_panel", "panel_id": self.fresh("s"), "kind": "note", "title": "lone \ud800 surrogate"},
                {"op": "add_panel", "panel_id": self.fresh("s"), "kind": "note", "title": "nul \x00 inside"},
                {"op": "add_panel", "panel_id": self.fresh("s"), "kind": "note", "title": "x" * 5000},
                {"op": "add_panel", "panel_id": "spaced id " + str(self.unique), "kind": "note", "title": "t"},
                {"op": "add_panel", "panel_id": self.fresh("s"), "kind": "note", "title": "t",
                 "content": {"source": {"\udfff": "key"}}},
                {"op": "add_panel", "panel_id": self.fresh("s"), "kind": "note", "title": "t",
                 "content": {"refs": ["not-a-sha"]}},
                {"op": "add_panel", "panel_id": self.fresh("s"), "kind": "note", "title": "t",
                 "size": [1e309 * 0, 1]},
                {"op": "set_profile", "participant_id": self.pid, "display_name": "\ud83d", "colour": "#ffffff"},
                {"op": "set_profile", "participant_id": self.pid, "display_name": b"\xff\xfe", "colour": "#ffffff"},
                {"op": "join", "participant_id": self.fresh("j"), "display_name": "ghost", "colour": "#ffffff"},
                {"op": "leave", "participant_id": self.pid},
            ):
                await self.ask("bad_strings", sio, "op", {"id": self.fresh("b"), "op": op})
            await self.ask("bad_strings", sio, "op", {"id": b"\xff\xfe\xfd", "op": {"op": "lock_layout", "locked": True}})
            await self.ask("bad_strings", sio, "event", {"kind": "stream\ud800", "payload": {}})
            await self.ask("bad_strings", sio, "event", {"kind": "signal", "payload": {"x": "\udc00"}, "to": "c000"})
            # NaN is not JSON, but Python's json module reads it: send it raw.
            await self._raw(sio, '2["op",{"id":"nan","op":{"op":"move_panel","panel_id":"ghost",'
                                 '"transform":{"position":[NaN,0,0]}}}]', "bad_strings")
            await asyncio.sleep(0.05)

    async def deep_nesting(self, until: float) -> None:
        while time.time() < until:
            sio = await self.ensure()
            for depth in (17, 100, 1000):
                # json.dumps recurses: build the text by hand.
                text = '{"n":' * depth + "1" + "}" * depth
                await self._raw(sio, '2["event",{"kind":"stream","payload":' + text + '}]', "deep_nesting")
                await self._raw(sio, '2["op",{"id":"' + self.fresh("d") + '","op":{"op":"add_panel","panel_id":"'
                                + self.fresh("d") + '","kind":"note","title":"t","content":{"source":' + text + '}}}]',
                                "deep_nesting")
            for depth in (20_000, 100_000):
                await self._raw(sio, '2["event",' + "[" * depth + "]" * depth + "]", "deep_nesting")
            await asyncio.sleep(0.1)

    async def oversized(self, until: float) -> None:
        while time.time() < until:
            sio = await self.ensure()
            await self.ask("oversized", sio, "event", {"kind": "stream", "payload": {"x": "y" * 1_100_000}}, timeout=10)
            await self.ask("oversized", sio, "event", {"kind": "summon", "payload": {"x": "y" * 10_000}})
            await self.ask("oversized", sio, "op", {"id": self.fresh("o"), "op": {
                "op": "add_panel", "panel_id": self.fresh("o"), "kind": "note", "title": "t",
                "content": {"source": {"x": "y" * 200_000}}}}, timeout=10)
            await self.ask("oversized", sio, "sync", {"sv": b"\x01" * 100_000}, timeout=10)
            await self.ask("oversized", sio, "join", {"room": ROOM, "name": "n" * 100_000, "participant_id": self.pid})
            # Over Engine.IO's limit: the relay closes this connection; the next slice reconnects.
            with contextlib.suppress(Exception):
                await sio.eio.send('2["event",{"kind":"stream","payload":{"x":"' + "z" * (3 * 1024 * 1024) + '"}}]')
                self.count("oversized", "sent_3mib")
            await asyncio.sleep(0.3)

    async def upload_hoarding(self, until: float) -> None:
        sio = None
        try:
            sio = await self.open()  # a second connection of the same participant
            size = 64 * 1024 * 1024
            begun: list[str] = []
            for _ in range(8):
                sha = hashlib.sha256(os.urandom(16)).hexdigest()
                ack = await self.ask("upload_hoarding", sio, "blob_begin", {"sha": sha, "size": size})
                if isinstance(ack, dict) and ack.get("ok"):
                    begun.append(sha)
            chunk = os.urandom(256 * 1024)
            for offset in range(0, 4 * 1024 * 1024, len(chunk)):
                for sha in begun:
                    if time.time() >= until or not sio.connected:
                        break
                    await self.ask("upload_hoarding", sio, "blob_chunk", {"sha": sha, "offset": offset, "data": chunk},
                                   timeout=10)
            self.count("upload_hoarding", "uploads_begun", len(begun))
            while time.time() < until and sio.connected:  # hold them open
                await asyncio.sleep(0.1)
        except Exception:
            self.count("upload_hoarding", "connect_failed")
        finally:
            if sio is not None:
                await _close(sio, sio._bench_session)

    async def _raw(self, sio: Any, text: str, cls: str) -> None:
        """A Socket.IO packet as text, then a probe: did the connection survive it?"""
        try:
            await sio.eio.send(text)
        except Exception:
            self.count(cls, "dropped")
            return
        probe = await self.ask(cls + "_probe", sio, "sync", {"sv": b"\x00"}, timeout=5)
        self.count(cls, "survived" if probe is not None else "dropped")

    async def run(self, start: float, offset: int, slice_s: float, phases: Phases | None = None) -> None:
        """Misbehave from `start` to `self.end`, a class per slice; with `phases`, only in its hostile
        windows (quiet in between, the main connection left open)."""
        await asyncio.sleep(max(0.0, start - time.time()))
        k = offset
        while time.time() < self.end:
            now = time.time()
            window_end = self.end
            if phases is not None:
                wait = phases.wait(now)
                if wait > 0:
                    await asyncio.sleep(min(wait, max(0.0, self.end - now)))
                    continue
                window_end = phases.end_of(now)
            cls = CLASSES[k % len(CLASSES)]
            k += 1
            until = min(self.end, now + slice_s, window_end)
            work: Callable[[float], Awaitable[None]] = getattr(self, cls)
            try:
                await asyncio.wait_for(work(until), until - time.time() + 15)
                self.count(cls, "slices")
            except Exception as exc:
                self.count(cls, "error:" + type(exc).__name__)
            await asyncio.sleep(max(0.0, until - time.time()))


async def _close(sio: Any, session: Any) -> None:
    with contextlib.suppress(Exception):
        await sio.disconnect()
    with contextlib.suppress(Exception):
        await session.close()


def hostile_proc(url: str, ids: list[str], keys: list[str], password: str, ready: Any, go: Any, times: Any,
                 results: Any, slice_s: float = 1.0, window_s: float = 0.0) -> None:
    """A process of hostile clients: join, wait for `go`, misbehave until times[3], report tallies.
    `window_s` > 0: only in the hostile windows of `Phases(times[1], times[2], window_s)`."""
    import logging

    logging.getLogger("socketio").setLevel(logging.CRITICAL)
    logging.getLogger("engineio").setLevel(logging.CRITICAL)

    async def main() -> None:
        clients = []
        for i, (pid, key) in enumerate(zip(ids, keys, strict=True)):
            h = _Hostile(url, pid, key, password, hostile_address(i), 0.0)
            h.sio = await h.open()
            clients.append(h)
        ready.put(os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        for h in clients:
            h.end = times[3]
        random.seed(1)
        # Spread the clients' starting classes, and shorten slices in short runs, so every class runs.
        n = len(clients)
        phases = Phases(times[1], times[2], window_s) if window_s > 0 else None
        active_s = (times[2] - times[1]) / 2 if phases is not None else times[3] - times[0]
        slice_len = max(0.25, min(slice_s, active_s / math.ceil(len(CLASSES) / n)))
        await asyncio.gather(*(h.run(times[0], i * len(CLASSES) // n, slice_len, phases) for i, h in enumerate(clients)))
        total: Counter[str] = Counter()
        for h in clients:
            total.update(h.tally)
            if h.sio is not None:
                await _close(h.sio, h.sio._bench_session)
        results.put(("hostile", json.dumps(dict(sorted(total.items())))))

    asyncio.run(main())
