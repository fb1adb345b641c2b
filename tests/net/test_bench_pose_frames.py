"""The bench's two pose forms: the compact pose on the wire, and `--pose-frames 1 2` comparing
them in one invocation against a real relay (figures are not asserted, only that each form was
the one the relay received)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from deeproom.net.bench_clients import compact_pose_message, encode_pose_at, ws_frame
from deeproom.presence import decode_pose


def test_compact_pose_message_is_one_binary_frame_with_marker_count_and_pose() -> None:
    pose = encode_pose_at(7, 1234.5)
    msg = compact_pose_message(pose, 300)
    assert msg == ws_frame(2, b"\xc1" + struct.pack("<I", 300) + pose)
    assert decode_pose(msg[6 + 5 :]).seq == 7  # frame head (2) + zero mask (4), then marker + count
    assert compact_pose_message(pose, 2**32 + 5)[6:11] == b"\xc1" + struct.pack(
        "<I", 5
    )  # the count wraps


@pytest.mark.slow
def test_bench_relay_compares_both_pose_forms_in_one_invocation() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deeproom.cli",
            "bench",
            "relay",
            "--clients",
            "4",
            "--seconds",
            "1.5",
            "--procs",
            "1",
            "--no-baseline",
            "--pose-frames",
            "1",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pose_frames"] == 1 and result["us_per_batch_pose_frames_1"] > 0
    assert result["us_per_batch_pose_frames_2"] > 0 and result["us_per_batch_1_vs_2"] > 0
    (one,), (two,) = result["pose_frames_runs"]["1"], result["pose_frames_runs"]["2"]
    assert one["compact_poses_in_per_s"] > 4 * 20  # 4 clients at ~30/s, all compact
    assert two["compact_poses_in_per_s"] == 0  # all `pose` events
    assert one["delivered_ratio"] > 0.9 and two["delivered_ratio"] > 0.9
