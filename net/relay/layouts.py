"""Layouts in a live room: save the room's arrangement as a named version, list the
versions, load one, export one as a layout file, import a file.

Versions live in the relay's store, per room (SQLite or Redis, through the backend), so
any host or presenter can save and load them while the room is in use. Who may do what:
host and presenter save, load and import (they run the room); anyone in the room lists
and exports (they see the room anyway).

A load is all or nothing. Under the room's lock its operations (`deeproom.layout.fit_layout`)
are applied, each checked by the core as the loader, to a scratch copy of the room; a
refusal anywhere (a panel someone holds locked) leaves the room as it was. Otherwise
what the copy gained is ONE update: merged into the live room, stored in one append and
broadcast, so every client sees the whole layout arrive at once. Panels of the version
that no longer fit (their content blobs are gone, their id is another kind now) are left
out and listed in the answer.

An imported file travels as a blob (`blob_begin/chunk/end`, with the upload quotas) and
is checked like a file from disk (`deeproom.layout.loads_layout`: size, nesting, every
field) before it is stored.
"""

from __future__ import annotations

import asyncio
from typing import Any

from deeproom.document import RoomDocument
from deeproom.errors import NotFound, PermissionDenied
from deeproom.layout import (
    MAX_FILE_BYTES,
    Layout,
    LayoutLoaded,
    dumps_layout,
    fit_layout,
    layout_of,
    loads_layout,
)
from deeproom.net import protocol as P
from deeproom.net.backend import RoomBackend
from deeproom.net.errors import NetError, ProtocolError, RateLimited, TooLarge
from deeproom.net.layout_wire import ACTIONS, MAX_VERSION, info_to_wire, loaded_to_wire
from deeproom.net.recording import hooks as recording_hooks
from deeproom.net.relay.blobs import BlobService
from deeproom.net.relay.rooms import RoomHub
from deeproom.net.relay.settings import RelaySettings
from deeproom.net.relay.state import LiveRoom, Session
from deeproom.state import MAX_NAME, Role, check_text
from deeproom.storage import check_blob_id

RUNS_ROOM = (Role.HOST, Role.PRESENTER)
MAX_VERSIONS_PER_ROOM = 1000
"""Saved versions one room may hold (all names together)."""
MAX_EXPORT_CHARS = 3 * 1024 * 1024
"""Largest layout file sent in an export answer (the client's websocket takes 4 MiB messages)."""


class LayoutService:
    """The `layout` event: save, list, load, export, import."""

    def __init__(self, settings: RelaySettings, hub: RoomHub, backend: RoomBackend, blobs: BlobService) -> None:
        self.settings = settings
        self.hub = hub
        self.backend = backend
        self.blobs = blobs

    async def handle(self, sess: Session, room: LiveRoom, data: Any) -> dict[str, Any]:
        if not sess.event_bucket.take():
            raise RateLimited(f"too many events: at most {self.settings.event_rate[0]:g}/s")
        d = P.require_mapping(data, "layout message")
        action = P.require_str(d, "action", "layout action", 16)
        pid = sess.participant_id
        assert pid is not None
        if action not in ACTIONS:
            raise ProtocolError(f"unknown layout action {action!r}; allowed: {', '.join(ACTIONS)}")
        if action in ("save", "load", "import"):
            _require_runs_room(room, pid, action)
        match action:
            case "save":
                return await self.save(room, _name(d))
            case "list":
                return {"ok": True, "versions": [info_to_wire(i) for i in await self.backend.list_layouts(room.id)]}
            case "load":
                loaded, update = await self.load(sess, room, _name(d), _version(d), prune=_flag(d, "prune"))
                return {"ok": True, "update": update, **loaded_to_wire(loaded)}
            case "export":
                return await self.export(room, d)
            case _:
                return await self.import_file(room, _name(d), check_blob_id(d.get("blob")))

    async def save(self, room: LiveRoom, name: str, layout: Layout | None = None) -> dict[str, Any]:
        if await self.backend.count_layouts(room.id) >= MAX_VERSIONS_PER_ROOM:
            raise TooLarge(f"room {room.id!r} holds {MAX_VERSIONS_PER_ROOM} saved layout versions, the most it may; "
                           "delete some (`deeproom layout delete` on the relay's store)")
        if layout is None:
            async with room.lock:
                layout = layout_of(room.doc.snapshot())
        info = await self.backend.save_layout(room.id, name, layout)
        return {"ok": True, "version": info_to_wire(info)}

    async def load(self, sess: Session, room: LiveRoom, name: str, version: int | None, *,
                   prune: bool = False) -> tuple[LayoutLoaded, bytes]:
        """Apply a saved version, all or nothing; returns what it did and the one update it made."""
        pid = sess.participant_id
        assert pid is not None
        layout, version = await self.backend.load_layout(room.id, name, version)
        # Only panels the room lacks need their blobs; asked before taking the lock (Redis may
        # be asked). A panel that went missing meanwhile is looked up on this node's disk.
        in_room = set(room.doc.snapshot().panels)
        refs = {ref for p in layout.panels if p.id not in in_room for ref in p.content.refs}
        present = {ref for ref in refs if await self.blobs.have(ref)}

        def has_blob(ref: str) -> bool:
            return ref in present or self.blobs.store.has(ref)

        async with room.lock:
            if not self.hub.is_live(room) or sess.room_id != room.id:
                raise NetError(f"room {room.id!r} was reloaded; join again and load the layout again")
            _require_runs_room(room, pid, "load")  # the role may have changed while we read the store
            fit = fit_layout(room.doc.snapshot(), layout, has_blob, prune=prune)
            update = b""
            if fit.operations:
                # Every operation is checked by the core on a scratch copy first: one refused
                # (PermissionDenied, NotFound, ...) raises here, before the live room changes.
                scratch = RoomDocument(room.id, update=room.doc.update_since(None))
                for op in fit.operations:
                    scratch.apply(op, pid)
                update = scratch.update_since(room.doc.state_vector())
                room.doc.apply_update(update)
                await self.hub._persist(room, update, None, sess.sid)  # one append, then one broadcast
                recording_hooks.on_chapter(room, f"layout {name} loaded", "layout")
        return LayoutLoaded(name, version, len(fit.operations), fit.not_loaded), update

    async def export(self, room: LiveRoom, d: Any) -> dict[str, Any]:
        if d.get("name") is None:
            async with room.lock:
                layout = layout_of(room.doc.snapshot())
        else:
            layout, _ = await self.backend.load_layout(room.id, _name(d), _version(d))
        text = await asyncio.to_thread(dumps_layout, layout)
        if len(text) > MAX_EXPORT_CHARS:
            raise TooLarge(f"this layout is {len(text) / 2**20:.1f} MiB as a file; a live export sends at most "
                           f"{MAX_EXPORT_CHARS / 2**20:.0f} MiB (use `deeproom layout export` on the relay's store)")
        return {"ok": True, "layout": text}

    async def import_file(self, room: LiveRoom, name: str, sha: str) -> dict[str, Any]:
        try:
            data = await self.blobs.blob_bytes(sha)
        except NotFound:
            raise NotFound(f"no blob {sha[:12]} on the relay: upload the layout file first (blob_begin/chunk/end)") from None
        if len(data) > MAX_FILE_BYTES:
            raise TooLarge(f"a layout file is at most {MAX_FILE_BYTES} bytes; this one is {len(data)}")
        layout = await asyncio.to_thread(loads_layout, data, source="imported layout")
        return await self.save(room, name, layout)


def _require_runs_room(room: LiveRoom, pid: str, action: str) -> None:
    role = room.role_of(pid)
    if role is None:
        raise PermissionDenied(f"{pid!r} is not in room {room.id!r}")
    if role not in RUNS_ROOM:
        raise PermissionDenied(f"only the host or a presenter may {action} a layout; {pid!r} is {role.value}")


def _name(d: Any) -> str:
    return check_text(d.get("name"), "layout name", MAX_NAME)


def _version(d: Any) -> int | None:
    if d.get("version") is None:
        return None
    return P.require_int(d, "version", "layout version", 1, MAX_VERSION)


def _flag(d: Any, key: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"layout {key!r} must be true or false; got {type(value).__name__}")
    return value
