"""Who gets in, and the host's tools: joins, room creation, invites, kicks, passwords,
leaving after a grace period, and the per-address quotas on all of these.

A join is checked without holding the room's lock wherever it can be: the password is
hashed (scrypt) on a small thread pool shared by the whole relay, never on the event
loop and never under a room's lock, so wrong-password storms cannot stall a room's
operations. Attempts are counted per client address, not per connection (new
connections are free to make). A participant id is always bound to a secret key on
first join: one the client brings, or one the relay makes and returns; nobody without
that key can be that participant (and have their role) later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import socketio

from deeproom.document import new_room
from deeproom.errors import NotFound, PermissionDenied, ValidationError
from deeproom.net import protocol as P
from deeproom.net.auth import (
    check_password,
    hash_password,
    make_invite,
    token_from_link,
    verify_invite,
)
from deeproom.net.backend import RoomBackend, RoomMeta
from deeproom.net.errors import JoinRefused, NetError, ProtocolError, RateLimited
from deeproom.net.ratelimit import BucketsByKey
from deeproom.net.recording import hooks as recording_hooks
from deeproom.net.relay.rooms import RoomHub
from deeproom.net.relay.settings import RelaySettings
from deeproom.net.relay.state import LiveRoom, Session
from deeproom.ops import SYSTEM, Join, Leave
from deeproom.state import MAX_NAME, Role, check_colour, check_id, check_participant_id, check_text

log = logging.getLogger(__name__)

HOUR = 3600.0
MAX_QUEUED_HASHES = 32
"""Password hashes waiting for the pool, relay-wide; beyond this joins are told to retry."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


PASSWORD_CHECKS_KEPT = 4096
"""Password checks remembered (as keyed digests, never the attempt itself)."""


def _background_priority() -> None:
    """Run this password-hashing thread at low CPU priority (Linux: per thread), so scrypt
    storms take the CPU only when the event loop and the rest of the machine leave it."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)


_RANK = {r: i for i, r in enumerate(Role)}
"""Roles by power: host 0, presenter 1, member 2, viewer 3."""


def _asked_role(raw: Any) -> Role | None:
    """The join's optional `role`: the role the joiner asks for (it can only lower theirs)."""
    if raw is None:
        return None
    try:
        return Role(raw)
    except (ValueError, TypeError):
        raise ValidationError(f"join role must be host, presenter, member or viewer; got {raw!r:.40}") from None


class Admission:
    """Joins, leaves and the host's actions on one relay node."""

    def __init__(self, settings: RelaySettings, hub: RoomHub, backend: RoomBackend, sio: socketio.AsyncServer,
                 secret: Callable[[], bytes], closing: Callable[[], bool]) -> None:
        self.settings = settings
        self.hub = hub
        self.backend = backend
        self.sio = sio
        self._secret = secret
        self._closing = closing
        self._joins = BucketsByKey(*settings.joins_per_address)
        self._password_checks = BucketsByKey(*settings.password_checks_per_address)
        rate, burst = settings.rooms_per_address
        self._creations = BucketsByKey(rate / HOUR, burst)
        self._hash_pool = ThreadPoolExecutor(max_workers=settings.password_workers, thread_name_prefix="relay-scrypt",
                                             initializer=_background_priority)
        self._checked: OrderedDict[bytes, bool] = OrderedDict()
        """Recent password checks: HMAC(process key, record, attempt) -> matched (no scrypt to repeat one)."""
        self._check_key = os.urandom(32)
        self._hashes_waiting = 0
        self._creating: dict[str, asyncio.Lock] = {}

    def close(self) -> None:
        self._hash_pool.shutdown(wait=False, cancel_futures=True)

    async def _scrypt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a password hash on the relay's small pool (bounded, off the event loop)."""
        if self._hashes_waiting >= MAX_QUEUED_HASHES:
            raise RateLimited("the relay is busy checking passwords; try again in a few seconds")
        self._hashes_waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._hash_pool, fn, *args)
        finally:
            self._hashes_waiting -= 1

    # --- joining ----------------------------------------------------------------------

    async def join(self, sess: Session, data: Any) -> dict[str, Any]:
        if sess.room_id is not None:
            raise ProtocolError(f"this connection already joined room {sess.room_id!r}; open another to join more")
        if not self._joins.take(sess.address):
            raise RateLimited("too many join attempts from your address; wait a few seconds")
        d = P.require_mapping(data, "join")
        room_id = check_id(d.get("room"), "room id")
        name = check_text(d.get("name"), "display name", MAX_NAME)
        pid = check_participant_id(d.get("participant_id"))
        key = P.require_str(d, "key", "participant key", 256, optional=True)
        if key is not None and len(key) < 16:
            raise ValidationError("a participant key is 16-256 characters (a secret only this participant knows)")
        colour = check_colour(d.get("colour") or "#888888")
        password = P.require_str(d, "password", "password", 256, optional=True)
        invite = P.require_str(d, "invite", "invite", 2048, optional=True)
        create_token = P.require_str(d, "create_token", "room creation token", 256, optional=True)
        sv = P.require_bytes(d, "sv", "state vector", P.MAX_STATE_VECTOR, optional=True)
        asked = _asked_role(d.get("role"))
        made_key = key is None
        if key is None:
            key = secrets.token_urlsafe(24)  # the id is bound to a key either way; the client gets this one back

        room = await self.hub.get(room_id)
        if room is None:
            room = await self._create(sess, room_id, pid, name, colour, key, password, create_token)

        # Checked first without the lock (cheap refusals, and the password hash), again under it.
        self._check_identity(room, pid, key)
        record = room.meta.password
        if invite:
            granted = verify_invite(self._secret(), token_from_link(invite), room.id).role
        else:
            granted = Role.MEMBER
            if self._needs_password(room, pid):
                await self._check_password(sess, room, password)
        async with room.lock:
            if not self.hub.is_live(room):
                raise NetError(f"room {room.id!r} was being unloaded; join again")
            self._check_identity(room, pid, key)
            if not invite and room.meta.password is not record and self._needs_password(room, pid):
                raise JoinRefused(f"the password of room {room.id!r} changed while you joined; join again")
            await self._admit(room, pid, name, colour, key, granted, asked)
            sess.room_id = room.id
            sess.participant_id = pid
            room.sessions[sess.sid] = sess
            task = room.leave_tasks.pop(pid, None)
            if task is not None:
                task.cancel()
            await self.sio.enter_room(sess.sid, room.id)
            await self.sio.enter_room(sess.sid, f"p:{room.id}:{pid}")
            await self.backend.connections(room.id, pid, +1)
            try:
                update = room.doc.update_since(sv) if sv else room.doc.update_since(None)
            except ValidationError:
                update = room.doc.update_since(None)
            role = room.role_of(pid) or Role.MEMBER
        ack: dict[str, Any] = {
            "ok": True,
            "protocol": P.PROTOCOL_VERSION,
            "participant_id": pid,
            "role": role.value,
            "update": update,
            "sv": room.doc.state_vector(),
            "streams": list(room.streams.values()),
            "tick_hz": self.settings.tick_hz,
            "compact_pose": True,  # this relay takes the one-frame pose (docs/protocol.md §8)
            "recording": recording_hooks.join_notice(room, self.settings.record),
        }
        if self.settings.sfu_url:
            ack["sfu"] = self.settings.sfu_url  # teaching rooms' voice goes through it above the mesh limit
        if made_key:
            ack["key"] = key
        return ack

    async def _create(self, sess: Session, room_id: str, pid: str, name: str, colour: str, key: str,
                      password: str | None, create_token: str | None) -> LiveRoom:
        """Create the room with the joiner as host (policy and quota permitting), or join the one
        that appeared meanwhile."""
        # One join at a time may create a given room in this process; the others wait and join it.
        creating = self._creating.setdefault(room_id, asyncio.Lock())
        try:
            async with creating:
                room = await self.hub.get(room_id)
                if room is not None:
                    return room
                s = self.settings
                if s.room_creation == "token" and not (
                    create_token and s.create_token and hmac.compare_digest(create_token.encode(), s.create_token.encode())
                ):
                    raise JoinRefused(f"no room {room_id!r} on this relay (creating rooms here needs the relay's creation token)")
                if not self._creations.take(sess.address):
                    raise RateLimited(f"this address has created its quota of rooms ({s.rooms_per_address[0]:g} per hour); "
                                      "join an existing room or wait")
                meta = RoomMeta()
                if password:
                    meta.password = await self._scrypt(hash_password, password)
                meta.keys[pid] = key_hash(key)
                doc = new_room(room_id, name=room_id, host_id=pid, host_name=name, colour=colour, capacity=s.capacity)
                room = await self.hub.create(room_id, doc, meta)
                if room is not None:
                    return room
                self._creations.refund(sess.address)
                room = await self.hub.get(room_id)  # another node created it first
                if room is None:
                    raise NotFound(f"room {room_id!r} could not be created or loaded")
                return room
        finally:
            if self._creating.get(room_id) is creating and not creating.locked():
                del self._creating[room_id]  # later joins find the room loaded

    def _check_identity(self, room: LiveRoom, pid: str, key: str) -> None:
        meta = room.meta
        if pid in meta.kicked:
            raise JoinRefused(f"you were removed from room {room.id!r} by its host")
        known = meta.keys.get(pid)
        if known is not None:
            if not hmac.compare_digest(key_hash(key), known):
                raise JoinRefused(f"participant id {pid!r} is already taken in room {room.id!r}")
        elif pid in room.doc.snapshot().participants or pid in meta.roles:
            # Someone is (or was) this participant without a key: nobody may claim the id (and its role).
            raise JoinRefused(f"participant id {pid!r} is already taken in room {room.id!r}; join under another id")

    @staticmethod
    def _needs_password(room: LiveRoom, pid: str) -> bool:
        # A participant returning with their key does not need the password again.
        return room.meta.password is not None and pid not in room.meta.keys

    async def _check_password(self, sess: Session, room: LiveRoom, password: str | None) -> None:
        if not password:
            raise JoinRefused(f"room {room.id!r} needs a password or an invite")
        if not self._password_checks.take(sess.address):
            raise RateLimited("too many password attempts from your address; wait a few seconds")
        record = room.meta.password
        assert record is not None
        # An attempt already checked against this record is answered from memory: repeating a
        # guess (or the right password, as every member joining does) costs no second scrypt.
        # It still counts against the address's attempts.
        seen = hmac.new(self._check_key, f"{sorted(record.items())}\0{password}".encode(), "sha256").digest()
        matched = self._checked.get(seen)
        if matched is None:
            matched = bool(await self._scrypt(check_password, password, record))
            self._checked[seen] = matched
            while len(self._checked) > PASSWORD_CHECKS_KEPT:
                self._checked.popitem(last=False)
        if not matched:
            raise JoinRefused(f"wrong password for room {room.id!r}")

    async def _admit(self, room: LiveRoom, pid: str, name: str, colour: str, key: str, granted: Role,
                     asked: Role | None = None) -> None:
        """Apply the joiner's Join as the relay and bind their id to their key (caller holds room.lock).

        `asked` (the join's optional `role`) may only lower what a newcomer is granted: a role
        above it is refused; a returning participant (or the room's creator) keeps theirs."""
        meta = room.meta
        existing = room.doc.snapshot().participants.get(pid)
        if existing is not None:
            role = existing.role
        elif pid in meta.roles:
            role = Role(meta.roles[pid])
        else:
            role = granted
        if asked is not None:
            if _RANK[asked] < _RANK[role]:
                raise JoinRefused(f"this join grants role {role.value!r}, not {asked.value!r}: a join's role may only "
                                  "lower it (a higher role comes with an invite or from the host)")
            if existing is None and pid not in meta.roles:
                role = asked
        try:
            if existing is None or existing.name != name or existing.colour != colour:
                await self.hub.apply(room, Join(pid, name, colour, role), SYSTEM, None, None)
        except PermissionDenied as exc:
            raise JoinRefused(str(exc)) from None
        if pid not in meta.keys:
            meta.keys[pid] = key_hash(key)
            await self.backend.save_meta(room.id, meta)

    # --- leaving ----------------------------------------------------------------------

    async def disconnected(self, sess: Session) -> None:
        """The socket is gone: the participant leaves after the grace period unless they come back."""
        if sess.room_id is None or sess.participant_id is None:
            return
        room = self.hub.rooms.get(sess.room_id)
        if room is None:
            return
        room.sessions.pop(sess.sid, None)
        pid = sess.participant_id
        try:
            remaining = await self.backend.connections(room.id, pid, -1)
        except Exception:
            log.exception("relay: could not count connections of %s", pid)
            remaining = 0
        if remaining <= 0 and not any(x.participant_id == pid for x in room.sessions.values()):
            room.poses.pop(pid, None)
            self.schedule_leave(room, pid)

    def schedule_leave(self, room: LiveRoom, pid: str) -> None:
        old = room.leave_tasks.pop(pid, None)
        if old is not None:
            old.cancel()
        if self._closing():
            return
        room.leave_tasks[pid] = asyncio.create_task(self._leave_later(room, pid))

    def on_loaded(self, room: LiveRoom) -> None:
        # Participants who were in the room when a relay stopped leave unless they reconnect.
        for pid in room.doc.snapshot().participants:
            self.schedule_leave(room, pid)

    async def _leave_later(self, room: LiveRoom, pid: str) -> None:
        await asyncio.sleep(self.settings.leave_grace_s)
        room.leave_tasks.pop(pid, None)
        try:
            if any(s.participant_id == pid for s in room.sessions.values()):
                return
            if await self.backend.connections(room.id, pid, 0) > 0:
                return  # connected to another node
            async with room.lock:
                current = room.doc.snapshot().participants.get(pid)
                if current is None:
                    return
                room.meta.roles[pid] = current.role.value
                await self.backend.save_meta(room.id, room.meta)
                await self.hub.apply(room, Leave(pid), SYSTEM, None, None)
        except Exception:
            log.exception("relay: removing %s from %s failed", pid, room.id)

    # --- host actions -----------------------------------------------------------------

    @staticmethod
    def _require_host(room: LiveRoom, sess: Session, what: str) -> str:
        pid = sess.participant_id
        assert pid is not None
        if room.role_of(pid) is not Role.HOST:
            raise PermissionDenied(f"only the host {what}")
        return pid

    async def invite(self, sess: Session, room: LiveRoom, data: Any) -> dict[str, Any]:
        self._require_host(room, sess, "creates invites")
        d = P.require_mapping({} if data is None else data, "invite")
        role_raw = d.get("role", "member")
        try:
            role = Role(role_raw)
        except (ValueError, TypeError):
            raise ValidationError(f"invite role must be presenter, member or viewer; got {role_raw!r:.40}") from None
        ttl = d.get("ttl", 7 * 86400)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise ValidationError("invite ttl is a number of seconds")
        return {"ok": True, "token": make_invite(self._secret(), room.id, role, float(ttl))}

    async def kick(self, sess: Session, room: LiveRoom, data: Any) -> dict[str, Any]:
        target = check_participant_id(P.require_mapping(data, "kick").get("participant_id"))
        async with room.lock:
            host = self._require_host(room, sess, "may kick participants")
            if target == host:
                raise ValidationError("the host cannot kick themselves")
            if target not in room.doc.snapshot().participants:
                raise NotFound(f"no participant {target!r} in room {room.id!r}")
            if target not in room.meta.kicked:
                room.meta.kicked.append(target)
                await self.backend.save_meta(room.id, room.meta)
            # The host's right to do this was checked above; the removal itself is the relay's.
            await self.hub.apply(room, Leave(target), SYSTEM, None, None)
        await self.sio.emit("kicked", {"message": f"the host removed you from room {room.id!r}"}, room=f"p:{room.id}:{target}")
        for other in [s for s in room.sessions.values() if s.participant_id == target]:
            room.sessions.pop(other.sid, None)
            other.room_id = other.participant_id = None
            await self.backend.connections(room.id, target, -1)
            await self.sio.leave_room(other.sid, room.id)
            await self.sio.leave_room(other.sid, f"p:{room.id}:{target}")
            try:
                await self.sio.disconnect(other.sid)
            except Exception:
                log.debug("relay: disconnecting kicked %s failed", other.sid, exc_info=True)
        room.poses.pop(target, None)
        return {"ok": True}

    async def set_password(self, sess: Session, room: LiveRoom, data: Any) -> dict[str, Any]:
        self._require_host(room, sess, "sets the room password")
        password = P.require_str(P.require_mapping(data, "set_password"), "password", "password", 256, optional=True)
        record = await self._scrypt(hash_password, password) if password else None
        async with room.lock:
            self._require_host(room, sess, "sets the room password")
            room.meta.password = record
            await self.backend.save_meta(room.id, room.meta)
        return {"ok": True}
