"""A second client, written from docs/protocol.md alone, walks through the protocol against a real relay.

It uses plain python-socketio, pycrdt and struct, and imports nothing from
`deeproom` (the relay is started as `deeproom serve` in a subprocess), so it checks
that the document is enough to write a client with, and that the relay does what the
document says. When this test and the document disagree, one of them is wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from pycrdt import Doc, Map

# --- the wire formats, as docs/protocol.md §8 and §10 give them ------------------------------

POSE_HEAD = struct.Struct("<BBId7f")  # version, flags, seq, sent_at, head x y z qw qx qy qz
BATCH_HEAD = struct.Struct("<BdH")  # version, server_time, count
HAND, POINTER = struct.Struct("<7f"), struct.Struct("<6f")
COMPACT_POSE = b"\xc1"  # the compact pose's marker byte (§8)


def encode_pose(seq: int, pos: tuple[float, float, float], *, speaking: bool = False,
                pointer: tuple[float, ...] | None = None) -> bytes:
    flags = (0x01 if speaking else 0) | (0x08 if pointer is not None else 0)
    out = POSE_HEAD.pack(1, flags, seq, time.time(), *pos, 1.0, 0.0, 0.0, 0.0)
    if pointer is not None:
        out += POINTER.pack(*pointer)
    return out


def pose_length(flags: int) -> int:
    return POSE_HEAD.size + HAND.size * (bool(flags & 0x02) + bool(flags & 0x04)) + (POINTER.size if flags & 0x08 else 0)


def decode_batch(data: bytes) -> tuple[float, dict[str, tuple[int, tuple[float, ...], int]]]:
    """{participant id: (seq, head xyz, flags)} from one `poses` batch."""
    version, server_time, count = BATCH_HEAD.unpack_from(data, 0)
    assert version == 1
    pos = BATCH_HEAD.size
    out = {}
    for _ in range(count):
        n = data[pos]
        pid = data[pos + 1 : pos + 1 + n].decode()
        pos += 1 + n
        pv, flags, seq, _sent, *head = POSE_HEAD.unpack_from(data, pos)
        assert pv == 1
        out[pid] = (seq, tuple(head[:3]), flags)
        pos += pose_length(flags)
    assert pos == len(data), "a batch has no trailing bytes"
    return server_time, out


# --- a client ---------------------------------------------------------------------------------


class Peer:
    """One participant: a socket, a Yjs document fed only by the relay, and what arrived."""

    def __init__(self, url: str, room: str, pid: str, name: str) -> None:
        self.url, self.room, self.pid, self.name = url, room, pid, name
        self.key = secrets.token_urlsafe(24)
        self.doc: Doc[Any] = Doc()
        self.sio = socketio.AsyncClient(reconnection=False)
        self.updates = 0
        self.batches_read = 0
        self.last_seq: dict[str, int] = {}
        self.new_poses: list[tuple[str, int]] = []
        self.repeats = 0
        self.events: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.seq = 0
        self.sio.on("update", self._on_update)
        self.sio.on("poses", self._on_poses)
        self.sio.on("event", self.events.append)
        self.sio.on("error", self.errors.append)

    def _on_update(self, data: bytes) -> None:
        self.doc.apply_update(data)
        self.updates += 1

    async def _on_poses(self, data: bytes) -> None:
        self.batches_read += 1
        if self.batches_read % 3 == 0:
            await self.sio.emit("pa", self.batches_read)  # confirm what was read (§8 flow control)
        _, poses = decode_batch(data)
        for pid, (seq, _, _) in poses.items():
            if pid == self.pid:
                continue  # batches include one's own pose
            if seq <= self.last_seq.get(pid, -1):
                self.repeats += 1  # the once-a-second keyframe repeats poses already seen
                continue
            self.last_seq[pid] = seq
            self.new_poses.append((pid, seq))

    def root(self, name: str) -> Map:
        return self.doc.get(name, type=Map)

    def state_vector(self) -> bytes:
        return bytes(self.doc.get_state())

    async def connect(self) -> None:
        await self.sio.connect(self.url, transports=["websocket"], wait_timeout=15)

    async def call(self, event: str, data: Any) -> dict[str, Any]:
        ack = await self.sio.call(event, data, timeout=15)
        assert isinstance(ack, dict), ack
        return ack

    async def join(self, **extra: Any) -> dict[str, Any]:
        msg = {"room": self.room, "name": self.name, "participant_id": self.pid, "key": self.key,
               "sv": self.state_vector(), **extra}
        ack = await self.call("join", msg)
        if ack["ok"]:
            self.doc.apply_update(ack["update"])
        return ack

    async def op(self, op_id: str, op: dict[str, Any]) -> dict[str, Any]:
        ack = await self.call("op", {"id": op_id, "op": op})
        if ack["ok"] and ack.get("update"):
            self.doc.apply_update(ack["update"])  # one's own change arrives only here
        return ack

    async def send_pose(self, pos: tuple[float, float, float], *, compact: bool = True) -> None:
        self.seq += 1
        pose = encode_pose(self.seq, pos)
        if compact:  # §8: one binary Engine.IO message, 0xC1, u32 batches read, the pose
            await self.sio.eio.send(COMPACT_POSE + struct.pack("<I", self.batches_read) + pose)
        else:  # the `pose` event (older clients)
            await self.sio.emit("pose", (pose, self.batches_read))

    async def close(self) -> None:
        await self.sio.disconnect()


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {check}")
        await asyncio.sleep(0.02)
    return value


# --- the relay, as a separate program ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def relay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("protocol-relay")
    port = _free_port()
    with open(data / "relay.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deeproom.cli", "--data-dir", str(data), "serve", "--port", str(port),
             "--leave-grace", "1"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (data / "relay.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "relay did not listen"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
async def pair(relay_url: str) -> AsyncIterator[tuple[Peer, Peer]]:
    room = "proto-" + secrets.token_hex(4)
    a, b = Peer(relay_url, room, "alice", "Alice"), Peer(relay_url, room, "bob", "Bob")
    try:
        await a.connect()
        await b.connect()
        yield a, b
    finally:
        for p in (a, b):
            await p.close()


# --- the walk-through ---------------------------------------------------------------------------


async def test_join_op_ack_update_and_sync(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    # Before joining, everything but join is refused (and poses are dropped silently).
    early = await a.call("op", {"id": "alice:x:0", "op": {"op": "rename_room", "room_name": "no"}})
    assert not early["ok"] and early["error"]["type"] == "PermissionDenied"

    ack = await a.join(colour="#3366FF")
    assert ack["ok"] and ack["protocol"] == 1 and ack["role"] == "host", ack
    assert ack["participant_id"] == "alice" and ack["tick_hz"] > 0 and isinstance(ack["sv"], bytes)
    people = a.root("participants").to_py() or {}
    assert people["alice"]["role"] == "host" and people["alice"]["colour"] == "#3366ff"
    assert (a.root("settings").to_py() or {})["name"] == a.room  # a new room is named after its id
    assert not (await a.join())["ok"]  # one join per connection

    ack_b = await b.join()
    assert ack_b["ok"] and ack_b["role"] == "member"
    await until(lambda: "bob" in a.root("participants"))  # alice hears bob's join as an update

    panel = {"op": "add_panel", "panel_id": "loss", "kind": "metrics", "title": "Loss",
             "transform": {"position": [0, 1.5, 2], "rotation": [2, 0, 0, 0], "scale": [1, 1, 1]},
             "size": [1.2, 0.8], "content": {"source": {"engine": "test"}, "refs": []}}
    updates_before = a.updates
    added = await a.op("alice:t1:1", panel)
    assert added["ok"] and isinstance(added["update"], bytes)
    loss = a.root("panels")["loss"].to_py()
    assert loss["owner"] == "alice" and loss["kind"] == "metrics" and loss["lock_holder"] is None
    assert loss["transform"]["rotation"] == [1.0, 0.0, 0.0, 0.0]  # (w, x, y, z), normalised by the relay
    assert loss["size"] == [1.2, 0.8] and loss["content"] == {"source": {"engine": "test"}, "refs": []}
    await until(lambda: "loss" in b.root("panels"))
    await asyncio.sleep(0.2)
    assert a.updates == updates_before  # the sender gets its own change only in the ack

    # A resend with the same id is answered `duplicate` and applied once.
    again = await a.op("alice:t1:1", panel)
    assert again == {"ok": True, "duplicate": True}

    moved = await b.op("bob:t1:1", {"op": "move_panel", "panel_id": "loss",
                                    "transform": {"position": [1, 1.6, 2.5], "rotation": [0.9239, 0, 0.3827, 0]}})
    assert moved["ok"]
    await until(lambda: a.root("panels")["loss"]["transform"]["position"] == [1.0, 1.6, 2.5])
    assert a.root("panels")["loss"]["transform"]["scale"] == [1.0, 1.0, 1.0]  # missing parts take defaults

    # Refusals: an ack with a type and a message, nothing changed.
    bad: list[tuple[dict[str, Any], str]] = [
        ({"op": "move_panel", "panel_id": "loss", "transform": {"position": [0, 0]}}, "ValidationError"),
        ({"op": "move_panel", "panel_id": "nope", "transform": {}}, "NotFound"),
        ({"op": "add_panel", "panel_id": "x", "kind": "hologram", "title": "X"}, "ValidationError"),
        ({"op": "add_panel", "panel_id": "x", "kind": "note", "title": "X", "colour": "#fff"}, "ValidationError"),
        ({"op": "rename_room", "room_name": "mine"}, "PermissionDenied"),  # bob is a member
        ({"op": "no_such_op"}, "ValidationError"),
        ({"op": "leave", "participant_id": "bob"}, "PermissionDenied"),  # join/leave are the relay's own
        ({"op": "join", "participant_id": "bob", "display_name": "Bob", "colour": "#ffffff"}, "PermissionDenied"),
        ({"op": "retitle_panel", "panel_id": "loss", "title": "lone \ud800"}, "ValidationError"),
        ({"op": "set_profile", "participant_id": "bob", "display_name": "two\nlines", "colour": "#ffffff"},
         "ValidationError"),
    ]
    sv_before = b.state_vector()
    for i, (op, kind) in enumerate(bad):
        refused = await b.op(f"bob:t1:bad{i}", op)
        assert not refused["ok"] and refused["error"]["type"] == kind and refused["error"]["message"], (op, refused)
    malformed = await b.call("op", ["not", "an", "object"])
    assert not malformed["ok"] and malformed["error"]["type"] == "ProtocolError"
    for name in ("fly", "disconnect", "connect", "message", "update"):  # reserved names are no exception
        unknown = await b.call(name, {})
        assert not unknown["ok"] and unknown["error"]["type"] == "ProtocolError", (name, unknown)
    assert (await b.call("sync", {"sv": b.state_vector()}))["ok"]  # still joined

    # sync: what a state vector lacks; no new items (a first byte 00, then the delete set) when nothing.
    synced = await b.call("sync", {"sv": sv_before})
    assert synced["ok"] and synced["update"][0] == 0
    late: Doc[Any] = Doc()
    full = await b.call("sync", {"sv": bytes(late.get_state())})
    late.apply_update(full["update"])
    assert late.get("panels", type=Map)["loss"]["title"] == "Loss"


async def test_presence_batches_flow_control_and_dedupe(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    await a.sio.emit("pose", encode_pose(99, (9.0, 9.0, 9.0)))  # before join: dropped silently
    await a.sio.eio.send(COMPACT_POSE + struct.pack("<I", 0) + encode_pose(98, (9.0, 9.0, 9.0)))  # so is this
    ack_a, ack_b = await a.join(), await b.join()
    assert ack_a["ok"] and ack_b["ok"] and ack_a["compact_pose"] is True
    for i in range(45):  # 1.5 s of poses at 30 Hz: a compact, b as `pose` events
        await a.send_pose((0.1 * i, 1.6, 0.0))
        await b.send_pose((0.0, 1.6, 0.1 * i), compact=False)
        await asyncio.sleep(1 / 30)
    await until(lambda: b.last_seq.get("alice") == 45)
    seqs = [s for pid, s in b.new_poses if pid == "alice"]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert 99 not in seqs and 98 not in seqs  # the poses sent before joining never arrived
    await until(lambda: a.last_seq.get("bob") == 45)  # the `pose` event form arrives as well
    await asyncio.sleep(1.2)  # a keyframe resends every live pose
    assert b.repeats > 0 and b.batches_read > 7

    # A reader that never confirms gets seven batches and then no more.
    mute = Peer(a.url, a.room, "carol", "Carol")
    mute.sio.handlers["/"].pop("poses")
    got: list[bytes] = []
    mute.sio.on("poses", got.append)
    await mute.connect()
    try:
        assert (await mute.join())["ok"]
        for i in range(40):
            await a.send_pose((0.0, 1.6, 0.01 * i))
            await asyncio.sleep(1 / 30)
        assert len(got) == 7
        await mute.sio.emit("pa", 7)  # confirming lets batches flow again
        for i in range(10):
            await a.send_pose((0.0, 1.7, 0.01 * i))
            await asyncio.sleep(1 / 30)
        assert len(got) > 7
    finally:
        await mute.close()

    # A malformed pose is answered with an `error` event, not an ack.
    await a.sio.emit("pose", b"\x01\x00short")
    await until(lambda: a.errors)
    assert a.errors[0]["type"] == "ValidationError"
    # So is a compact pose shorter than 47 bytes, or longer than 261, or binary data without the
    # marker (at most one error event per 0.5 s: wait between them).
    for bad, kind in ((COMPACT_POSE + bytes(10), "ValidationError"), (COMPACT_POSE + bytes(300), "TooLarge"),
                      (b"\x01" + bytes(46), "ProtocolError")):
        await asyncio.sleep(0.55)
        seen = len(a.errors)
        await a.sio.eio.send(bad)
        await until(lambda: len(a.errors) > seen)  # noqa: B023 - awaited within the iteration
        assert a.errors[-1]["type"] == kind, a.errors[-1]


async def test_blobs_events_and_invites(pair: tuple[Peer, Peer], tmp_path: Path) -> None:
    a, b = pair
    assert (await a.join())["ok"] and (await b.join())["ok"]

    # A content blob (§10) uploaded in 256 KiB chunks, fetched back by the other peer.
    header = b'{"meta":{"series":["loss"]},"arrays":[{"name":"y","dtype":"float32","shape":[200000],"offset":0,"nbytes":800000}]}'
    body = struct.pack("<200000f", *(float(i % 97) for i in range(200000)))
    blob = b"DRB1" + struct.pack("<I", len(header)) + header + body
    sha = hashlib.sha256(blob).hexdigest()
    begin = await a.call("blob_begin", {"sha": sha, "size": len(blob)})
    assert begin["ok"] and begin["have"] is False and begin["chunk"] == 262144
    mismatch = await a.call("blob_chunk", {"sha": sha, "offset": 5, "data": blob[:10]})
    assert not mismatch["ok"] and mismatch["error"]["type"] == "ValidationError"  # chunks go in order
    for off in range(0, len(blob), begin["chunk"]):
        part = await a.call("blob_chunk", {"sha": sha, "offset": off, "data": blob[off : off + begin["chunk"]]})
        assert part["ok"] and part["received"] == min(len(blob), off + begin["chunk"])
    assert (await a.call("blob_end", {"sha": sha}))["ok"]
    assert (await b.call("blob_begin", {"sha": sha, "size": len(blob)}))["have"] is True  # deduplicated

    parts: list[bytes] = []
    size: int | None = None
    while size is None or sum(len(p) for p in parts) < size:
        got = await b.call("blob_get", {"sha": sha, "offset": sum(len(p) for p in parts), "length": 262144})
        assert got["ok"]
        size = got["size"]
        parts.append(got["data"])
    fetched = b"".join(parts)
    assert hashlib.sha256(fetched).hexdigest() == sha
    hlen = struct.unpack_from("<I", fetched, 4)[0]
    assert fetched[:4] == b"DRB1" and struct.unpack_from("<f", fetched, 8 + hlen + 4 * 96)[0] == 96.0

    wrong = hashlib.sha256(b"other").hexdigest()
    assert (await a.call("blob_begin", {"sha": wrong, "size": 3}))["ok"]
    assert (await a.call("blob_chunk", {"sha": wrong, "offset": 0, "data": b"abc"}))["ok"]
    bad_end = await a.call("blob_end", {"sha": wrong})
    assert not bad_end["ok"] and bad_end["error"]["type"] == "ValidationError"  # hash mismatch: nothing stored
    missing = await b.call("blob_get", {"sha": wrong, "offset": 0, "length": 10})
    assert not missing["ok"] and missing["error"]["type"] == "NotFound"

    # Events: signal to one participant; stream to the room and kept for late joiners; summon by the host.
    assert (await a.call("event", {"kind": "signal", "payload": {"voice": "hello", "link": 1}, "to": "bob"}))["ok"]
    await until(lambda: b.events)
    assert b.events[0] == {"kind": "signal", "sender": "alice", "payload": {"voice": "hello", "link": 1}}
    stream = {"panel_id": "loss", "channel": "metrics", "run": "r", "type": "metrics", "rows": [[1, 0.5]]}
    assert (await b.call("event", {"kind": "stream", "payload": stream}))["ok"]
    await until(lambda: a.events)
    assert a.events[-1]["sender"] == "bob" and a.events[-1]["payload"] == stream
    denied = await b.call("event", {"kind": "summon", "payload": {"position": [0, 0, 0]}})
    assert not denied["ok"] and denied["error"]["type"] == "PermissionDenied"
    nested: dict[str, Any] = {}
    for _ in range(40):
        nested = {"n": nested}
    deep = await a.call("event", {"kind": "stream", "payload": nested})
    assert not deep["ok"] and deep["error"]["type"] == "ProtocolError"
    big = await a.call("event", {"kind": "steer", "payload": {"x": "y" * 20000}, "to": "bob"})
    assert not big["ok"] and big["error"]["type"] == "TooLarge"

    # Invites: the host makes one; a third participant joins with it as a viewer and gets the kept stream.
    token = await a.call("invite", {"role": "viewer", "ttl": 60})
    assert token["ok"]
    assert not (await b.call("invite", {"role": "viewer"}))["ok"]  # host only
    viewer = Peer(a.url, a.room, "dave", "Dave")
    await viewer.connect()
    try:
        joined = await viewer.join(invite=token["token"])
        assert joined["ok"] and joined["role"] == "viewer"
        assert [s["payload"] for s in joined["streams"]] == [stream]
        refused = await viewer.op("dave:t:1", {"op": "move_panel", "panel_id": "x", "transform": {}})
        assert not refused["ok"] and refused["error"]["type"] in ("PermissionDenied", "NotFound")
    finally:
        await viewer.close()

    # A participant id bound to a key cannot be taken by someone else.
    thief = Peer(a.url, a.room, "bob", "Not Bob")
    await thief.connect()
    try:
        taken = await thief.join()
        assert not taken["ok"] and taken["error"]["type"] == "JoinRefused"
    finally:
        await thief.close()


async def test_reconnect_with_state_vector_and_resend(pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    assert (await a.join())["ok"] and (await b.join())["ok"]
    assert (await a.op("alice:r:1", {"op": "add_panel", "panel_id": "n1", "kind": "note", "title": "One"}))["ok"]
    await until(lambda: "n1" in b.root("panels"))
    await b.close()
    assert (await a.op("alice:r:2", {"op": "retitle_panel", "panel_id": "n1", "title": "Two"}))["ok"]

    # Bob comes back on a new connection with the same id, key and document.
    b.sio = socketio.AsyncClient(reconnection=False)
    b.sio.on("update", b._on_update)
    b.sio.on("poses", b._on_poses)
    b.batches_read = 0  # counted per connection
    await b.connect()
    back = await b.join()
    assert back["ok"] and back["role"] == "member"
    assert b.root("panels")["n1"]["title"] == "Two"  # only what he missed came in the ack
    # His op whose ack he "lost" is resent with the same id: applied once.
    first = await b.op("bob:r:1", {"op": "resize_panel", "panel_id": "n1", "size": [2, 1]})
    resent = await b.op("bob:r:1", {"op": "resize_panel", "panel_id": "n1", "size": [2, 1]})
    assert first["ok"] and resent == {"ok": True, "duplicate": True}
    await until(lambda: a.root("panels")["n1"]["size"] == [2.0, 1.0])
