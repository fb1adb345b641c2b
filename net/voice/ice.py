"""Which local addresses aiortc offers as ICE host candidates.

aioice gathers host candidates from every interface except loopback and has no
option to choose them; in DeepRoom, voice is offered on addresses we choose:
127.0.0.1 by default (tests, benchmarks and single-machine rooms), or the address
of our own network namespace when talking to Janus (which never gathers on
loopback). The one place aioice looks the addresses up is the module function
`aioice.ice.get_host_addresses`; `host_addresses(...)` replaces it, once, by a
wrapper that returns the addresses chosen in the current asyncio context
(contextvars follow the task that gathers) and otherwise behaves as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Callable, Iterator, Sequence

import aioice.ice

from deeproom.net.voice.errors import VoiceError

LOOPBACK = ("127.0.0.1",)

_chosen: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "deeproom_voice_host_addresses", default=None
)
_original: Callable[[bool, bool], list[str]] | None = None


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _chosen.get()
    if chosen is not None:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]
    assert _original is not None
    return _original(use_ipv4, use_ipv6)


def _install() -> None:
    global _original
    if _original is None:
        _original = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _get_host_addresses


def check_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    out = []
    for a in addresses:
        try:
            out.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise VoiceError(f"ICE host address must be an IP address; got {a!r}") from None
    if not out:
        raise VoiceError("at least one ICE host address is needed")
    return tuple(out)


def set_host_addresses(addresses: Sequence[str] = LOOPBACK) -> None:
    """Offer only `addresses` as host candidates in this context (and tasks it starts)."""
    _install()
    _chosen.set(check_addresses(addresses))


@contextlib.contextmanager
def host_addresses(addresses: Sequence[str] = LOOPBACK) -> Iterator[None]:
    """Within the block (same task), ICE gathers host candidates on `addresses` only."""
    _install()
    token = _chosen.set(check_addresses(addresses))
    try:
        yield
    finally:
        _chosen.reset(token)


async def addresses_towards(url: str, addresses: Sequence[str]) -> tuple[str, ...]:
    """The host addresses to offer a server at `url` (the SFU): `addresses` themselves,
    unless they are all loopback and the server is not -- a server elsewhere (or Janus,
    which never answers loopback candidates) cannot reach them; then the local address
    this machine routes to the server from (a UDP socket's connect: no packet is sent)."""
    import asyncio
    import socket
    from urllib.parse import urlsplit

    chosen = check_addresses(addresses)
    if not all(ipaddress.ip_address(a).is_loopback for a in chosen):
        return chosen
    host = urlsplit(url).hostname
    if not host:
        return chosen
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
    except OSError:
        return chosen  # the SFU itself will say it is unreachable
    for family, _type, _proto, _name, sockaddr in infos:
        if ipaddress.ip_address(sockaddr[0]).is_loopback:
            return chosen
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(sockaddr)
                return (str(s.getsockname()[0]),)
        except OSError:
            continue
    return chosen
