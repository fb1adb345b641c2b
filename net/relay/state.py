"""What the relay holds per connected socket (`Session`) and per room in use (`LiveRoom`)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from deeproom.document import RoomDocument
from deeproom.net.backend import RoomMeta
from deeproom.net.ratelimit import TokenBucket
from deeproom.state import Role
from deeproom.storage import BlobUpload


@dataclass(eq=False)
class Session:
    """One connected socket."""

    sid: str
    """Socket.IO's id of the connection."""
    address: str
    """The client's network address: per-address quotas are counted against it."""
    pose_bucket: TokenBucket
    op_bucket: TokenBucket
    event_bucket: TokenBucket
    room_id: str | None = None
    """The room this socket joined (one per socket), None before joining or after a kick."""
    participant_id: str | None = None
    uploads: dict[str, BlobUpload] = field(default_factory=dict)
    """Blob uploads in progress, by sha256."""
    upload_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes each upload took from the address's byte quota (given back if it is abandoned)."""
    warned_at: float = 0.0
    strikes: int = 0
    """Messages of this socket refused since `strikes_since` (too many and it is disconnected)."""
    strikes_since: float = 0.0
    refused: int = 0
    """Messages of this socket refused since `refused_since`, over-rate ones included (the
    pause before its next message is read grows with them)."""
    refused_since: float = 0.0
    expelled: bool = False
    """Out of strikes: being disconnected."""
    batches_sent: int = 0
    batches_acked: int = 0

    @property
    def joined(self) -> bool:
        return self.room_id is not None and self.participant_id is not None


@dataclass(eq=False)
class LiveRoom:
    """A room some client is in: its authoritative document and presence."""

    id: str
    doc: RoomDocument
    meta: RoomMeta
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while the document or the room's record changes (never while hashing a password)."""
    sessions: dict[str, Session] = field(default_factory=dict)
    poses: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    remote_poses: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    streams: OrderedDict[tuple[str, str], dict[str, Any]] = field(default_factory=OrderedDict)
    """The latest `stream` event per (panel, channel), for late joiners."""
    stream_bytes: int = 0
    """Payload bytes held in `streams`."""
    leave_tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    recent_ops: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Recently applied `op_key`s, so most replays are recognised without asking the store."""
    log_seen: int = 0
    last_keyframe: float = 0.0
    idle_since: float = field(default_factory=time.monotonic)

    def role_of(self, pid: str) -> Role | None:
        p = self.doc.snapshot().participants.get(pid)
        return p.role if p else None
