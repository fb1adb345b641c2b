"""Blobs through the relay: chunked uploads checked against their sha256, fetches in chunks.

An upload is announced (`blob_begin` with sha256 and size), sent in order in chunks and
stored whole or not at all. What one address may do is bounded: uploads in progress at
once, and bytes per hour (an announced size is charged at `blob_begin` and given back
if the upload is abandoned). Recently served blobs stay in memory in one byte-bounded
LRU (`deeproom.net.lru.ByteLRU`, the client's cache too). With a shared backend a
stored blob is also put where other nodes can fetch it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from deeproom.errors import NotFound, ValidationError
from deeproom.net import protocol as P
from deeproom.net.backend import RoomBackend
from deeproom.net.errors import RateLimited
from deeproom.net.lru import ByteLRU
from deeproom.net.ratelimit import BucketsByKey
from deeproom.net.relay.settings import RelaySettings
from deeproom.net.relay.state import Session
from deeproom.storage import BlobStore, check_blob_id

HOUR = 3600.0


class BlobService:
    """Uploads, fetches and the per-address upload quotas."""

    def __init__(self, settings: RelaySettings, backend: RoomBackend) -> None:
        self.settings = settings
        self.backend = backend
        self.store = BlobStore(
            settings.data_dir / "blobs", max_blob_bytes=settings.blob_max_bytes, max_total_bytes=settings.store_max_bytes
        )
        self.cache = ByteLRU(settings.blob_cache_bytes, settings.blob_cache_bytes // 4)
        rate, burst = settings.upload_bytes_per_address
        self._bytes = BucketsByKey(rate / HOUR, burst)
        self._uploading: Counter[str] = Counter()
        """Uploads in progress per address."""

    async def have(self, sha: str) -> bool:
        return self.store.has(sha) or (self.backend.shared and await self.backend.blob_shared(sha))

    def _drop(self, sess: Session, sha: str, *, refund: bool) -> None:
        up = sess.uploads.pop(sha, None)
        charged = sess.upload_bytes.pop(sha, 0)
        if up is None:
            return
        up.abort()
        self._uploading[sess.address] -= 1
        if self._uploading[sess.address] <= 0:
            del self._uploading[sess.address]
        if refund and charged:
            self._bytes.refund(sess.address, charged)

    def abandon_all(self, sess: Session) -> None:
        """The client left: its half-received blobs never reach the store (and cost it nothing)."""
        for sha in list(sess.uploads):
            self._drop(sess, sha, refund=True)

    async def begin(self, sess: Session, data: Any) -> dict[str, Any]:
        d = P.require_mapping(data, "blob_begin")
        sha = check_blob_id(d.get("sha"))
        size = P.require_int(d, "size", "blob size", 0, 1 << 40)
        if await self.have(sha):
            return {"ok": True, "have": True}
        self._drop(sess, sha, refund=True)  # announced again: start over
        if len(sess.uploads) >= P.MAX_UPLOADS_PER_CLIENT:
            raise RateLimited(f"at most {P.MAX_UPLOADS_PER_CLIENT} uploads at once per connection")
        limit = self.settings.uploads_per_address
        if self._uploading[sess.address] >= limit:
            raise RateLimited(f"at most {limit} blob uploads at once from one address; finish one first")
        self.store.check_room(size)  # per-blob and store caps, before anything is charged
        if not self._bytes.take(sess.address, size):
            per_hour = self.settings.upload_bytes_per_address[0]
            raise RateLimited(f"this address has uploaded its quota of blob bytes ({per_hour / 2**20:.0f} MiB per hour); wait")
        try:
            up = self.store.begin_upload(sha, size)
        except BaseException:
            self._bytes.refund(sess.address, size)
            raise
        sess.uploads[sha] = up
        sess.upload_bytes[sha] = size
        self._uploading[sess.address] += 1
        return {"ok": True, "have": False, "chunk": P.BLOB_CHUNK}

    async def chunk(self, sess: Session, data: Any) -> dict[str, Any]:
        d = P.require_mapping(data, "blob_chunk")
        sha = check_blob_id(d.get("sha"))
        up = sess.uploads.get(sha)
        if up is None:
            raise NotFound(f"no upload of blob {sha[:12]} in progress; send blob_begin first")
        offset = P.require_int(d, "offset", "chunk offset", 0, up.size)
        chunk = P.require_bytes(d, "data", "chunk", P.MAX_BLOB_CHUNK)
        assert chunk is not None
        if offset != up.received:
            raise ValidationError(f"blob {sha[:12]}: expected the chunk at offset {up.received}, got {offset}")
        try:
            # hashing and writing 256 KiB takes about a millisecond: off the event loop
            await asyncio.to_thread(up.write, chunk)
        except ValidationError:
            self._drop(sess, sha, refund=True)
            raise
        except (ValueError, AttributeError, OSError):
            if sess.uploads.get(sha) is not up:  # abandoned (its client left) while the chunk was written
                raise NotFound(f"the upload of blob {sha[:12]} was abandoned") from None
            raise
        return {"ok": True, "received": up.received}

    async def end(self, sess: Session, data: Any) -> dict[str, Any]:
        sha = check_blob_id(P.require_mapping(data, "blob_end").get("sha"))
        up = sess.uploads.get(sha)
        if up is None:
            raise NotFound(f"no upload of blob {sha[:12]} in progress")
        try:
            await asyncio.to_thread(up.commit)
        except BaseException:
            self._drop(sess, sha, refund=True)
            raise
        self._drop(sess, sha, refund=False)
        if self.backend.shared:
            await self.backend.share_blob(sha, await asyncio.to_thread(self.store.get, sha))
        return {"ok": True}

    async def blob_bytes(self, sha: str) -> bytes:
        cached = self.cache.get(sha)
        if cached is not None:
            return cached
        try:
            data = await asyncio.to_thread(self.store.get, sha)
        except NotFound:
            found = await self.backend.fetch_blob(sha) if self.backend.shared else None
            if found is None:
                raise
            data = found
            await asyncio.to_thread(self.store.put, data, sha)
        self.cache.put(sha, data)
        return data

    async def get(self, data: Any) -> dict[str, Any]:
        d = P.require_mapping(data, "blob_get")
        sha = check_blob_id(d.get("sha"))
        offset = P.require_int(d, "offset", "offset", 0, 1 << 40)
        length = P.require_int(d, "length", "length", 1, P.MAX_BLOB_CHUNK)
        cached = self.cache.get(sha)
        if cached is not None:
            return {"ok": True, "size": len(cached), "data": cached[offset : offset + length]}
        try:
            # Only the asked range is read (the file is hashed once, on its first range read).
            chunk, size = await asyncio.to_thread(self.store.read_range, sha, offset, length)
        except NotFound:
            if not self.backend.shared:
                raise
            blob = await self.blob_bytes(sha)  # another node's blob: copied to this node's disk once
            return {"ok": True, "size": len(blob), "data": blob[offset : offset + length]}
        if size <= self.cache.max_item_bytes and offset == 0:
            # a small blob: keep it whole in memory for the next readers
            blob = await self.blob_bytes(sha)
            return {"ok": True, "size": len(blob), "data": blob[offset : offset + length]}
        return {"ok": True, "size": size, "data": chunk}

    def close(self, sessions: Any) -> None:
        for sess in sessions:
            self.abandon_all(sess)
