"""Faults: dropped connections with offline edits, lost acks, a relay killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import socketio

from deeproom.errors import NotFound
from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.storage import Store

from .conftest import eventually, free_port, start_relay_process, stop, wait_for_port


def panel(pid: str, x: float = 0.0) -> dict[str, object]:
    return {"op": "add_panel", "panel_id": pid, "kind": "note", "title": pid, "transform": {"position": [x, 1.0, 2.0]}}


async def test_offline_edits_are_replayed_or_refused_with_a_reason(relay: EmbeddedRelay) -> None:
    async with (
        RoomClient(relay.url, room="off", name="Host") as host,
        RoomClient(relay.url, room="off", name="Bob", backoff=(1.5, 1.5)) as bob,
    ):
        await host.apply(panel("a1"))
        await eventually(lambda: "a1" in bob.room.panels)
        refused: list[tuple[dict[str, object], Exception]] = []
        bob.on_refused(lambda op, err: refused.append((op, err)))
        statuses: list[str] = []
        bob.on_status(statuses.append)
        # the relay drops Bob's connection; he keeps editing while it is down
        sid = next(s for s, sess in relay.server.sessions.items() if sess.participant_id == bob.participant_id)
        await relay.server.sio.disconnect(sid)
        await eventually(lambda: not bob.connected)
        ok = bob.submit(panel("b1"))
        doomed = bob.submit({"op": "move_panel", "panel_id": "a1", "transform": {"position": [5, 1, 2]}})
        assert bob.pending == 2 and "b1" not in bob.room.panels
        await host.apply({"op": "remove_panel", "panel_id": "a1"})  # meanwhile, a1 goes away
        room = await asyncio.wait_for(ok, 10)
        assert "b1" in room.panels
        with pytest.raises(NotFound, match="a1"):
            await asyncio.wait_for(doomed, 10)
        assert [op["op"] for op, _ in refused] == ["move_panel"]
        assert statuses[:2] == ["disconnected", "connected"]
        assert bob.stats["reconnects"] == 1
        await eventually(lambda: host.room == bob.room)
        assert bob.participant_id in host.room.participants  # same id across the reconnect


async def test_a_replayed_operation_id_is_applied_once(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="dup", name="Host") as host:
        raw = socketio.AsyncClient(reconnection=False)
        await raw.connect(relay.url, transports=["websocket"])
        try:
            ack = await raw.call("join", {"room": "dup", "name": "Raw", "participant_id": "raw1", "key": "k" * 20})
            assert ack["ok"]
            msg = {"id": "raw1:x:1", "op": panel("r1")}
            first = await raw.call("op", msg)
            second = await raw.call("op", msg)  # as if the first ack had been lost
            assert first["ok"] and "update" in first
            assert second == {"ok": True, "duplicate": True}
        finally:
            await raw.disconnect()
        await eventually(lambda: "r1" in host.room.panels)
        # and after a restart the relay still knows the id (it is stored with the update)
    async with EmbeddedRelay(data_dir=relay.settings.data_dir) as again:
        raw = socketio.AsyncClient(reconnection=False)
        await raw.connect(again.url, transports=["websocket"])
        try:
            ack = await raw.call("join", {"room": "dup", "name": "Raw", "participant_id": "raw1", "key": "k" * 20})
            assert ack["ok"]
            assert (await raw.call("op", {"id": "raw1:x:1", "op": panel("r1")})) == {"ok": True, "duplicate": True}
        finally:
            await raw.disconnect()


@pytest.mark.slow
async def test_relay_killed_with_sigkill_keeps_every_acknowledged_change(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_relay_process(data, port)
    try:
        wait_for_port(port, proc)
        async with RoomClient(url, room="crash", name="Writer", backoff=(0.2, 0.5), connect_timeout=30) as writer:
            acked: list[str] = []
            futures = []

            async def keep_editing() -> None:
                for i in range(100):
                    fut = writer.submit(panel(f"k{i}", float(i % 7)))
                    fut.add_done_callback(lambda f, i=i: acked.append(f"k{i}") if not f.cancelled() and not f.exception() else None)
                    futures.append(fut)
                    await asyncio.sleep(0.003)

            editing = asyncio.create_task(keep_editing())
            await eventually(lambda: len(acked) >= 30, timeout=30)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            acked_at_kill = list(acked)
            # every acknowledged change is on disk, read straight from the store
            stored = Store(data / "deeproom.sqlite3").load_room("crash").snapshot()
            missing = [p for p in acked_at_kill if p not in stored.panels]
            assert not missing, f"acknowledged but lost: {missing[:5]}"
            await editing
            proc = start_relay_process(data, port)
            wait_for_port(port, proc)
            # the writer reconnects by itself and replays what was not acknowledged
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 60)
            errors = [r for r in results if isinstance(r, Exception)]
            assert not errors, errors[:3]
            assert writer.stats["reconnects"] >= 1
            assert {f"k{i}" for i in range(100)} <= set(writer.room.panels)
        async with RoomClient(url, room="crash", name="Reader", connect_timeout=30) as reader:
            assert {f"k{i}" for i in range(100)} <= set(reader.room.panels)
            assert reader.room.panels == writer.room.panels
    finally:
        stop(proc)


async def test_a_relay_that_lost_its_store_is_reported_not_silently_merged(tmp_path: Path) -> None:
    import shutil

    async with EmbeddedRelay(data_dir=tmp_path / "a") as first:
        port = first.port
        client = RoomClient(first.url, room="lost", name="A", backoff=(0.2, 0.5), connect_timeout=20)
        await client.connect()
        await client.apply(panel("p1"))
    shutil.rmtree(tmp_path / "a")  # the relay comes back with an empty store
    errors: list[Exception] = []
    client.on_error(errors.append)
    async with EmbeddedRelay(data_dir=tmp_path / "a", port=port):
        await eventually(lambda: errors, timeout=20)
        assert "lacks changes" in str(errors[0])
    await client.close()
