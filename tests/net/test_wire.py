"""The relay's Socket.IO wire against real clients on 127.0.0.1 (issue 12, hostile input).

Binary messages (a text head plus attachments) must reach a client whole; a socket the
relay drops for a late pong must really be closed; messages refused from their head are
answered without being decoded (their attachments swallowed, the stream kept aligned);
a socket that keeps sending refused messages is disconnected and its address turned
away for a while, and no other address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from deeproom.net import EmbeddedRelay
from deeproom.presence import Pose, encode_pose

from .conftest import eventually


class Peer:
    """A bare python-socketio client in a room that reads pose batches and confirms them."""

    def __init__(self, address: str | None = None) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))) if address else None
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.session) if self.session else \
            socketio.AsyncClient(reconnection=False)
        self.batches: list[Any] = []
        self.errors: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.sio.on("poses", self.batches.append)
        self.sio.on("error", self.errors.append)
        self.sio.on("disconnect", lambda *reason: self.gone.set())
        self.refused: list[Any] = []
        self.sio.on("connect_error", self.refused.append)

    async def join(self, url: str, room: str, pid: str) -> Peer:
        await self.sio.connect(url, transports=["websocket"])
        ack = await self.sio.call("join", {"room": room, "name": pid, "participant_id": pid}, timeout=20)
        assert ack["ok"], ack
        return self

    async def pose(self, seq: int) -> None:
        await self.sio.emit("pose", (encode_pose(Pose(seq=seq, sent_at=time.time())), len(self.batches)))

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        if self.session is not None:
            await self.session.close()


@pytest.fixture
async def peers() -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        await p.close()


async def peer(url: str, made: list[Peer], room: str, pid: str, address: str | None = None) -> Peer:
    p = Peer(address)
    made.append(p)
    return await p.join(url, room, pid)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()} {r.exc_info[1] if r.exc_info else ''}"
            for r in caplog.records if r.levelno >= logging.ERROR]


async def test_binary_batches_and_binary_acks_arrive_whole(
    relay: EmbeddedRelay, peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    """Pose batches (binary events) and `sync` answers (binary acks) to one socket at once."""
    caplog.set_level(logging.ERROR)
    a, b, c = [await peer(relay.url, peers, "bin", pid) for pid in ("a", "b", "c")]
    stop = time.monotonic() + 3.0

    async def poses(p: Peer) -> None:
        seq = 0
        while time.monotonic() < stop:
            await p.pose(seq)
            seq += 1
            await asyncio.sleep(0.01)

    async def syncs() -> list[Any]:
        got = []
        while time.monotonic() < stop:
            got.append(await a.sio.call("sync", {"sv": b"\x00"}, timeout=20))
        return got

    results = await asyncio.gather(poses(a), poses(b), poses(c), *(syncs() for _ in range(4)))
    acks = [ack for r in results[3:] for ack in r]
    assert len(acks) > 20 and all(ack["ok"] and isinstance(ack["update"], bytes) for ack in acks)
    assert len(a.batches) > 20 and all(isinstance(x, bytes) and x[:1] == b"\x01" for x in a.batches)
    assert errors_logged(caplog) == []


async def test_a_socket_dropped_for_a_late_pong_is_closed_and_told(
    relay: EmbeddedRelay, peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    """Engine.IO's own check dropped the close for the same late ping: the websocket stayed open,
    the client kept sending poses into a gone session and the relay logged an error for each
    ("invalid literal for int() with base 10: b'\\x01'"), until the client's own timeout."""
    caplog.set_level(logging.ERROR)
    a = await peer(relay.url, peers, "late", "a")
    b = await peer(relay.url, peers, "late", "b")
    sio = relay.server.sio
    sid = next(s.sid for s in relay.server.sessions.values() if s.participant_id == "a")
    sock = sio.eio.sockets[sio.manager.eio_sid_from_sid(sid, "/")]
    sock.last_ping = time.time() - 100  # pinged 100 s ago; the pong was not read in time

    async def keep_posing(p: Peer) -> None:
        seq = 0
        while p.sio.connected:
            await p.pose(seq)
            seq += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(keep_posing(a))
    await asyncio.wait_for(a.gone.wait(), 5)  # told at once (not after its own 15 s timeout)
    await asyncio.sleep(0.3)
    task.cancel()
    seen = len(b.batches)
    await b.pose(1)
    await eventually(lambda: len(b.batches) > seen)  # the others are served as before
    assert "a" not in {s.participant_id for s in relay.server.sessions.values()}
    assert errors_logged(caplog) == []


async def test_messages_refused_from_their_head_are_answered_and_the_stream_stays_aligned(
    relay: EmbeddedRelay, peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    a = await peer(relay.url, peers, "head", "a")
    big = await a.sio.call("op", {"id": "a:1", "op": {"op": "rename_room", "room_name": "x" * 300_000}}, timeout=20)
    assert big["ok"] is False and big["error"]["type"] == "TooLarge" and "characters of text" in big["error"]["message"]
    # binary messages under a name the relay does not take: refused, their attachments swallowed
    for name in ("poses", "update", "connect"):
        ack = await a.sio.call(name, {"data": b"\x01" * 1000, "more": [b"\x02", b"\x03"]}, timeout=20)
        assert ack["ok"] is False and ack["error"]["type"] == "ProtocolError" and "unknown event" in ack["error"]["message"]
    ok = await a.sio.call("sync", {"sv": b"\x00"}, timeout=20)  # the next binary message is read as itself
    assert ok["ok"] and isinstance(ok["update"], bytes)
    # bytes no message announced: answered with an error event, not a traceback
    await a.sio.eio.send(b"\x01stray")
    await eventually(lambda: any("no message announced" in e["message"] for e in a.errors))
    assert (await a.sio.call("sync", {"sv": b"\x00"}, timeout=20))["ok"]
    assert errors_logged(caplog) == []


async def test_a_socket_out_of_strikes_is_disconnected_and_only_its_address_waits(
    tmp_path: Path, peers: list[Peer]
) -> None:
    async with EmbeddedRelay(data_dir=tmp_path, strikes=(20, 10.0), penalty_s=1.5) as relay:
        bad = await peer(relay.url, peers, "strikes", "bad", address="127.0.0.3")
        good = await peer(relay.url, peers, "strikes", "good", address="127.0.0.4")
        answers = [await bad.sio.call("op", {"id": f"x{i}", "op": {"op": "nonsense"}}, timeout=20) for i in range(20)]
        assert all(a["ok"] is False for a in answers)
        assert bad.sio.connected  # 20 refusals in the window are allowed; the 21st is answered, then out
        last = await bad.sio.call("op", {"id": "x21", "op": {"op": "nonsense"}}, timeout=20)
        assert last["ok"] is False
        await asyncio.wait_for(bad.gone.wait(), 5)
        assert any("refused messages" in e["message"] for e in bad.errors), bad.errors
        again = Peer("127.0.0.3")
        peers.append(again)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await again.join(relay.url, "strikes", "bad2")
        assert "too many refused messages" in str(again.refused), again.refused
        other = await peer(relay.url, peers, "strikes", "other", address="127.0.0.5")  # another address: welcome
        assert good.sio.connected and other.sio.connected
        assert (await good.sio.call("sync", {"sv": b"\x00"}, timeout=20))["ok"]
        await asyncio.sleep(1.6)  # the penalty is over
        await peer(relay.url, peers, "strikes", "bad3", address="127.0.0.3")


async def test_clients_leaving_while_batches_arrive_log_nothing(
    relay: EmbeddedRelay, peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    """python-socketio's own client logs "invalid literal for int() ... b'\\x01'" when it disconnects
    itself between a batch's head and its attachment (4 in 30 disconnects here); ours does not."""
    from deeproom.net.sio_client import RelaySocketClient

    caplog.set_level(logging.ERROR)
    posers = [await peer(relay.url, peers, "leave", f"p{i}") for i in range(3)]
    stop = time.monotonic() + 6.0

    async def poses(p: Peer) -> None:
        seq = 0
        while time.monotonic() < stop:
            await p.pose(seq)
            seq += 1
            await asyncio.sleep(0.003)

    async def come_and_go(k: int) -> int:
        n = 0
        while time.monotonic() < stop:
            c = RelaySocketClient(reconnection=False)
            read = [0]
            c.on("poses", lambda data, read=read: read.__setitem__(0, read[0] + 1))
            await c.connect(relay.url, transports=["websocket"])
            assert (await c.call("join", {"room": "leave", "name": "c", "participant_id": f"c{k}x{n}"}, timeout=20))["ok"]
            for _ in range(20):
                await c.emit("pa", read[0])
                await asyncio.sleep(0.004)
            await c.disconnect()
            n += 1
        return n

    done = await asyncio.gather(*(poses(p) for p in posers), come_and_go(0), come_and_go(1))
    assert sum(done[3:]) >= 10
    await asyncio.sleep(0.5)
    assert errors_logged(caplog) == []
