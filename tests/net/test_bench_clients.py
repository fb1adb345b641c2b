"""The bench's raw-websocket participants: their wire encoding matches the protocol, and against a
real relay they join, are sent batches past the flow-control allowance, and probes count poses."""

from __future__ import annotations

import asyncio
import time

import pytest

from deeproom.net import EmbeddedRelay
from deeproom.net.bench_clients import (
    ProbeTally,
    bench_key,
    binary_head,
    connect,
    encode_pose_at,
    parse_frames,
    participant_address,
    pose_message,
    probe_ids,
    ws_frame,
)
from deeproom.presence import Pose, decode_pose, encode_batch, encode_pose


def server_frame(opcode: int, payload: bytes) -> bytes:
    """A relay-to-client frame, built by hand from RFC 6455 §5.2 (unmasked)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def test_pose_template_is_the_protocols_head_only_pose() -> None:
    raw = encode_pose_at(7, 1234.5)
    assert raw == encode_pose(Pose(seq=7, sent_at=1234.5))
    assert decode_pose(raw) == decode_pose(encode_pose(Pose(seq=7, sent_at=1234.5)))
    assert encode_pose_at(2**32 + 3, 1.0) == encode_pose(Pose(seq=3, sent_at=1.0))  # seq wraps


def test_client_frames_are_masked_with_zero_key_and_carry_the_payload() -> None:
    for n in (0, 125, 126, 65535, 65536):
        payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
        frame = ws_frame(2, payload)
        assert frame[0] == 0x82 and frame[1] & 0x80  # FIN + binary; masked
        head = 2 if n < 126 else 4 if n < 65536 else 10
        assert frame[head : head + 4] == b"\0\0\0\0" and frame[head + 4 :] == payload


def test_pose_message_is_a_binary_event_with_batches_read() -> None:
    msg = pose_message(b"P" * 42, 17)
    assert msg == ws_frame(1, b'451-["pose",{"_placeholder":true,"num":0},17]') + ws_frame(
        2, b"P" * 42
    )
    assert ws_frame(1, b'451-["pose",{"_placeholder":true,"num":0}]') in pose_message(b"x", None)


def test_frames_are_parsed_whole_and_partial_ones_wait() -> None:
    stream = b"".join(
        server_frame(op, p) for op, p in ((1, b"2"), (2, b"\1" * 126), (2, b"\2" * 70000), (1, b""))
    )
    for cut in (1, 2, 3, 130, len(stream) - 1, len(stream)):
        buf, out = bytearray(stream[:cut]), list[tuple[int, bytes]]()
        used = parse_frames(buf, out)
        del buf[:used]
        buf += stream[cut:]
        used2 = parse_frames(buf, out)
        assert used2 == len(buf)
        assert [(op, len(p)) for op, p in out] == [(1, 1), (2, 126), (2, 70000), (1, 0)]
    with pytest.raises(ValueError, match="masked"):
        parse_frames(bytearray(b"\x81\x81\0\0\0\0x"), [])


def test_binary_heads_name_their_event_and_attachments() -> None:
    assert binary_head(b'451-["poses",{"_placeholder":true,"num":0}]') == ("poses", 1)
    assert binary_head(
        b'452-["update",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
    ) == ("update", 2)


def test_probes_are_spread_over_the_join_order() -> None:
    assert probe_ids(3) == {"c000", "c001", "c002"}
    assert probe_ids(300, 4) == {"c000", "c075", "c150", "c225"}
    assert len({participant_address(i) for i in range(300)}) == 300


def test_probe_tally_counts_new_poses_once_and_skips_its_own() -> None:
    tally = ProbeTally(t0=100.0, t1=200.0, n_total=3)
    batch = encode_batch({f"c{i:03d}": encode_pose_at(5, 150.0) for i in range(3)}, 150.0)
    tally.batch(0, batch, now=150.02)
    tally.batch(0, batch, now=150.05)  # a keyframe repeating the same seqs: nothing new
    assert tally.delivered == 2
    assert [round(float(a), 3) for a in tally.latencies[0]] == [0.02, 0.02]
    other = encode_batch(
        {
            "c001": encode_pose(Pose(seq=6, sent_at=150.0, speaking=True)),
            "h000": encode_pose_at(1, 1.0),
        },
        150.0,
    )  # not the bench's 47-byte entries: decoded the long way
    tally.batch(0, other, now=150.1)
    assert tally.delivered == 3


@pytest.mark.slow
async def test_participants_join_a_real_relay_and_keep_receiving_batches(
    relay: EmbeddedRelay,
) -> None:
    parts = [await connect(relay.url, i, f"c{i:03d}", "relay", probe=i == 0) for i in range(3)]
    try:
        for p in parts:
            ack = await p.join(
                {"room": "bench", "name": p.pid, "participant_id": p.pid, "key": bench_key(p.pid)},
                30,
            )
            assert ack["ok"] and ack["participant_id"] == p.pid
        now = time.time()
        parts[0].tally = ProbeTally(now, now + 60, 3)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            for p in parts:
                p.send_pose(time.time(), True)
            await asyncio.sleep(1 / 30)
        await asyncio.sleep(0.2)
        # more batches than the relay sends a client that never confirms (7): batches_read is confirmed
        assert all(p.batches_read > 12 for p in parts), [p.batches_read for p in parts]
        assert not any(p.closed or p.errors for p in parts)
        assert parts[0].tally.delivered >= 2 * 20  # both others' poses, most of them
        assert len(parts[1].record) == 2 * parts[1].batches_read
    finally:
        for p in parts:
            p.close()
