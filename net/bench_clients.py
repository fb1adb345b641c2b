"""The participants of `deeproom bench relay`: hundreds per process, cheap enough that the relay
is what the bench measures.

Each simulated participant is one websocket to the relay, spoken directly in the relay's
wire protocol (docs/protocol.md §1, §2, §8: Engine.IO 4 and Socket.IO 5 framing over a
websocket) on one asyncio event loop shared by every participant of the process; no
python-socketio client, no task per participant. What makes it cheap:

- poses are made from a prepared template (only seq and send time change) and sent either as
  one compact pose (`pose_frames=1`: one binary frame, byte 0xC1, `batches_read`, the pose;
  docs/protocol.md §8) or as the two frames python-socketio's own clients send
  (`pose_frames=2`: a `pose` head with `batches_read`, then the pose bytes), in one write;
  the naive relay (plain python-socketio) always gets the two frames;
- one timer per process sends the poses of a slice of the participants at a time, the
  slices spread over the pose period, instead of a timer per participant;
- a received batch is decoded in full only by a few *probe* participants (the ages of the
  poses in it, deduplicated by seq); the others read the batch header's count and look for
  their own id in the bytes, which is all the delivered-ratio count and the relay's flow
  control (`batches_read`) need;
- client frames are masked with the all-zero key (RFC 6455 §5.3 wants an unpredictable key
  against proxy cache poisoning by scripts in browsers; a relay cannot tell, and on loopback
  there is no proxy), so sending copies no bytes through an XOR.

Each participant comes from its own loopback address (127.0.2.x, then 127.0.3.x, ...), as users
on their own machines would: the relay's per-address limits (256 sockets, joins per second)
then see them apart, and from the hostile clients on 127.0.1.x.

The process reports its own CPU-relevant lag too: how late its sending timer woke
(`lag_ms`), which grows when the generator, rather than the relay, runs out of CPU.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
import time
from array import array
from typing import Any

import numpy as np

ROOM = "bench"
WS_PATH = "/socket.io/?EIO=4&transport=websocket"

_BATCH = struct.Struct("<BdH")
_POSE_HEAD = struct.Struct("<BBId")
# Head at (0, 1.6, 0), facing forward (w, x, y, z = 1, 0, 0, 0): what `Pose()` holds by default.
_HEAD = struct.pack("<7f", 0.0, 1.6, 0.0, 1.0, 0.0, 0.0, 0.0)
_ZERO_MASK = b"\0\0\0\0"
_ACK = re.compile(rb"4([36])(?:(\d+)-)?(\d+)(.*)", re.DOTALL)

# Bench participants send head-only poses and are named c000..c999, so every batch entry is
# 1 + 4 + 42 bytes: numpy reads a whole batch at once.
_ENTRY = np.dtype(
    [
        ("n", "u1"),
        ("pid", "u1", 4),
        ("ver", "u1"),
        ("flags", "u1"),
        ("seq", "<u4"),
        ("t", "<f8"),
        ("head", "<f4", 7),
    ]
)

PROBES = 8
"""Participants per run that decode every batch (ages, seq), spread over the join order."""


# --- the wire: pure functions ----------------------------------------------------------------


def participant_address(i: int) -> str:
    """The loopback address participant i connects from (250 per /24, from 127.0.2.1)."""
    return f"127.0.{2 + i // 250}.{1 + i % 250}"


def encode_pose_at(seq: int, sent_at: float) -> bytes:
    """A head-only pose (docs/protocol.md §8) equal to `encode_pose(Pose(seq=seq, sent_at=sent_at))`."""
    return _POSE_HEAD.pack(1, 0, seq & 0xFFFFFFFF, sent_at) + _HEAD


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One client-to-server websocket frame, FIN set, masked with the all-zero key (payload as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + _ZERO_MASK + payload


def pose_message(pose: bytes, batches_read: int | None) -> bytes:
    """A `pose` event as python-socketio sends it: a BINARY_EVENT head (with the flow-control
    count as its second argument when given) and the pose as its attachment, two frames."""
    if batches_read is None:
        head = b'451-["pose",{"_placeholder":true,"num":0}]'
    else:
        head = b'451-["pose",{"_placeholder":true,"num":0},%d]' % batches_read
    return ws_frame(1, head) + ws_frame(2, pose)


def compact_pose_message(pose: bytes, batches_read: int) -> bytes:
    """A compact pose (docs/protocol.md §8): one binary frame, 0xC1, u32 LE batches read, the pose."""
    return ws_frame(2, b"\xc1" + (batches_read & 0xFFFFFFFF).to_bytes(4, "little") + pose)


def parse_frames(buf: bytearray, out: list[tuple[int, bytes]]) -> int:
    """Server-to-client frames (unmasked, unfragmented) at the start of `buf` into `out`;
    returns how many bytes they took (a frame not yet complete stays in `buf`)."""
    pos, size = 0, len(buf)
    while size - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n = b1 & 0x7F
        head = 2
        if n == 126:
            if size - pos < 4:
                break
            n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            head = 4
        elif n == 127:
            if size - pos < 10:
                break
            n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            head = 10
        if b1 & 0x80:
            raise ValueError("a server frame must not be masked")
        if not b0 & 0x80:
            raise ValueError("fragmented websocket messages are not expected from the relay")
        if size - pos < head + n:
            break
        out.append((b0 & 0x0F, bytes(buf[pos + head : pos + head + n])))
        pos += head + n
    return pos


def binary_head(text: bytes) -> tuple[str, int]:
    """(event name, attachment count) of a BINARY_EVENT head such as `451-["poses",{...}]`."""
    dash = text.index(b"-")
    count = int(text[2:dash])
    start = text.index(b'"', dash) + 1
    return text[start : text.index(b'"', start)].decode(), count


# --- what probes count -----------------------------------------------------------------------


class ProbeTally:
    """What the probe participants of one process saw, indexed by sender number (cNNN). With
    several relay nodes (participant i on node i % nodes) the ages of poses from another node
    are also kept apart."""

    def __init__(self, t0: float, t1: float, n_total: int, nodes: int = 1) -> None:
        self.t0, self.t1, self.nodes, self.n_total = t0, t1, nodes, n_total
        self.last: dict[int, np.ndarray] = {}
        self.delivered = 0
        self.latencies: list[np.ndarray] = []
        self.arrivals = array("d")
        """(arrival time, samples) of each batch in `latencies`: ages can be told apart by when they came."""
        self.cross: list[np.ndarray] = []

    def _last(self, own: int) -> np.ndarray:
        last = self.last.get(own)
        if last is None:
            last = self.last[own] = np.full(self.n_total, -1, dtype=np.int64)
        return last

    def _take(
        self, own: int, idx: np.ndarray, seq: np.ndarray, sent: np.ndarray, now: float
    ) -> None:
        keep = (idx != own) & (idx >= 0) & (idx < self.n_total)
        idx, seq, sent = idx[keep], seq[keep], sent[keep]
        last = self._last(own)
        new = seq > last[idx]
        last[idx[new]] = seq[new]
        sent_new = sent[new]
        self.delivered += int(((sent_new >= self.t0) & (sent_new <= self.t1)).sum())
        if self.t0 <= now <= self.t1:
            # the age of what arrives during the window (a relay that falls behind shows it here)
            ages = (now - sent_new).astype(np.float32)
            self.latencies.append(ages)
            self.arrivals.extend((now, float(ages.size)))
            if self.nodes > 1:
                self.cross.append(ages[(idx[new] % self.nodes) != (own % self.nodes)])

    def batch(self, own: int, data: bytes, now: float) -> None:
        """A relay batch (docs/protocol.md §8)."""
        count = _BATCH.unpack_from(data, 0)[2]
        if len(data) - _BATCH.size != count * _ENTRY.itemsize:
            self._batch_slow(own, data, now)
            return
        arr = np.frombuffer(data, dtype=_ENTRY, offset=_BATCH.size)
        pid = arr["pid"]
        digits = pid[:, 1:].astype(np.int64) - 48
        idx = np.where(
            pid[:, 0] == ord("c"), digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2], -1
        )
        self._take(own, idx, arr["seq"].astype(np.int64), arr["t"], now)

    def _batch_slow(self, own: int, data: bytes, now: float) -> None:
        # someone else's poses (hands, pointers, other ids) in the batch: decode it the long way
        from deeproom.presence import decode_batch

        _, poses = decode_batch(data)
        ids = [int(p[1:]) if p[:1] == "c" and p[1:].isdigit() else -1 for p in poses]
        self._take(
            own,
            np.asarray(ids, dtype=np.int64),
            np.asarray([p.seq for p in poses.values()], dtype=np.int64),
            np.asarray([p.sent_at for p in poses.values()], dtype=np.float64),
            now,
        )

    def pose(self, own: int, data: bytes, now: float) -> None:
        """One forwarded pose of the naive relay: u8 id length, id, pose."""
        n = data[0]
        pid = data[1 : 1 + n]
        idx = int(pid[1:]) if pid[:1] == b"c" and pid[1:].isdigit() else -1
        _, _, seq, sent_at = _POSE_HEAD.unpack_from(data, 1 + n)
        self._take(
            own,
            np.asarray([idx], dtype=np.int64),
            np.asarray([seq], dtype=np.int64),
            np.asarray([sent_at]),
            now,
        )


# --- one participant ---------------------------------------------------------------------------


class Participant(asyncio.Protocol):
    """One simulated participant: a websocket, the Engine.IO/Socket.IO handshake, `join`, then poses
    out and batches in. All of it runs in callbacks of the process's one event loop."""

    def __init__(self, index: int, pid: str, mode: str, probe: bool, pose_frames: int = 1) -> None:
        self.index, self.pid, self.mode, self.probe = index, pid, mode, probe
        self.compact = pose_frames == 1 and mode == "relay"
        """Send compact poses (one frame) rather than `pose` events (two)."""
        self.own_tag = bytes((len(pid),)) + pid.encode() + b"\x01"
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._upgraded = False
        self._frames: list[tuple[int, bytes]] = []
        self._pending = ""
        self._pending_left = 0
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()
        self.ack: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed = False
        self.batches_read = 0
        self.seq = 0
        self.sent_in_window = 0
        self.errors = 0
        self.record: array[float] = array("d")
        """(server time, entries for this participant) of every batch received."""
        self.tally: ProbeTally | None = None

    # transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("the relay closed the connection")

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 101 " not in status:
                self._fail(f"websocket upgrade refused: {status.decode(errors='replace')}")
                return
            del buf[: end + 4]
            self._upgraded = True
        frames = self._frames
        try:
            used = parse_frames(buf, frames)
        except ValueError as exc:
            self._fail(str(exc))
            return
        if used:
            del buf[:used]
        for opcode, payload in frames:
            if opcode == 2:
                self._binary(payload)
            elif opcode == 1:
                self._text(payload)
            elif opcode == 9:
                self._write(ws_frame(10, payload))
            elif opcode == 8:
                self._write(ws_frame(8, payload[:2]))
                assert self.transport is not None
                self.transport.close()
        frames.clear()

    def _fail(self, why: str) -> None:
        for fut in (self.connected, self.ack):
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.pid}: {why}"))
                fut.exception()  # retrieved: whoever waits on it still gets it, nobody else logs it
        if self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    # Engine.IO / Socket.IO

    def _text(self, text: bytes) -> None:
        if text[:2] == b"45":  # a BINARY_EVENT head: its attachments follow
            name, count = binary_head(text)
            self._pending = name
            self._pending_left = count
        elif text == b"2":  # Engine.IO ping
            self._write(ws_frame(1, b"3"))
        elif text[:2] == b"42":
            if text.startswith(b'42["error"'):
                self.errors += 1
        elif text[:2] in (b"43", b"46"):
            m = _ACK.match(text)
            if m is not None and not self.ack.done():
                body = json.loads(m.group(4))
                self.ack.set_result(
                    body[0] if body and isinstance(body[0], dict) else {"ok": False, "error": body}
                )
            if m is not None and m.group(2):
                self._pending, self._pending_left = "ack", int(m.group(2))
        elif text[:2] == b"40":
            if not self.connected.done():
                self.connected.set_result(None)
        elif text[:1] == b"0":  # Engine.IO open: connect to the default namespace
            self._write(ws_frame(1, b"40"))
        elif text[:2] in (b"41", b"44"):
            self._fail(f"the relay refused or closed the namespace: {text[:200]!r}")

    def _binary(self, data: bytes) -> None:
        if self._pending_left <= 0:
            return
        self._pending_left -= 1
        kind = self._pending
        if kind == "poses":
            self.batches_read += 1
            _, server_time, count = _BATCH.unpack_from(data, 0)
            self.record.append(server_time)
            self.record.append(count - (data.find(self.own_tag, _BATCH.size) >= 0))
            if self.tally is not None:
                self.tally.batch(self.index, data, time.time())
        elif kind == "pose" and self.tally is not None:  # the naive relay's forwarded pose
            self.tally.pose(self.index, data, time.time())

    # what the bench calls

    async def join(self, join: dict[str, Any], timeout: float) -> dict[str, Any]:
        await asyncio.wait_for(asyncio.shield(self.connected), timeout)
        self._write(ws_frame(1, b"421" + json.dumps(["join", join]).encode()))
        return await asyncio.wait_for(asyncio.shield(self.ack), timeout)

    def send_pose(self, now: float, in_window: bool) -> None:
        if self.closed:
            return
        if self.compact:
            self._write(compact_pose_message(encode_pose_at(self.seq, now), self.batches_read))
        else:
            read = self.batches_read if self.mode == "relay" else None
            self._write(pose_message(encode_pose_at(self.seq, now), read))
        self.seq += 1
        if in_window:
            self.sent_in_window += 1

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._write(ws_frame(8, (1000).to_bytes(2, "big")))
            self.transport.close()


async def connect(url: str, index: int, pid: str, mode: str, probe: bool, pose_frames: int = 1) -> Participant:
    """A participant connected to `url` (http://127.0.0.1:PORT) from its own loopback address."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    loop = asyncio.get_running_loop()
    part = Participant(index, pid, mode, probe, pose_frames)
    await loop.create_connection(
        lambda: part, host, int(port), local_addr=(participant_address(index), 0)
    )
    return part


# --- one process of participants -----------------------------------------------------------------


def probe_ids(n: int, probes: int = PROBES) -> set[str]:
    """The probes of an n-participant room: spread evenly over the join order (the relay queues a
    batch to its sockets in that order, so the last ones wait longest)."""
    k = min(n, probes)
    return {f"c{(i * n) // k:03d}" for i in range(k)}


async def _send_loop(
    parts: list[Participant],
    rate: float,
    start: float,
    t0: float,
    t1: float,
    end: float,
    lag_ms: array[float],
) -> int:
    """Every participant's poses at `rate`, one timer for all: the period is cut into slots and
    each slot sends the poses of its share of the participants. Returns slots skipped because
    the timer woke more than a period late (the generator short of CPU)."""
    period = 1.0 / rate
    slots = max(1, min(len(parts), 10))
    groups = [parts[s::slots] for s in range(slots)]
    step = period / slots
    mono0 = time.monotonic() + max(0.0, start - time.time())
    k, skipped = 0, 0
    while True:
        target = mono0 + k * step
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now_mono = time.monotonic()
        now = time.time()
        if now >= end:
            return skipped
        late = now_mono - target
        if t0 <= now <= t1:
            lag_ms.append(late * 1000.0)
        if late > period:
            behind = int(late / step)
            skipped += behind
            k += behind  # do not burst to catch up: a real client sends only its latest pose
            continue
        in_window = t0 <= now <= t1
        for p in groups[k % slots]:
            p.send_pose(now, in_window)
        k += 1


def generator_proc(
    url: str | list[str],
    mode: str,
    ids: list[str],
    n_total: int,
    rate: float,
    probes: set[str],
    ready: Any,
    go: Any,
    times: Any,
    results: Any,
    password: str | None = None,
    pose_frames: int = 1,
) -> None:
    """A process of participants. `url`: the relay, or one URL per node (participant cNNN joins node
    NNN % nodes). Puts its pid on `ready` once all have joined, waits for `go`, sends poses from
    times[0] to times[3] (the window is times[1]..times[2]) and puts a report dict on `results`.
    `pose_frames`: 1 sends compact poses, 2 the two-frame `pose` event (see the module's notes)."""

    async def main() -> None:
        urls = [url] if isinstance(url, str) else url
        parts: list[Participant] = []
        gate = asyncio.Semaphore(32)

        async def open_one(pid: str) -> Participant:
            i = int(pid[1:])
            join: dict[str, Any] = {
                "room": ROOM,
                "name": pid,
                "participant_id": pid,
                "key": bench_key(pid),
            }
            if password is not None:
                join["password"] = password
            for attempt in range(5):
                async with gate:
                    part = await connect(urls[i % len(urls)], i, pid, mode, pid in probes, pose_frames)
                    try:
                        ack = await part.join(join, 120)
                    except ConnectionError:
                        ack = {
                            "ok": False,
                            "error": {"type": "NetError", "message": "connection closed"},
                        }
                if ack.get("ok"):
                    return part
                part.close()
                # "join again" (the room was being unloaded) or a connection lost on a loaded machine
                if ack.get("error", {}).get("type") != "NetError" or attempt == 4:
                    raise RuntimeError(f"join of {pid} refused: {ack}")
                await asyncio.sleep(0.5)
            raise AssertionError("unreachable")

        parts = list(await asyncio.gather(*(open_one(pid) for pid in ids)))
        ready.put(os.getpid())
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        start, t0, t1, end = times[0], times[1], times[2], times[3]
        tally = ProbeTally(t0, t1, n_total, len(urls))
        for p in parts:
            if p.probe:
                p.tally = tally
        lag_ms: array[float] = array("d")
        skipped = await _send_loop(parts, rate, start, t0, t1, end, lag_ms)
        await asyncio.sleep(0.5)  # let the last batches arrive
        record = array("d")
        for p in parts:
            record.extend(p.record)
        lat = np.concatenate(tally.latencies) if tally.latencies else np.zeros(0, np.float32)
        cross = np.concatenate(tally.cross) if tally.cross else np.zeros(0, np.float32)
        results.put(
            {
                "sent": sum(p.sent_in_window for p in parts),
                "probes": sum(p.probe for p in parts),
                "probe_sent": sum(p.sent_in_window for p in parts if p.probe),
                "probe_delivered": tally.delivered,
                "batches": record.tobytes(),
                "latencies": lat.tobytes(),
                "arrivals": tally.arrivals.tobytes(),
                "cross": cross.tobytes(),
                "lag_ms": lag_ms.tobytes(),
                "slots_skipped": skipped,
                "dropped": sum(p.closed for p in parts),
                "errors": sum(p.errors for p in parts),
            }
        )
        for p in parts:
            p.close()
        await asyncio.sleep(0.1)

    asyncio.run(main())


def bench_key(pid: str) -> str:
    """The key that binds bench participant `pid` (docs/protocol.md §4: 16-256 characters)."""
    return "bench-key-" + pid + "-0123456789abcdef"
