"""How a run talks to a room: a small interface, and its implementation over the relay.

`RoomLink` is what `Run` needs from a room — broadcast a live delta, publish a
panel's content, hand over the steering commands that arrived, close. `RelayLink`
implements it with `deeproom.net.BackgroundClient` (its own asyncio thread; with no
URL it starts an embedded relay on 127.0.0.1), and does the slow part of publishing
(encoding, uploading the blob, `set_content`) on a publisher thread of its own,
newest content per panel winning, so the training loop never waits on the network.
A reader thread takes what arrives: connection status, and "steer" events, which go to
the router (`route()`: the run's engine service takes panel actions) or wait for `poll()`.
`EngineLinkOver(link)` is the same participant as an engine service's link
(`deeproom.models.engine.EngineLink`), so a run hosts its panels' actions through the service.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deeproom.content import encode_content
from deeproom.models.training.errors import TrainingError

log = logging.getLogger(__name__)

ContentFn = Callable[[], tuple[dict[str, Any], dict[str, np.ndarray]]]
"""Builds (meta, arrays) for a content blob; called on the publisher thread."""


PANEL_SIZES = {"metrics": (1.3, 0.85), "latent_cloud": (1.6, 1.0), "confusion_matrix": (1.0, 0.95)}
"""Size of a run's new panels by kind (metres); others get 1.2 x 0.9."""


class RoomLink(Protocol):
    """What a run needs from a room."""

    @property
    def participant_id(self) -> str | None: ...

    def stream(self, payload: dict[str, Any], to: str | None = None) -> None:
        """Send a small live delta (a "stream" event), without waiting."""

    def publish(self, panel_id: str, kind: str, title: str, source: dict[str, Any], make: ContentFn) -> None:
        """Make the panel show this content (creating the panel if it is new), without waiting."""

    def poll(self) -> list[tuple[str, dict[str, Any]]]:
        """The (sender, payload) of each "steer" event that arrived since the last poll."""

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was published so far is in the room; False on timeout."""

    def close(self) -> None: ...


class RelayLink:
    """A RoomLink over a BackgroundClient: the run's own participant in the room."""

    def __init__(self, url: str | None, room: str, name: str = "training run", *, password: str | None = None,
                 invite: str | None = None, data_dir: str | Path | None = None,
                 on_error: Callable[[str], None] | None = None, join_timeout: float = 30.0) -> None:
        from deeproom.net import BackgroundClient

        kwargs: dict[str, Any] = {}
        if password is not None:
            kwargs["password"] = password
        if invite is not None:
            kwargs["invite"] = invite
        self.client = BackgroundClient(url, room=room, name=name, data_dir=data_dir, **kwargs)
        try:
            self.client.wait_ready(join_timeout)
        except Exception as exc:
            self.client.close()
            raise TrainingError(f"the run could not join room {room!r} at {url or 'an embedded relay'}: {exc}") from exc
        self.url = self.client.url
        self.connected = True
        self.room = room
        self._on_error = on_error
        self._panels: set[str] = set()
        self._pending: dict[str, tuple[str, str, dict[str, Any], ContentFn]] = {}
        self._cv = threading.Condition()
        self._busy = False
        self._closed = False
        self._steers: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._router: Callable[[str, dict[str, Any]], bool] | None = None
        self._reading = threading.Event()
        self._reading.set()
        self._publisher = threading.Thread(target=self._publish_loop, name="deeproom-run-publisher", daemon=True)
        self._publisher.start()
        self._reader = threading.Thread(target=self._read, name="deeproom-run-reader", daemon=True)
        self._reader.start()

    @property
    def participant_id(self) -> str | None:
        return getattr(self.client, "participant_id", None)

    def _report(self, message: str) -> None:
        log.warning("%s", message)
        if self._on_error is not None:
            self._on_error(message)

    def stream(self, payload: dict[str, Any], to: str | None = None) -> None:
        if self._closed:
            return
        try:
            fut = self.client.send_event("stream", payload, to=to)
        except Exception as exc:  # the client is gone: the run goes on without the room
            log.debug("stream event not sent: %s", exc)
            return
        if isinstance(fut, Future):
            fut.add_done_callback(_ignore_result)

    def publish(self, panel_id: str, kind: str, title: str, source: dict[str, Any], make: ContentFn) -> None:
        with self._cv:
            if self._closed:
                return
            self._pending[panel_id] = (kind, title, source, make)
            self._cv.notify_all()

    def poll(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        while True:
            try:
                out.append(self._steers.get_nowait())
            except queue.Empty:
                return out

    def route(self, router: Callable[[str, dict[str, Any]], bool] | None) -> None:
        """Give each arriving "steer" event to `router(sender, payload)` first; what it returns
        True for is its own, the rest waits for `poll()`."""
        self._router = router

    def _read(self) -> None:
        inbox: queue.Queue[Any] = self.client.inbox
        while self._reading.is_set():
            try:
                item = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            # While the relay is unreachable, publishing waits (newest content per panel is
            # kept) instead of blocking on timeouts; it resumes on reconnect.
            if self._status(item):
                continue
            steer = _as_steer(item)
            if steer is None:
                continue
            router = self._router
            try:
                if router is not None and router(*steer):
                    continue
            except Exception as exc:  # a bad request must not stop the reader
                log.warning("steer event not handled: %s", exc)
                continue
            self._steers.put(steer)

    def poll_status(self) -> None:
        """Connection status changes are taken by the reader thread as they arrive."""

    def _status(self, item: Any) -> bool:
        if getattr(item, "kind", None) != "status":
            return False
        with self._cv:
            self.connected = item.data == "connected"
            self._cv.notify_all()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was published so far is in the room. False on timeout, or at once
        when the relay is unreachable (what is pending is kept for a reconnect)."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll_status()
            with self._cv:
                if not self._pending and not self._busy:
                    return True
                left = deadline - time.monotonic()
                if not self.connected or left <= 0:
                    return False
                self._cv.wait(min(0.1, left))

    def _publish_loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: bool(self._pending) or self._closed)
                if not self._pending or (self._closed and not self.connected):
                    return
                panel_id = next(iter(self._pending))
                kind, title, source, make = self._pending.pop(panel_id)
                self._busy = True
            try:
                if not self._wait_connected():
                    # Keep it (unless something newer came) and try again when the relay is back.
                    with self._cv:
                        self._pending.setdefault(panel_id, (kind, title, source, make))
                        self._busy = False
                        self._cv.notify_all()
                        self._cv.wait(0.5)
                    continue
                self._publish_one(panel_id, kind, title, source, make)
            except Exception as exc:
                self._report(f"could not publish panel {panel_id}: {type(exc).__name__}: {exc}")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _wait_connected(self) -> bool:
        try:
            self.client.call("wait_connected", 2.0).result(5)
            ok = True
        except Exception:
            ok = False
        with self._cv:
            self.connected = ok
            self._cv.notify_all()
        return ok

    def _publish_one(self, panel_id: str, kind: str, title: str, source: dict[str, Any], make: ContentFn) -> None:
        meta, arrays = make()
        blob = encode_content(meta, arrays)
        sha = self.client.put_blob(blob).result(timeout=20)
        content = {"source": source, "refs": [sha]}
        if panel_id not in self._panels:
            room = getattr(self.client, "room", None)
            exists = room is not None and panel_id in getattr(room, "panels", {})
            if not exists:
                from deeproom.placement import free_slot

                # A free place (never on top of another panel): a run's panels used to share one spot.
                size = PANEL_SIZES.get(kind, (1.2, 0.9))
                beside = next(iter(self._panels), None)
                op = {"op": "add_panel", "panel_id": panel_id, "kind": kind, "title": title[:100],
                      "content": content, "size": list(size), "transform": free_slot(room, beside, size)}
                try:
                    self.client.apply(op).result(timeout=20)
                    self._panels.add(panel_id)
                    return
                except Exception as exc:
                    if "already exists" not in str(exc):
                        raise
            self._panels.add(panel_id)
        self.client.apply({"op": "set_content", "panel_id": panel_id, "content": content}).result(timeout=20)

    def close(self) -> None:
        self.poll_status()
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        # A publish stuck on a dead relay must not hold the script (the thread is a daemon).
        self._publisher.join(timeout=5 if self.connected else 0.5)
        self._reading.clear()
        self._reader.join(timeout=2)
        self.client.close()


class EngineLinkOver:
    """A RelayLink's participant as an engine service's link: the service's panels, blobs and
    "stream" events go out as the run's own; its "steer" handler is the link's router."""

    def __init__(self, link: RelayLink) -> None:
        self.link = link
        self.participant_id: str = link.client.participant_id

    def current_room(self) -> Any:
        return self.link.client.room

    def apply(self, op: Any) -> Future[Any]:
        fut: Future[Any] = self.link.client.apply(dict(op))
        return fut

    def put_blob(self, data: bytes) -> Future[str]:
        fut: Future[str] = self.link.client.put_blob(data)
        return fut

    def fetch_blob(self, sha: str) -> bytes:
        data: bytes = self.link.client.get_blob(sha).result(60)
        return data

    def send_event(self, kind: str, payload: Any, to: str | None = None) -> Future[Any]:
        fut: Future[Any] = self.link.client.send_event(kind, dict(payload), to)
        return fut

    def on_steer(self, handler: Callable[[str, dict[str, Any]], None]) -> None:
        """The run's engine routes steer events itself (see `RelayLink.route`)."""

    def close(self) -> None:
        """The RelayLink belongs to the run, which closes it."""


def _ignore_result(fut: Future[Any]) -> None:
    try:
        fut.result()
    except Exception as exc:
        log.debug("stream event refused: %s", exc)


def _as_steer(item: Any) -> tuple[str, dict[str, Any]] | None:
    """Pick "steer" events out of what the BackgroundClient's inbox holds (Inbound(kind, data))."""
    if getattr(item, "kind", None) != "event":
        return None
    data = getattr(item, "data", None)
    if not isinstance(data, tuple) or len(data) != 3:
        return None
    kind, sender, payload = data
    if kind == "steer" and isinstance(payload, dict):
        return (str(sender), payload)
    return None
