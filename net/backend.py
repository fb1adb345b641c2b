"""Where the relay keeps rooms: the SQLite store (one node) or Redis (several nodes).

Both keep, per room, the CRDT update log, the ids of operations already applied (so a
client replaying an operation after a lost ack never applies it twice; an id belongs to
its sender, see `op_key`) and the
room's relay-side record (`RoomMeta`: password hash, remembered roles, participant
keys, who was kicked). An update and the id of the operation that produced it are
written in one transaction, so after a crash either both are there or neither.

`SqliteBackend` extends the core's `Store` with two tables in the same file, so
`deeproom room list/show` see what the relay saved. `RedisBackend` keeps the same
things in Redis (lists, sets, strings; MULTI/EXEC transactions) so every node reads
one source of truth, and tells other nodes about new updates over Redis pub/sub.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deeproom.errors import NotFound, StorageError
from deeproom.layout import Layout, dumps_layout, loads_layout
from deeproom.net.auth import load_or_create_secret
from deeproom.storage import LayoutInfo, Store


@dataclass(slots=True)
class RoomMeta:
    """What the relay keeps about a room besides its document."""

    password: dict[str, Any] | None = None
    """scrypt record of the room password (None: no password)."""
    roles: dict[str, str] = field(default_factory=dict)
    """Role each participant had when they last left, restored when they rejoin."""
    keys: dict[str, str] = field(default_factory=dict)
    """sha256 of the key each participant id was first claimed with."""
    kicked: list[str] = field(default_factory=list)
    """Participants the host removed; refused on rejoin."""

    def to_json(self) -> str:
        return json.dumps(
            {"password": self.password, "roles": self.roles, "keys": self.keys, "kicked": self.kicked},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> RoomMeta:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(data.get("password"), dict(data.get("roles", {})), dict(data.get("keys", {})),
                   list(data.get("kicked", [])))


UpdateListener = Callable[[str, bytes], Awaitable[None]]
"""Called with (room id, update) for each update another node wrote."""
MessageListener = Callable[[str, bytes], Awaitable[None]]
"""Called with (channel, data) for each message another node published on a channel."""


def op_key(participant_id: str, op_id: str) -> str:
    """Where an operation id is remembered: per sender, so one participant's ids never
    shadow another's (participant ids cannot contain "/")."""
    return f"{participant_id}/{op_id}"


class RoomBackend(Protocol):
    """What the relay needs from where rooms are kept. The relay reaches Redis only through this."""

    shared: bool
    """True when other relay nodes share these rooms (updates, poses and blobs cross nodes)."""

    async def start(self, on_update: UpdateListener, on_message: MessageListener, channels: tuple[str, ...]) -> None: ...
    async def load(self, room_id: str) -> tuple[list[bytes], RoomMeta] | None: ...
    async def create(self, room_id: str, update: bytes, meta: RoomMeta) -> bool: ...
    async def append(self, room_id: str, update: bytes, op_key: str | None) -> None:
        """Append `update` and remember `op_key` (from `op_key()`), in one transaction."""
    async def op_applied(self, room_id: str, op_key: str) -> bool: ...
    async def save_meta(self, room_id: str, meta: RoomMeta) -> None: ...
    async def secret(self) -> bytes: ...
    async def compact(self, room_id: str) -> None: ...
    async def connections(self, room_id: str, participant_id: str, delta: int) -> int: ...
    async def log_length(self, room_id: str) -> int: ...
    async def log_range(self, room_id: str, start: int) -> list[bytes]: ...
    async def publish(self, channel: str, data: bytes) -> None: ...
    async def blob_shared(self, sha: str) -> bool:
        """Whether another node put this blob where this one can fetch it."""
    async def share_blob(self, sha: str, data: bytes) -> None: ...
    async def fetch_blob(self, sha: str) -> bytes | None: ...
    async def hold_recorder(self, room_id: str, holder: str, ttl_s: float) -> str | None:
        """Take the room's recorder lease for `holder` (or extend it when `holder` has it) for `ttl_s`;
        returns who holds it now (None: no lease is kept, one node records its rooms)."""
    async def drop_recorder(self, room_id: str, holder: str) -> None:
        """Give the room's recorder lease up, if `holder` has it."""
    async def save_layout(self, room_id: str, name: str, layout: Layout) -> LayoutInfo:
        """Save `layout` as the next version of the room's layout `name`."""
    async def list_layouts(self, room_id: str) -> list[LayoutInfo]:
        """Every saved version of the room's layouts, by name then version."""
    async def count_layouts(self, room_id: str) -> int:
        """How many layout versions the room holds (all names)."""
    async def load_layout(self, room_id: str, name: str, version: int | None) -> tuple[Layout, int]:
        """A saved layout (the latest version when `version` is None) and its version; NotFound if none."""
    async def close(self) -> None: ...


_RELAY_SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_ops (
    room_id TEXT NOT NULL,
    op_id TEXT NOT NULL,  -- op_key(): "<participant>/<op id>", so ids are scoped to their sender
    created REAL NOT NULL,
    PRIMARY KEY (room_id, op_id)
);
CREATE TABLE IF NOT EXISTS relay_rooms (room_id TEXT PRIMARY KEY, meta TEXT NOT NULL);
"""

_CREATE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""

_HOLD_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return cur
"""
"""A lease: taken when free, extended by its holder, read by everyone else (one step)."""

_DROP_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SAVE_LAYOUT_SCRIPT = """
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local field = v .. '\\n' .. ARGV[1]
redis.call('HSET', KEYS[2], field, ARGV[2])
redis.call('HSET', KEYS[3], field, ARGV[3])
return v
"""
"""Next version of a named layout, its text and its index entry, in one step (nodes may save at once)."""

OP_ID_KEEP_S = 30 * 86400
"""Operation ids older than this are forgotten (a client offline longer replays into a fresh check)."""


class RelayStore(Store):
    """The core's Store plus the relay's op-id and room-record tables, in the same file."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        with self._tx() as db:
            for stmt in _RELAY_SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute("DELETE FROM relay_ops WHERE created < ?", (time.time() - OP_ID_KEEP_S,))

    def append_with_op(self, room_id: str, update: bytes, op_id: str | None) -> None:
        """Append `update` and remember `op_id`, atomically."""
        now = time.time()
        with self._tx() as db:
            self._append_in(db, room_id, update, now)
            if op_id is not None:
                db.execute("INSERT OR IGNORE INTO relay_ops VALUES (?, ?, ?)", (room_id, op_id, now))

    def create_room(self, room_id: str, update: bytes, meta: RoomMeta) -> bool:
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM rooms WHERE id=?", (room_id,)).fetchone():
                return False
            db.execute("INSERT INTO rooms (id, created, updated) VALUES (?, ?, ?)", (room_id, now, now))
            db.execute("INSERT INTO room_updates (room_id, data, created) VALUES (?, ?, ?)", (room_id, update, now))
            db.execute("INSERT OR REPLACE INTO relay_rooms VALUES (?, ?)", (room_id, meta.to_json()))
            return True

    def load_log(self, room_id: str) -> tuple[list[bytes], RoomMeta] | None:
        if not self.has_room(room_id):
            return None
        rows = self._query("SELECT data FROM room_updates WHERE room_id=? ORDER BY seq", (room_id,))
        meta = self._query("SELECT meta FROM relay_rooms WHERE room_id=?", (room_id,))
        return [bytes(r[0]) for r in rows], RoomMeta.from_json(meta[0][0] if meta else None)

    def op_applied(self, room_id: str, op_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM relay_ops WHERE room_id=? AND op_id=?", (room_id, op_id)))

    def log_length(self, room_id: str) -> int:
        return int(self._query("SELECT COUNT(*) FROM room_updates WHERE room_id=?", (room_id,))[0][0])

    def log_range(self, room_id: str, start: int) -> list[bytes]:
        rows = self._query("SELECT data FROM room_updates WHERE room_id=? ORDER BY seq LIMIT -1 OFFSET ?", (room_id, start))
        return [bytes(r[0]) for r in rows]

    def list_room_layouts(self, room_id: str) -> list[LayoutInfo]:
        """`Store.list_layouts` for one room, counting panels in SQL (no layout is parsed in Python,
        so a room with many saved versions does not hold up the writes queued behind it)."""
        rows = self._query(
            "SELECT name, version, created, CASE WHEN json_valid(data) THEN json_array_length(data, '$.panels') "
            "ELSE -1 END FROM layouts WHERE room_id=? ORDER BY name, version", (room_id,))
        return [LayoutInfo(room_id, r[0], int(r[1]), float(r[2]), -1 if r[3] is None else int(r[3])) for r in rows]

    def count_layouts(self, room_id: str) -> int:
        return int(self._query("SELECT COUNT(*) FROM layouts WHERE room_id=?", (room_id,))[0][0])

    def save_meta(self, room_id: str, meta: RoomMeta) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO relay_rooms VALUES (?, ?)", (room_id, meta.to_json()))


class SqliteBackend:
    """One relay node, rooms in the core's SQLite store. Writes run on one worker thread."""

    shared = False

    def __init__(self, db_path: Path, secret_path: Path) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite")
        self._store = RelayStore(db_path)
        self._secret_path = secret_path
        self._online: dict[tuple[str, str], int] = {}
        self._closed = False

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise StorageError("the relay's store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def start(self, on_update: UpdateListener, on_message: MessageListener, channels: tuple[str, ...]) -> None:
        return None  # one node: nobody else writes or publishes

    async def load(self, room_id: str) -> tuple[list[bytes], RoomMeta] | None:
        result: tuple[list[bytes], RoomMeta] | None = await self._run(self._store.load_log, room_id)
        return result

    async def log_length(self, room_id: str) -> int:
        return int(await self._run(self._store.log_length, room_id))

    async def log_range(self, room_id: str, start: int) -> list[bytes]:
        result: list[bytes] = await self._run(self._store.log_range, room_id, start)
        return result

    async def publish(self, channel: str, data: bytes) -> None:
        return None

    async def blob_shared(self, sha: str) -> bool:
        return False

    async def share_blob(self, sha: str, data: bytes) -> None:
        return None

    async def fetch_blob(self, sha: str) -> bytes | None:
        return None

    async def hold_recorder(self, room_id: str, holder: str, ttl_s: float) -> str | None:
        return None

    async def drop_recorder(self, room_id: str, holder: str) -> None:
        return None

    async def save_layout(self, room_id: str, name: str, layout: Layout) -> LayoutInfo:
        info: LayoutInfo = await self._run(self._store.save_layout, room_id, name, layout)
        return info

    async def list_layouts(self, room_id: str) -> list[LayoutInfo]:
        infos: list[LayoutInfo] = await self._run(self._store.list_room_layouts, room_id)
        return infos

    async def count_layouts(self, room_id: str) -> int:
        return int(await self._run(self._store.count_layouts, room_id))

    async def load_layout(self, room_id: str, name: str, version: int | None) -> tuple[Layout, int]:
        def load() -> tuple[Layout, int]:
            if version is not None:
                return self._store.load_layout(room_id, name, version), version
            latest = max((i.version for i in self._store.list_room_layouts(room_id) if i.name == name), default=None)
            return self._store.load_layout(room_id, name, latest), latest or 0

        found: tuple[Layout, int] = await self._run(load)
        return found

    async def create(self, room_id: str, update: bytes, meta: RoomMeta) -> bool:
        return bool(await self._run(self._store.create_room, room_id, update, meta))

    async def append(self, room_id: str, update: bytes, op_key: str | None) -> None:
        await self._run(self._store.append_with_op, room_id, update, op_key)

    async def op_applied(self, room_id: str, op_key: str) -> bool:
        return bool(await self._run(self._store.op_applied, room_id, op_key))

    async def save_meta(self, room_id: str, meta: RoomMeta) -> None:
        await self._run(self._store.save_meta, room_id, meta)

    async def secret(self) -> bytes:
        data: bytes = await self._run(load_or_create_secret, self._secret_path)
        return data

    async def compact(self, room_id: str) -> None:
        await self._run(self._store.compact, room_id)

    async def connections(self, room_id: str, participant_id: str, delta: int) -> int:
        key = (room_id, participant_id)
        count = self._online.get(key, 0) + delta
        if count <= 0:
            self._online.pop(key, None)
            return 0
        self._online[key] = count
        return count

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._pool, self._store.close)
        self._pool.shutdown(wait=True)


class RedisBackend:
    """Several relay nodes, rooms kept in Redis; new updates announced on a pub/sub channel.

    Keys: `<prefix>room:<id>:log` (list of updates), `:ops` (set of applied `op_key`s),
    `:meta` (the RoomMeta JSON), `:recorder` (the lease of the node recording the room), `<prefix>secret`; channel `<prefix>updates` carries
    `<node id>|<room id>|<update>` so other nodes merge it into their live copy.
    """

    shared = True

    def __init__(self, url: str, *, prefix: str = "deeproom:", node_id: str | None = None) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.node_id = node_id or secrets.token_hex(8)
        self._redis: Any = aioredis.Redis.from_url(url)
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    def _key(self, room_id: str, what: str) -> str:
        return f"{self.prefix}room:{room_id}:{what}"

    async def start(self, on_update: UpdateListener, on_message: Callable[[str, bytes], Awaitable[None]] | None = None,
                    channels: tuple[str, ...] = ()) -> None:
        """Subscribe to other nodes' updates (and extra `channels`, handed to `on_message`)."""
        self._pubsub = self._redis.pubsub()
        names = [self.prefix + "updates", *(self.prefix + c for c in channels)]
        await self._pubsub.subscribe(*names)
        self._listener = asyncio.create_task(self._listen(on_update, on_message))

    async def _listen(self, on_update: UpdateListener, on_message: Callable[[str, bytes], Awaitable[None]] | None) -> None:
        import logging

        log = logging.getLogger(__name__)
        updates = (self.prefix + "updates").encode()
        while True:
            try:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._closed:
                    return
                log.exception("redis subscription failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if msg is None:
                continue
            channel = msg["channel"]
            data: bytes = msg["data"]
            try:
                node, rest = data.split(b"|", 1)
                if node.decode() == self.node_id:
                    continue
                if channel == updates:
                    room, update = rest.split(b"|", 1)
                    await on_update(room.decode(), update)
                elif on_message is not None:
                    await on_message(channel.decode()[len(self.prefix):], rest)
            except Exception:
                log.exception("bad message on %r", channel)

    async def publish(self, channel: str, data: bytes) -> None:
        await self._redis.publish(self.prefix + channel, self.node_id.encode() + b"|" + data)

    async def load(self, room_id: str) -> tuple[list[bytes], RoomMeta] | None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.exists(self._key(room_id, "meta"))
        pipe.lrange(self._key(room_id, "log"), 0, -1)
        pipe.get(self._key(room_id, "meta"))
        exists, log, meta = await pipe.execute()
        if not exists:
            return None
        return [bytes(u) for u in log], RoomMeta.from_json(meta)

    async def create(self, room_id: str, update: bytes, meta: RoomMeta) -> bool:
        # One script, so when two nodes race to create a room exactly one initial
        # document (one host) lands in the log.
        created = await self._redis.eval(_CREATE_SCRIPT, 2, self._key(room_id, "meta"), self._key(room_id, "log"),
                                         meta.to_json(), update)
        if not created:
            return False
        await self.publish("updates", room_id.encode() + b"|" + update)
        return True

    async def log_length(self, room_id: str) -> int:
        return int(await self._redis.llen(self._key(room_id, "log")))

    async def log_range(self, room_id: str, start: int) -> list[bytes]:
        return [bytes(u) for u in await self._redis.lrange(self._key(room_id, "log"), start, -1)]

    async def connections(self, room_id: str, participant_id: str, delta: int) -> int:
        """Add `delta` to how many connections `participant_id` has to the room on all nodes."""
        return int(await self._redis.hincrby(self._key(room_id, "online"), participant_id, delta))

    async def append(self, room_id: str, update: bytes, op_key: str | None) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(self._key(room_id, "log"), update)
        if op_key is not None:
            pipe.sadd(self._key(room_id, "ops"), op_key)
        await pipe.execute()
        await self.publish("updates", room_id.encode() + b"|" + update)

    async def op_applied(self, room_id: str, op_key: str) -> bool:
        return bool(await self._redis.sismember(self._key(room_id, "ops"), op_key))

    async def blob_shared(self, sha: str) -> bool:
        return bool(await self._redis.exists(self.prefix + "blob:" + sha))

    async def share_blob(self, sha: str, data: bytes) -> None:
        await self._redis.set(self.prefix + "blob:" + sha, data, nx=True)

    async def fetch_blob(self, sha: str) -> bytes | None:
        found = await self._redis.get(self.prefix + "blob:" + sha)
        return None if found is None else bytes(found)

    async def hold_recorder(self, room_id: str, holder: str, ttl_s: float) -> str | None:
        found = await self._redis.eval(_HOLD_SCRIPT, 1, self._key(room_id, "recorder"), holder, max(1, round(ttl_s * 1000)))
        return bytes(found).decode() if isinstance(found, bytes) else str(found)

    async def drop_recorder(self, room_id: str, holder: str) -> None:
        await self._redis.eval(_DROP_SCRIPT, 1, self._key(room_id, "recorder"), holder)

    async def save_meta(self, room_id: str, meta: RoomMeta) -> None:
        await self._redis.set(self._key(room_id, "meta"), meta.to_json())

    # Layouts: `:layout_versions` (hash name -> latest version), `:layouts` (hash
    # "<version>\n<name>" -> layout file text) and `:layout_index` (same fields -> JSON
    # {created, panels}, so listing reads no layout text). Names are single-line text.

    async def save_layout(self, room_id: str, name: str, layout: Layout) -> LayoutInfo:
        def checked() -> str:
            text = dumps_layout(layout)
            loads_layout(text, source=f"layout {name!r}")  # never store what would not load (as the SQLite store)
            return text

        text = await asyncio.to_thread(checked)
        now = time.time()
        index = json.dumps({"created": now, "panels": len(layout.panels)})
        version = await self._redis.eval(_SAVE_LAYOUT_SCRIPT, 3, self._key(room_id, "layout_versions"),
                                         self._key(room_id, "layouts"), self._key(room_id, "layout_index"),
                                         name, text, index)
        return LayoutInfo(room_id, name, int(version), now, len(layout.panels))

    async def list_layouts(self, room_id: str) -> list[LayoutInfo]:
        raw = await self._redis.hgetall(self._key(room_id, "layout_index"))
        infos = []
        for field_, value in raw.items():
            version, name = bytes(field_).decode().split("\n", 1)
            entry = json.loads(value)
            infos.append(LayoutInfo(room_id, name, int(version), float(entry["created"]), int(entry["panels"])))
        return sorted(infos, key=lambda i: (i.name, i.version))

    async def count_layouts(self, room_id: str) -> int:
        return int(await self._redis.hlen(self._key(room_id, "layout_index")))

    async def load_layout(self, room_id: str, name: str, version: int | None) -> tuple[Layout, int]:
        if version is None:
            latest = await self._redis.hget(self._key(room_id, "layout_versions"), name)
            version = int(latest) if latest is not None else None
        text = None if version is None else await self._redis.hget(self._key(room_id, "layouts"), f"{version}\n{name}")
        if text is None:
            which = f"version {version} of " if version is not None else ""
            names = sorted({i.name for i in await self.list_layouts(room_id)})
            raise NotFound(f"no {which}layout {name!r} for room {room_id!r} (saved: {', '.join(names) or 'none'})")
        assert version is not None
        layout = await asyncio.to_thread(loads_layout, bytes(text), source=f"saved layout {name!r} of room {room_id!r}")
        return layout, version

    async def secret(self) -> bytes:
        key = self.prefix + "secret"
        await self._redis.set(key, secrets.token_bytes(32), nx=True)
        value = await self._redis.get(key)
        return bytes(value)

    async def compact(self, room_id: str) -> None:
        # Several nodes append concurrently; merging the list safely needs a lock the
        # nodes agree on. Left out: the log is replayed in milliseconds for thousands
        # of entries (see docs/relay.md).
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):
                pass
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except Exception:
                pass
        await self._redis.aclose()
