"""`RelaySettings`: how a relay runs, and the policy it holds strangers to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOM_CREATION = ("open", "token")
"""Who may create rooms: anyone who joins a room that does not exist yet ("open"), or
only joins that bring the relay's creation token ("token")."""


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """How a relay runs; built from the command line or by `EmbeddedRelay`."""

    data_dir: Path
    """Room store (SQLite), blobs and the invite-signing secret live here."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 0
    """Port to listen on; 0 picks a free one."""
    db_path: Path | None = None
    """SQLite store (default: data_dir/deeproom.sqlite3)."""
    redis_url: str | None = None
    """With a Redis URL, rooms live in Redis and several relays serve them together."""
    tick_hz: float = 30.0
    """Presence batches per second per room."""
    stale_pose_s: float = 2.0
    """A participant whose last pose is older than this is left out of batches."""
    keyframe_s: float = 1.0
    """How often a batch carries every live pose, not only those that changed."""
    backed_up_packets: int = 4
    """A client with more packets than this waiting to be sent is skipped for a tick."""
    max_unacked_batches: int = 6
    """A client that has not confirmed the batches sent to it more than this many ticks ago is
    skipped until it catches up (the backlog may sit in kernel buffers the relay cannot see)."""
    leave_grace_s: float = 10.0
    """A participant who disconnects stays in the room this long, for reconnects."""
    pose_rate: tuple[float, float] = (60.0, 120.0)
    """Poses per second and burst accepted per client (about twice the 30 Hz clients send)."""
    op_rate: tuple[float, float] = (200.0, 400.0)
    """Operations per second and burst accepted per client."""
    event_rate: tuple[float, float] = (100.0, 200.0)
    """Events per second and burst per client (voice signalling sends bursts of candidates)."""
    blob_max_bytes: int = 64 * 1024 * 1024
    """Largest blob accepted."""
    store_max_bytes: int = 4 * 1024 * 1024 * 1024
    """Total size of the relay's blob store."""
    blob_cache_bytes: int = 64 * 1024 * 1024
    """Recently served blobs kept in memory."""
    capacity: int = 32
    """Capacity of rooms created here."""
    idle_room_s: float = 60.0
    """A room nobody has been in for this long is dropped from memory (and its log compacted)."""
    sfu_url: str | None = None
    """The Janus SFU (its HTTP API, http://HOST:PORT/janus) this relay announces in every join
    ack, for teaching rooms' voice above the mesh limit; None: no SFU."""
    record: bool = False
    """Record every room (`deeproom serve --record`): the relay switches each room's `recording` setting on."""

    # --- policy for strangers (per client address) -------------------------------------
    connections_per_address: int = 256
    """Sockets one address may have open at once (a classroom behind one NAT fits)."""
    room_creation: str = "open"
    """"open": a join to a room that does not exist creates it; "token": only a join that
    carries `create_token` does (everyone else is told the room does not exist)."""
    create_token: str | None = None
    """The secret a join must carry to create a room when `room_creation` is "token"."""
    rooms_per_address: tuple[float, float] = (20.0, 20.0)
    """Rooms one address may create: per hour, and at once (a bucket refilled over the hour)."""
    joins_per_address: tuple[float, float] = (10.0, 60.0)
    """Join attempts per second and burst from one address (new connections do not reset it)."""
    password_checks_per_address: tuple[float, float] = (0.5, 8.0)
    """Joins that need a password check (scrypt) per second and burst from one address."""
    password_workers: int = 2
    """Password hashes computed at once on the whole relay (each ~16 MiB, tens of ms)."""
    uploads_per_address: int = 4
    """Blob uploads one address may have in progress at once."""
    upload_bytes_per_address: tuple[float, float] = (1024.0 * 1024 * 1024, 1024.0 * 1024 * 1024)
    """Blob bytes one address may upload: per hour, and at once (announced sizes count)."""

    strikes: tuple[int, float] = (100, 10.0)
    """A socket whose messages are refused this many times within this many seconds (refusals
    for being over a rate not counted) is disconnected, and its address is turned away for
    `penalty_s` (other addresses are not)."""
    penalty_s: float = 10.0
    """How long an address whose socket ran out of strikes may not connect."""
    refusal_pause_s: float = 0.01
    """After a refused message, that socket's next message is read this much later (other
    sockets are not delayed): a flood of refused messages is served at most ~100 a second.
    The pause grows with the refusals the socket had in the strike window (one more
    `refusal_pause_s` per 10 of them, at most `refusal_pause_max_s`), over-rate ones included."""
    refusal_pause_max_s: float = 0.25
    """The longest pause after a refusal (a socket refused all the time is read 4 times a second)."""

    def __post_init__(self) -> None:
        if self.room_creation not in ROOM_CREATION:
            raise ValueError(f"room_creation is one of {', '.join(ROOM_CREATION)}; got {self.room_creation!r}")
        if self.room_creation == "token" and not self.create_token:
            raise ValueError('room_creation="token" needs a create_token')
        if self.password_workers < 1:
            raise ValueError("password_workers must be at least 1")
        if self.sfu_url is not None and not _is_http_url(self.sfu_url):
            raise ValueError(f"sfu_url is the SFU's http(s) URL (http://HOST:PORT/janus); got {self.sfu_url!r}")

    @property
    def store_path(self) -> Path:
        return self.db_path or self.data_dir / "deeproom.sqlite3"


def _is_http_url(url: str) -> bool:
    from urllib.parse import urlsplit

    if len(url) > 2048 or not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed [IPv6 address
        return False
