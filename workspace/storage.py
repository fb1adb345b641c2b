"""Where rooms are kept when no server is running: SQLite plus a blob folder.

- `Store` (SQLite, WAL, synchronous=FULL): rooms, each room's CRDT update log (with
  compaction), and named layout snapshots with history. Every write is one
  transaction, so a process killed mid-write loses nothing that was already saved.
- `BlobStore`: content-addressed files named by the sha256 of their bytes, written
  to a temporary file, flushed and renamed into place, so a blob is either whole or
  absent. Sizes are capped per blob and in total.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from deeproom.document import RoomChange, RoomDocument, Subscription
from deeproom.errors import LayoutFileError, NotFound, StorageError, ValidationError
from deeproom.layout import Layout, loads_layout
from deeproom.state import MAX_NAME, brief, check_id, check_text

SCHEMA_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS room_updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    data BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS room_updates_room ON room_updates(room_id, seq);
CREATE TABLE IF NOT EXISTS layouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created REAL NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (room_id, name, version)
);
"""


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """A stored room, as listed."""

    id: str
    created: float
    updated: float
    updates: int
    """Entries in its update log (1 after compaction)."""


@dataclass(frozen=True, slots=True)
class LayoutInfo:
    """One saved version of a named layout."""

    room_id: str
    name: str
    version: int
    created: float
    panels: int


class Store:
    """The embedded SQLite store. Thread-safe; use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path} is not a DeepRoom store (or is damaged): {exc}") from None
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} was written by a newer DeepRoom (store schema {row[0]}; this one reads up to {SCHEMA_VERSION})"
            )

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise StorageError("the store is closed")
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._db is None:
                raise StorageError("the store is closed")
            return self._db.execute(sql, args).fetchall()

    # --- rooms and their update logs -------------------------------------------------

    def has_room(self, room_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM rooms WHERE id=?", (room_id,)))

    def rooms(self) -> list[RoomInfo]:
        rows = self._query(
            "SELECT r.id, r.created, r.updated, COUNT(u.seq) FROM rooms r "
            "LEFT JOIN room_updates u ON u.room_id = r.id GROUP BY r.id ORDER BY r.id"
        )
        return [RoomInfo(*row) for row in rows]

    def append_update(self, room_id: str, update: bytes) -> int:
        """Add one CRDT update to a room's log (creating the room). Returns its sequence number.

        When this returns, the update is on disk.
        """
        check_id(room_id, "room id")
        with self._tx() as db:
            return self._append_in(db, room_id, update, time.time())

    @staticmethod
    def _append_in(db: sqlite3.Connection, room_id: str, update: bytes, now: float) -> int:
        """Append within an open transaction (for stores that write more in the same one)."""
        db.execute(
            "INSERT INTO rooms (id, created, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET updated=excluded.updated",
            (room_id, now, now),
        )
        cur = db.execute(
            "INSERT INTO room_updates (room_id, data, created) VALUES (?, ?, ?)", (room_id, bytes(update), now)
        )
        return int(cur.lastrowid or 0)

    def save_room(self, doc: RoomDocument) -> None:
        """Store a room's whole state as one update (for a room not yet stored, or a snapshot)."""
        self.append_update(doc.room_id, doc.update_since(None))

    def load_room(self, room_id: str) -> RoomDocument:
        """The room rebuilt from its update log."""
        rows = self._query("SELECT data FROM room_updates WHERE room_id=? ORDER BY seq", (room_id,))
        if not rows and not self.has_room(room_id):
            known = ", ".join(r.id for r in self.rooms()) or "none"
            raise NotFound(f"no room {room_id!r} in {self.path} (rooms: {known})")
        doc = RoomDocument(room_id)
        for (data,) in rows:
            doc.apply_update(bytes(data))
        return doc

    def track(self, doc: RoomDocument) -> Subscription:
        """Persist every later change of `doc` to its update log (drop the subscription to stop)."""
        if not self.has_room(doc.room_id):
            self.save_room(doc)

        def persist(change: RoomChange) -> None:
            self.append_update(doc.room_id, change.update)

        return doc.observe(persist)

    def compact(self, room_id: str) -> int:
        """Replace a room's update log by one merged update. Returns how many entries were merged."""
        doc = self.load_room(room_id)
        merged = doc.update_since(None)
        with self._tx() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM room_updates WHERE room_id=?", (room_id,)).fetchone()
            last = db.execute("SELECT MAX(seq) FROM room_updates WHERE room_id=?", (room_id,)).fetchone()[0]
            # Only what was read is replaced: an update appended meanwhile stays after it.
            db.execute("DELETE FROM room_updates WHERE room_id=? AND seq<=?", (room_id, last or 0))
            db.execute(
                "INSERT INTO room_updates (room_id, data, created) VALUES (?, ?, ?)", (room_id, merged, time.time())
            )
        return int(count)

    def delete_room(self, room_id: str) -> None:
        if not self.has_room(room_id):
            raise NotFound(f"no room {room_id!r}")
        with self._tx() as db:
            db.execute("DELETE FROM room_updates WHERE room_id=?", (room_id,))
            db.execute("DELETE FROM rooms WHERE id=?", (room_id,))

    # --- named layouts with history --------------------------------------------------

    def save_layout(self, room_id: str, name: str, layout: Layout) -> LayoutInfo:
        """Save `layout` as the next version of `name` for `room_id`."""
        check_id(room_id, "room id")
        check_text(name, "layout name", MAX_NAME)
        try:
            data = json.dumps(layout.to_dict(), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise LayoutFileError(f"layout {name!r} cannot be saved: {str(exc)[:200]}") from None
        # Read it back as `load_layout` will: the store never holds a layout that fails to load
        # (a lone surrogate, say, saves as JSON but is refused on reading).
        loads_layout(data, source=f"layout {name!r}")
        now = time.time()
        with self._tx() as db:
            (latest,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM layouts WHERE room_id=? AND name=?", (room_id, name)
            ).fetchone()
            version = int(latest) + 1
            db.execute(
                "INSERT INTO layouts (room_id, name, version, created, data) VALUES (?, ?, ?, ?, ?)",
                (room_id, name, version, now, data),
            )
        return LayoutInfo(room_id, name, version, now, len(layout.panels))

    def list_layouts(self, room_id: str | None = None) -> list[LayoutInfo]:
        sql = "SELECT room_id, name, version, created, data FROM layouts"
        args: tuple[Any, ...] = ()
        if room_id is not None:
            sql += " WHERE room_id=?"
            args = (room_id,)
        rows = self._query(sql + " ORDER BY room_id, name, version", args)
        return [LayoutInfo(r[0], r[1], r[2], r[3], _panel_count(r[4])) for r in rows]

    def load_layout(self, room_id: str, name: str, version: int | None = None) -> Layout:
        """The latest (or the given) version of a named layout."""
        if version is None:
            rows = self._query(
                "SELECT data FROM layouts WHERE room_id=? AND name=? ORDER BY version DESC LIMIT 1", (room_id, name)
            )
        else:
            rows = self._query(
                "SELECT data FROM layouts WHERE room_id=? AND name=? AND version=?", (room_id, name, version)
            )
        if not rows:
            which = f"version {version} of " if version is not None else ""
            names = sorted({i.name for i in self.list_layouts(room_id)})
            raise NotFound(
                f"no {which}layout {name!r} for room {room_id!r} (saved: {', '.join(names) or 'none'})"
            )
        return loads_layout(rows[0][0], source=f"saved layout {name!r} of room {room_id!r}")

    def delete_layout(self, room_id: str, name: str, version: int | None = None) -> int:
        """Delete one version, or every version when `version` is None. Returns how many went."""
        with self._tx() as db:
            if version is None:
                cur = db.execute("DELETE FROM layouts WHERE room_id=? AND name=?", (room_id, name))
            else:
                cur = db.execute(
                    "DELETE FROM layouts WHERE room_id=? AND name=? AND version=?", (room_id, name, version)
                )
            if cur.rowcount == 0:
                raise NotFound(f"no layout {name!r}{f' version {version}' if version else ''} for room {room_id!r}")
            return int(cur.rowcount)


def _panel_count(data: str) -> int:
    """Panels in a stored layout, for listing (-1 for a row this DeepRoom cannot read)."""
    try:
        return len(loads_layout(data).panels)
    except ValidationError:
        return -1


# --- content-addressed blobs ------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_blob_id(blob_id: Any) -> str:
    if not isinstance(blob_id, str) or not _SHA256.fullmatch(blob_id):
        raise ValidationError(f"a blob id is 64 lowercase hex digits (sha256); got {brief(blob_id, 80)}")
    return blob_id


class BlobTooLarge(ValidationError):
    """A blob over the per-blob cap, or a store over its total cap."""


class BlobStore:
    """Blobs on disk, named by the sha256 of their bytes.

    Uploads in progress stream into locked temporary files (`.tmp-*`) beside the blobs and
    reserve their announced size, so the total cap counts them before they land. A
    temporary file that nobody holds locked (its writer was killed) is removed when a
    store opens the folder; temporary files never count as blobs.
    """

    def __init__(self, root: str | os.PathLike[str], *, max_blob_bytes: int = 64 << 20, max_total_bytes: int = 4 << 30) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_blob_bytes = max_blob_bytes
        self.max_total_bytes = max_total_bytes
        self._lock = threading.Lock()
        self._total: int | None = None
        self._reserved = 0
        self._verified: dict[str, tuple[int, int, int]] = {}
        """Blobs whose whole file `read_range` hashed, with the (size, mtime, inode) it had then."""
        self.removed_temporaries = self._remove_stale_temporaries()
        """How many orphaned temporary files opening the store removed."""

    def _path(self, blob_id: str) -> Path:
        check_blob_id(blob_id)
        return self.root / blob_id[:2] / blob_id[2:]

    def _remove_stale_temporaries(self) -> int:
        removed = 0
        for tmp in [*self.root.glob(".tmp-*"), *self.root.glob("??/.tmp-*")]:
            try:
                fd = os.open(tmp, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer (another store on this folder) holds it
            finally:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
        return removed

    def has(self, blob_id: str) -> bool:
        return self._path(blob_id).is_file()

    def size(self, blob_id: str) -> int:
        try:
            return self._path(blob_id).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no blob {blob_id}") from None

    def total_bytes(self) -> int:
        """Bytes of the blobs stored (not counting uploads in progress: `reserved_bytes`)."""
        with self._lock:
            if self._total is None:
                self._total = sum(p.stat().st_size for p in self._blob_files())
            return self._total

    def reserved_bytes(self) -> int:
        """Bytes announced by uploads in progress (begun, neither committed nor aborted)."""
        with self._lock:
            return self._reserved

    def _blob_files(self) -> Iterator[Path]:
        for p in self.root.glob("??/*"):
            if len(p.name) == 62 and _SHA256.fullmatch(p.parent.name + p.name) and p.is_file():
                yield p

    def check_room(self, size: int) -> None:
        """Raise BlobTooLarge if a blob of `size` bytes would not be accepted now."""
        if size > self.max_blob_bytes:
            raise BlobTooLarge(f"blob of {size} bytes is over the cap of {self.max_blob_bytes} bytes")
        used = self.total_bytes() + self.reserved_bytes()
        if used + size > self.max_total_bytes:
            raise BlobTooLarge(
                f"the blob store is full ({self.total_bytes()} bytes stored and {self.reserved_bytes()} "
                f"reserved by uploads in progress, of {self.max_total_bytes} bytes)"
            )

    def put(self, data: bytes, expected_id: str | None = None) -> str:
        """Store `data`; returns its sha256 id. Storing the same bytes twice stores them once."""
        blob_id = sha256_hex(data)
        if expected_id is not None and check_blob_id(expected_id) != blob_id:
            raise ValidationError(f"blob content does not match its id: expected {expected_id}, got {blob_id}")
        if self.has(blob_id):
            return blob_id
        self.check_room(len(data))
        self._write_atomically(self._path(blob_id), data)
        with self._lock:
            if self._total is not None:
                self._total += len(data)
        return blob_id

    def get(self, blob_id: str) -> bytes:
        """The blob's bytes, checked against its id (a damaged file is removed and reported)."""
        path = self._path(blob_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no blob {blob_id}") from None
        if sha256_hex(data) != blob_id:
            path.unlink(missing_ok=True)
            with self._lock:
                self._total = None
            raise StorageError(f"blob {blob_id} was damaged on disk and has been removed; fetch it again")
        return data

    def read_range(self, blob_id: str, offset: int, length: int) -> tuple[bytes, int]:
        """Up to `length` bytes of a blob from `offset` (fewer at its end), and the blob's size.

        Reads only that range from disk. The file is checked against its id once per store
        object: the first range read of a blob hashes the whole file (streamed, not loaded
        into memory) and remembers its size, modification time and inode; later reads hash
        again only if those changed. A damaged file is removed and reported, as by `get`.
        """
        for value, what in ((offset, "offset"), (length, "length")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValidationError(f"blob range {what} must be a whole number >= 0; got {brief(value, 40)}")
        path = self._path(blob_id)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"no blob {blob_id}") from None
        with f:
            st = os.fstat(f.fileno())
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
            with self._lock:
                verified = self._verified.get(blob_id) == stamp
            if not verified:
                digest = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                if digest.hexdigest() != blob_id:
                    path.unlink(missing_ok=True)
                    with self._lock:
                        self._total = None
                        self._verified.pop(blob_id, None)
                    raise StorageError(f"blob {blob_id} was damaged on disk and has been removed; fetch it again")
                with self._lock:
                    self._verified[blob_id] = stamp
                    while len(self._verified) > 65536:
                        self._verified.pop(next(iter(self._verified)))
            f.seek(offset)
            return f.read(length), st.st_size

    def delete(self, blob_id: str) -> None:
        path = self._path(blob_id)
        path.unlink(missing_ok=True)
        with self._lock:
            self._total = None

    def ids(self) -> list[str]:
        return sorted(p.parent.name + p.name for p in self._blob_files())

    def begin_upload(self, blob_id: str, size: int) -> BlobUpload:
        """Start a chunked upload of a blob whose id and size are announced first.

        The size is reserved against the store's total cap until the upload is committed
        or aborted; chunks go to a temporary file, never to memory.
        """
        check_blob_id(blob_id)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValidationError(f"blob size must be a whole number of bytes; got {brief(size, 40)}")
        with self._lock:
            total = self._total
        if total is None:
            self.total_bytes()
        with self._lock:  # check and reserve at once, so two uploads cannot both take the last room
            if size > self.max_blob_bytes:
                raise BlobTooLarge(f"blob of {size} bytes is over the cap of {self.max_blob_bytes} bytes")
            assert self._total is not None
            if self._total + self._reserved + size > self.max_total_bytes:
                raise BlobTooLarge(
                    f"the blob store is full ({self._total} bytes stored and {self._reserved} reserved by "
                    f"uploads in progress, of {self.max_total_bytes} bytes)"
                )
            self._reserved += size
        try:
            fd, tmp = _locked_temporary(self.root)
        except BaseException:
            self._release(size)
            raise
        return BlobUpload(self, blob_id, size, fd, Path(tmp))

    def _release(self, size: int) -> None:
        with self._lock:
            self._reserved = max(0, self._reserved - size)

    def _land(self, tmp: Path, blob_id: str, size: int) -> None:
        """Move a checked, synced temporary file into place as blob `blob_id`."""
        path = self._path(blob_id)
        if path.is_file():
            tmp.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        with self._lock:
            if self._total is not None:
                self._total += size

    @staticmethod
    def _write_atomically(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _locked_temporary(path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                os.replace(tmp, path)  # while still locked, so no opening store takes it for an orphan
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)


def _locked_temporary(folder: Path) -> tuple[int, str]:
    """A new `.tmp-*` file in `folder`, open for writing and locked (flock) while it lives."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return fd, tmp


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class BlobUpload:
    """A blob arriving in chunks; nothing is visible in the store until `commit()` checks it.

    Chunks are hashed as they arrive and written to a locked temporary file in the store's
    folder: an upload holds no more than one chunk in memory. `commit` checks size and
    hash, syncs and renames into place; `abort` removes the file. Either releases the
    size the upload reserved in its store. An upload dropped without either is aborted
    when it is garbage-collected.
    """

    def __init__(self, store: BlobStore, blob_id: str, size: int, fd: int, tmp: Path) -> None:
        self.store = store
        self.blob_id = blob_id
        self.size = size
        self.received = 0
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._tmp = tmp
        self._finalizer = weakref.finalize(self, _discard, store, self._file, tmp, size)

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise ValidationError(f"blob {self.blob_id[:12]}: the upload is already committed or aborted")
        if self.received + len(chunk) > self.size:
            raise ValidationError(f"blob {self.blob_id[:12]}: more bytes than the announced {self.size}")
        self._hash.update(chunk)
        self._file.write(chunk)
        self.received += len(chunk)

    @property
    def complete(self) -> bool:
        return self.received == self.size

    def commit(self) -> str:
        """Check size and hash, then make the blob visible. A mismatch aborts the upload."""
        if self._file is None:
            raise ValidationError(f"blob {self.blob_id[:12]}: the upload is already committed or aborted")
        if not self.complete:
            raise ValidationError(f"blob {self.blob_id[:12]}: got {self.received} of {self.size} bytes")
        if self._hash.hexdigest() != self.blob_id:
            self.abort()
            raise ValidationError(f"blob content does not match its id {self.blob_id}")
        fh, self._file = self._file, None
        try:
            fh.flush()
            os.fsync(fh.fileno())
            self.store._land(self._tmp, self.blob_id, self.size)  # renamed while still locked
        except BaseException:
            fh.close()
            self._tmp.unlink(missing_ok=True)
            raise
        finally:
            self._finalizer.detach()
            self.store._release(self.size)
        fh.close()
        return self.blob_id

    def abort(self) -> None:
        """Drop what arrived (safe to call twice, and after commit)."""
        if self._file is None:
            return
        self._file = None
        self._finalizer()


def _discard(store: BlobStore, fh: BinaryIO, tmp: Path, size: int) -> None:
    with contextlib.suppress(OSError):
        fh.close()
    tmp.unlink(missing_ok=True)
    store._release(size)
