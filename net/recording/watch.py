"""Watching one replay together on a relay: the `watch` event, and how the recording travels.

A watch party is an ordinary room on a relay. Whoever may drive it (the room's host, or a
presenter the host made) opens the recording and shares it through the relay's blob store
(`share_recording`: the recording's export archive in pieces of at most 16 MiB, plus a small
manifest blob naming them), then sends `watch` events (`WatchState`: which recording, where
the playhead is, whether it plays, at what speed) whenever it changes the timeline and once a
second while playing. Everyone else in the room opens the same recording (`fetch_recording`:
their own copy when one with the same timeline bytes is in their recordings, else downloaded
once through the relay, checked by hash and imported like `deeproom record import`) and
follows the events.

Why the driver shares the file through the relay rather than each watcher bringing a copy:
a class re-watches a lecture the relay recorded, and only the relay's machine (and the
instructor, who can export it) holds it; students have nothing but the room link. Blobs
are the relay's one content path (validated, per-address upload quotas, content-addressed,
fetched once and cached), so the relay needs no new endpoint, and whoever already has the
recording (the relay's own machine, or an imported copy) downloads nothing.

The relay checks each `watch` payload with `parse_watch` (any client may be hostile) and
forwards it only from a host or presenter. Pure: no sockets here; the callers pass the
blob upload and download functions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeproom.errors import ValidationError
from deeproom.net.recording.store import RecordingStore, check_recording_id
from deeproom.recording import RecordingError

WATCH_FORMAT = "deeproom-watch"
WATCH_VERSION = 1
PIECE_BYTES = 16 << 20
"""Archive bytes per blob (the relay takes blobs up to 64 MiB)."""
MAX_PIECES = 1024
MAX_MANIFEST_BYTES = 128 << 10
MAX_T = 1e7
"""Seconds: no recording is longer than about 115 days."""
MAX_SPEED = 64.0
HEARTBEAT_S = 1.0
"""While playing, the driver repeats its state this often (late joiners start from it; followers correct drift)."""
_SHA_CHARS = frozenset("0123456789abcdef")


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and set(v) <= _SHA_CHARS


def _number(d: Mapping[str, Any], key: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValidationError(f"watch {key} must be a finite number; got {str(v)[:40]!r}")
    if v < lo or v > hi or (open_lo and v == lo):
        raise ValidationError(f"watch {key} must be in {'(' if open_lo else '['}{lo:g}, {hi:g}]; got {v:g}")
    return float(v)


@dataclass(frozen=True)
class WatchState:
    """One `watch` event: where the driver's playhead is."""

    recording: str
    """sha256 of the watch manifest blob (which recording everyone plays)."""
    t: float
    """The playhead, seconds from the recording's start, when the driver sent this."""
    playing: bool
    speed: float
    """Recorded seconds per second, in (0, 64]."""
    duration: float
    """The recording's length (a follower checks it against the recording it opened)."""
    jump: bool = False
    """The driver sought to `t` (followers seek too, passing nothing on the way); false: it played there."""

    def to_payload(self) -> dict[str, Any]:
        return {"recording": self.recording, "t": self.t, "playing": self.playing, "speed": self.speed,
                "duration": self.duration, "jump": self.jump}


WATCH_KEYS = frozenset(("recording", "t", "playing", "speed", "duration", "jump"))


def parse_watch(payload: Any) -> WatchState:
    """A `watch` payload checked field by field; ValidationError says what is wrong and what is allowed."""
    if not isinstance(payload, Mapping):
        raise ValidationError(f"a watch payload is an object; got {type(payload).__name__}")
    extra = set(payload) - WATCH_KEYS
    if extra:
        raise ValidationError(f"unknown watch field(s) {', '.join(sorted(map(str, extra)))[:80]}; "
                              f"allowed: {', '.join(sorted(WATCH_KEYS))}")
    rec = payload.get("recording")
    if not _is_sha(rec):
        raise ValidationError("watch recording must be the sha256 (64 lowercase hex digits) of the watch manifest blob")
    playing = payload.get("playing")
    if not isinstance(playing, bool):
        raise ValidationError(f"watch playing must be true or false; got {str(playing)[:20]!r}")
    duration = _number(payload, "duration", 0.0, MAX_T)
    t = _number(payload, "t", 0.0, duration)
    speed = _number(payload, "speed", 0.0, MAX_SPEED, open_lo=True)
    jump = payload.get("jump", False)
    if not isinstance(jump, bool):
        raise ValidationError(f"watch jump must be true or false; got {str(jump)[:20]!r}")
    return WatchState(str(rec), t, playing, speed, duration, jump)


@dataclass(frozen=True)
class WatchManifest:
    """The blob that says what a shared recording is and where its archive's pieces are."""

    id: str
    room_id: str
    duration: float
    timeline_sha256: str
    """sha256 of the recording's timeline file (a watcher with the same bytes downloads nothing)."""
    timeline_bytes: int
    archive_sha256: str
    archive_bytes: int
    pieces: tuple[str, ...]
    """sha256 of each piece of the export archive, in order."""

    def encode(self) -> bytes:
        return json.dumps({"format": WATCH_FORMAT, "version": WATCH_VERSION, "id": self.id, "room_id": self.room_id,
                           "duration": self.duration, "timeline_sha256": self.timeline_sha256,
                           "timeline_bytes": self.timeline_bytes, "archive_sha256": self.archive_sha256,
                           "archive_bytes": self.archive_bytes, "pieces": list(self.pieces)}).encode()

    @staticmethod
    def decode(data: bytes) -> WatchManifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise RecordingError(f"a watch manifest is at most {MAX_MANIFEST_BYTES} bytes; got {len(data)}")
        try:
            d = json.loads(data)
        except ValueError as exc:
            raise RecordingError(f"the watch manifest is not JSON ({exc})") from None
        if not isinstance(d, dict) or d.get("format") != WATCH_FORMAT:
            raise RecordingError(f"the shared blob is not a {WATCH_FORMAT} manifest")
        if not isinstance(d.get("version"), int) or d["version"] > WATCH_VERSION:
            raise RecordingError(f"watch manifest version {d.get('version')!r}; this DeepRoom reads up to {WATCH_VERSION}")
        pieces = d.get("pieces")
        if not isinstance(pieces, list) or not 1 <= len(pieces) <= MAX_PIECES or not all(_is_sha(p) for p in pieces):
            raise RecordingError(f"the watch manifest's pieces must be 1-{MAX_PIECES} sha256 ids")
        for key in ("timeline_sha256", "archive_sha256"):
            if not _is_sha(d.get(key)):
                raise RecordingError(f"the watch manifest's {key} is not a sha256 id")
        sizes = [d.get("timeline_bytes"), d.get("archive_bytes")]
        if not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_PIECES * PIECE_BYTES for s in sizes):
            raise RecordingError("the watch manifest's sizes are not positive byte counts within the limit")
        duration = d.get("duration")
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not 0 <= duration <= MAX_T:
            raise RecordingError(f"the watch manifest's duration is not a length in seconds: {str(duration)[:20]!r}")
        room_id = d.get("room_id")
        return WatchManifest(check_recording_id(d.get("id")), str(room_id)[:64] if isinstance(room_id, str) else "?",
                             float(duration), d["timeline_sha256"], d["timeline_bytes"], d["archive_sha256"],
                             d["archive_bytes"], tuple(pieces))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def share_recording(store: RecordingStore, rid: str, put_blob: Callable[[bytes], str]) -> tuple[str, WatchManifest]:
    """Upload recording `rid` (its export archive, in pieces) and its watch manifest; returns the manifest's
    sha256 and the manifest. `put_blob(bytes) -> sha256` uploads one blob (blocking)."""
    timeline = store.timeline_path(rid)
    tmp = store.root / f".watch-share-{os.getpid()}-{rid}.tar"
    try:
        store.export(rid, tmp)
        size = tmp.stat().st_size
        if size > MAX_PIECES * PIECE_BYTES:
            raise RecordingError(f"recording {rid} is {size / 2**30:.1f} GiB; a shared replay carries at most "
                                 f"{MAX_PIECES * PIECE_BYTES / 2**30:.0f} GiB")
        pieces = []
        whole = hashlib.sha256()
        with open(tmp, "rb") as f:
            while piece := f.read(PIECE_BYTES):
                whole.update(piece)
                pieces.append(put_blob(piece))
        tl = store.open(rid)
        manifest = WatchManifest(rid, tl.room_id, tl.duration, file_sha256(timeline), timeline.stat().st_size,
                                 whole.hexdigest(), size, tuple(pieces))
        return put_blob(manifest.encode()), manifest
    finally:
        tmp.unlink(missing_ok=True)


def local_copy(store: RecordingStore, manifest: WatchManifest) -> str | None:
    """The id of a recording in `store` whose timeline is byte for byte the shared one, if any."""
    for rid in store.ids():
        if rid != manifest.id and not rid.startswith(manifest.id + "-"):
            continue
        path = store.root / rid / "timeline.drrec"
        try:
            if path.stat().st_size == manifest.timeline_bytes and file_sha256(path) == manifest.timeline_sha256:
                return rid
        except OSError:
            continue
    return None


def fetch_recording(store: RecordingStore, manifest_sha: str, get_blob: Callable[[str], bytes], *,
                    max_bytes: int = 4 << 30, progress: Callable[[int, int], None] | None = None) -> tuple[str, WatchManifest]:
    """The shared recording in `store`: a copy already there, else downloaded piece by piece (each checked by
    the relay client against its hash, the whole against the manifest) and imported. Returns its local id
    and the manifest. `get_blob(sha) -> bytes` fetches one blob (blocking)."""
    if not _is_sha(manifest_sha):
        raise RecordingError("the shared recording is not named by a sha256 id")
    manifest = WatchManifest.decode(get_blob(manifest_sha))
    have = local_copy(store, manifest)
    if have is not None:
        return have, manifest
    if manifest.archive_bytes > max_bytes:
        raise RecordingError(f"the shared recording is {manifest.archive_bytes / 2**20:.0f} MiB; "
                             f"this watcher takes at most {max_bytes / 2**20:.0f} MiB")
    store.root.mkdir(parents=True, exist_ok=True)
    tmp = store.root / f".watch-fetch-{os.getpid()}-{manifest_sha[:16]}.tar"
    try:
        whole = hashlib.sha256()
        got = 0
        with open(tmp, "wb") as f:
            for sha in manifest.pieces:
                piece = get_blob(sha)
                got += len(piece)
                if got > manifest.archive_bytes:
                    raise RecordingError(f"the shared recording's pieces hold more than the {manifest.archive_bytes} "
                                         "bytes its manifest names")
                whole.update(piece)
                f.write(piece)
                if progress is not None:
                    progress(got, manifest.archive_bytes)
        if got != manifest.archive_bytes or whole.hexdigest() != manifest.archive_sha256:
            raise RecordingError(f"the shared recording arrived damaged ({got} of {manifest.archive_bytes} bytes, "
                                 "or its hash is not the manifest's)")
        result = store.import_(tmp, manifest.id)
        path = store.root / result.id / "timeline.drrec"
        if file_sha256(path) != manifest.timeline_sha256:
            store.delete(result.id)
            raise RecordingError("the shared recording's timeline is not the one its manifest names; not kept")
        return result.id, manifest
    finally:
        tmp.unlink(missing_ok=True)
