"""How the scene talks to a room: one session object, one inbox queue.

The app never touches sockets or files. It talks to a `Session`: `apply(op)` for
core operations, `publish_pose`, `put_blob`/`fetch_blob`, `send_event`, and ONE
thread-safe `inbox` queue that everything arriving (room snapshots, poses, events,
connection status, prepared content from the content worker) is put into and that
the app drains once per frame. `translate` turns whatever a session puts in its
inbox into the scene's messages below.

Two sessions exist:
- `LocalSession`: a room document in this process (solo use, no server; also how
  rendering tests drive state precisely);
- `RelaySession`: a `deeproom.net.BackgroundClient` connected to a relay.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from deeproom.document import RoomDocument
from deeproom.errors import DeepRoomError
from deeproom.presence import Pose
from deeproom.state import Room
from deeproom.storage import sha256_hex


@dataclass(frozen=True)
class RoomUpdate:
    room: Room


@dataclass(frozen=True)
class PosesUpdate:
    poses: Mapping[str, Pose]


@dataclass(frozen=True)
class EventMessage:
    kind: str
    sender: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class StatusUpdate:
    connected: bool
    text: str


@dataclass(frozen=True)
class Notice:
    """Something to tell the user (an operation refused, a file not found)."""

    text: str
    error: bool = True


@dataclass(frozen=True)
class ContentReady:
    panel_id: str
    key: str
    prepared: Any
    meta: Mapping[str, Any] | None = None
    """The small part of the blob's meta the app acts on (classes, tiles, image size)."""


SceneMessage = RoomUpdate | PosesUpdate | EventMessage | StatusUpdate | Notice | ContentReady


class Session(Protocol):
    inbox: queue.Queue[Any]
    participant_id: str

    def current_room(self) -> Room | None: ...

    def apply(self, op: Mapping[str, Any]) -> concurrent.futures.Future[Any]: ...

    def publish_pose(self, pose: Pose) -> None: ...

    def fetch_blob(self, sha: str) -> bytes: ...

    def put_blob(self, data: bytes) -> concurrent.futures.Future[str]: ...

    def send_event(self, kind: str, payload: Mapping[str, Any], to: str | None = None) -> concurrent.futures.Future[Any]: ...

    def set_muted(self, muted: bool) -> bool:
        """Mute or unmute your microphone; False when this session carries no voice."""
        ...

    def press_to_talk(self, pressed: bool) -> bool:
        """Push-to-talk pressed or released; False when this session carries no voice."""
        ...

    def call(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """A relay call by name (kick, create_invite_link, save_layout, ...); a local room refuses."""
        ...

    def translate(self, item: Any) -> list[SceneMessage]: ...

    def close(self) -> None: ...


def _done(value: Any = None, exc: BaseException | None = None) -> concurrent.futures.Future[Any]:
    f: concurrent.futures.Future[Any] = concurrent.futures.Future()
    if exc is not None:
        f.set_exception(exc)
    else:
        f.set_result(value)
    return f


class LocalSession:
    """A room held in this process: operations apply at once, blobs live in memory."""

    def __init__(self, doc: RoomDocument, participant_id: str, blobs: dict[str, bytes] | None = None) -> None:
        self.doc = doc
        self.participant_id = participant_id
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.blobs: dict[str, bytes] = blobs if blobs is not None else {}
        self._lock = threading.Lock()
        self._events: list[Callable[[str, str, Mapping[str, Any]], None]] = []
        self._sub = doc.observe(lambda change: self.inbox.put(RoomUpdate(doc.snapshot())))
        self.inbox.put(RoomUpdate(doc.snapshot()))
        self.inbox.put(StatusUpdate(True, "local room (no server)"))

    def current_room(self) -> Room | None:
        return self.doc.snapshot()

    def apply(self, op: Mapping[str, Any]) -> concurrent.futures.Future[Any]:
        # The engine thread applies too; the document is only touched under this lock.
        try:
            with self._lock:
                self.doc.apply(dict(op), self.participant_id)  # returns the update; callers get the room
                return _done(self.doc.snapshot())
        except DeepRoomError as exc:
            return _done(exc=exc)

    def publish_pose(self, pose: Pose) -> None:
        """Nobody else is in a local room; the pose goes nowhere."""

    def fetch_blob(self, sha: str) -> bytes:
        with self._lock:
            data = self.blobs.get(sha)
        if data is None:
            raise KeyError(f"blob {sha[:12]}… is not in this room's content store")
        return data

    def put_blob(self, data: bytes) -> concurrent.futures.Future[str]:
        sha = sha256_hex(data)
        with self._lock:
            self.blobs[sha] = bytes(data)
        return _done(sha)

    def send_event(self, kind: str, payload: Mapping[str, Any], to: str | None = None) -> concurrent.futures.Future[Any]:
        for cb in list(self._events):
            cb(kind, self.participant_id, payload)
        if kind == "stream":  # a stream reaches everyone in the room: here, the app itself
            self.inbox.put(EventMessage(kind, self.participant_id, dict(payload)))
        return _done(None)

    def set_muted(self, muted: bool) -> bool:
        return False  # a local room has nobody to talk to

    def press_to_talk(self, pressed: bool) -> bool:
        return False

    def call(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return _done(exc=DeepRoomError(f"{method.replace('_', ' ')} needs a relay; this room is local"))

    def on_event(self, callback: Callable[[str, str, Mapping[str, Any]], None]) -> None:
        """Local listeners (e.g. the demo's engine) for events the user sends."""
        self._events.append(callback)

    def translate(self, item: Any) -> list[SceneMessage]:
        return [item] if isinstance(item, RoomUpdate | PosesUpdate | EventMessage | StatusUpdate | Notice | ContentReady) else []

    def close(self) -> None:
        self._sub.unsubscribe()


class RelaySession:
    """A room on a relay, through a `deeproom.net.BackgroundClient` (its inbox is the one queue)."""

    def __init__(self, client: Any, *, fetch_timeout: float = 60.0, voice: bool = False,
                 voice_options: Mapping[str, Any] | None = None) -> None:
        """`voice_options`: keyword arguments for `BackgroundVoice` (config, source, use_devices)."""
        self.client = client
        self.inbox: queue.Queue[Any] = client.inbox
        self.participant_id: str = client.participant_id  # waits for the join
        self.fetch_timeout = fetch_timeout
        self.voice: Any = None
        if voice:
            # Voice runs on the client's own loop; its notices ("no microphone ...") arrive in
            # the same inbox as everything else. Poses then go through it (speaking flag).
            from deeproom.net.voice.background import BackgroundVoice

            self.voice = BackgroundVoice(client, **dict(voice_options or {}))
        room = client.room
        if room is not None:
            self.inbox.put(RoomUpdate(room))
        self.inbox.put(StatusUpdate(True, "connected"))

    def current_room(self) -> Room | None:
        room: Room | None = self.client.room
        return room

    def apply(self, op: Mapping[str, Any]) -> concurrent.futures.Future[Any]:
        try:
            fut: concurrent.futures.Future[Any] = self.client.apply(dict(op))
            return fut
        except DeepRoomError as exc:
            return _done(exc=exc)

    def publish_pose(self, pose: Pose) -> None:
        if self.voice is not None:
            self.voice.publish_pose(pose)
        else:
            self.client.publish_pose(pose)

    def set_muted(self, muted: bool) -> bool:
        """Mute or unmute your microphone; False when this session has no voice."""
        if self.voice is None:
            return False
        self.voice.set_muted(muted)
        return True

    def press_to_talk(self, pressed: bool) -> bool:
        if self.voice is None:
            return False
        # Only presses: whether this voice needs the key (push-to-talk) follows the room (students
        # in a teaching/SFU room; `set_voice` "sfu"), unless set_talk_mode chose for this user.
        self.voice.press_to_talk(pressed)
        return True

    def set_talk_mode(self, mode: str | None) -> bool:
        """This user's own talk mode, "open" or "push" (None: what the room decides)."""
        if self.voice is None:
            return False
        self.voice.set_talk_mode(mode)
        return True

    def fetch_blob(self, sha: str) -> bytes:
        data: bytes = self.client.get_blob(sha).result(self.fetch_timeout)
        return data

    def put_blob(self, data: bytes) -> concurrent.futures.Future[str]:
        fut: concurrent.futures.Future[str] = self.client.put_blob(data)
        return fut

    def send_event(self, kind: str, payload: Mapping[str, Any], to: str | None = None) -> concurrent.futures.Future[Any]:
        try:
            fut: concurrent.futures.Future[Any] = self.client.send_event(kind, dict(payload), to)
            if kind == "stream":  # the relay sends a stream to everyone else; this app sees its own too
                self.inbox.put(EventMessage(kind, self.participant_id, dict(payload)))
            return fut
        except DeepRoomError as exc:
            return _done(exc=exc)

    def call(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Any RoomClient call by name, run on the client's thread (kick, create_invite_link, layouts)."""
        fut: concurrent.futures.Future[Any] = self.client.call(method, *args, **kwargs)
        return fut

    def translate(self, item: Any) -> list[SceneMessage]:
        if isinstance(item, RoomUpdate | PosesUpdate | EventMessage | StatusUpdate | Notice | ContentReady):
            return [item]
        kind = getattr(item, "kind", None)
        data = getattr(item, "data", None)
        if kind == "change":
            room = getattr(data, "room", None)
            return [RoomUpdate(room)] if isinstance(room, Room) else []
        if kind == "poses" and isinstance(data, Mapping):
            return [PosesUpdate(data)]
        if kind == "event" and isinstance(data, tuple) and len(data) == 3 and isinstance(data[2], Mapping):
            return [EventMessage(str(data[0]), str(data[1]), data[2])]
        if kind == "status":
            return [StatusUpdate(data == "connected", str(data))]
        if kind == "refused" and isinstance(data, tuple) and len(data) == 2:
            op = data[0].get("op") if isinstance(data[0], Mapping) else "operation"
            return [Notice(f"{op} refused by the room: {data[1]}")]
        if kind == "error":
            return [Notice(f"relay: {data}")]
        if kind == "voice":
            return [Notice(str(data))]
        return []

    def close(self) -> None:
        if self.voice is not None:
            self.voice.close()
        self.client.close()
