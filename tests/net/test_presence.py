"""Pose and batch wire encodings: exact round trips and refusals of malformed bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deeproom.errors import ValidationError
from deeproom.presence import (
    HandPose,
    PointerRay,
    Pose,
    decode_batch,
    decode_pose,
    encode_batch,
    encode_pose,
    pose_size,
    split_batch,
)


def f32(x: float) -> float:
    return float(np.float32(x))


coord = st.floats(-100, 100, allow_nan=False, width=32)
vec3 = st.tuples(coord, coord, coord)
quat = st.tuples(coord, coord, coord, coord)
hands = st.none() | st.builds(HandPose, vec3, quat)
pointers = st.none() | st.builds(PointerRay, vec3, vec3)
poses = st.builds(
    Pose,
    head_position=vec3,
    head_rotation=quat,
    left=hands,
    right=hands,
    pointer=pointers,
    speaking=st.booleans(),
    seq=st.integers(0, 2**32 - 1),
    sent_at=st.floats(0, 2e9, allow_nan=False),
)


@given(poses)
def test_pose_round_trip_is_exact_for_float32_values(pose: Pose) -> None:
    data = encode_pose(pose)
    assert decode_pose(data) == pose
    flags = data[1]
    assert len(data) == pose_size(flags)


def test_desktop_pose_is_compact_and_vr_pose_carries_hands_and_pointer() -> None:
    desktop = Pose(head_position=(0.0, 1.5, 2.0), seq=7, sent_at=1.5)
    assert len(encode_pose(desktop)) == 42
    vr = Pose(
        left=HandPose((f32(0.1), 1.0, 0.0)),
        right=HandPose((0.5, 1.0, 0.0)),
        pointer=PointerRay((0.5, 1.0, 0.0), (0.0, 0.0, 1.0)),
        speaking=True,
    )
    back = decode_pose(encode_pose(vr))
    assert back.speaking and back.pointer == vr.pointer and back.left == vr.left
    assert len(encode_pose(vr)) == 42 + 28 + 28 + 24


def test_batch_round_trip_and_split() -> None:
    a = Pose(head_position=(1.0, 2.0, 3.0), seq=1, sent_at=10.0)
    b = Pose(head_position=(0.0, 1.5, 0.0), speaking=True, seq=2, sent_at=11.0)
    raw = {"alice": encode_pose(a), "bob-2": encode_pose(b)}
    batch = encode_batch(raw, 123.5)
    t, out = decode_batch(batch)
    assert t == 123.5 and out == {"alice": a, "bob-2": b}
    assert split_batch(batch) == raw


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x02" + bytes(41),  # unknown version
        b"\x01\x80" + bytes(40),  # unknown flag
        b"\x01\x02" + bytes(40),  # says it has a left hand, bytes missing
        encode_pose(Pose()) + b"x",  # trailing bytes
        struct.pack("<BBId7f", 1, 0, 0, 0.0, float("nan"), 0, 0, 1, 0, 0, 0),
        struct.pack("<BBId7f", 1, 0, 0, float("inf"), 0, 0, 0, 1, 0, 0, 0),
        struct.pack("<BBId7f", 1, 0, 0, 0.0, 1e30, 0, 0, 1, 0, 0, 0),
    ],
)
def test_malformed_poses_are_refused(data: bytes) -> None:
    with pytest.raises(ValidationError):
        decode_pose(data)


def test_encoding_refuses_non_finite() -> None:
    with pytest.raises(ValidationError):
        encode_pose(Pose(head_position=(float("nan"), 0.0, 0.0)))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoders(data: bytes) -> None:
    for fn in (decode_pose, decode_batch):
        try:
            fn(data)
        except ValidationError:
            pass


def test_truncated_batch_is_refused() -> None:
    batch = encode_batch({"a": encode_pose(Pose())}, 0.0)
    for cut in range(len(batch)):
        with pytest.raises(ValidationError):
            decode_batch(batch[:cut])
