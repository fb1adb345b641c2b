"""The scene's relay session carries voice: notices reach the inbox, poses go through voice.

No rendering here (the session is the scene's link to the room); real relay, real clients.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deeproom.net import BackgroundClient
from deeproom.presence import Pose
from deeproom.scenes.session import Notice, PosesUpdate, RelaySession

pytestmark = pytest.mark.timeout(120)


def test_voice_in_a_relay_session(tmp_path: Path) -> None:
    a = BackgroundClient(None, room="voice-room", name="Ana", data_dir=tmp_path / "a").wait_ready(30)
    b = None
    sa = sb = None
    try:
        assert a.url is not None
        b = BackgroundClient(a.url, room="voice-room", name="Ben", data_dir=tmp_path / "b").wait_ready(30)
        sa = RelaySession(a, voice=True)
        sb = RelaySession(b)
        sa.voice.ready.result(30)
        assert sa.set_muted(True) and not sb.set_muted(True)  # B has no voice in its session
        assert sa.press_to_talk(True)

        seen_pose = False
        notices: list[str] = []
        deadline = time.monotonic() + 30
        seq = 0
        while time.monotonic() < deadline and not (seen_pose and notices):
            seq += 1
            sa.publish_pose(Pose(head_position=(1.0, 1.6, 2.0), seq=seq, sent_at=time.time()))  # through voice
            while not sa.inbox.empty():
                for msg in sa.translate(sa.inbox.get_nowait()):
                    if isinstance(msg, Notice):
                        notices.append(msg.text)
            while not sb.inbox.empty():
                for msg in sb.translate(sb.inbox.get_nowait()):
                    if isinstance(msg, PosesUpdate):
                        pose = msg.poses.get(sa.participant_id)
                        seen_pose |= pose is not None and max(abs(u - v) for u, v in zip(pose.head_position, (1.0, 1.6, 2.0), strict=True)) < 1e-4
            time.sleep(0.05)
        assert seen_pose, "B never saw A's pose sent through A's voice"
        # This machine has no audio devices: the session says so instead of failing.
        assert any("microphone" in n or "audio" in n or "speaker" in n for n in notices), notices
    finally:
        for s in (sa, sb):
            if s is not None:
                s.close()
        for c in (a, b):
            if c is not None:
                c.close()
