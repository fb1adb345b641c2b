"""Voice segments: the Ogg Opus codec, and what a real relay on 127.0.0.1 takes and refuses.

The full path (real aiortc voices recorded, then replayed through the mixer) is in
tests/scenes/test_replay_voice.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from deeproom.errors import NotFound, PermissionDenied, ValidationError
from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.errors import RateLimited, TooLarge
from deeproom.net.recording import RecordingStore, hooks
from deeproom.net.recording.voice import MAX_SEGMENT_BYTES
from deeproom.net.voice import VoiceError, dominant_hz
from deeproom.net.voice.audio import SAMPLE_RATE
from deeproom.net.voice.segments import OggOpusWriter, decode_ogg_opus, encode_ogg_opus
from deeproom.recording import (
    VOICE,
    TimelineWriter,
    VoiceSegment,
    encode_voice_segment,
    read_timeline,
)

pytestmark = pytest.mark.timeout(120)


def tone(hz: float, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)).astype(np.float32)


def test_ogg_opus_round_trip_keeps_length_pitch_and_timing() -> None:
    x = np.zeros(SAMPLE_RATE, np.float32)
    x[24_000:] = tone(440.0, 0.5)  # silence, then the tone from exactly 0.5 s
    w = OggOpusWriter()
    for at in range(0, len(x), 700):  # any block size: the writer frames it
        w.write(x[at : at + 700])
    data = w.finish()
    assert data[:4] == b"OggS" and len(data) < 8000
    y = decode_ogg_opus(data)
    assert len(y) == SAMPLE_RATE
    onset = int(np.flatnonzero(np.abs(y) > 0.05)[0])
    assert abs(onset - 24_000) < 48  # within 1 ms: what is replayed lines up with when it was said
    assert abs(dominant_hz(y[30_000:]) - 440.0) < 440.0 * 0.015


def test_decoding_refuses_what_is_not_a_sane_ogg_opus_file() -> None:
    with pytest.raises(VoiceError, match="not an Ogg file"):
        decode_ogg_opus(b"RIFF....WAVE")
    good = encode_ogg_opus(tone(660.0, 1.0))
    with pytest.raises(VoiceError, match=r"more than 0\.5 s"):
        decode_ogg_opus(good, max_seconds=0.5)
    with pytest.raises(VoiceError):
        decode_ogg_opus(good[:60] + b"\xff" * 200)


def test_timeline_voice_records_round_trip_and_bad_ones_are_damage(tmp_path: Path) -> None:
    seg = VoiceSegment("p1", "ab" * 32, -0.25, 9.98, 40_000)
    w = TimelineWriter(tmp_path / "t.drrec", {"room_id": "r"})
    w.append(VOICE, 10.0, encode_voice_segment(seg))
    w.append(VOICE, 11.0, encode_voice_segment(VoiceSegment("p2", "not-a-sha", 1.0, 1.0, 10)))
    w.close()
    tl = read_timeline(tmp_path / "t.drrec")
    assert tl.voice == [seg]
    assert tl.damage is not None and "voice segment at 11.00 s is malformed" in tl.damage


async def test_the_relay_takes_a_speakers_own_segment_and_refuses_the_rest(tmp_path: Path) -> None:
    data = tmp_path / "relay"
    async with EmbeddedRelay(data_dir=data, leave_grace_s=0.5) as relay, \
            RoomClient(relay.url, room="r", name="Host") as host, \
            RoomClient(relay.url, room="r", name="Bo") as bo:
        ogg = await host.put_blob(encode_ogg_opus(tone(440.0, 1.0)))
        ok = {"sha": ogg, "duration_s": 1.0, "age_s": 1.2}
        with pytest.raises(NotFound, match="not being recorded"):
            await host.send_event("voice_segment", ok)
        await host.apply({"op": "set_recording", "recording": True})
        rec = hooks.recorder_of(relay.server.rooms["r"])
        assert rec is not None
        await asyncio.sleep(1.5)  # so a segment that began 1.2 s ago is inside the recording

        async def refused(payload: dict[str, object], error: type[Exception], match: str) -> None:
            with pytest.raises(error, match=match):
                await host.send_event("voice_segment", payload)

        await refused({**ok, "extra": 1}, ValidationError, "takes sha")
        await refused({**ok, "participant": bo.participant_id}, PermissionDenied, "own voice")
        await refused({**ok, "sha": "../../x"}, ValidationError, "sha256")
        await refused({**ok, "sha": "0" * 64}, NotFound, "upload it first")
        wav = await host.put_blob(b"RIFF" + bytes(100))
        await refused({**ok, "sha": wav}, ValidationError, "not an Ogg file")
        big = await host.put_blob(b"OggS" + bytes(MAX_SEGMENT_BYTES))
        await refused({**ok, "sha": big}, TooLarge, "at most")
        await refused({**ok, "duration_s": 0}, ValidationError, "above 0")
        await refused({**ok, "duration_s": 60.0}, ValidationError, "duration_s must be in")
        await refused({**ok, "duration_s": "1"}, ValidationError, "finite number")
        await refused({**ok, "duration_s": True}, ValidationError, "finite number")
        await refused({**ok, "age_s": 0.1}, ValidationError, "age_s must be in")  # not over yet
        await refused({**ok, "age_s": 1000.0}, ValidationError, "age_s must be in")

        before = rec.now()
        await host.send_event("voice_segment", {**ok, "participant": host.participant_id})
        after = rec.now()
        [seg] = rec.voice[host.participant_id]
        assert before - 1.2 - 0.01 <= seg.start <= after - 1.2 + 0.01 and seg.bytes > 0
        await refused({**ok, "age_s": 1.0}, ValidationError, "overlaps")

        # at most one a second per speaker (bursts of five), even for segments that do not overlap
        short = {"sha": ogg, "duration_s": 0.05}
        sent, limited = 0, False
        for i in range(8):
            try:
                await host.send_event("voice_segment", {**short, "age_s": 0.6 - 0.06 * i})
                sent += 1
            except RateLimited:
                limited = True
                break
        assert limited and sent == 4  # the first segment took one token of the burst

        # Bo's own segment is Bo's
        await bo.send_event("voice_segment", {**ok, "sha": ogg})
        assert [s.participant for s in rec.voice[bo.participant_id]] == [bo.participant_id]

        # after the stop, a segment begun before it is still taken (the speaker's last one); a later one is not
        await host.apply({"op": "set_recording", "recording": False})
        assert hooks.recorder_of(relay.server.rooms["r"]) is None
        await bo.send_event("voice_segment", {"sha": ogg, "duration_s": 0.5, "age_s": 0.6})
        later = await host.put_blob(encode_ogg_opus(tone(660.0, 0.5)))
        await asyncio.sleep(0.3)
        with pytest.raises(NotFound, match="stopped recording"):
            await bo.send_event("voice_segment", {"sha": later, "duration_s": 0.1, "age_s": 0.1})
        rid = rec.id
    tl = RecordingStore(data / "recordings").open(rid)
    assert tl.ended == "stopped by the host" and tl.damage is None
    assert len(tl.voice) == 1 + 4 + 2


def test_a_summon_chapter_names_its_panel_or_its_place() -> None:
    from deeproom.net.recording.recorder import summon_title

    assert summon_title({"panel_id": "p1"}) == "summon to p1"
    assert summon_title({"position": [1, 1.6, -2.04], "yaw": 90}) == "summon to (1.0, 1.6, -2.0)"
    assert summon_title({"position": ["x", 1, 2]}) == "summon"
