"""Content blobs round-trip and refuse malformed or hostile input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from deeproom.content import decode_content, encode_content
from deeproom.errors import ValidationError


def test_round_trip_keeps_dtypes_and_shapes() -> None:
    arrays = {
        "matrix": np.arange(9, dtype=np.int32).reshape(3, 3),
        "cam": np.linspace(0, 1, 12, dtype=np.float16).reshape(3, 4),
        "thumbs": np.zeros((2, 4, 4, 3), np.uint8),
        "empty": np.zeros((0, 3), np.float32),
    }
    meta, out = decode_content(encode_content({"kind": "grad_cam", "labels": ["a", "b"]}, arrays))
    assert meta == {"kind": "grad_cam", "labels": ["a", "b"]}
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and np.array_equal(out[k], v)


def test_refuses_object_arrays_and_nan_meta() -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        encode_content({}, {"x": np.array([object()])})
    with pytest.raises(ValidationError, match="plain JSON"):
        encode_content({"x": float("nan")})


def _blob(header: dict, body: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return b"DRB1" + struct.pack("<I", len(h)) + h + body


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "bad magic"),
        (b"PK\x03\x04" + b"\x00" * 20, "bad magic"),
        (b"DRB1" + struct.pack("<I", 10**9), "does not fit"),
        (b"DRB1" + struct.pack("<I", 3) + b"{{{", "not JSON"),
        (_blob({"meta": [], "arrays": []}), "must hold"),
        (_blob({"meta": {}, "arrays": [{"name": "x", "dtype": "object", "shape": [1], "offset": 0, "nbytes": 8}]}), "not allowed"),
        (_blob({"meta": {}, "arrays": [{"name": "x", "dtype": "uint8", "shape": [10**6], "offset": 0, "nbytes": 10**6}]}, b"\x00" * 10), "does not match"),
        (_blob({"meta": {}, "arrays": [{"name": "x", "dtype": "uint8", "shape": [-1], "offset": 0, "nbytes": 1}]}, b"\x00"), "bad shape"),
        (_blob({"meta": {}, "arrays": [{"name": "x"}]}), "need name, dtype"),
    ],
)
def test_malformed_blobs_are_refused(blob: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        decode_content(blob)
