"""Pure parts of the relay: the byte-bounded LRU, state vector decoding, the bounded JSON decoder."""

from __future__ import annotations

import json

import pytest

from deeproom.document import new_room
from deeproom.net.errors import ProtocolError
from deeproom.net.lru import ByteLRU
from deeproom.net.protocol import decode_state_vector
from deeproom.net.ratelimit import BucketsByKey
from deeproom.net.relay.wire import MAX_WIRE_DEPTH, BoundedJson, Unreadable


def test_byte_lru_evicts_least_recently_used_by_bytes() -> None:
    lru = ByteLRU(10, max_item_bytes=6)
    lru.put("a", b"aaaa")
    lru.put("b", b"bbbb")
    assert lru.get("a") == b"aaaa"  # a is now the most recent
    lru.put("c", b"cccc")  # 12 > 10: b goes
    assert "b" not in lru and lru.get("a") and lru.get("c") and lru.bytes == 8
    lru.put("big", b"x" * 7)  # over the item limit: not kept, nothing evicted
    assert "big" not in lru and len(lru) == 2
    lru.put("a", b"a")  # replacing counts the new size only
    assert lru.bytes == 5


def test_state_vectors_decode_to_clocks() -> None:
    doc = new_room("r", name="r", host_id="h", host_name="H")
    clocks = decode_state_vector(doc.state_vector())
    assert list(clocks) == [doc.client_id] and clocks[doc.client_id] > 0
    doc.apply({"op": "add_panel", "panel_id": "p", "kind": "note", "title": "t"}, "h")
    assert decode_state_vector(doc.state_vector())[doc.client_id] > clocks[doc.client_id]
    assert decode_state_vector(b"\x00") == {}
    for bad in (b"", b"\x05\x01", b"\xff" * 12):
        with pytest.raises(ProtocolError):
            decode_state_vector(bad)


def test_bounded_json_marks_what_it_will_not_read() -> None:
    assert BoundedJson.loads('["op",{"a":[1,2]}]') == ["op", {"a": [1, 2]}]
    flat = "[" + ",".join(["[]"] * 100) + "]"  # many brackets, shallow: read normally
    assert BoundedJson.loads(flat) == json.loads(flat)
    for text, reason in (
        ('["op",' + "[" * (MAX_WIRE_DEPTH + 1) + "]" * (MAX_WIRE_DEPTH + 1) + "]", "deeper"),
        ('["event",' + "[" * 100_000 + "]" * 100_000 + "]", "deeper"),
        ('["op",' + "9" * 5000 + "]", "not JSON"),
    ):
        name, marker = BoundedJson.loads(text)
        assert name in ("op", "event") and isinstance(marker, Unreadable) and reason in marker.reason


def test_buckets_by_key_are_separate_and_bounded() -> None:
    buckets = BucketsByKey(0.001, 2, max_keys=3)
    assert buckets.take("a") and buckets.take("a") and not buckets.take("a")
    assert buckets.take("b")  # another address has its own
    buckets.refund("a")
    assert buckets.take("a")
    for k in "cdefg":
        buckets.take(k, 0)  # untouched buckets (full) are forgotten when the table is full
    assert len(buckets) == 3  # a and b (spent) and the latest
