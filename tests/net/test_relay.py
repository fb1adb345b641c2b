"""The relay with real Socket.IO clients on 127.0.0.1: sync, convergence, refusals, presence, events."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from deeproom.errors import NotFound, PermissionDenied, ValidationError
from deeproom.net import BackgroundClient, EmbeddedRelay, JoinRefused, RoomClient
from deeproom.presence import PointerRay, Pose
from deeproom.storage import Store

from .conftest import eventually


def panel(pid: str, x: float = 0.0, kind: str = "metrics") -> dict[str, object]:
    return {"op": "add_panel", "panel_id": pid, "kind": kind, "title": pid, "transform": {"position": [x, 1.0, 2.0]}}


def move(pid: str, x: float) -> dict[str, object]:
    return {"op": "move_panel", "panel_id": pid, "transform": {"position": [x, 1.0, 2.0]}}


async def test_creator_is_host_and_a_late_joiner_gets_the_current_state(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="r1", name="Alice") as alice:
        assert alice.role is not None and alice.role.value == "host"
        await alice.apply(panel("p1"))
        await alice.apply(move("p1", 3.0))
        assert alice.room.panels["p1"].transform.position == (3.0, 1.0, 2.0)
        async with RoomClient(relay.url, room="r1", name="Bob") as bob:
            assert bob.role is not None and bob.role.value == "member"
            assert bob.room.panels["p1"].transform.position == (3.0, 1.0, 2.0)
            assert {p.name for p in bob.room.participants.values()} == {"Alice", "Bob"}
            await eventually(lambda: alice.participant_id in bob.room.participants and bob.participant_id in alice.room.participants)


async def test_three_clients_editing_concurrently_converge(relay: EmbeddedRelay) -> None:
    async with (
        RoomClient(relay.url, room="conv", name="A") as a,
        RoomClient(relay.url, room="conv", name="B") as b,
        RoomClient(relay.url, room="conv", name="C") as c,
    ):
        await a.apply(panel("shared"))

        async def edits(client: RoomClient, tag: str) -> None:
            futs = [client.submit(panel(f"{tag}{i}", i)) for i in range(8)]
            futs += [client.submit(move("shared", float(i))) for i in range(8)]
            await asyncio.gather(*futs)

        await asyncio.gather(edits(a, "a"), edits(b, "b"), edits(c, "c"))
        await eventually(lambda: a.room == b.room == c.room and len(a.room.panels) == 25)
        async with RoomClient(relay.url, room="conv", name="Late") as late:
            assert late.room.panels == a.room.panels
    stored = Store(relay.settings.store_path).load_room("conv").snapshot()
    assert stored.panels == a.room.panels


async def test_refusals_reach_only_the_sender_and_change_nothing(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="perm", name="Host") as host, RoomClient(relay.url, room="perm", name="V") as v:
        await host.apply(panel("p1"))
        await host.set_role(v.participant_id, "viewer")
        await eventually(lambda: v.room.participants[v.participant_id].role.value == "viewer")
        before = host.room
        with pytest.raises(PermissionDenied, match="viewers cannot"):
            await v.apply(move("p1", 9.0))
        with pytest.raises(NotFound):
            await host.apply(move("nope", 1.0))
        with pytest.raises(ValidationError):
            await host.apply({"op": "move_panel", "panel_id": "p1", "transform": {"scale": [0, 1, 1]}})
        with pytest.raises(PermissionDenied):
            await v.apply({"op": "lock_layout", "locked": True})
        with pytest.raises(PermissionDenied):
            await v.send_event("stream", {"panel_id": "p1", "channel": "loss"})
        with pytest.raises(PermissionDenied):
            await v.send_event("summon", {"panel_id": "p1"})
        with pytest.raises(PermissionDenied):
            await v.kick(host.participant_id)
        await asyncio.sleep(0.1)
        assert host.room == before == v.room
        # the host mutes and locks; raise hand works for a viewer
        await host.mute(v.participant_id)
        await v.apply({"op": "raise_hand", "participant_id": v.participant_id, "raised": True})
        await host.apply({"op": "lock_layout", "locked": True})
        await eventually(lambda: v.room.participants[v.participant_id].muted and v.room.settings.layout_locked)
        # teaching: follow me and mute all reach everyone; viewers cannot start them
        await host.apply({"op": "set_follow", "mode": "presenter", "presenter": host.participant_id})
        await host.apply({"op": "mute_all", "muted": True})
        await eventually(lambda: v.room.settings.follow.value == "presenter" and v.room.settings.muted_all)
        with pytest.raises(PermissionDenied):
            await v.apply({"op": "set_follow", "mode": "off"})


async def test_password_invites_kick_and_capacity(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="locked", name="Host", password="s3cret") as host:
        with pytest.raises(JoinRefused, match="needs a password"):
            async with RoomClient(relay.url, room="locked", name="Eve"):
                pass
        with pytest.raises(JoinRefused, match="wrong password"):
            async with RoomClient(relay.url, room="locked", name="Eve", password="guess"):
                pass
        token = await host.create_invite("viewer", ttl_s=60)
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        with pytest.raises(JoinRefused, match="signature"):
            async with RoomClient(relay.url, room="locked", name="Eve", invite=forged):
                pass
        link = await host.create_invite_link("viewer", ttl_s=60)
        assert link.startswith(f"deeproom://127.0.0.1:{relay.port}/locked?invite=")
        async with RoomClient(relay.url, room="locked", name="Guest", invite=link) as guest:
            assert guest.role is not None and guest.role.value == "viewer"
            await host.set_role(guest.participant_id, "presenter")
            await eventually(lambda: guest.room.participants[guest.participant_id].role.value == "presenter")
            async with RoomClient(relay.url, room="locked", name="Pal", password="s3cret") as pal:
                stop = asyncio.Event()
                pal.on_status(lambda s: stop.set() if s == "refused" else None)
                await host.kick(pal.participant_id)
                await asyncio.wait_for(stop.wait(), 5)
                await eventually(lambda: pal.participant_id not in host.room.participants)
                with pytest.raises(JoinRefused, match="removed"):
                    async with RoomClient(relay.url, room="locked", name="Pal", password="s3cret",
                                          participant_id=pal.participant_id, participant_key=pal.participant_key):
                        pass
        assert "s3cret" not in (relay.settings.store_path).read_bytes().decode("latin-1")
        await eventually(lambda: len(host.room.participants) == 1)  # the others left after the grace period
        await host.apply({"op": "set_capacity", "capacity": 2})
        async with RoomClient(relay.url, room="locked", name="Two", password="s3cret"):
            with pytest.raises(JoinRefused, match="full"):
                async with RoomClient(relay.url, room="locked", name="Three", password="s3cret"):
                    pass


async def test_participant_id_cannot_be_taken_over(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="ids", name="Host") as host:
        with pytest.raises(JoinRefused, match="already taken"):
            async with RoomClient(relay.url, room="ids", name="Mallory", participant_id=host.participant_id):
                pass


async def test_presence_batches_latest_poses(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="pres", name="A") as a, RoomClient(relay.url, room="pres", name="B") as b:
        seen: list[dict[str, Pose]] = []
        b.on_poses(seen.append)
        for i in range(20):
            a.publish_pose(Pose(head_position=(float(i), 1.5, 0.0), seq=i, sent_at=time.time(),
                                pointer=PointerRay((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), speaking=i % 2 == 0))
            await asyncio.sleep(1 / 30)
        await eventually(lambda: seen and seen[-1].get(a.participant_id) and seen[-1][a.participant_id].seq == 19)
        assert a.participant_id not in a.poses  # own pose is not reported back
        last = seen[-1][a.participant_id]
        assert last.pointer is not None and last.head_position[0] == 19.0
        assert 5 <= len(seen) <= 40  # batched per tick, not one message per pose per peer


async def test_events_signal_stream_steer_summon(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="ev", name="A") as a, RoomClient(relay.url, room="ev", name="B") as b:
        got: list[tuple[str, str, dict[str, object]]] = []
        for kind in ("signal", "stream", "steer", "summon"):
            b.on_event(kind, lambda s, p, k=kind: got.append((k, s, p)))
        await a.send_event("signal", {"sdp": "offer"}, to=b.participant_id)
        await a.send_event("steer", {"freeze": "conv1"}, to=b.participant_id)
        await a.send_event("stream", {"panel_id": "p1", "channel": "loss", "x": [1.0, 2.0]})
        await a.send_event("summon", {"panel_id": "p1"})
        await eventually(lambda: len(got) == 4)
        assert [g[0] for g in got] == ["signal", "steer", "stream", "summon"]
        assert all(g[1] == a.participant_id for g in got)
        with pytest.raises(ValidationError):
            await a.send_event("stream", {"panel_id": "p1", "blob": b"x" * 300_000})
        with pytest.raises(NotFound):
            await a.send_event("signal", {}, to="nobody")
        # a late joiner gets the latest delta of each stream
        late_got: list[dict[str, object]] = []
        late = RoomClient(relay.url, room="ev", name="Late")
        late.on_event("stream", lambda s, p: late_got.append(p))
        async with late:
            assert late_got == [{"panel_id": "p1", "channel": "loss", "x": [1.0, 2.0]}]


async def test_blobs_dedupe_caps_and_cache(tmp_path: Path) -> None:
    async with EmbeddedRelay(data_dir=tmp_path / "r", blob_max_bytes=3_000_000) as relay:  # noqa: SIM117
        async with (
            RoomClient(relay.url, room="b", name="A") as a,
            RoomClient(relay.url, room="b", name="B", cache_dir=tmp_path / "cache") as b,
        ):
            data = bytes(range(256)) * 4000  # 1 MB: several chunks
            sha = await a.put_blob(data)
            assert relay.server.blobs.has(sha)
            assert await a.put_blob(data) == sha  # second upload: the relay already has it
            assert len(relay.server.blobs.ids()) == 1
            assert await b.get_blob(sha) == data
            assert (tmp_path / "cache" / sha[:2] / sha[2:]).is_file()
            with pytest.raises(ValidationError, match="cap"):
                await a.put_blob(b"\x01" * 3_000_001)
            with pytest.raises(NotFound):
                await b.get_blob("0" * 64)
            assert len(relay.server.blobs.ids()) == 1


def test_background_client_delivers_through_one_inbox(tmp_path: Path) -> None:
    with BackgroundClient(None, room="bg", name="Solo", data_dir=tmp_path / "solo") as solo:
        solo.wait_ready(20)
        assert solo.url is not None
        with BackgroundClient(solo.url, room="bg", name="Peer") as peer:
            peer.wait_ready(20)
            room = solo.apply(panel("p1")).result(10)
            assert "p1" in room.panels
            f = peer.apply(move("p1", 2.0))
            assert f.result(10).panels["p1"].transform.position[0] == 2.0
    assert solo.room is not None and "p1" in solo.room.panels


def test_background_client_inbox_kinds(tmp_path: Path) -> None:
    with BackgroundClient(None, room="bg2", name="Solo", data_dir=tmp_path / "solo") as solo:
        solo.wait_ready(20)
        with BackgroundClient(solo.url, room="bg2", name="Peer") as peer:
            peer.wait_ready(20)
            solo.apply(panel("p1")).result(10)
            with pytest.raises(PermissionDenied):
                peer.send_event("summon", {"panel_id": "p1"}).result(10)
            solo.send_event("summon", {"panel_id": "p1"}).result(10)
            for i in range(10):
                solo.publish_pose(Pose(seq=i))
                time.sleep(0.03)
            deadline = time.monotonic() + 10
            kinds: set[str] = set()
            while time.monotonic() < deadline and not {"change", "event", "poses"} <= kinds:
                kinds |= {item.kind for item in peer.drain()}
                time.sleep(0.02)
            assert {"change", "event", "poses"} <= kinds
            sha = solo.put_blob(b"hello").result(10)
            assert peer.get_blob(sha).result(10) == b"hello"
    solo.close()  # twice is fine


async def test_a_client_that_stops_reading_is_skipped_not_queued_for(relay: EmbeddedRelay) -> None:
    async with RoomClient(relay.url, room="lag", name="A") as a, RoomClient(relay.url, room="lag", name="B") as b:
        import socketio

        lagging = socketio.AsyncClient(reconnection=False)
        got = [0]
        lagging.on("poses", lambda data: got.__setitem__(0, got[0] + 1))
        await lagging.connect(relay.url, transports=["websocket"])
        assert (await lagging.call("join", {"room": "lag", "name": "Lag", "participant_id": "lag1"}))["ok"]
        seen: list[dict[str, Pose]] = []
        b.on_poses(seen.append)
        for i in range(45):  # 1.5 s of poses; the lagging client never confirms a batch
            a.publish_pose(Pose(seq=i, sent_at=time.time()))
            await asyncio.sleep(1 / 30)
        await eventually(lambda: seen and seen[-1][a.participant_id].seq == 44)
        max_unacked = relay.settings.max_unacked_batches
        assert got[0] <= max_unacked + 1
        assert relay.server.stats["skipped_backed_up"] > 0
        assert b.stats["batches"] > 3 * max_unacked  # the reader kept getting batches
        await lagging.disconnect()


def test_background_client_accepts_work_before_it_has_joined(tmp_path: Path) -> None:
    with BackgroundClient(None, room="early", name="Solo", data_dir=tmp_path / "solo") as solo:
        fut = solo.apply(panel("p1"))  # not joined yet: queued, not a deadlock
        assert "p1" in fut.result(20).panels
        assert solo.call("create_invite", "viewer").result(10)


async def test_idle_rooms_are_unloaded_compacted_and_reload_intact(tmp_path: Path) -> None:
    async with EmbeddedRelay(data_dir=tmp_path, leave_grace_s=0.1, idle_room_s=0.3) as relay:
        async with RoomClient(relay.url, room="idle", name="A") as a:
            for i in range(5):
                await a.apply(panel(f"p{i}", i))
            before = a.room.panels
        await eventually(lambda: "idle" not in relay.server.rooms, timeout=10)
        store = Store(relay.settings.store_path)
        await eventually(lambda: [r.updates for r in store.rooms() if r.id == "idle"] == [1])  # compacted
        async with RoomClient(relay.url, room="idle", name="B") as b:
            assert b.room.panels == before


async def test_clients_joining_a_new_room_at_once_make_exactly_one_host(relay: EmbeddedRelay) -> None:
    async def join(name: str) -> str:
        async with RoomClient(relay.url, room="fresh-room", name=name) as c:
            return c.room.participants[c.participant_id].role.value

    roles = await asyncio.gather(*(join(n) for n in ("A", "B", "C")))
    assert sorted(roles) == ["host", "member", "member"]
