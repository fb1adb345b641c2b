"""`BackgroundClient`: a `RoomClient` on its own thread, for the render loop and plain scripts.

The render thread must never wait on the network. Everything the room sends arrives
in ONE `queue.Queue` (`inbox`) as `Inbound(kind, data)` items that the scene drains
once per frame:

- `("status", "connected" | "disconnected" | "refused" | "closed")`
- `("change", RoomChange)` — the room changed (a confirmed update)
- `("poses", {participant id: Pose})` — others' latest poses (dropped while the inbox
  is backed up: only the newest matter)
- `("event", (kind, sender, payload))` — signal / stream / steer / summon
- `("refused", (op dict, error))` — an operation the relay refused (also replays)
- `("error", error)` — an error the relay reported without a reply

Methods are thread-safe and return `concurrent.futures.Future`s (poses return nothing).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from deeproom.document import RoomChange
from deeproom.errors import DeepRoomError
from deeproom.layout import Layout, LayoutLoaded
from deeproom.net.client import RoomClient
from deeproom.net.errors import ClientClosed
from deeproom.presence import Pose
from deeproom.state import Room
from deeproom.storage import LayoutInfo

T = TypeVar("T")
MAX_QUEUED_FOR_POSES = 256


class Inbound(NamedTuple):
    """One item of `BackgroundClient.inbox`."""

    kind: str
    data: Any


class BackgroundClient:
    """`BackgroundClient(url, room=..., name=...)`: joins in the background; `url=None` runs an embedded relay."""

    def __init__(
        self,
        url: str | None,
        room: str,
        name: str,
        *,
        data_dir: str | Path | None = None,
        event_kinds: tuple[str, ...] = ("signal", "stream", "steer", "summon"),
        **client_options: Any,
    ) -> None:
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self._url = url
        self._data_dir = data_dir
        self._room_id = room
        self._name = name
        self._options = client_options
        self._event_kinds = event_kinds
        self._loop = asyncio.new_event_loop()
        self._client: RoomClient | None = None
        self._relay: Any = None
        self._room: Room | None = None
        self._closed = False
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name=f"deeproom-client-{room}", daemon=True)
        self._thread.start()

    # --- thread -----------------------------------------------------------------------

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.create_task(self._start())
        self._loop.run_forever()
        with contextlib.suppress(Exception):
            pending = asyncio.all_tasks(self._loop)
            for t in pending:
                t.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _start(self) -> None:
        try:
            url = self._url
            if url is None:
                from deeproom.net.embedded import EmbeddedRelay

                self._relay = EmbeddedRelay(data_dir=self._data_dir)
                await self._relay.start()
                url = self._relay.url
            client = RoomClient(url, self._room_id, self._name, **self._options)
            self._client = client
            put = self.inbox.put
            client.on_status(lambda s: put(Inbound("status", s)))
            client.on_refused(lambda op, err: put(Inbound("refused", (op, err))))
            client.on_error(lambda err: put(Inbound("error", err)))
            client.on_poses(self._on_poses)
            for kind in self._event_kinds:
                client.on_event(kind, lambda sender, payload, k=kind: put(Inbound("event", (k, sender, payload))))
            client.observe(self._on_change)
            await client.connect()
            self._room = client.room
            if not self.ready.done():
                self.ready.set_result(None)
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            if self._relay is not None:
                await self._relay.close()

    def _on_change(self, change: RoomChange) -> None:
        self._room = change.room
        self.inbox.put(Inbound("change", change))

    def _on_poses(self, poses: dict[str, Pose]) -> None:
        if self.inbox.qsize() < MAX_QUEUED_FOR_POSES:
            self.inbox.put(Inbound("poses", poses))

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise ClientClosed("the background client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _need(self) -> RoomClient:
        """The client, from a caller's thread (waits for the join; raises its error)."""
        self.ready.result()
        assert self._client is not None
        return self._client

    async def _joined(self) -> RoomClient:
        """The client, on the client's own loop (never blocks the loop while it joins)."""
        await asyncio.wrap_future(self.ready)
        assert self._client is not None
        return self._client

    # --- API (any thread) -------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None) -> BackgroundClient:
        """Block until joined (raises what the join raised)."""
        self.ready.result(timeout)
        return self

    @property
    def participant_id(self) -> str:
        return self._need().participant_id

    @property
    def url(self) -> str | None:
        """The relay's URL (the embedded relay's once started)."""
        if self._relay is not None:
            return str(self._relay.url)
        return self._url

    @property
    def room(self) -> Room | None:
        """The latest confirmed room (None before joining)."""
        return self._room

    def apply(self, op: dict[str, Any] | Any) -> concurrent.futures.Future[Room]:
        async def run() -> Room:
            return await (await self._joined()).apply(op)

        return self._submit(run())

    def publish_pose(self, pose: Pose) -> None:
        if self._closed or self._client is None:
            return
        self._loop.call_soon_threadsafe(self._client.publish_pose, pose)

    def put_blob(self, data: bytes) -> concurrent.futures.Future[str]:
        async def run() -> str:
            return await (await self._joined()).put_blob(data)

        return self._submit(run())

    def get_blob(self, sha: str) -> concurrent.futures.Future[bytes]:
        async def run() -> bytes:
            return await (await self._joined()).get_blob(sha)

        return self._submit(run())

    def send_event(self, kind: str, payload: dict[str, Any], to: str | None = None) -> concurrent.futures.Future[None]:
        async def run() -> None:
            await (await self._joined()).send_event(kind, payload, to)

        return self._submit(run())

    # Layouts (see RoomClient: save_layout, list_layouts, load_layout, export_layout, import_layout).

    def save_layout(self, name: str) -> concurrent.futures.Future[LayoutInfo]:
        return self.call("save_layout", name)

    def list_layouts(self) -> concurrent.futures.Future[list[LayoutInfo]]:
        return self.call("list_layouts")

    def load_layout(self, name: str, version: int | None = None, *,
                    prune: bool = False) -> concurrent.futures.Future[LayoutLoaded]:
        return self.call("load_layout", name, version, prune=prune)

    def export_layout(self, name: str | None = None, version: int | None = None, *,
                      path: str | os.PathLike[str] | None = None) -> concurrent.futures.Future[Layout]:
        return self.call("export_layout", name, version, path=path)

    def import_layout(self, source: str | os.PathLike[str] | Layout, name: str) -> concurrent.futures.Future[LayoutInfo]:
        return self.call("import_layout", source, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run any async RoomClient method (create_invite, kick, set_role, ...) on the client's thread."""

        async def run() -> Any:
            return await getattr(await self._joined(), method)(*args, **kwargs)

        return self._submit(run())

    def drain(self) -> list[Inbound]:
        """Everything in the inbox now, without waiting (what a frame does once)."""
        out: list[Inbound] = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout: float = 10.0) -> None:
        """Disconnect and stop the thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True

        async def stop() -> None:
            if self._client is not None:
                await self._client.close()
            if self._relay is not None:
                await self._relay.close()

        if self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(stop(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self.ready.done():
            self.ready.set_exception(ClientClosed("closed before joining"))

    def __enter__(self) -> BackgroundClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BackgroundClient", "DeepRoomError", "Inbound"]
