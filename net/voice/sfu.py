"""A participant's voice through the SFU (Janus VideoRoom, audio only).

Publish: one handle joins the room as a publisher (display name = participant id)
and sends our voice (offer from us, answer from Janus). Listen: one subscriber
handle per other publisher (Janus offers, we answer), its audio handed to the
sink under the publisher's participant id. Janus forwards packets; it never
decodes or re-encodes them.

If Janus goes away (the session's long-poll fails, or links go quiet), everything
is torn down and rebuilt, retrying until Janus answers again; the room is
re-created from the access we were given (same number and pin), so a restarted
SFU picks up without anyone doing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from deeproom.net.voice.errors import SfuError
from deeproom.net.voice.janus import JanusHandle, JanusSession, ensure_room
from deeproom.net.voice.local import OutgoingTrack
from deeproom.net.voice.peer import FrameSink, VoiceLink

log = logging.getLogger("deeproom.voice.sfu")


class SfuVoice:
    def __init__(
        self,
        access: dict[str, Any],
        participant_id: str,
        sink: FrameSink,
        *,
        send: MediaStreamTrack | None,
        addresses: Sequence[str],
        stall_s: float = 3.0,
        new_track: Any = None,
        prefetch: int | None = None,
    ) -> None:
        self.url: str = access["url"]
        self.room: int = access["room"]
        self.pin: str = access["pin"]
        self.pid = participant_id
        self.sink = sink
        self.addresses = tuple(addresses)
        self.stall_s = stall_s
        self._send = send
        self._new_track = new_track  # makes a fresh outgoing track after a restart
        self.session: JanusSession | None = None
        self.publisher: VoiceLink | None = None
        self.subscribers: dict[int, VoiceLink] = {}
        self.feed_names: dict[int, str] = {}
        self.feed_id: int | None = None
        self.restarts = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._pub_handle: JanusHandle | None = None
        self._closed = False
        self.up = asyncio.Event()
        self.prefetch = prefetch

    async def start(self, timeout: float = 15.0) -> None:
        """Join the SFU room (and keep it joined until close)."""
        await asyncio.wait_for(self._connect(), timeout)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="sfu-supervisor")

    async def _connect(self) -> None:
        await ensure_room(self.url, self.room, self.pin)
        session = JanusSession(self.url)
        await session.open()
        self.session = session
        pub = await session.attach()
        self._pub_handle = pub
        data, _ = await pub.message(
            {"request": "join", "ptype": "publisher", "room": self.room, "pin": self.pin, "display": self.pid}
        )
        if data.get("videoroom") != "joined":
            raise SfuError(f"could not join SFU room {self.room}: {data}")
        self.feed_id = int(data["id"])
        if self._send is not None:
            link = VoiceLink(f"sfu-pub-{self.pid}", self.sink, send=self._send, receive=False, addresses=self.addresses)
            self.publisher = link
            offer = await link.create_offer()
            cfg, jsep = await pub.message(
                {"request": "configure", "audio": True, "video": False}, jsep={"type": "offer", "sdp": offer}
            )
            if jsep is None:
                raise SfuError(f"the SFU did not answer our offer: {cfg}")
            await link.accept_answer(jsep["sdp"])
        self._spawn(self._publisher_events(pub))
        for p in data.get("publishers", []):
            self._spawn(self._subscribe(int(p["id"]), str(p.get("display", p["id"]))))
        self.up.set()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _publisher_events(self, pub: JanusHandle) -> None:
        while True:
            ev = await pub.events.get()
            data = ev.get("plugindata", {}).get("data", {})
            for p in data.get("publishers", []) or []:
                self._spawn(self._subscribe(int(p["id"]), str(p.get("display", p["id"]))))
            gone = data.get("unpublished") or data.get("leaving")
            if isinstance(gone, int):
                await self._unsubscribe(gone)

    async def _subscribe(self, feed: int, display: str) -> None:
        if feed in self.subscribers or feed == self.feed_id or self.session is None:
            return
        self.feed_names[feed] = display
        link = VoiceLink(
            display, self.sink, send=None, addresses=self.addresses, speaker_of=lambda _t: display, prefetch=self.prefetch
        )
        self.subscribers[feed] = link
        session = self.session
        for attempt in range(20):
            try:
                h = await session.attach()
                data, jsep = await h.message(
                    {"request": "join", "ptype": "subscriber", "room": self.room, "pin": self.pin, "streams": [{"feed": feed}]}
                )
                if jsep is None:
                    raise SfuError(f"the SFU offered nothing for feed {feed}: {data}")
                answer = await link.accept_offer(jsep["sdp"])
                await h.message({"request": "start"}, jsep={"type": "answer", "sdp": answer})
                return
            except SfuError as exc:
                # "No such feed" until the publisher's connection is up: try again shortly
                if "428" not in str(exc) or attempt == 19 or self._closed:
                    log.warning("could not subscribe to %s: %s", display, exc)
                    self.subscribers.pop(feed, None)
                    await link.close()
                    return
                await asyncio.sleep(0.25)

    async def _unsubscribe(self, feed: int) -> None:
        link = self.subscribers.pop(feed, None)
        if link is not None:
            await link.close()

    async def _resubscribe_stalled(self) -> None:
        """A quiet feed (its publisher's connection hiccuped, or it is gone and Janus has not
        said so yet) is subscribed afresh on its own; the others keep playing."""
        for feed, link in list(self.subscribers.items()):
            if link.stalled(self.stall_s) and self.subscribers.get(feed) is link:
                name = self.feed_names.get(feed, str(feed))
                await self._unsubscribe(feed)
                self._spawn(self._subscribe(feed, name))

    async def _supervise(self) -> None:
        while not self._closed:
            await asyncio.sleep(0.5)
            pub_failed = self.publisher is not None and self.publisher.pc.connectionState in ("failed", "closed")
            lost = self.session is None or self.session.lost.is_set() or pub_failed
            if not lost:
                await self._resubscribe_stalled()
                continue
            self.restarts += 1
            self.up.clear()
            log.info("SFU connection lost or quiet; reconnecting to %s", self.url)
            await self._teardown()
            while not self._closed:
                try:
                    if self._new_track is not None and self._send is not None:
                        self._send = self._new_track()
                    await asyncio.wait_for(self._connect(), 15)
                    break
                except (TimeoutError, SfuError, OSError) as exc:
                    log.info("SFU not back yet: %s", exc)
                    await self._teardown()
                    await asyncio.sleep(1.0)

    async def _teardown(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for feed in list(self.subscribers):
            await self._unsubscribe(feed)
        if self.publisher is not None:
            await self.publisher.close()  # also stops its outgoing track
            self.publisher = None
        if self.session is not None:
            await self.session.close()
            self.session = None
        self.feed_id = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        await self._teardown()
        if isinstance(self._send, OutgoingTrack):
            self._send.stop()
