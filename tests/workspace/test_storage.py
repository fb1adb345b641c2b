"""The embedded store: rooms and their update logs, layouts with history, blobs, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deeproom.demo_room import build_demo_room
from deeproom.errors import NotFound, StorageError, ValidationError
from deeproom.layout import layout_of
from deeproom.storage import BlobStore, BlobTooLarge, Store, sha256_hex


def test_room_round_trip_through_update_log(tmp_path: Path) -> None:
    doc = build_demo_room("r1")
    with Store(tmp_path / "db.sqlite3") as store:
        sub = store.track(doc)
        doc.apply({"op": "move_panel", "panel_id": "metrics", "transform": {"position": [0, 2, 0]}}, "demo-host")
        doc.apply({"op": "remove_panel", "panel_id": "note"}, "demo-host")
        sub.unsubscribe()
        doc.apply({"op": "remove_panel", "panel_id": "image"}, "demo-host")  # not tracked any more
    with Store(tmp_path / "db.sqlite3") as store:
        again = store.load_room("r1").snapshot()
        assert again.panels["metrics"].transform.position == (0.0, 2.0, 0.0)
        assert "note" not in again.panels and "image" in again.panels
        assert [r.updates for r in store.rooms()] == [3]
        assert store.compact("r1") == 3
        assert [r.updates for r in store.rooms()] == [1]
        assert store.load_room("r1").snapshot() == again
        with pytest.raises(NotFound, match="no room 'nope'"):
            store.load_room("nope")


def test_layouts_keep_history(tmp_path: Path) -> None:
    doc = build_demo_room("r1")
    with Store(tmp_path / "db.sqlite3") as store:
        v1 = store.save_layout("r1", "review", layout_of(doc.snapshot()))
        doc.apply({"op": "remove_panel", "panel_id": "note"}, "demo-host")
        v2 = store.save_layout("r1", "review", layout_of(doc.snapshot()))
        assert (v1.version, v2.version) == (1, 2)
        assert len(store.load_layout("r1", "review").panels) == 9
        assert len(store.load_layout("r1", "review", 1).panels) == 10
        assert [(i.name, i.version) for i in store.list_layouts("r1")] == [("review", 1), ("review", 2)]
        assert store.delete_layout("r1", "review", 1) == 1
        with pytest.raises(NotFound, match="version 1"):
            store.load_layout("r1", "review", 1)
        assert store.delete_layout("r1", "review") == 1
        with pytest.raises(NotFound):
            store.delete_layout("r1", "review")


def test_not_a_store_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(StorageError, match="not a DeepRoom store"):
        Store(bad)


def test_blob_store_dedupes_caps_and_checks(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs", max_blob_bytes=1000, max_total_bytes=2500)
    a = blobs.put(b"x" * 900)
    assert blobs.put(b"x" * 900) == a == sha256_hex(b"x" * 900)
    assert blobs.total_bytes() == 900
    assert blobs.get(a) == b"x" * 900
    with pytest.raises(BlobTooLarge, match="over the cap of 1000"):
        blobs.put(b"y" * 1001)
    blobs.put(b"y" * 1000)
    with pytest.raises(BlobTooLarge, match="full"):
        blobs.put(b"z" * 700)
    with pytest.raises(ValidationError, match="does not match"):
        blobs.put(b"q", expected_id="0" * 64)
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        blobs.get("../../etc/passwd")
    # A file damaged on disk is detected, removed, and reported.
    path = tmp_path / "blobs" / a[:2] / a[2:]
    path.write_bytes(b"x" * 899 + b"!")
    with pytest.raises(StorageError, match="damaged"):
        blobs.get(a)
    assert not blobs.has(a)


def test_chunked_upload_is_invisible_until_complete(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = os.urandom(10_000)
    up = blobs.begin_upload(sha256_hex(data), len(data))
    up.write(data[:4000])
    assert not blobs.has(up.blob_id)
    with pytest.raises(ValidationError, match="got 4000 of 10000"):
        up.commit()
    up.write(data[4000:])
    assert up.commit() == sha256_hex(data) and blobs.get(up.blob_id) == data
    liar = blobs.begin_upload("1" * 64, 3)
    liar.write(b"abc")
    with pytest.raises(ValidationError, match="does not match"):
        liar.commit()
    assert not blobs.has("1" * 64)


WRITER = textwrap.dedent(
    """
    import sys, os
    from deeproom.storage import Store, BlobStore
    from deeproom.demo_room import build_demo_room
    store = Store(sys.argv[1]); blobs = BlobStore(sys.argv[2])
    doc = build_demo_room("crash")
    store.track(doc)
    i = 0
    while True:
        doc.apply({"op": "move_panel", "panel_id": "metrics", "transform": {"position": [i, 1, 1]}}, "demo-host")
        blobs.put(os.urandom(200_000) + i.to_bytes(8, "little"))
        print(i, flush=True)   # printed only after both writes returned: they are saved
        i += 1
    """
)


def test_a_write_killed_midway_loses_nothing_saved(tmp_path: Path) -> None:
    db, blob_dir = tmp_path / "db.sqlite3", tmp_path / "blobs"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(blob_dir)], stdout=subprocess.PIPE, text=True)
    acked = -1
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while acked < 30 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
        time.sleep(0.05)  # let it get somewhere into the next write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert acked >= 30
    with Store(db) as store:
        x = store.load_room("crash").snapshot().panels["metrics"].transform.position[0]
    assert x >= acked  # every acknowledged move is there (and maybe the one in flight)
    blobs = BlobStore(blob_dir)
    ids = blobs.ids()
    assert len(ids) >= acked + 1
    for blob_id in ids:
        blobs.get(blob_id)  # every blob present is whole (get checks its hash)
