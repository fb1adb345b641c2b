"""The page's binary formats checked against the Python implementation, in the browser:
content blobs (every dtype, and thousands of damaged blobs), pose batches both ways,
seq wrap-around, voice signal parsing, and invite links. One Chromium for the module."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from deeproom.content import decode_content as py_decode
from deeproom.content import encode_content
from deeproom.errors import DeepRoomError
from deeproom.net.voice.errors import SignalError
from deeproom.net.voice.signalling import VoiceSignal
from deeproom.presence import HandPose, PointerRay, Pose, decode_pose, encode_batch, encode_pose

from .conftest import Browsers, page_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DECODE = """
const b64 = arguments[0];
try { return {ok: window.deeproomWire.decodeContent(b64)}; }
catch (e) { return {error: e.name, message: e.message}; }
"""
DECODE_MANY = """
const out = [];
for (const b64 of arguments[0]) {
  try { out.push({ok: window.deeproomWire.decodeContent(b64)}); }
  catch (e) { out.push({error: e.name, message: e.message}); }
}
return out;
"""


@pytest.fixture
async def page(relay: Any, browsers: Browsers) -> AsyncIterator[Any]:
    d = await browsers.open(page_url(relay.url, "wire"))
    yield d


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_every_dtype_decodes_as_python_does(page: Any, browsers: Browsers) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "u8": rng.integers(0, 255, (3, 4), dtype=np.uint8),
        "i8": rng.integers(-128, 127, (5,), dtype=np.int8),
        "i16": rng.integers(-30000, 30000, (2, 3, 2), dtype=np.int16),
        "i32": rng.integers(-(2**31), 2**31 - 1, (7,), dtype=np.int32),
        "i64": np.array([-(2**40), 0, 2**52], dtype=np.int64),
        "f16": np.array([0.0, -1.5, 65504.0, 6e-8, 0.333], dtype=np.float16),
        "f32": rng.normal(size=(4, 2)).astype(np.float32),
        "b": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
    }
    blob = encode_content({"kind": "image", "text": "Grüße ✓", "nested": {"a": [1, 2.5, None]}}, arrays)
    got = (await browsers.js(page, DECODE, b64(blob)))["ok"]
    meta, want = py_decode(blob)
    assert got["meta"] == meta
    for name, a in want.items():
        g = got["arrays"][name]
        assert g["dtype"] == a.dtype.name and g["shape"] == list(a.shape), name
        np.testing.assert_array_equal(np.array(g["data"], dtype=np.float64), a.astype(np.float64).ravel(), err_msg=name)


async def test_damaged_blobs_are_refused_with_a_reason_never_misread(page: Any, browsers: Browsers) -> None:
    good = encode_content({"kind": "confusion_matrix", "labels": ["a", "b"]},
                          {"matrix": np.array([[3, 1], [0, 4]], np.int32), "f": np.arange(6, dtype=np.float16)})
    rng = np.random.default_rng(7)
    damaged = [good[:n] for n in range(0, len(good), 3)]
    for _ in range(600):
        b = bytearray(good)
        for i in rng.integers(0, len(b), rng.integers(1, 4)):
            b[i] = int(rng.integers(0, 256))
        damaged.append(bytes(b))
    header = {"meta": {}, "arrays": [{"name": "x", "dtype": "float32", "shape": [2**40], "offset": 0, "nbytes": 2**42}]}
    import json

    h = json.dumps(header).encode()
    damaged += [b"DRB1" + struct.pack("<I", len(h)) + h,  # announces 4 TiB
                b"DRB1" + struct.pack("<I", 2**31) + b"{}",  # header longer than the blob
                b"DRB1" + struct.pack("<I", 2) + b"[]", b"DRB1" + struct.pack("<I", 4) + b"null"]
    results = await browsers.js(page, DECODE_MANY, [b64(x) for x in damaged])
    accepted = 0
    for blob, r in zip(damaged, results, strict=True):
        assert "ok" in r or r["error"] == "WireError", (r, blob[:40])
        try:
            meta, arrays = py_decode(blob)
        except DeepRoomError:
            continue  # Python refuses; the page may draw less strictly-checked meta, never misread arrays
        accepted += 1
        assert "ok" in r, f"Python reads it but the page refused: {r}"
        assert r["ok"]["meta"] == meta
        for name, a in arrays.items():
            np.testing.assert_array_equal(np.array(r["ok"]["arrays"][name]["data"], np.float64),
                                          a.astype(np.float64).ravel())
    assert accepted > 10  # some damage (in array bytes) leaves a readable blob


async def test_pose_batches_both_ways(page: Any, browsers: Browsers) -> None:
    poses = {
        "alice": encode_pose(Pose(head_position=(1.0, 1.5, -2.0), head_rotation=(0.5, 0.5, 0.5, 0.5), seq=7, sent_at=1.5e9,
                                  speaking=True, pointer=PointerRay((0.1, 1.2, 0.3), (0.0, 0.0, 1.0)))),
        "bö": encode_pose(Pose(seq=2**32 - 1, left=HandPose((0.2, 1.0, 0.3)), right=HandPose((-0.2, 1.0, 0.3)))),
    }
    batch = encode_batch(poses, 1234.5)
    got = await browsers.js(page, "return window.deeproomWire.decodeBatch(arguments[0])", b64(batch))
    assert got["serverTime"] == 1234.5
    (pa, a), (pb, b) = got["poses"]
    assert pa == "alice" and a["seq"] == 7 and a["speaking"] and a["head"][:3] == [1.0, 1.5, -2.0]
    assert a["pointer"][2] == pytest.approx(0.3) and a["left"] is None
    assert pb == "bö" and b["seq"] == 2**32 - 1 and b["left"][0] == pytest.approx(0.2) and b["pointer"] is None
    for cut in (batch[:-1], batch[:11] + b"\xff", b"\x02" + batch[1:]):
        err = await browsers.js(page, "try { window.deeproomWire.decodeBatch(arguments[0]); return null } "
                                      "catch (e) { return e.name }", b64(cut))
        assert err == "WireError"
    # the page's pose, read by Python
    raw = await browsers.js(page, "return window.deeproomWire.encodePose({seq: 42, head: [1, 2, 3, 1, 0, 0, 0], "
                                  "pointer: [0, 1, 0, 0, 0, 1], speaking: true}, 99.25)")
    p = decode_pose(base64.b64decode(raw))
    assert p.seq == 42 and p.sent_at == 99.25 and p.speaking and p.head_position == (1.0, 2.0, 3.0)
    assert p.pointer is not None and p.pointer.direction == (0.0, 0.0, 1.0)
    # seq wrap-around
    assert await browsers.js(page, "return [window.deeproomWire.seqNewer(0, 4294967295), window.deeproomWire.seqNewer(5, 5),"
                                   " window.deeproomWire.seqNewer(4, 5), window.deeproomWire.seqNewer(1, undefined)]") \
        == [True, False, False, True]


async def test_voice_signals_and_links_parse_as_python_does(page: Any, browsers: Browsers) -> None:
    cases: list[Any] = [
        {"voice": "offer", "link": 3, "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"},
        {"voice": "hello", "link": 0}, {"voice": "bye", "link": 9}, {"voice": "ask", "link": 0},
        {"voice": "offer", "link": 3}, {"voice": "answer", "link": 1, "sdp": "hello"}, {"voice": "hello", "link": -1},
        {"voice": "hello", "link": True}, {"voice": "shout", "link": 1}, {"voice": "bye", "link": 1, "sdp": "v=0"},
        {"voice": "offer", "link": 1, "sdp": "v=0" + "x" * 70000}, "nope", None, {"voice": "hello", "link": 1.5},
    ]
    got = await browsers.js(page, "return arguments[0].map((c) => window.deeproomWire.parseSignal(c) !== null)", cases)
    for case, ok in zip(cases, got, strict=True):
        try:
            VoiceSignal.from_dict(case)
            want = True
        except SignalError:
            want = False
        assert ok == want, case
    links = await browsers.js(page, "return arguments[0].map((l) => window.deeproomWire.pageLink(l))",
                              ["deeproom://h:8765/room1?invite=abc.def", "http://h:1/r/x", "deeproom://h/bad room", "ftp://h/x"])
    assert links == ["/r/room1?invite=abc.def", "/r/x", None, None]
