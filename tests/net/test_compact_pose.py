"""The compact pose (docs/protocol.md §8): one binary Engine.IO message — byte 0xC1, u32 LE batches
read, the pose — taken on the relay's fast path, refused like a `pose` event when it is wrong, and
fuzzed; the two-frame `pose` event still works beside it. Real relay, real sockets."""

from __future__ import annotations

import asyncio
import itertools
import math
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.presence import Pose, decode_pose, encode_pose

from .conftest import eventually
from .test_fuzz import LoopThread

MARKER = b"\xc1"
KEY = "compact-key-0123456789"


def compact(pose: bytes, batches_read: int = 0) -> bytes:
    return MARKER + struct.pack("<I", batches_read) + pose


class Raw:
    """A plain python-socketio client that records the relay's `error` events."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.errors: list[tuple[float, dict[str, Any]]] = []
        self.sio.on("error", lambda e: self.errors.append((time.monotonic(), e)))

    async def connect(self, url: str, room: str | None = None, pid: str | None = None) -> Raw:
        await self.sio.connect(url, transports=["websocket"])
        if room is not None:
            ack = await self.sio.call(
                "join", {"room": room, "name": pid, "participant_id": pid, "key": KEY}
            )
            assert ack["ok"], ack
        return self

    async def send(self, data: bytes) -> None:
        await self.sio.eio.send(data)

    async def settle(self) -> None:
        """Wait until the relay has read everything sent before (a socket's messages are read in order)."""
        await self.sio.call("sync", {"sv": b"\x00"}, timeout=10)

    def types(self) -> list[str]:
        return [e["type"] for _, e in self.errors]


def stored(relay: EmbeddedRelay, room: str, pid: str) -> bytes | None:
    live = relay.server.rooms.get(room)
    entry = live.poses.get(pid) if live is not None else None
    return entry[0] if entry is not None else None


def session_of(relay: EmbeddedRelay, pid: str) -> Any:
    return next(s for s in relay.server.sessions.values() if s.participant_id == pid)


async def test_room_client_sends_compact_poses_and_others_get_them(relay: EmbeddedRelay) -> None:
    async with (
        RoomClient(relay.url, room="cp", name="A", participant_id="a") as a,
        RoomClient(relay.url, room="cp", name="B", participant_id="b") as b,
    ):
        stats = relay.server.stats
        before = stats["compact_poses_in"]
        for i in range(20):
            a.publish_pose(Pose(seq=i + 1, head_position=(0.5, 1.6, float(i))))
            await asyncio.sleep(1 / 30)
        await eventually(lambda: "a" in b.poses and b.poses["a"].head_position[2] == 19.0)
        assert stats["compact_poses_in"] - before >= 10  # they came as compact poses
        # ... carrying the batches A read: the relay's flow control sees them
        await eventually(lambda: session_of(relay, "a").batches_acked > 0)


async def test_compact_pose_is_stored_as_sent_and_confirms_batches(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="cq", name="B", participant_id="b"):
        a = await Raw().connect(relay.url, "cq", "a")
        try:
            for i in range(10):  # batches are sent while someone's pose changes
                await a.send(compact(encode_pose(Pose(seq=i)), 0))
                await asyncio.sleep(1 / 30)
            await eventually(lambda: session_of(relay, "a").batches_sent >= 3)
            pose = encode_pose(Pose(seq=5, head_position=(1.0, 2.0, 3.0)))
            await a.send(compact(pose, 2))
            await a.settle()
            assert stored(relay, "cq", "a") == pose
            assert session_of(relay, "a").batches_acked == 2
            # a count beyond what was sent is ignored, as in the two-frame form
            await a.send(compact(encode_pose(Pose(seq=6)), 2**32 - 1))
            await a.settle()
            assert (
                session_of(relay, "a").batches_acked == 2
                and decode_pose(stored(relay, "cq", "a") or b"").seq == 6
            )
            # the two-frame form (older clients) is still taken
            await a.sio.emit("pose", (encode_pose(Pose(seq=7)), 3))
            await a.settle()
            assert decode_pose(stored(relay, "cq", "a") or b"").seq == 7 and not a.errors
        finally:
            await a.sio.disconnect()


@pytest.mark.parametrize(
    ("message", "kind", "says"),
    [
        (MARKER, "ValidationError", "at least 47 bytes"),  # truncated: the marker alone
        (MARKER + b"\x01\x00\x00", "ValidationError", "at least 47 bytes"),  # truncated count
        (
            compact(encode_pose(Pose()))[:-1],
            "ValidationError",
            "at least 47 bytes",
        ),  # pose cut short
        (compact(encode_pose(Pose()) + b"\x00"), "ValidationError", "trailing"),  # a byte too many
        (compact(bytes(257)), "TooLarge", "at most 261 bytes"),  # oversized
        (compact(bytes(5000)), "TooLarge", "at most 261 bytes"),
        (
            compact(struct.pack("<BBId7f", 1, 0, 1, 0.0, math.nan, 1.6, 0, 1, 0, 0, 0)),
            "ValidationError",
            "finite",
        ),
        (
            compact(struct.pack("<BBId7f", 2, 0, 1, 0.0, 0, 1.6, 0, 1, 0, 0, 0)),
            "ValidationError",
            "version",
        ),
        (
            compact(struct.pack("<BBId7f", 1, 0x10, 1, 0.0, 0, 1.6, 0, 1, 0, 0, 0)),
            "ValidationError",
            "flag",
        ),
        (
            b"\x01" + compact(encode_pose(Pose()))[1:],
            "ProtocolError",
            "no message announced",
        ),  # wrong marker
        (encode_pose(Pose()), "ProtocolError", "no message announced"),  # a bare pose, no marker
        (b"\xc0" + compact(encode_pose(Pose()))[1:], "ProtocolError", "0xc1"),
    ],
)
async def test_a_bad_compact_pose_is_refused_counted_and_stores_nothing(
    relay: EmbeddedRelay, message: bytes, kind: str, says: str
) -> None:
    async with RoomClient(relay.url, room="bad", name="Host") as host:
        a = await Raw().connect(relay.url, "bad", "a")
        try:
            good = encode_pose(Pose(seq=1))
            await a.send(compact(good))
            await a.settle()
            refused = relay.server.stats["refused"]
            await a.send(message)
            await eventually(lambda: a.errors)
            assert a.types() == [kind], a.errors
            assert says in a.errors[0][1]["message"], a.errors
            assert relay.server.stats["refused"] == refused + 1
            assert (
                session_of(relay, "a").strikes >= 1
            )  # a refused message: a strike (over-rate ones are not)
            assert (
                stored(relay, "bad", "a") == good
            )  # the last good pose stays; nothing else is kept
            assert a.sio.connected and session_of(relay, "a").joined
            await host.apply(
                {"op": "add_panel", "panel_id": "still", "kind": "note", "title": "ok"}
            )
        finally:
            await a.sio.disconnect()


async def test_compact_poses_before_joining_are_dropped_silently(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="pre", name="Host"):
        a = await Raw().connect(relay.url)
        try:
            for i in range(5):
                await a.send(compact(encode_pose(Pose(seq=i))))
            await a.settle()
            await asyncio.sleep(0.1)
            assert not a.errors and all("a" not in r.poses for r in relay.server.rooms.values())
            assert (
                await a.sio.call(
                    "join", {"room": "pre", "name": "A", "participant_id": "a", "key": KEY}
                )
            )["ok"]
            await a.send(compact(encode_pose(Pose(seq=9))))
            await a.settle()
            assert decode_pose(stored(relay, "pre", "a") or b"").seq == 9
        finally:
            await a.sio.disconnect()


async def test_a_compact_pose_flood_is_rate_limited_without_strikes_and_others_are_served(
    relay: EmbeddedRelay,
) -> None:
    async with (
        RoomClient(relay.url, room="fl", name="Host", participant_id="host") as host,
        RoomClient(relay.url, room="fl", name="B", participant_id="b") as b,
    ):
        await host.apply({"op": "add_panel", "panel_id": "p", "kind": "note", "title": "t"})
        a = await Raw().connect(relay.url, "fl", "a")
        try:
            stats = relay.server.stats
            poses0 = stats["compact_poses_in"]
            t0 = time.monotonic()
            for i in range(600):  # ten times the burst, at once
                await a.send(compact(encode_pose(Pose(seq=i))))
            await eventually(lambda: "RateLimited" in a.types())
            for i in range(5):  # the host's edits go through meanwhile ...
                await host.apply(
                    {"op": "move_panel", "panel_id": "p", "transform": {"position": [i, 1.0, 2.0]}}
                )
            await eventually(lambda: b.room.panels["p"].transform.position[0] == 4)
            host.publish_pose(
                Pose(seq=1, head_position=(3.0, 1.6, 0.0))
            )  # ... and so do others' poses
            await eventually(lambda: "host" in b.poses)
            await a.settle()
            elapsed = time.monotonic() - t0
            taken = stats["compact_poses_in"] - poses0
            assert 120 <= taken <= 120 + 60 * elapsed + 5, (taken, elapsed)  # the burst, then 60/s
            # the same error event as the two-frame form, at most two a second
            assert set(a.types()) == {"RateLimited"}
            assert "too many poses" in a.errors[0][1]["message"]
            times = [t for t, _ in a.errors]
            assert all(t2 - t1 >= 0.45 for t1, t2 in itertools.pairwise(times)), times
            sess = session_of(relay, "a")
            assert sess.strikes == 0 and not sess.expelled and a.sio.connected
        finally:
            await a.sio.disconnect()


async def test_bad_compact_poses_run_out_the_strikes(tmp_path: Path) -> None:
    async with (
        EmbeddedRelay(data_dir=tmp_path, strikes=(10, 10.0)) as relay,
        RoomClient(relay.url, room="st", name="Host") as host,
    ):
        a = await Raw().connect(relay.url, "st", "a")
        try:
            for _ in range(12):
                await a.send(compact(bytes(42)))  # version 0: not a pose
            await eventually(lambda: not a.sio.connected, timeout=15)
            assert relay.server.stats["expelled"] == 1
            assert any("more than 10 refused messages" in e["message"] for _, e in a.errors), (
                a.errors
            )
            await host.apply({"op": "add_panel", "panel_id": "fine", "kind": "note", "title": "ok"})
        finally:
            await a.sio.disconnect()


# --- fuzz -------------------------------------------------------------------------------------


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.lt = LoopThread()
        # thousands of refused messages through the same sockets: no strike limit here (tested above)
        # nor does a pose age out between examples (a slow run takes longer than `stale_pose_s`)
        self.relay = EmbeddedRelay(data_dir=tmp, strikes=(10**9, 10.0), pose_rate=(1e6, 1e6), stale_pose_s=1e9)
        self.lt.run(self.relay.start())
        self.host = RoomClient(self.relay.url, room="fz", name="Host", participant_id="host")
        self.lt.run(self.host.connect())
        self.joined = self.lt.run(Raw().connect(self.relay.url, "fz", "fz"))
        self.anon = self.lt.run(Raw().connect(self.relay.url))

    def close(self) -> None:
        for c in (self.joined, self.anon):
            self.lt.run(c.sio.disconnect())
        self.lt.run(self.host.close())
        self.lt.run(self.relay.close())
        self.lt.stop()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz-compact"))
    yield h
    h.close()


def _valid_pose(seq: int, flags: int, floats: list[float]) -> bytes:
    n = (42 + 28 * (bool(flags & 2) + bool(flags & 4)) + 24 * bool(flags & 8) - 14) // 4
    return struct.pack(f"<BBId{n}f", 1, flags, seq, 1.5e9, *(floats * n)[:n])


_floats = st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=4)
valid = st.builds(_valid_pose, st.integers(0, 2**32 - 1), st.integers(0, 15), _floats)
mutated = st.tuples(valid, st.integers(0, 121), st.integers(0, 255)).map(
    lambda t: t[0][: t[1]] + bytes((t[2],)) + t[0][t[1] + 1 :]
)
bodies = valid | mutated | st.binary(max_size=300)
messages = (
    st.tuples(st.integers(0, 2**32 - 1), bodies).map(lambda t: compact(t[1], t[0]))
    | st.binary(min_size=1, max_size=64).map(lambda b: MARKER + b)
    | st.binary(min_size=1, max_size=300)
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=messages)
@example(message=MARKER)
@example(message=MARKER + b"\xff\xff\xff\xff")
@example(message=compact(b""))
@example(message=compact(bytes(256)))
@example(message=compact(struct.pack("<BBId7f", 1, 0, 1, math.inf, 0, 1.6, 0, 1, 0, 0, 0)))
@example(message=compact(struct.pack("<BBId7f", 1, 0, 1, 0.0, 1e5, 1.6, 0, 1, 0, 0, 0)))
@example(message=compact(_valid_pose(3, 15, [0.5])))
@example(message=b"451-")  # text-looking bytes, sent as binary
def test_fuzzed_compact_poses_keep_only_valid_poses(harness: Harness, message: bytes) -> None:
    h = harness
    before_doc = h.host.room
    before = stored(h.relay, "fz", "fz")
    for client in (h.joined, h.anon):
        h.lt.run(client.send(message))
        h.lt.run(client.settle())
    now = stored(h.relay, "fz", "fz")
    if now != before:
        # something was kept: exactly the pose of a well-formed compact pose
        assert message[:1] == MARKER and now == message[5:]
        decode_pose(now or b"")
    else:
        ok = message[:1] == MARKER and 47 <= len(message) <= 261
        if ok:
            try:
                decode_pose(message[5:])
            except Exception:
                ok = False
        assert not ok or now == message[5:], "a well-formed compact pose was not kept"
    # the unjoined socket never has a pose; the relay still serves everyone, nothing else changed
    assert set(h.relay.server.rooms["fz"].poses) <= {"fz", "host"}
    assert h.joined.sio.connected and h.anon.sio.connected and session_of(h.relay, "fz").joined
    h.lt.run(h.host.apply({"op": "rename_room", "room_name": "fz"}))
    assert (
        h.host.room.panels == before_doc.panels
        and h.host.room.participants == before_doc.participants
    )
