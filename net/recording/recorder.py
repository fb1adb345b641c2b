"""One room being recorded: what the relay persisted, sent and forwarded, with times.

Runs on the relay's event loop and does little per call: an update or event is one
buffered append; poses are gathered for a second and written as one zlib-compressed
presence chunk; the room is snapshotted every `snapshot_s` seconds (when it changed).
Voice segments (each speaker's own audio, uploaded as a blob and announced by the
speaker, checked by `deeproom.net.recording.voice`) are kept by hash beside the other
blobs and written as voice-segment records. Any OSError while writing (a full disk) stops the recorder: what was written stays
readable, and `on_failed` tells the relay, which switches the room's setting off and
tells the host. The room itself never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from deeproom.document import RoomDocument
from deeproom.errors import NotFound
from deeproom.recording import (
    BLOB,
    CHAPTER,
    END,
    EVENT,
    POSES,
    SNAPSHOT,
    UPDATE,
    VOICE,
    PresenceChunk,
    TimelineWriter,
    VoiceSegment,
    encode_snapshot,
    encode_voice_segment,
)

log = logging.getLogger(__name__)

SNAPSHOT_S = 20.0
"""Seconds between snapshots (a seek applies at most this long a stretch of updates)."""
CHUNK_S = 1.0
"""Seconds of pose batches per presence chunk."""
RECORDED_EVENTS = ("stream", "summon")
SEEN_UPDATES = 4096
"""Digests of the last updates written, so an update that reaches the room twice (a multi-node relay's
pub/sub and its catch-up read of the shared log) is written once."""
VOICE_GRACE_S = 10.0
"""After recording stops, voice segments that began before the stop are still taken for this long
(each speaker's client flushes its partial segment when it sees the setting turn off, then uploads
it); then the end mark is written. Nothing else is recorded in that time."""

_fetches: set[asyncio.Task[None]] = set()
_draining: dict[tuple[Path, str], RoomRecorder] = {}
"""Stopped recorders still taking late voice segments, by (recordings root, room id)."""


def draining_recorder(root: Path, room_id: str) -> RoomRecorder | None:
    """The room's stopped recorder (under `root`) that still takes voice segments begun before its stop."""
    return _draining.get((root, room_id))


def end_draining() -> None:
    """Write every stopped recorder's end mark now (a relay shutting down)."""
    for rec in list(_draining.values()):
        rec._end()


def summon_title(payload: Mapping[str, Any]) -> str:
    """A summon's chapter title: the panel it names, else the place ("summon to (1.0, 1.6, -2.0)")."""
    panel, pos = payload.get("panel_id"), payload.get("position")
    if isinstance(panel, str) and panel:
        return f"summon to {panel[:64]}"
    if isinstance(pos, list) and len(pos) == 3 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pos):
        return "summon to ({:.1f}, {:.1f}, {:.1f})".format(*pos)
    return "summon"


def new_recording_id(room_id: str, wall: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(wall if wall is not None else time.time()))
    return f"{room_id}-{stamp}"


def free_recording_id(root: Path, room_id: str, wall: float) -> str:
    """A recording id for `room_id` started at `wall` that no recording under `root` has yet."""
    rid = new_recording_id(room_id, wall)
    n = 1
    while (root / rid).exists():
        n += 1
        rid = f"{new_recording_id(room_id, wall)}-{n}"
    return rid


class RoomRecorder:
    """Writes one room's timeline to `root/<recording id>/timeline.drrec`; blobs by hash to `root/blobs/`."""

    def __init__(self, root: Path, room_id: str, doc: RoomDocument, *, blob_source: Path | None = None,
                 by: str = "host", on_failed: Callable[[str], None] | None = None, recording_id: str | None = None,
                 header: Mapping[str, Any] | None = None,
                 fetch_blob: Callable[[str], Awaitable[bool]] | None = None) -> None:
        """`recording_id`: chosen beforehand (else a free one); `header`: more header fields; `fetch_blob`:
        brings a blob this relay lacks into `blob_source` (another node's upload), False when nobody has it."""
        self.root = root
        self.room_id = room_id
        self.doc = doc
        self.blob_source = blob_source
        self.on_failed = on_failed
        self.fetch_blob = fetch_blob
        wall = time.time()
        rid = recording_id or free_recording_id(root, room_id, wall)
        self.id = rid
        self.dir = root / rid
        self.started = time.monotonic()
        self.failed: str | None = None
        self._updates = 0
        self._updates_at_snapshot = 0
        self._last_snapshot = 0.0
        self._chunk: PresenceChunk | None = None
        self._latest: dict[str, bytes] = {}
        self._blobs: set[str] = set()
        self._fetching: set[str] = set()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self.voice: dict[str, list[VoiceSegment]] = {}
        """Voice segments written, per speaker (the relay's checks read the last one)."""
        self.voice_count = 0
        self.stopped_at: float | None = None
        """The recording's time when it stopped (late voice segments are still taken, see VOICE_GRACE_S)."""
        self._end_reason = ""
        self._end_timer: asyncio.TimerHandle | None = None
        self.writer = TimelineWriter(self.dir / "timeline.drrec", {
            **(header or {}), "room_id": room_id, "started_wall": wall, "started_by": by, "recording_id": rid})
        self._write(lambda: self._snapshot(0.0))

    @property
    def active(self) -> bool:
        return self.failed is None and not self.writer.closed

    def now(self) -> float:
        return time.monotonic() - self.started

    def _write(self, action: Callable[[], None]) -> None:
        if not self.active:
            return
        try:
            action()
        except OSError as exc:
            self.fail(f"recording stopped: could not write {self.dir} ({exc.strerror or exc})")

    def fail(self, reason: str) -> None:
        if self.failed is not None:
            return
        self.failed = reason
        log.warning("relay: room %s: %s", self.room_id, reason)
        with contextlib.suppress(OSError):
            self.writer.close()  # what was flushed stays readable
        if self.on_failed is not None:
            self.on_failed(reason)

    # --- what the relay reports ------------------------------------------------------------

    def update(self, update: bytes) -> None:
        digest = hashlib.blake2b(update, digest_size=16).digest()
        if digest in self._seen:
            return
        self._seen[digest] = None
        if len(self._seen) > SEEN_UPDATES:
            self._seen.popitem(last=False)

        def write() -> None:
            t = self.now()
            self.writer.append(UPDATE, t, update)
            self._updates += 1
            if t - self._last_snapshot >= SNAPSHOT_S:
                self._snapshot(t)

        self._write(write)

    def poses(self, batch: Mapping[str, bytes], live: Mapping[str, bytes]) -> None:
        """One tick's batch (`batch`: what changed); `live`: every pose the relay holds."""
        def write() -> None:
            t = self.now()
            self._latest.update(batch)
            if self._chunk is None or t - self._chunk.t0 >= CHUNK_S:
                self._flush_chunk()
                self._latest = dict(live)
                self._latest.update(batch)
                self._chunk = PresenceChunk(t, self._latest)
                if t - self._last_snapshot >= SNAPSHOT_S and self._updates > self._updates_at_snapshot:
                    self._snapshot(t)
            else:
                self._chunk.add(t, batch)

        self._write(write)

    def event(self, kind: str, sender: str, payload: Mapping[str, Any]) -> None:
        if kind not in RECORDED_EVENTS:
            return

        def write() -> None:
            t = self.now()
            self.writer.append(EVENT, t, json.dumps({"kind": kind, "sender": sender, "payload": payload}).encode())
            if kind == "summon":
                self.writer.append(CHAPTER, t, json.dumps({"title": summon_title(payload), "kind": "summon"}).encode())

        self._write(write)

    def voice_segment(self, segment: VoiceSegment) -> bool:
        """Keep a voice segment (its blob by hash) and write its record; False when the recording is over
        (or stopped and the segment began after the stop)."""
        if self.stopped_at is not None and segment.start >= self.stopped_at:
            return False

        def write() -> None:
            if not self._keep(segment.sha):  # not an OSError: a client's mistake must not stop the recording
                raise NotFound(f"voice segment blob {segment.sha[:12]} is not on this relay; upload it first")
            t = self.now() if self.stopped_at is None else self.stopped_at  # the length stays where it stopped
            self.writer.append(VOICE, t, encode_voice_segment(segment))
            self.voice.setdefault(segment.participant, []).append(segment)
            self.voice_count += 1

        if not self.active:
            return False
        self._write(write)
        return self.active

    def chapter(self, title: str, kind: str) -> None:
        self._write(lambda: self.writer.append(CHAPTER, self.now(), json.dumps({"title": title, "kind": kind}).encode()))

    def stop(self, reason: str = "stopped by the host", *, voice_grace_s: float | None = None) -> None:
        """Stop recording: the last presence and a snapshot now; the end mark after `voice_grace_s`
        (default VOICE_GRACE_S; 0 at once), meanwhile taking voice segments begun before now."""
        if self.stopped_at is not None:
            return
        grace = VOICE_GRACE_S if voice_grace_s is None else voice_grace_s

        def write() -> None:
            self._flush_chunk()
            self._snapshot(self.now())

        self._write(write)
        self.stopped_at = self.now()
        self._end_reason = reason
        self.on_failed = None  # the room's setting is off already: a late failure tells nobody
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if grace <= 0 or loop is None or not self.active:
            self._end()
            return
        _draining[(self.root, self.room_id)] = self
        self._end_timer = loop.call_later(grace, self._end)

    def _end(self) -> None:
        if _draining.get((self.root, self.room_id)) is self:
            del _draining[(self.root, self.room_id)]
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None
        stopped = self.stopped_at if self.stopped_at is not None else self.now()

        def write() -> None:
            self.writer.append(END, stopped, json.dumps({"reason": self._end_reason}).encode())
            self.writer.close()

        self._write(write)
        with contextlib.suppress(OSError):
            self.writer.close()

    # --- inside ---------------------------------------------------------------------------

    def _flush_chunk(self) -> None:
        if self._chunk is not None:
            self.writer.append(POSES, self._chunk.t0, self._chunk.encode())
            self._chunk = None
            self.writer.flush()  # at most a second of the recording waits in memory

    def _snapshot(self, t: float) -> None:
        self.writer.append(SNAPSHOT, t, encode_snapshot(self._updates, self.doc.update_since(None)))
        self._last_snapshot = t
        self._updates_at_snapshot = self._updates
        self._keep_blobs(t)
        self.writer.flush()

    def _keep_blobs(self, t: float) -> None:
        """Blobs the room's panels show, kept once by hash (a hard link to the relay's copy when it can)."""
        if self.blob_source is None:
            return
        for panel in self.doc.snapshot().panels.values():
            for sha in panel.content.refs:
                if sha in self._blobs:
                    continue
                if not self._keep(sha):
                    self._fetch(sha)  # another node's upload, or not uploaded yet: the next snapshot looks again
                    continue
                self._blobs.add(sha)
                self.writer.append(BLOB, t, sha.encode("ascii"))

    def _fetch(self, sha: str) -> None:
        """Bring another node's blob here (`fetch_blob`), then keep it (a blob reference at that time)."""
        if self.fetch_blob is None or sha in self._fetching:
            return
        fetch = self.fetch_blob
        self._fetching.add(sha)

        async def run() -> None:
            try:
                if not await fetch(sha):
                    return

                def write() -> None:
                    if sha not in self._blobs and self._keep(sha):
                        self._blobs.add(sha)
                        self.writer.append(BLOB, self.now(), sha.encode("ascii"))

                if self.stopped_at is None:
                    self._write(write)
            finally:
                self._fetching.discard(sha)

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:
            self._fetching.discard(sha)
            return
        _fetches.add(task)
        task.add_done_callback(_fetches.discard)

    def _keep(self, sha: str) -> bool:
        """Copy blob `sha` into the recordings' store (a hard link when it can); False when the relay lacks it."""
        if self.blob_source is None:
            return False
        src = self.blob_source / sha[:2] / sha[2:]
        if not src.is_file():
            return False
        dst = self.root / "blobs" / sha[:2] / sha[2:]
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".tmp-{sha[2:]}-{os.getpid()}")
            try:
                os.link(src, tmp)
            except OSError:
                tmp.write_bytes(src.read_bytes())
            os.replace(tmp, dst)
        return True
