"""`BlobStore.read_range` and `blob_get` of big blobs: only the asked range is read (issue 12).

The relay's memory cache holds blobs up to a quarter of its size (16 MiB); a bigger blob was
read and hashed whole from disk for every 256 KiB chunk a client fetched.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from deeproom.errors import NotFound, StorageError, ValidationError
from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.storage import BlobStore


def test_read_range_reads_the_range_and_checks_the_file_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(3 * 1024 * 1024 + 17)
    sha = store.put(data)
    assert store.read_range(sha, 0, 10) == (data[:10], len(data))
    assert store.read_range(sha, 1024 * 1024, 256 * 1024) == (data[1024 * 1024 : 1280 * 1024], len(data))
    assert store.read_range(sha, len(data) - 5, 100) == (data[-5:], len(data))  # short at the end
    assert store.read_range(sha, len(data) + 10, 100) == (b"", len(data))
    with pytest.raises(NotFound):
        store.read_range("0" * 64, 0, 1)
    with pytest.raises(ValidationError):
        store.read_range("../../etc/passwd", 0, 1)
    with pytest.raises(ValidationError):
        store.read_range(sha, -1, 1)

    path = tmp_path / "blobs" / sha[:2] / sha[2:]
    st = path.stat()
    # Checked once: a change that keeps size, modification time and inode is not seen (trusted) ...
    with path.open("r+b") as f:
        f.seek(100)
        f.write(bytes([data[100] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.read_range(sha, 100, 1) == (bytes([data[100] ^ 0xFF]), len(data))
    # ... a new store object (a relay restart) hashes it again, finds the damage, removes the file
    fresh = BlobStore(tmp_path / "blobs")
    with pytest.raises(StorageError, match="damaged"):
        fresh.read_range(sha, 0, 1)
    assert not path.exists()


def test_read_range_notices_a_file_changed_since_it_was_checked(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = os.urandom(100_000)
    sha = store.put(data)
    assert store.read_range(sha, 0, 4)[0] == data[:4]
    path = tmp_path / "blobs" / sha[:2] / sha[2:]
    path.write_bytes(data[:-1] + b"\x00" if data[-1] else data[:-1] + b"\x01")  # another size/mtime
    with pytest.raises(StorageError, match="damaged"):
        store.read_range(sha, 0, 4)


async def test_a_blob_over_the_relay_cache_is_served_by_ranges(tmp_path: Path) -> None:
    data = os.urandom(20 * 1024 * 1024 + 3)  # over the relay's 16 MiB largest cached blob
    async with (
        EmbeddedRelay(data_dir=tmp_path / "relay") as relay,
        RoomClient(relay.url, room="big", name="Host") as host,
        RoomClient(relay.url, room="big", name="Guest") as guest,
    ):
        sha = await host.put_blob(data)
        assert sha == hashlib.sha256(data).hexdigest()
        got = await guest.get_blob(sha)
        assert got == data
        assert sha not in relay.server.blob_service.cache  # not held in memory
        assert sha in relay.server.blobs._verified  # hashed once, when its first range was read
