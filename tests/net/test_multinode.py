"""Two relay processes serving the same rooms through a real redis-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from deeproom.net import RoomClient
from deeproom.presence import Pose

from .conftest import RedisNodes, eventually


def panel(pid: str) -> dict[str, object]:
    return {"op": "add_panel", "panel_id": pid, "kind": "note", "title": pid}


@pytest.mark.slow
async def test_two_relays_share_rooms_through_redis(tmp_path: Path, redis_url: str) -> None:
    with RedisNodes(tmp_path, redis_url) as nodes:
        url1, url2 = nodes.urls
        async with (
            RoomClient(url1, room="shared", name="Alice", backoff=(0.2, 0.5), connect_timeout=30) as alice,
            RoomClient(url2, room="shared", name="Bob", backoff=(0.2, 0.5), connect_timeout=30) as bob,
        ):
            assert alice.role is not None and alice.role.value == "host"
            assert bob.role is not None and bob.role.value == "member"
            # state both ways
            await alice.apply(panel("a1"))
            await eventually(lambda: "a1" in bob.room.panels)
            await bob.apply({"op": "move_panel", "panel_id": "a1", "transform": {"position": [4, 1, 2]}})
            await eventually(lambda: alice.room.panels["a1"].transform.position == (4.0, 1.0, 2.0))
            # presence across nodes
            seen: list[dict[str, Pose]] = []
            bob.on_poses(seen.append)
            for i in range(15):
                alice.publish_pose(Pose(seq=i, sent_at=time.time()))
                await asyncio.sleep(1 / 30)
            await eventually(lambda: any(alice.participant_id in s for s in seen))
            # an event to one participant on the other node (voice signalling uses this)
            got: list[tuple[str, dict[str, object]]] = []
            bob.on_event("signal", lambda s, p: got.append((s, p)))
            await alice.send_event("signal", {"type": "offer"}, to=bob.participant_id)
            await eventually(lambda: got == [(alice.participant_id, {"type": "offer"})])
            # a blob uploaded to one node is fetched from the other
            sha = await alice.put_blob(b"weights" * 1000)
            assert await bob.get_blob(sha) == b"weights" * 1000
            # node 1 dies; the room lives on in redis and on node 2
            nodes.kill(0)
            offline = alice.submit(panel("during-outage"))
            await bob.apply(panel("b1"))
            nodes.restart(0)
            await asyncio.wait_for(offline, 30)
            await eventually(lambda: {"a1", "b1", "during-outage"} <= set(alice.room.panels), timeout=20)
            await eventually(lambda: alice.room.panels == bob.room.panels, timeout=20)
            async with RoomClient(url1, room="shared", name="Late", connect_timeout=30) as late:
                assert set(late.room.panels) == {"a1", "b1", "during-outage"}
                assert late.room.participants[alice.participant_id].role.value == "host"

