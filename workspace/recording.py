"""A recorded room: the timeline file format, its writer, and a reader that seeks.

A recording's timeline is one append-only file of checksummed records, each stamped
with seconds since the recording started: room updates (the CRDT updates the relay
persisted), presence chunks (about one second of the relay's pose batches, zlib
compressed, each chunk opening with every live pose so it stands alone), events
(stream, summon), periodic snapshots of the whole room, blob references, chapters,
voice segments (one speaker's own audio, about ten seconds of Opus in Ogg kept as a
blob) and an end mark. Appending only means a recording cut short (disk full, a killed
relay) is still readable up to its last whole record, and a damaged record is
found by its checksum: everything before it plays, and the reader says what is
lost. The state at time T is the nearest snapshot before T plus the updates after
it, so a seek costs one snapshot and at most a snapshot period of updates.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from deeproom.document import RoomDocument
from deeproom.errors import DeepRoomError
from deeproom.presence import Pose, decode_batch, encode_batch
from deeproom.state import Room, check_id, is_sha256

FORMAT_VERSION = 2
"""The timeline format this code writes and the newest it reads. Version 2 added voice segments
(record kind 8): a version-1 reader would stop at the first one as damage, so it is told instead
that it needs version 2. Version-1 files (no voice) are read as they are."""
MAGIC = b"DRREC\x00"
_FILE_HEADER = struct.Struct("<6sHI")  # magic, version, header JSON length
_RECORD = struct.Struct("<BId")  # kind, payload length, seconds since start
_CRC = struct.Struct("<I")
_BATCH = struct.Struct("<dI")  # time, batch length (inside a presence chunk)
MAX_RECORD_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20

UPDATE, POSES, EVENT, SNAPSHOT, BLOB, CHAPTER, END, VOICE = 1, 2, 3, 4, 5, 6, 7, 8
KIND_NAMES = {UPDATE: "room update", POSES: "presence chunk", EVENT: "event", SNAPSHOT: "snapshot",
              BLOB: "blob reference", CHAPTER: "chapter", END: "end mark", VOICE: "voice segment"}
MAX_VOICE_SEGMENT_S = 15.0
"""The longest voice segment a timeline holds (clients cut theirs at 10 s)."""


class RecordingError(DeepRoomError):
    """A recording that cannot be read (or written) as asked."""


class NewerFormat(RecordingError):
    """A recording written by a newer DeepRoom."""


# --- writing ------------------------------------------------------------------------------


class TimelineWriter:
    """Appends records to a timeline file. Any OSError (a full disk) propagates to the caller,
    which stops recording; what was flushed before stays readable."""

    def __init__(self, path: Path, header: Mapping[str, Any]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO | None = open(path, "xb")  # noqa: SIM115 (held open while recording)
        head = json.dumps({"format": "deeproom-recording", **header}, sort_keys=True).encode()
        self._fh.write(_FILE_HEADER.pack(MAGIC, FORMAT_VERSION, len(head)) + head)
        self._fh.flush()
        self.bytes_written = _FILE_HEADER.size + len(head)

    def append(self, kind: int, t: float, payload: bytes) -> None:
        if self._fh is None:
            raise RecordingError(f"recording {self.path} is closed")
        head = _RECORD.pack(kind, len(payload), t)
        crc = zlib.crc32(payload, zlib.crc32(head))
        self._fh.write(head + payload + _CRC.pack(crc))
        self.bytes_written += _RECORD.size + len(payload) + _CRC.size

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.flush()
            finally:
                fh.close()

    @property
    def closed(self) -> bool:
        return self._fh is None


def encode_snapshot(update_count: int, state: bytes) -> bytes:
    """A snapshot record: how many update records precede it, then the whole room as one update."""
    return struct.pack("<I", update_count) + state


def encode_voice_segment(segment: VoiceSegment) -> bytes:
    """A voice-segment record's payload (JSON): who spoke, the blob, when and how long."""
    return json.dumps({"participant": segment.participant, "sha": segment.sha, "start": segment.start,
                       "duration": segment.duration, "bytes": segment.bytes}, sort_keys=True).encode()


def decode_voice_segment(payload: bytes) -> VoiceSegment:
    d = json.loads(payload)
    seg = VoiceSegment(str(d["participant"]), str(d["sha"]), float(d["start"]), float(d["duration"]), int(d["bytes"]))
    if not is_sha256(seg.sha):
        raise ValueError(f"voice segment blob {seg.sha[:70]!r} is not a sha256 id")
    if not (math.isfinite(seg.start) and 0 < seg.duration <= MAX_VOICE_SEGMENT_S and seg.bytes > 0):
        raise ValueError(f"voice segment at {seg.start} s lasting {seg.duration} s is impossible")
    return seg


class PresenceChunk:
    """Collects pose batches for one presence record: the first is every live pose."""

    def __init__(self, t0: float, full: Mapping[str, bytes]) -> None:
        self.t0 = t0
        self._parts: list[bytes] = []
        self.add(t0, full)

    def add(self, t: float, poses: Mapping[str, bytes]) -> None:
        if poses:
            batch = encode_batch(poses, t)
            self._parts.append(_BATCH.pack(t, len(batch)) + batch)

    def encode(self) -> bytes:
        return zlib.compress(b"".join(self._parts), 1)


def decode_chunk(payload: bytes) -> Iterator[tuple[float, dict[str, Pose]]]:
    raw = zlib.decompress(payload)
    at = 0
    while at < len(raw):
        t, n = _BATCH.unpack_from(raw, at)
        at += _BATCH.size
        _, poses = decode_batch(raw[at:at + n])
        at += n
        yield t, poses


# --- reading ------------------------------------------------------------------------------


@dataclass
class Chapter:
    t: float
    title: str
    kind: str
    """'summon' or 'layout'."""


@dataclass
class RecordedEvent:
    t: float
    kind: str
    sender: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class VoiceSegment:
    """One speaker's own audio for a stretch of the recording: Opus in Ogg, kept as a blob by hash."""

    participant: str
    """Who spoke (the relay checked it was the sender)."""
    sha: str
    """The blob holding the Ogg file (in the recording store's `blobs/`)."""
    start: float
    """Seconds since the recording started at the segment's first sample (may be a little
    below 0 when the speaker began the segment just before the recorder started)."""
    duration: float
    """Seconds of audio it holds."""
    bytes: int
    """Size of the blob."""

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass
class Timeline:
    """What a timeline file holds, read once (presence chunks stay on disk, located by offset)."""

    path: Path
    header: dict[str, Any]
    update_times: list[float] = field(default_factory=list)
    updates: list[bytes] = field(default_factory=list)
    snapshot_times: list[float] = field(default_factory=list)
    snapshots: list[tuple[int, bytes]] = field(default_factory=list)
    """(updates before it, the room as one update)."""
    pose_times: list[float] = field(default_factory=list)
    pose_chunks: list[tuple[int, int]] = field(default_factory=list)
    """(offset, length) of each presence chunk's payload."""
    events: list[RecordedEvent] = field(default_factory=list)
    chapters: list[Chapter] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    voice: list[VoiceSegment] = field(default_factory=list)
    """Voice segments, in the order recorded (`Player.voice` sorts them by start)."""
    duration: float = 0.0
    ended: str | None = None
    """Why recording stopped (from the end mark), None when the file has none."""
    damage: str | None = None
    """What could not be read, None when the whole file is intact."""
    records: int = 0

    @property
    def room_id(self) -> str:
        return str(self.header.get("room_id", "recording"))


_RECORDING_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _check_header(header: Mapping[str, Any]) -> None:
    """The header fields that are shown or used (a recording may come from anyone, by import):
    ids well-formed, times finite numbers. Raises ValueError naming the field."""
    for key in ("room_id", "started_by", "node"):
        if key in header:
            check_id(header[key], key)
    if "started_wall" in header:
        wall = header["started_wall"]
        if isinstance(wall, bool) or not isinstance(wall, int | float) or not math.isfinite(wall) or wall < 0:
            raise ValueError(f"started_wall must be a time in seconds; got {str(wall)[:40]!r}")
    for key in ("follows", "recording_id"):
        if key in header and not (isinstance(header[key], str) and _RECORDING_ID.fullmatch(header[key])):
            raise ValueError(f"{key} must be a recording id; got {str(header[key])[:40]!r}")


def read_timeline(path: str | Path) -> Timeline:
    """Read a timeline: every intact record up to the first damaged one (named in `damage`).

    Raises RecordingError when not even the file header can be read, NewerFormat when it
    was written by a newer format version.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise RecordingError(f"cannot open recording timeline {path}: {exc.strerror or exc}") from None
    with fh:
        head = fh.read(_FILE_HEADER.size)
        if len(head) < _FILE_HEADER.size:
            raise RecordingError(f"{path} is not a DeepRoom recording (it is {len(head)} bytes, shorter than the header)")
        magic, version, hlen = _FILE_HEADER.unpack(head)
        if magic != MAGIC:
            raise RecordingError(f"{path} is not a DeepRoom recording (wrong magic bytes)")
        if version > FORMAT_VERSION:
            raise NewerFormat(f"{path} is recording format version {version}; this DeepRoom reads up to "
                              f"version {FORMAT_VERSION} (upgrade DeepRoom to a release that reads version {version})")
        if hlen > MAX_HEADER_BYTES:
            raise RecordingError(f"{path}: damaged header (claims {hlen} bytes)")
        try:
            header = json.loads(fh.read(hlen))
            if not isinstance(header, dict):
                raise ValueError("not an object")
            _check_header(header)
        except (ValueError, RecursionError) as exc:
            raise RecordingError(f"{path}: damaged header ({exc})") from None
        tl = Timeline(path, header)
        offset = _FILE_HEADER.size + hlen
        while True:
            rec = fh.read(_RECORD.size)
            if not rec:
                break
            problem = None
            if len(rec) < _RECORD.size:
                problem = "cut off inside a record header"
            else:
                kind, n, t = _RECORD.unpack(rec)
                if kind not in KIND_NAMES or n > MAX_RECORD_BYTES or not math.isfinite(t) or t < 0:
                    problem = f"unreadable record header (kind {kind}, {n} bytes)"
                else:
                    payload = fh.read(n)
                    crc = fh.read(_CRC.size)
                    if len(payload) < n or len(crc) < _CRC.size:
                        problem = f"{KIND_NAMES[kind]} at {t:.2f} s cut off ({len(payload)} of {n} bytes)"
                    elif _CRC.unpack(crc)[0] != zlib.crc32(payload, zlib.crc32(rec)):
                        problem = f"{KIND_NAMES[kind]} at {t:.2f} s fails its checksum"
                    else:
                        try:
                            _take(tl, kind, t, payload, offset + _RECORD.size)
                        except (ValueError, KeyError, TypeError, struct.error, zlib.error, DeepRoomError) as exc:
                            problem = f"{KIND_NAMES[kind]} at {t:.2f} s is malformed ({exc})"
            if problem is not None:
                size = path.stat().st_size
                tl.damage = (f"{path.name}: record {tl.records + 1} at byte {offset}: {problem}; "
                             f"the {size - offset} bytes from there on are not played "
                             f"(the first {tl.duration:.1f} s are intact)")
                break
            tl.records += 1
            offset += _RECORD.size + n + _CRC.size
            tl.duration = max(tl.duration, t)
        return tl


def _take(tl: Timeline, kind: int, t: float, payload: bytes, offset: int) -> None:
    if kind == UPDATE:
        tl.update_times.append(t)
        tl.updates.append(payload)
    elif kind == POSES:
        tl.pose_times.append(t)
        tl.pose_chunks.append((offset, len(payload)))
    elif kind == SNAPSHOT:
        (count,) = struct.unpack_from("<I", payload)
        if count > len(tl.updates):
            raise ValueError(f"snapshot after {count} updates, but only {len(tl.updates)} precede it")
        tl.snapshot_times.append(t)
        tl.snapshots.append((count, payload[4:]))
    elif kind == EVENT:
        d = json.loads(payload)
        tl.events.append(RecordedEvent(t, str(d["kind"]), str(d["sender"]), dict(d["payload"])))
    elif kind == CHAPTER:
        d = json.loads(payload)
        tl.chapters.append(Chapter(t, str(d["title"]), str(d["kind"])))
    elif kind == BLOB:
        tl.blobs.append(payload.decode("ascii"))
    elif kind == END:
        tl.ended = str(json.loads(payload).get("reason", ""))
    elif kind == VOICE:
        tl.voice.append(decode_voice_segment(payload))


@dataclass
class ReplayState:
    """The room as it was at `t`: its document, and every participant's latest pose."""

    t: float
    doc: RoomDocument
    poses: dict[str, Pose]

    @property
    def room(self) -> Room:
        return self.doc.snapshot()


class Player:
    """Moves through a timeline: `seek(t)` from the nearest snapshot, `advance(t)` forward
    from where it is (what playing does, frame by frame)."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self._fh: BinaryIO | None = None
        self._chunk_index = -1
        self._chunk: list[tuple[float, dict[str, Pose]]] = []
        self._voice = sorted(timeline.voice, key=lambda s: (s.start, s.participant))
        self.state = self.seek(0.0)

    def _pose_file(self) -> BinaryIO:
        if self._fh is None:
            self._fh = open(self.timeline.path, "rb")  # noqa: SIM115 (closed by close())
        return self._fh

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()

    def seek(self, t: float) -> ReplayState:
        tl = self.timeline
        t = max(0.0, min(t, tl.duration))
        doc = RoomDocument(tl.room_id)
        s = bisect.bisect_right(tl.snapshot_times, t) - 1
        start = 0
        if s >= 0:
            start, state = tl.snapshots[s]
            doc.apply_update(state)
        self._applied = start
        self.state = ReplayState(t, doc, {})
        self._apply_updates(t)
        self.state.poses = self._poses_at(t)
        return self.state

    def advance(self, t: float) -> ReplayState:
        """Play forward to `t` (a backward `t` seeks)."""
        if t < self.state.t:
            return self.seek(t)
        t = min(t, self.timeline.duration)
        self.state.t = t
        self._apply_updates(t)
        self.state.poses = self._poses_at(t)
        return self.state

    def _apply_updates(self, t: float) -> None:
        tl = self.timeline
        end = bisect.bisect_right(tl.update_times, t)
        for i in range(self._applied, end):
            self.state.doc.apply_update(tl.updates[i])
        self._applied = max(self._applied, end)

    def _poses_at(self, t: float) -> dict[str, Pose]:
        tl = self.timeline
        i = bisect.bisect_right(tl.pose_times, t) - 1
        if i < 0:
            return {}
        if i != self._chunk_index:
            offset, n = tl.pose_chunks[i]
            fh = self._pose_file()
            fh.seek(offset)
            self._chunk = list(decode_chunk(fh.read(n)))
            self._chunk_index = i
        poses: dict[str, Pose] = {}
        for bt, batch in self._chunk:
            if bt > t:
                break
            poses.update(batch)
        return poses

    def chapters(self) -> list[Chapter]:
        return list(self.timeline.chapters)

    def voice(self) -> list[VoiceSegment]:
        """Every voice segment, by start time."""
        return list(self._voice)

    def voice_between(self, t0: float, t1: float) -> list[VoiceSegment]:
        """The voice segments that sound somewhere in [t0, t1), by start time."""
        return [s for s in self._voice if s.start < t1 and s.end > t0]

    def speakers(self) -> list[str]:
        """Everyone with at least one voice segment."""
        return sorted({s.participant for s in self.timeline.voice})

    def events_between(self, t0: float, t1: float) -> list[RecordedEvent]:
        """Events with t0 < t <= t1 (what a player fires while playing from t0 to t1)."""
        return [e for e in self.timeline.events if t0 < e.t <= t1]


def parse_clock(text: str) -> float:
    """'MM:SS', 'HH:MM:SS' or plain seconds to seconds."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise RecordingError(f"time must be MM:SS, HH:MM:SS or seconds; got {text!r}") from None
    if not parts or len(parts) > 3 or any(p < 0 for p in parts):
        raise RecordingError(f"time must be MM:SS, HH:MM:SS or seconds; got {text!r}")
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def format_clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"
