"""Voice signalling: the messages peers exchange, and the transport that carries them.

Messages are small dicts sent as the relay's "signal" event to one participant. They
are parsed and validated here (pure functions, round-trip tested) before anything
acts on them. Candidates travel inside the SDP: aiortc gathers all of its (host)
candidates before it makes an offer or answer, so there is no separate trickle.

The transport is a Protocol, so the same session runs over the real relay
(`RelaySignalling`, a RoomClient's "signal" events) and over an in-memory hub in
unit tests (`MemorySignalHub`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from deeproom.net.voice.errors import SignalError

MAX_SDP = 64 * 1024
KINDS = ("offer", "answer", "hello", "bye", "sfu", "ask")

SignalHandler = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class VoiceSignal:
    """One voice signalling message."""

    kind: str
    """offer / answer (with sdp), hello (please offer me), bye (I hung up), sfu (SFU access),
    ask (please send me the SFU access)."""
    link: int
    """Which connection attempt this belongs to; a newer link replaces an older one."""
    sdp: str | None = None
    """Session description, for offer and answer."""
    sfu: Mapping[str, Any] | None = None
    """For kind sfu: {url, room, pin} to join the SFU room, or None to go back to mesh."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"voice": self.kind, "link": self.link}
        if self.sdp is not None:
            out["sdp"] = self.sdp
        if self.kind == "sfu":
            out["sfu"] = None if self.sfu is None else dict(self.sfu)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> VoiceSignal:
        if not isinstance(data, Mapping):
            raise SignalError(f"a voice signal must be an object; got {type(data).__name__}")
        kind = data.get("voice")
        if kind not in KINDS:
            raise SignalError(f"voice signal kind must be one of {', '.join(KINDS)}; got {kind!r:.40}")
        link = data.get("link")
        if isinstance(link, bool) or not isinstance(link, int) or not 0 <= link < 2**53:
            raise SignalError(f"voice signal link must be a whole number >= 0; got {link!r:.40}")
        sdp = data.get("sdp")
        if kind in ("offer", "answer"):
            if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP:
                raise SignalError(f"a voice {kind} needs an SDP starting with 'v=0', at most {MAX_SDP} bytes")
        elif sdp is not None:
            raise SignalError(f"a voice {kind} carries no SDP")
        sfu = data.get("sfu")
        if kind == "sfu" and sfu is not None:
            sfu = parse_sfu_access(sfu)
        return cls(kind, link, sdp, sfu)


def parse_sfu_access(data: Any) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise SignalError("SFU access must be an object with url, room and pin")
    url, room, pin = data.get("url"), data.get("room"), data.get("pin")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 512:
        raise SignalError(f"SFU url must be an http(s) URL; got {url!r:.80}")
    if isinstance(room, bool) or not isinstance(room, int) or not 0 < room < 2**53:
        raise SignalError(f"SFU room must be a positive whole number; got {room!r:.40}")
    if not isinstance(pin, str) or len(pin) > 128:
        raise SignalError("SFU pin must be text of at most 128 characters")
    return {"url": url, "room": room, "pin": pin}


class SignalTransport(Protocol):
    """Carries voice signals to one participant and delivers those sent to us."""

    @property
    def participant_id(self) -> str: ...

    async def send(self, to: str, payload: dict[str, Any]) -> None: ...

    def on_signal(self, handler: SignalHandler) -> None: ...


class MemorySignalHub:
    """An in-memory switchboard for unit tests: every endpoint can reach every other."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[SignalHandler]] = {}

    def endpoint(self, participant_id: str) -> MemorySignalEndpoint:
        self._handlers.setdefault(participant_id, [])
        return MemorySignalEndpoint(self, participant_id)

    def drop(self, participant_id: str) -> None:
        self._handlers.pop(participant_id, None)

    async def deliver(self, sender: str, to: str, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # like a network: never re-entrant
        for handler in list(self._handlers.get(to, ())):
            handler(sender, dict(payload))


class MemorySignalEndpoint:
    def __init__(self, hub: MemorySignalHub, participant_id: str) -> None:
        self._hub = hub
        self._pid = participant_id

    @property
    def participant_id(self) -> str:
        return self._pid

    async def send(self, to: str, payload: dict[str, Any]) -> None:
        await self._hub.deliver(self._pid, to, payload)

    def on_signal(self, handler: SignalHandler) -> None:
        self._hub._handlers.setdefault(self._pid, []).append(handler)


class _EventClient(Protocol):
    participant_id: str

    def send_event(self, kind: str, payload: dict[str, Any], to: str | None = None) -> Awaitable[Any]: ...

    def on_event(self, kind: str, handler: Callable[[str, dict[str, Any]], Any]) -> Any: ...


class RelaySignalling:
    """Voice signals over a RoomClient's "signal" events (one participant at a time)."""

    def __init__(self, client: _EventClient, accept: Callable[[str, dict[str, Any]], bool] | None = None) -> None:
        self._client = client
        self._accept = accept
        self._handlers: list[SignalHandler] = []
        client.on_event("signal", self._dispatch)

    @property
    def participant_id(self) -> str:
        return self._client.participant_id

    def _dispatch(self, sender: str, payload: dict[str, Any]) -> None:
        if not isinstance(payload, Mapping) or "voice" not in payload:
            return  # other parts may signal too
        if self._accept is not None and not self._accept(sender, dict(payload)):
            return
        for h in list(self._handlers):
            h(sender, dict(payload))

    async def send(self, to: str, payload: dict[str, Any]) -> None:
        await self._client.send_event("signal", payload, to=to)

    def on_signal(self, handler: SignalHandler) -> None:
        self._handlers.append(handler)
