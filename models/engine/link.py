"""How an engine reaches its room: a small interface and two implementations.

`ClientLink` is the engine's own participant on a relay (a `deeproom.net.BackgroundClient`
of its own): "steer" events addressed to it arrive on a reader thread and go to the
service. `SessionLink` wraps a room session the app already has (`deeproom.scenes.session`
LocalSession or RelaySession, duck-typed: models/ never imports scenes/); its requests come
through `EngineService.request()` (the app's provider call) or, in a local room, through
the session's own event listeners.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol

SteerHandler = Callable[[str, dict[str, Any]], None]


class EngineLink(Protocol):
    participant_id: str

    def current_room(self) -> Any: ...

    def apply(self, op: Mapping[str, Any]) -> Future[Any]: ...

    def put_blob(self, data: bytes) -> Future[str]: ...

    def fetch_blob(self, sha: str) -> bytes: ...

    def send_event(self, kind: str, payload: Mapping[str, Any], to: str | None = None) -> Future[Any]: ...

    def on_steer(self, handler: SteerHandler) -> None: ...

    def close(self) -> None: ...


class ClientLink:
    """The engine as its own participant: a BackgroundClient joined to `room` at `url`."""

    def __init__(self, url: str | None, room: str, name: str = "DeepRoom engine", *, data_dir: Any = None,
                 join_timeout: float = 60.0, **client_options: Any) -> None:
        from deeproom.net import BackgroundClient

        self.client = BackgroundClient(url, room=room, name=name, data_dir=data_dir,
                                       event_kinds=("steer",), **client_options)
        try:
            self.client.wait_ready(join_timeout)
        except BaseException:
            self.client.close()
            raise
        self.participant_id: str = self.client.participant_id
        self.url = self.client.url
        self._handler: SteerHandler | None = None
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="deeproom-engine-link", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        inbox: queue.Queue[Any] = self.client.inbox
        while not self._closed.is_set():
            try:
                item = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if getattr(item, "kind", None) != "event":
                continue
            data = getattr(item, "data", None)
            if not (isinstance(data, tuple) and len(data) == 3 and data[0] == "steer" and isinstance(data[2], dict)):
                continue
            if self._handler is not None:
                self._handler(str(data[1]), dict(data[2]))

    def current_room(self) -> Any:
        return self.client.room

    def apply(self, op: Mapping[str, Any]) -> Future[Any]:
        fut: Future[Any] = self.client.apply(dict(op))
        return fut

    def put_blob(self, data: bytes) -> Future[str]:
        fut: Future[str] = self.client.put_blob(data)
        return fut

    def fetch_blob(self, sha: str) -> bytes:
        data: bytes = self.client.get_blob(sha).result(60)
        return data

    def send_event(self, kind: str, payload: Mapping[str, Any], to: str | None = None) -> Future[Any]:
        fut: Future[Any] = self.client.send_event(kind, dict(payload), to)
        return fut

    def on_steer(self, handler: SteerHandler) -> None:
        self._handler = handler

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=2)
        self.client.close()


class SessionLink:
    """An engine on the app's own session (same participant). `notify(text, error)` tells the
    user (the scenes wire it to a Notice in the session's inbox)."""

    def __init__(self, session: Any, notify: Callable[[str, bool], None] | None = None) -> None:
        self.session = session
        self.notify = notify
        self.participant_id: str = session.participant_id

    def current_room(self) -> Any:
        return self.session.current_room()

    def apply(self, op: Mapping[str, Any]) -> Future[Any]:
        fut: Future[Any] = self.session.apply(op)
        return fut

    def put_blob(self, data: bytes) -> Future[str]:
        fut: Future[str] = self.session.put_blob(data)
        return fut

    def fetch_blob(self, sha: str) -> bytes:
        data: bytes = self.session.fetch_blob(sha)
        return data

    def send_event(self, kind: str, payload: Mapping[str, Any], to: str | None = None) -> Future[Any]:
        fut: Future[Any] = self.session.send_event(kind, payload, to)
        return fut

    def on_steer(self, handler: SteerHandler) -> None:
        on_event = getattr(self.session, "on_event", None)
        if on_event is None:
            return  # a relay session: the app hands requests over with EngineService.request()

        def listen(kind: str, sender: str, payload: Mapping[str, Any]) -> None:
            if kind == "steer" and isinstance(payload, Mapping):
                handler(sender, dict(payload))

        on_event(listen)

    def close(self) -> None:
        """The session belongs to the app, which closes it."""
