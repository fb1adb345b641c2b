"""The headset wearer's presence: head and hands, as room poses, to the relay.

`pose_from_tracking` is pure (OpenXR poses + where the play space sits -> a
deeproom.presence.Pose in room axes). `PosePublisher` is a rig listener that sends
it at most `rate_hz` times a second through anything with `publish_pose(pose)` (a
scenes Session, or deeproom.net's RoomClient / BackgroundClient), which queue it
without blocking the render thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from deeproom.presence import HandPose, PointerRay, Pose

from .convert import RigOrigin, XRPose
from .input import HandInput


class PoseSink(Protocol):
    def publish_pose(self, pose: Pose) -> Any: ...


def pose_from_tracking(
    origin: RigOrigin,
    head: XRPose,
    hands: Mapping[str, HandInput] | None = None,
    *,
    pointer_hand: str | None = "right",
    seq: int = 0,
    sent_at: float = 0.0,
) -> Pose:
    """The presence pose for a tracked head (and controllers), in room coordinates."""
    head_pos, head_rot = origin.to_room(head)
    sides: dict[str, HandPose | None] = {"left": None, "right": None}
    pointer = None
    for side, hand in (hands or {}).items():
        if hand.grip is not None:
            pos, rot = origin.to_room(hand.grip)
            sides[side] = HandPose(position=pos, rotation=rot)
        if side == pointer_hand and hand.aim is not None:
            start, _ = origin.to_room(hand.aim)
            pointer = PointerRay(origin=start, direction=origin.room_direction(hand.aim))
    return Pose(
        head_position=head_pos, head_rotation=head_rot, left=sides["left"], right=sides["right"],
        pointer=pointer, seq=seq & 0xFFFFFFFF, sent_at=sent_at,
    )


class PosePublisher:
    """Rig listener: publishes the wearer's pose at most rate_hz times per second."""

    def __init__(self, sink: PoseSink, rate_hz: float = 30.0, owns_sink: bool = False) -> None:
        self.sink = sink
        self.interval = 1.0 / rate_hz
        self.owns_sink = owns_sink
        self.published = 0
        self.last: Pose | None = None
        self._next = 0.0
        self.participant_id = str(getattr(sink, "participant_id", "") or "")

    @classmethod
    def connect(cls, url: str, *, room: str, name: str) -> PosePublisher:
        """Join a relay room through deeproom.net's BackgroundClient (its own thread)."""
        from deeproom.net import BackgroundClient  # type: ignore[attr-defined]

        client = BackgroundClient(url, room=room, name=name)
        client.wait_ready(timeout=20)
        return cls(client, owns_sink=True)

    def on_frame(self, frame: Any, rig: Any) -> None:
        now = time.monotonic()
        if frame.head is None or now < self._next:
            return
        self._next = now + self.interval
        hands = rig.session.actions.state.hands if rig.session.actions is not None else None
        pose = pose_from_tracking(rig.origin_pose, frame.head, hands, seq=self.published + 1, sent_at=time.time())
        self.sink.publish_pose(pose)
        self.last = pose
        self.published += 1

    def last_summary(self) -> dict[str, Any] | None:
        if self.last is None:
            return None
        p = self.last
        return {
            "seq": p.seq, "head_position": p.head_position, "head_rotation": p.head_rotation,
            "left": p.left.position if p.left else None, "right": p.right.position if p.right else None,
        }

    def close(self) -> None:
        if self.owns_sink:
            close = getattr(self.sink, "close", None)
            if callable(close):
                close()
