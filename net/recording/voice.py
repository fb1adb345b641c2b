"""Voice segments arriving at the relay: checked, then written into the room's recording.

A speaker's client uploads each ~10 s Ogg Opus segment of its own voice as a blob and
sends a `voice_segment` event (`deeproom.net.voice.segments`). Every client may be
hostile, so before the recorder writes anything the relay checks:

- the room is being recorded, or stopped less than `VOICE_GRACE_S` ago and the segment
  began before the stop (a speaker's last, partial segment; else `NotFound`);
- the payload is exactly `{sha, duration_s, age_s}` plus, optionally, `participant`,
  which must be the sender (nobody records a voice as someone else's);
- `sha` is a sha256 id of a blob this relay holds, of at most `MAX_SEGMENT_BYTES`,
  that starts like an Ogg file (whether it decodes is the replay's business: a damaged
  one is reported and skipped there);
- `duration_s` in (0, `MAX_SEGMENT_S`], `age_s` (seconds since its first sample was
  captured, on the sender's clock) in [duration_s - `AGE_SLACK_S`, `MAX_AGE_S`]: the segment has
  ended and is recent;
- rate: at most `SEGMENTS_PER_S` segments a second per speaker (bursts of
  `SEGMENT_BURST`), a speaker's segments do not overlap (more than `OVERLAP_S`), so
  nobody adds more audio than time passed, and at most `MAX_SEGMENTS` per recording.

The segment's place on the recording's clock is the recorder's now minus `age_s`: the
time the event took to arrive (milliseconds) is the only error, and no clocks need to
agree.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

from deeproom.errors import NotFound, PermissionDenied, ValidationError
from deeproom.net.errors import RateLimited, TooLarge
from deeproom.net.ratelimit import TokenBucket
from deeproom.net.recording import hooks
from deeproom.net.recording.recorder import RoomRecorder, draining_recorder
from deeproom.net.relay.settings import RelaySettings
from deeproom.net.relay.state import LiveRoom, Session
from deeproom.recording import VoiceSegment
from deeproom.storage import check_blob_id

MAX_SEGMENT_BYTES = 512 * 1024
"""Ten seconds of Opus at 32 kb/s is ~40 KB; this leaves room for any bitrate Opus allows."""
MAX_SEGMENT_S = 12.0
MAX_AGE_S = 120.0
"""A segment announced later than this after it began is refused (it would land in the past)."""
AGE_SLACK_S = 0.25
"""A segment is announced after it ended: its age is at least its length, less this much (clock steps)."""
SEGMENTS_PER_S = 1.0
SEGMENT_BURST = 5.0
OVERLAP_S = 0.5
MAX_SEGMENTS = 200_000
"""Per recording: 30 speakers talking for 18 hours in 10 s segments."""
_KEYS = frozenset({"sha", "duration_s", "age_s", "participant"})

_buckets: weakref.WeakKeyDictionary[RoomRecorder, dict[str, TokenBucket]] = weakref.WeakKeyDictionary()


def _number(payload: dict[str, Any], key: str, lo: float, hi: float) -> float:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"voice_segment {key} must be a finite number; got {str(value)[:40]!r}")
    if not lo <= value <= hi:
        raise ValidationError(f"voice_segment {key} must be in [{lo:g}, {hi:g}]; got {value:g}")
    return float(value)


async def take_segment(settings: RelaySettings, sess: Session, room: LiveRoom, payload: dict[str, Any]) -> dict[str, Any]:
    """Check a `voice_segment` event and write it into the room's recording; returns the ack."""
    pid = sess.participant_id
    assert pid is not None
    rec = hooks.recorder_of(room) or draining_recorder(settings.data_dir / "recordings", room.id)
    if rec is None:
        forwarded = await hooks.forward_voice_segment(room, pid, payload)  # another relay node records the room
        if forwarded is not None:
            return forwarded
    return await take_segment_as(settings, pid, room, payload)


async def take_segment_as(settings: RelaySettings, pid: str, room: LiveRoom, payload: dict[str, Any]) -> dict[str, Any]:
    """`take_segment` for participant `pid` (on a multi-node relay, connected to this node or another)."""
    rec = hooks.recorder_of(room) or draining_recorder(settings.data_dir / "recordings", room.id)
    if rec is None or not rec.active:
        raise NotFound(f"room {room.id!r} is not being recorded; voice segments are kept only while it is")
    extra = set(payload) - _KEYS
    if extra:
        raise ValidationError(f"voice_segment takes sha, duration_s, age_s and participant; got {', '.join(sorted(extra))[:120]}")
    who = payload.get("participant", pid)
    if who != pid:
        raise PermissionDenied(f"a voice segment is the sender's own voice; {pid!r} cannot send one for {str(who)[:40]!r}")
    sha = check_blob_id(payload.get("sha"))
    duration = _number(payload, "duration_s", 0.0, MAX_SEGMENT_S)
    if duration <= 0:
        raise ValidationError("voice_segment duration_s must be above 0")
    age = _number(payload, "age_s", max(0.0, duration - AGE_SLACK_S), MAX_AGE_S)
    src = settings.data_dir / "blobs" / sha[:2] / sha[2:]
    try:
        size = src.stat().st_size
        with open(src, "rb") as fh:
            head = fh.read(4)
    except OSError:
        raise NotFound(f"voice segment blob {sha[:12]} is not on this relay; upload it first (blob_begin)") from None
    if size > MAX_SEGMENT_BYTES:
        raise TooLarge(f"a voice segment is at most {MAX_SEGMENT_BYTES} bytes; blob {sha[:12]} has {size}")
    if head != b"OggS":
        raise ValidationError(f"blob {sha[:12]} is not an Ogg file; a voice segment is Opus in Ogg")
    if rec.voice_count >= MAX_SEGMENTS:
        raise RateLimited(f"this recording holds its most voice segments ({MAX_SEGMENTS})")
    start = rec.now() - age
    mine = rec.voice.get(pid)
    if mine and start < mine[-1].end - OVERLAP_S:
        raise ValidationError(f"voice segment at {start:.2f} s overlaps {pid}'s previous one (ends {mine[-1].end:.2f} s)")
    buckets = _buckets.setdefault(rec, {})
    bucket = buckets.get(pid)
    if bucket is None:
        bucket = buckets[pid] = TokenBucket(SEGMENTS_PER_S, SEGMENT_BURST)
    if not bucket.take():
        raise RateLimited(f"too many voice segments: at most {SEGMENTS_PER_S:g} a second per speaker")
    segment = VoiceSegment(pid, sha, round(start, 4), duration, size)
    if not rec.voice_segment(segment):
        raise NotFound(f"room {room.id!r} stopped recording; the voice segment is not kept")
    return {"ok": True, "start": segment.start}
