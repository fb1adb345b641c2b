"""Presence in the page: a Python participant's avatar (name tag, laser) appears and
follows their poses; follow-me and summon move the page's camera; and, with two
relays sharing rooms through a real redis-server, the browser on one node and the
Python client on the other see each other's changes and poses."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.presence import PointerRay, Pose

from .conftest import Browsers, eventually, every_kind_blobs, fill_room, free_port, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def publish(client: RoomClient, pose: Pose, seconds: float = 60.0) -> None:
    """Publish `pose` at 30 Hz (a pose not refreshed for 2 s is dropped): cancel when done."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.publish_pose(pose)
        await asyncio.sleep(1 / 30)


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_avatar_laser_follow_and_summon(relay: EmbeddedRelay, browsers: Browsers) -> None:
    async with RoomClient(relay.url, room="pres", name="Alice", participant_id="alice", participant_key="k" * 20) as alice:
        await fill_room(alice, {"image": every_kind_blobs()["image"]})
        d = await browsers.open(page_url(relay.url, "pres", id="web1"))
        await eventually(lambda: _joined(browsers, d))
        pose = Pose(head_position=(1.0, 1.7, 1.0), pointer=PointerRay((1.0, 1.5, 1.0), (0.0, 0.0, 1.0)))
        task = asyncio.create_task(publish(alice, pose))
        state = await eventually(lambda: _has_avatar(browsers, d, "alice"), timeout=10)
        assert state["avatars"] == ["alice"]
        avatar = await browsers.js(d, "const a = window.deeproom.page.scene.avatars.get('alice'); "
                                      "return {x: a.group.position.x, z: a.group.position.z, laser: a.laser.visible, tag: a.tagText}")
        assert avatar["x"] == pytest.approx(1.0) and avatar["z"] == pytest.approx(-1.0)  # z mirrored into three.js
        assert avatar["laser"] and avatar["tag"].startswith("Alice")
        await stopped(task)
        # follow me: the page's camera goes where the presenter's head is
        await alice.apply({"op": "set_follow", "mode": "presenter", "presenter": "alice"})
        task = asyncio.create_task(publish(alice, Pose(head_position=(2.0, 1.6, -1.0))))

        async def followed() -> dict | None:
            s = await browsers.state(d)
            cam = s["camera"]
            return s if s["following"] == "alice" and abs(cam[0] - 2.0) < 0.05 and abs(cam[2] + 1.0) < 0.05 else None

        await eventually(followed, timeout=10)
        await stopped(task)
        await alice.apply({"op": "set_follow", "mode": "off"})
        # summon: the page moves there
        await alice.send_event("summon", {"position": [-3.0, 1.6, 4.0], "yaw": 90.0})

        async def summoned() -> dict | None:
            s = await browsers.state(d)
            cam = s["camera"]
            return s if abs(cam[0] + 3.0) < 0.05 and abs(cam[2] - 4.0) < 0.05 else None

        s = await eventually(summoned, timeout=10)
        assert "summoned you" in (s["toast"] or "")
        # a summon with nonsense in it moves nothing
        await alice.send_event("summon", {"position": [1e9, 0, 0]})
        await asyncio.sleep(0.5)
        cam = (await browsers.state(d))["camera"]
        assert cam[0] == pytest.approx(-3.0, abs=0.05)


async def _joined(b: Browsers, d: Any) -> bool:
    return bool((await b.state(d)).get("joined"))


async def _has_avatar(b: Browsers, d: Any, pid: str) -> dict | None:
    s = await b.state(d)
    return s if pid in s.get("avatars", []) else None


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free port (stopped by PID)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (it is listed in tools/system-packages.txt)")
    port = free_port()
    (tmp_path / "redis").mkdir()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path / "redis")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_browser_and_python_client_on_two_relays_through_redis(tmp_path: Path, redis_url: str,
                                                                      browsers: Browsers) -> None:
    async with EmbeddedRelay(data_dir=tmp_path / "n1", redis_url=redis_url) as node1, \
            EmbeddedRelay(data_dir=tmp_path / "n2", redis_url=redis_url) as node2, \
            RoomClient(node1.url, room="multi", name="Alice", participant_id="alice", participant_key="k" * 20) as alice:
        await fill_room(alice, {"image": every_kind_blobs()["image"]})
        d = await browsers.open(page_url(node2.url, "multi", id="web2", edit="1"))

        async def drawn() -> bool:
            s = await browsers.state(d)
            return s.get("panels", {}).get("image", {}).get("status") == "drawn"

        await eventually(drawn, timeout=20)  # the blob came from node 1's upload, fetched on node 2
        await alice.apply({"op": "move_panel", "panel_id": "image", "transform": {"position": [0.5, 1.5, 3.0]}})

        async def moved() -> bool:
            p = (await browsers.state(d))["panels"]["image"]
            return abs(p["position"][0] - 0.5) < 1e-4

        await eventually(moved, timeout=10)
        task = asyncio.create_task(publish(alice, Pose(head_position=(1.0, 1.7, 1.0))))
        await eventually(lambda: _has_avatar(browsers, d, "alice"), timeout=20)
        await stopped(task)
        # the browser's own pose and op reach the Python client on the other node
        await eventually(lambda: "web2" in alice.poses, timeout=20)
        await browsers.js(d, "document.querySelector('#hand').click()")
        await eventually(lambda: alice.room.participants["web2"].hand_raised, timeout=20)
