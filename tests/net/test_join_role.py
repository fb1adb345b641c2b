"""A join's optional `role` (issue 16, "viewer by default"): it can only lower the role the
relay would grant, never raise it. Real relay on 127.0.0.1, real Socket.IO clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio

from deeproom.net import EmbeddedRelay, RoomClient

KEY = "k" * 24


def panel(pid: str) -> dict[str, object]:
    return {"op": "add_panel", "panel_id": pid, "kind": "note", "title": pid, "transform": {"position": [0.0, 1.0, 2.0]}}


@pytest.fixture
async def socks() -> AsyncIterator[list[socketio.AsyncClient]]:
    made: list[socketio.AsyncClient] = []
    yield made
    for s in made:
        await s.disconnect()


async def sock(url: str, made: list[socketio.AsyncClient]) -> socketio.AsyncClient:
    s = socketio.AsyncClient(reconnection=False)
    await s.connect(url, transports=["websocket"])
    made.append(s)
    return s


async def join(s: socketio.AsyncClient, room: str, pid: str, **extra: Any) -> dict[str, Any]:
    ack: dict[str, Any] = await s.call("join", {"room": room, "name": pid, "participant_id": pid, "key": KEY + pid, **extra},
                                       timeout=20)
    return ack


async def test_a_join_asking_for_viewer_is_a_viewer_whose_edits_are_refused(
    relay: EmbeddedRelay, socks: list[socketio.AsyncClient]
) -> None:
    async with RoomClient(relay.url, room="vr", name="Host") as host:
        s = await sock(relay.url, socks)
        ack = await join(s, "vr", "watcher", role="viewer")
        assert ack["ok"] and ack["role"] == "viewer"
        refused = await s.call("op", {"id": "watcher:1", "op": panel("p1")}, timeout=20)
        assert refused["ok"] is False and refused["error"]["type"] == "PermissionDenied"
        assert "p1" not in host.room.panels
        # the relay remembers the lowered role: a rejoin with the same key (no role asked) is still a viewer
        await s.disconnect()
        again = await sock(relay.url, socks)
        ack2 = await join(again, "vr", "watcher")
        assert ack2["ok"] and ack2["role"] == "viewer"
        # an invited presenter may ask for less than the invite gives
        token = await host.create_invite("presenter")
        s3 = await sock(relay.url, socks)
        ack3 = await join(s3, "vr", "guest", invite=token, role="member")
        assert ack3["ok"] and ack3["role"] == "member"


@pytest.mark.parametrize("asked", ["host", "presenter"])
async def test_a_stranger_asking_for_a_higher_role_is_refused_and_nothing_changes(
    relay: EmbeddedRelay, socks: list[socketio.AsyncClient], asked: str
) -> None:
    async with RoomClient(relay.url, room="up", name="Host") as host:
        s = await sock(relay.url, socks)
        ack = await join(s, "up", "climber", role=asked)
        assert ack["ok"] is False and ack["error"]["type"] == "JoinRefused"
        assert "'member'" in ack["error"]["message"] and "lower" in ack["error"]["message"]
        assert "climber" not in host.room.participants
        # a member invite asking for presenter is refused too; the same invite without it admits a member
        token = await host.create_invite("member")
        ack2 = await join(s, "up", "climber", invite=token, role="presenter")
        assert ack2["ok"] is False and ack2["error"]["type"] == "JoinRefused"
        ack3 = await join(s, "up", "climber", invite=token)
        assert ack3["ok"] and ack3["role"] == "member"


async def test_a_bad_role_is_refused_and_the_creator_stays_host(
    relay: EmbeddedRelay, socks: list[socketio.AsyncClient]
) -> None:
    s = await sock(relay.url, socks)
    bad = await join(s, "mk", "maker", role="admin")
    assert bad["ok"] is False and bad["error"]["type"] == "ValidationError" and "join role" in bad["error"]["message"]
    ack = await join(s, "mk", "maker", role="viewer")  # creating the room: its creator is its host
    assert ack["ok"] and ack["role"] == "host"
