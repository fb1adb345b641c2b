"""The relay's presence shortcuts agree with the full decoders: `check_pose` accepts exactly what
`decode_pose` accepts, and `split_remote_batch` gives back the poses `encode_batch` was given."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deeproom.errors import ValidationError
from deeproom.net.relay.presence import check_pose, split_remote_batch
from deeproom.presence import HandPose, PointerRay, Pose, decode_pose, encode_batch, encode_pose

coord = st.floats(-1e4, 1e4, allow_nan=False, width=32)
vec3 = st.tuples(coord, coord, coord)
quat = st.tuples(coord, coord, coord, coord)
poses = st.builds(
    Pose,
    head_position=vec3,
    head_rotation=quat,
    left=st.none() | st.builds(HandPose, vec3, quat),
    right=st.none() | st.builds(HandPose, vec3, quat),
    pointer=st.none() | st.builds(PointerRay, vec3, vec3),
    speaking=st.booleans(),
    seq=st.integers(0, 2**32 - 1),
    sent_at=st.floats(0, 2e9, allow_nan=False),
)


def accepted(check: object, raw: bytes) -> bool:
    try:
        check(raw)  # type: ignore[operator]
    except ValidationError:
        return False
    return True


@given(poses)
def test_check_pose_accepts_every_encoded_pose(pose: Pose) -> None:
    check_pose(encode_pose(pose))


@given(poses, st.data())
def test_check_pose_refuses_exactly_what_decode_pose_refuses(
    pose: Pose, data: st.DataObject
) -> None:
    raw = bytearray(encode_pose(pose))
    # damage it: a byte changed, bytes cut or added, or a float made NaN, infinite or too far
    how = data.draw(st.sampled_from(["byte", "cut", "extra", "float"]))
    if how == "byte":
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif how == "cut":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    elif how == "extra":
        raw += bytes(data.draw(st.integers(1, 30)))
    else:
        at = 14 + 4 * data.draw(st.integers(0, (len(raw) - 14) // 4 - 1))
        struct.pack_into(
            "<f",
            raw,
            at,
            data.draw(st.sampled_from([math.nan, math.inf, -math.inf, 1.0e4 + 2, -2e5])),
        )
    assert accepted(check_pose, bytes(raw)) == accepted(decode_pose, bytes(raw))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "at least 42 bytes"),
        (struct.pack("<BBId7f", 2, 0, 1, 1.0, 0, 0, 0, 1, 0, 0, 0), "version 2"),
        (struct.pack("<BBId7f", 1, 0x10, 1, 1.0, 0, 0, 0, 1, 0, 0, 0), "unknown flags"),
        (struct.pack("<BBId7f", 1, 0, 1, math.inf, 0, 0, 0, 1, 0, 0, 0), "time must be finite"),
        (struct.pack("<BBId7f", 1, 0, 1, 1.0, 0, math.nan, 0, 1, 0, 0, 0), "finite"),
        (struct.pack("<BBId7f", 1, 0, 1, 1.0, 0, 0, 0, 1, 0, 0, 0) + b"x", "trailing"),
    ],
)
def test_check_pose_says_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_pose(raw)


@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True), poses, max_size=20))
def test_split_remote_batch_gives_back_the_encoded_poses(batch: dict[str, Pose]) -> None:
    raw = {pid: encode_pose(p) for pid, p in batch.items()}
    assert split_remote_batch(encode_batch(raw, 12.5)) == raw


def test_split_remote_batch_refuses_what_does_not_parse() -> None:
    batch = encode_batch({"a": encode_pose(Pose()), "b": encode_pose(Pose(speaking=True))}, 1.0)
    for bad in (batch[:-1], batch + b"\0", b"\x02" + batch[1:]):
        with pytest.raises(ValueError):
            split_remote_batch(bad)
