"""Recording a room spread over two relay processes sharing it through a real redis-server: one node
records the whole room once; when it is killed, the other takes over with a recording of its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from deeproom.net import RoomClient
from deeproom.net.recording.election import CAMPAIGN_S, LEASE_S
from deeproom.net.recording.recorder import VOICE_GRACE_S
from deeproom.net.voice.segments import encode_ogg_opus
from deeproom.presence import Pose
from deeproom.recording import Player, Timeline, read_timeline

from .conftest import RedisNodes, eventually

ROOM = "lecture"


def recordings(data_dir: Path) -> list[Path]:
    return sorted(
        p for p in (data_dir / "recordings").glob(f"{ROOM}-*") if (p / "timeline.drrec").is_file()
    )


def move(x: float) -> dict[str, Any]:
    return {"op": "move_panel", "panel_id": "p1", "transform": {"position": [x, 1.5, 2.0]}}


def assert_each_update_once(tl: Timeline, log: list[bytes]) -> tuple[int, int]:
    """The recording's updates are a stretch of the shared log, each once (their order may differ where
    two nodes wrote at the same moment). Returns where in the log the stretch lies."""
    assert len(set(tl.updates)) == len(tl.updates), "an update was recorded twice"
    where = {u: i for i, u in enumerate(log)}
    missing = [u for u in tl.updates if u not in where]
    assert not missing, f"{len(missing)} recorded updates are not in the room's log"
    lo, hi = min(where[u] for u in tl.updates), max(where[u] for u in tl.updates)
    skipped = [i for i in range(lo, hi + 1) if log[i] not in set(tl.updates)]
    assert not skipped, (
        f"log entries {skipped} between the first and last recorded update were not recorded"
    )
    return lo, hi


def panel_positions(tl: Timeline) -> set[float]:
    """Every x the panel had, playing the recording update by update."""
    player = Player(tl)
    xs = set()
    for t in [0.0, *tl.update_times]:
        room = player.advance(t).room
        if "p1" in room.panels:
            xs.add(round(room.panels["p1"].transform.position[0], 3))
    player.close()
    return xs


def participants_with_poses(tl: Timeline) -> set[str]:
    player = Player(tl)
    seen: set[str] = set()
    for t in tl.pose_times:
        seen |= set(player.seek(t + 0.5).poses)
    player.close()
    return seen


@pytest.mark.slow
async def test_one_node_records_the_whole_room_and_the_other_takes_over(
    tmp_path: Path, redis_url: str
) -> None:
    with RedisNodes(tmp_path, redis_url) as nodes:
        dirs, urls = nodes.dirs, nodes.urls
        async with (
            RoomClient(
                urls[0], room=ROOM, name="Host", backoff=(0.2, 0.5), connect_timeout=30
            ) as host,
            RoomClient(urls[1], room=ROOM, name="Bo", backoff=(0.2, 0.5), connect_timeout=30) as bo,
        ):
            clients = [host, bo]  # clients[i] is connected to node i
            await eventually(lambda: bo.participant_id in host.room.participants)
            await host.apply(
                {"op": "add_panel", "panel_id": "p1", "kind": "metrics", "title": "Loss"}
            )
            # a presenter on node 2, so either node's participant may summon
            await host.apply(
                {"op": "set_role", "participant_id": bo.participant_id, "role": "presenter"}
            )
            await host.apply({"op": "set_recording", "recording": True})
            await eventually(lambda: bo.room.settings.recording)
            recording_node = await eventually(
                lambda: [i for i in (0, 1) if recordings(dirs[i])], timeout=10
            )
            await asyncio.sleep(2 * CAMPAIGN_S + 0.5)
            assert [i for i in (0, 1) if recordings(dirs[i])] == recording_node, (
                "both nodes started a recorder"
            )
            r = recording_node[0]
            other = 1 - r
            remote = clients[other]  # connected to the node that does not record

            # --- both nodes' participants move the panel, send poses; a summon, a stream delta and a voice
            # segment from the node that does not record
            for i in range(8):
                await clients[i % 2].apply(move(float(i)))
                host.publish_pose(Pose(head_position=(float(i), 1.6, -1.0)))
                bo.publish_pose(Pose(head_position=(-float(i), 1.6, -1.0)))
                await asyncio.sleep(0.1)
            await remote.send_event("summon", {"panel_id": "p1"})
            await remote.send_event(
                "stream", {"panel_id": "p1", "channel": "loss", "step": 3, "value": 0.25}
            )
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(24000) / 48000)).astype(np.float32)
            sha = await remote.put_blob(encode_ogg_opus(tone))
            await remote.send_event(
                "voice_segment", {"sha": sha, "duration_s": 0.5, "age_s": 0.6}
            )  # acked by node r
            await asyncio.sleep(1.5)  # the recorder flushes once a second

            # --- the recording node dies; the other takes the lease over once it runs out
            nodes.kill(r)
            killed_at = time.monotonic()
            await eventually(lambda: recordings(dirs[other]), timeout=LEASE_S + 3 * CAMPAIGN_S + 5)
            takeover_s = time.monotonic() - killed_at
            survivor = clients[other]
            for i in range(20, 24):
                await survivor.apply(move(float(i)))
                survivor.publish_pose(Pose(head_position=(float(i), 1.6, -1.0)))
                await asyncio.sleep(0.1)
            await survivor.send_event("summon", {"position": [1.0, 1.6, -2.0], "yaw": 0.0})
            # the killed node comes back: its client reconnects and moves the panel; it must not record
            nodes.restart(r)
            returning = clients[r]
            await eventually(
                lambda: returning.connected and returning.room.settings.recording, timeout=30
            )
            await returning.apply(move(30.0))
            returning.publish_pose(Pose(head_position=(30.0, 1.6, -1.0)))
            await eventually(lambda: round(survivor.room.panels["p1"].transform.position[0]) == 30)
            await asyncio.sleep(2 * CAMPAIGN_S + 1.0)
            assert len(recordings(dirs[r])) == 1, "the restarted node started a second recorder"
            await host.apply({"op": "set_recording", "recording": False})
            await eventually(lambda: not bo.room.settings.recording)
            # the end mark follows the voice grace (late segments begun before the stop are still taken)
            await eventually(
                lambda: read_timeline(recordings(dirs[other])[0] / "timeline.drrec").ended,
                timeout=VOICE_GRACE_S + 5,
                interval=0.25,
            )
            ids = {c.participant_id for c in clients}
            remote_pid = remote.participant_id

        # --- what the two recordings hold
        raw: list[Any] = redis.Redis.from_url(redis_url).lrange(f"deeproom:room:{ROOM}:log", 0, -1)
        log = [bytes(u) for u in raw]
        (first_dir,) = recordings(dirs[r])
        first = read_timeline(first_dir / "timeline.drrec")
        lo1, hi1 = assert_each_update_once(first, log)
        assert {float(i) for i in range(8)} <= panel_positions(first)  # moves written on both nodes
        assert participants_with_poses(first) == ids
        assert [c.title for c in first.chapters] == [
            "summon to p1"
        ]  # sent on the node that did not record
        assert [(e.kind, e.sender) for e in first.events] == [
            ("summon", remote_pid),
            ("stream", remote_pid),
        ]
        assert [(v.participant, v.sha) for v in first.voice] == [(remote_pid, sha)]
        assert (dirs[r] / "recordings" / "blobs" / sha[:2] / sha[2:]).is_file()
        assert first.ended is None  # killed: no end mark, what was flushed reads back

        (second_dir,) = recordings(dirs[other])
        second = read_timeline(second_dir / "timeline.drrec")
        assert second.header["follows"] == first.header["recording_id"]
        assert second.ended == "stopped by the host" and second.damage is None
        lo2, hi2 = assert_each_update_once(second, log)
        assert lo2 > hi1  # nothing recorded twice across the two
        assert {20.0, 21.0, 22.0, 23.0, 30.0} <= panel_positions(
            second
        )  # the survivor's and the returning node's
        assert Player(second).seek(second.duration).room.settings.recording is False
        assert participants_with_poses(second) == ids
        assert [c.title for c in second.chapters] == ["summon to (1.0, 1.6, -2.0)"]
        print(
            f"takeover after {takeover_s:.1f} s; first {len(first.updates)} updates (log {lo1}-{hi1}), "
            f"second {len(second.updates)} (log {lo2}-{hi2}), log {len(log)}"
        )



@pytest.mark.slow
async def test_record_all_on_two_nodes_makes_one_recording(tmp_path: Path, redis_url: str) -> None:
    """`serve --redis URL --record` on both nodes: each node switches the room on, one records it."""
    with RedisNodes(tmp_path, redis_url, "--record") as nodes:
        dirs, urls = nodes.dirs, nodes.urls
        async with (
            RoomClient(urls[0], room=ROOM, name="Host", connect_timeout=30) as host,
            RoomClient(urls[1], room=ROOM, name="Bo", connect_timeout=30) as bo,
        ):
            await eventually(lambda: host.room.settings.recording and bo.room.settings.recording)
            await host.apply(
                {"op": "add_panel", "panel_id": "p1", "kind": "metrics", "title": "Loss"}
            )
            for i in range(6):
                await (host, bo)[i % 2].apply(move(float(i)))
            await asyncio.sleep(2 * CAMPAIGN_S + 0.5)
            made = [recordings(d) for d in dirs]
            assert sorted(len(m) for m in made) == [0, 1], made
        (path,) = made[0] or made[1]
        raw: list[Any] = redis.Redis.from_url(redis_url).lrange(f"deeproom:room:{ROOM}:log", 0, -1)
        tl = read_timeline(path / "timeline.drrec")
        assert_each_update_once(tl, [bytes(u) for u in raw])
        assert {float(i) for i in range(6)} <= panel_positions(tl)

