"""Which relay node records a room shared by several nodes (`serve --redis`), and what the other
nodes send it.

Every node holding a room whose `recording` setting is on campaigns for the room's recorder
lease in the shared store (`RoomBackend.hold_recorder`: a Redis key with an expiry, taken when
free). The node that takes it records the whole room: the updates its clients write and those it
merges from other nodes, every participant's pose (other nodes' poses reach it for its own
batches), the events other nodes broadcast to the room (python-socketio's Redis fan-out,
`deeproom.net.relay.pubsub`), and voice segments, which other nodes forward to it here. It
renews the lease every `RENEW_S`; the others keep asking every `CAMPAIGN_S`, so when it dies its
lease runs out after `LEASE_S` and one of them takes over with a recording of its own (header
`follows`: the recording it continues). A node that is not recording a room records nothing of
it, so each recording holds the room once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from deeproom.errors import DeepRoomError, NotFound
from deeproom.net.errors import TooLarge, error_from_wire, error_to_wire
from deeproom.net.recording.recorder import RoomRecorder, draining_recorder, free_recording_id

if TYPE_CHECKING:
    from deeproom.net.relay.rooms import RoomHub
    from deeproom.net.relay.state import LiveRoom

log = logging.getLogger(__name__)

LEASE_S = 5.0
"""How long a recorder lease lasts unless renewed: after its node dies, recording resumes on another
node within about this long (plus `CAMPAIGN_S`)."""
RENEW_S = 1.0
CAMPAIGN_S = 1.0
"""How often a node that wants a room recorded, and is not recording it, asks for the lease."""
FORWARD_TIMEOUT_S = 3.0
"""How long a node waits for the recording node to answer a forwarded voice segment."""
CHANNEL = "recording"
"""The pub/sub channel voice segments and their answers travel on between nodes."""

BlobFetch = Callable[[str], Awaitable[bytes]]
"""Brings a blob onto this node's disk (from another node's upload) and returns it; NotFound if nobody has it."""
RecorderStart = Callable[["LiveRoom", str, dict[str, Any]], RoomRecorder | None]
"""Starts the room's recorder with the given recording id and header fields (None if it could not)."""


class RecorderElection:
    """This node's side of recording rooms shared with other nodes."""

    def __init__(
        self,
        hub: RoomHub,
        fetch_blob: BlobFetch,
        start: RecorderStart,
        recorder_of: Callable[[LiveRoom], RoomRecorder | None],
        wanted: Callable[[LiveRoom], bool],
    ) -> None:
        self.hub = hub
        self.node = secrets.token_hex(8)
        self._fetch_blob = fetch_blob
        self._start = start
        self._recorder_of = recorder_of
        self._wanted = wanted
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._closed = False

    # --- who records ----------------------------------------------------------------------

    def wanted(self, room: LiveRoom) -> None:
        """The room's setting is on and this node does not record it: campaign for it (unless it does)."""
        if self._closed or room.id in self._tasks:
            return  # a campaign asks every CAMPAIGN_S already (not at every update: a store round trip each)
        if not self._wanted(room):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._wake[room.id] = asyncio.Event()
        self._tasks[room.id] = loop.create_task(
            self._campaign(room), name=f"recorder-lease-{room.id}"
        )

    def stopped(self, room: LiveRoom) -> None:
        """This node's recorder of the room stopped: give the lease up now (and campaign again if still wanted)."""
        wake = self._wake.get(room.id)
        if wake is not None:
            wake.set()

    async def _campaign(self, room: LiveRoom) -> None:
        backend = self.hub.backend
        root = self.hub.settings.data_dir / "recordings"
        follows: str | None = None
        wake = self._wake[room.id]
        try:
            while self.hub.is_live(room) and self._wanted(room):
                rid = free_recording_id(root, room.id, time.time())
                mine = f"{self.node}|{rid}"
                try:
                    holder = await backend.hold_recorder(room.id, mine, LEASE_S)
                except Exception:
                    log.exception("relay: asking for the recorder lease of %s failed", room.id)
                    holder = None
                if holder == mine:
                    await self._record(room, rid, mine, follows, wake)
                    continue
                if holder:
                    follows = holder.partition("|")[2] or follows
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), CAMPAIGN_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relay: the recorder lease of %s failed", room.id)
        finally:
            if self._tasks.get(room.id) is asyncio.current_task():
                del self._tasks[room.id]
                del self._wake[room.id]

    async def _record(
        self, room: LiveRoom, rid: str, mine: str, follows: str | None, wake: asyncio.Event
    ) -> None:
        """Holding the lease: record the room while it is wanted and the lease stays ours, then give it up."""
        backend = self.hub.backend
        rec: RoomRecorder | None = None
        try:
            async with room.lock:  # no update is half-applied while the first snapshot is taken
                if (
                    self.hub.is_live(room)
                    and self._wanted(room)
                    and self._recorder_of(room) is None
                ):
                    header: dict[str, Any] = {"node": self.node}
                    if follows:
                        header["follows"] = follows
                    rec = self._start(room, rid, header)
            if rec is None:
                return
            while self._records(room, rec):
                if not self.hub.is_live(room):
                    rec.stop("this relay node no longer holds the room (another node takes over)")
                    break
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), RENEW_S)
                if not self._records(room, rec):
                    break
                try:
                    holder = await backend.hold_recorder(room.id, mine, LEASE_S)
                except Exception:
                    log.exception(
                        "relay: renewing the recorder lease of %s failed; still recording", room.id
                    )
                    continue  # nobody else can take it while the store is unreachable either
                if holder != mine:
                    log.warning(
                        "relay: room %s: the recorder lease went to another node (%s); stopping",
                        room.id,
                        holder,
                    )
                    rec.stop("another relay node records this room now")
                    break
        finally:
            if (
                rec is not None
                and self._records(room, rec)
                and (self._closed or not self.hub.is_live(room))
            ):
                rec.stop(
                    "this relay node stopped"
                    if self._closed
                    else "this relay node no longer holds the room"
                )
            with contextlib.suppress(Exception):
                await backend.drop_recorder(room.id, mine)

    def _records(self, room: LiveRoom, rec: RoomRecorder) -> bool:
        """Whether `rec` is still the room's recorder (the host may have stopped it, or a write failed)."""
        return self._recorder_of(room) is rec

    async def close(self) -> None:
        """Stop campaigning; rooms this node records are stopped and their leases given up at once."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for fut in self._pending.values():
            fut.cancel()

    # --- events other nodes broadcast -------------------------------------------------------

    def on_remote_emit(self, event: str, data: Any, room_name: str | None) -> None:
        """A Socket.IO emit another node broadcast (`deeproom.net.relay.pubsub`): an event to a room this
        node records goes into its recording, as a local one does."""
        if event != "event" or room_name is None or not isinstance(data, dict):
            return
        room = self.hub.rooms.get(room_name)
        if room is None or self._recorder_of(room) is None:
            return
        from deeproom.net.recording import hooks

        kind, sender, payload = data.get("kind"), data.get("sender"), data.get("payload")
        if isinstance(kind, str) and isinstance(sender, str) and isinstance(payload, dict):
            hooks.on_event(room, kind, sender, payload)

    # --- voice segments to the recording node -----------------------------------------------

    async def forward_voice_segment(
        self, room: LiveRoom, pid: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """Send a voice segment of `pid` (connected here) to whichever node records the room; its answer is
        the ack. The blob must be on this node (where its speaker uploaded it)."""
        from deeproom.net.recording.voice import MAX_SEGMENT_BYTES

        sha = payload.get("sha")
        if isinstance(sha, str) and len(sha) == 64:
            try:
                size = (self.hub.settings.data_dir / "blobs" / sha[:2] / sha[2:]).stat().st_size
            except (OSError, ValueError):
                size = 0  # the recording node refuses it with the reason
            if size > MAX_SEGMENT_BYTES:
                raise TooLarge(
                    f"a voice segment is at most {MAX_SEGMENT_BYTES} bytes; blob {sha[:12]} has {size}"
                )
        req = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req] = fut
        try:
            message = {
                "op": "voice",
                "req": req,
                "from": self.node,
                "room": room.id,
                "participant": pid,
                "payload": payload,
            }
            await self.hub.backend.publish(CHANNEL, json.dumps(message).encode())
            answer = await asyncio.wait_for(fut, FORWARD_TIMEOUT_S)
        except TimeoutError:
            raise NotFound(
                f"room {room.id!r} is not being recorded (no relay node records it now); "
                "voice segments are kept only while it is"
            ) from None
        finally:
            self._pending.pop(req, None)
        if "error" in answer:
            raise error_from_wire(answer["error"])
        ack = answer.get("ack")
        return ack if isinstance(ack, dict) else {"ok": True}

    async def on_message(self, data: bytes) -> None:
        """A message on `CHANNEL` from another node (nodes trust each other through the store)."""
        try:
            msg = json.loads(data)
        except ValueError:
            log.warning("relay: an unreadable recording message from another node was dropped")
            return
        if not isinstance(msg, dict):
            return
        if msg.get("op") == "answer":
            fut = self._pending.get(str(msg.get("req")))
            if msg.get("to") == self.node and fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if msg.get("op") != "voice":
            return
        room = self.hub.rooms.get(str(msg.get("room")))
        if room is None:
            return
        settings = self.hub.settings
        if (
            self._recorder_of(room) is None
            and draining_recorder(settings.data_dir / "recordings", room.id) is None
        ):
            return  # not the recording node: that one answers
        from deeproom.net.recording.voice import take_segment_as

        answer: dict[str, Any] = {"op": "answer", "req": msg.get("req"), "to": msg.get("from")}
        try:
            payload, pid = msg.get("payload"), msg.get("participant")
            if not isinstance(payload, dict) or not isinstance(pid, str):
                raise NotFound("a forwarded voice segment without its payload or participant")
            sha = payload.get("sha")
            if isinstance(sha, str):
                with contextlib.suppress(DeepRoomError, ValueError, OSError):
                    await self._fetch_blob(sha)  # uploaded to the speaker's node: copied here once
            answer["ack"] = await take_segment_as(settings, pid, room, payload)
        except DeepRoomError as exc:
            answer["error"] = error_to_wire(exc)
        await self.hub.backend.publish(CHANNEL, json.dumps(answer).encode())
