"""The page sends its pose as a compact pose (docs/protocol.md §8: one binary Engine.IO message
written through socket.io-client's engine), and a Python participant gets it."""

from __future__ import annotations

import pytest

from deeproom.net import EmbeddedRelay, RoomClient

from .conftest import Browsers, eventually, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_the_page_sends_compact_poses(relay: EmbeddedRelay, browsers: Browsers) -> None:
    async with RoomClient(relay.url, room="cpw", name="Alice", participant_id="alice", participant_key="k" * 20) as alice:
        stats = relay.server.stats
        await browsers.open(page_url(relay.url, "cpw", id="web1"))
        await eventually(lambda: "web1" in alice.poses, timeout=30)
        # alice publishes nothing: every pose the relay took came from the page, all of them compact
        assert stats["poses_in"] > 0 and stats["compact_poses_in"] == stats["poses_in"], stats
        assert stats["refused"] == 0, stats
