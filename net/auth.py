"""Room passwords (hashed with scrypt) and invite tokens (HMAC-signed by the relay's secret).

An invite token is `<payload>.<signature>`, both base64url: the payload is JSON
{"r": room, "role": role, "exp": unix seconds, "n": nonce}; the signature is
HMAC-SHA256 of the payload with a secret only the relay knows (a file in its data
directory, or a Redis key shared by all nodes). A link is
`deeproom://host:port/<room>?invite=<token>`; clients accept either form.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeproom.errors import ValidationError
from deeproom.net.errors import JoinRefused
from deeproom.state import Role, check_id

# scrypt with n=2**14, r=8 costs ~16 MiB and tens of milliseconds: slow for guessing,
# quick enough to run once per join in a worker thread.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MAX_PASSWORD = 256
MAX_TOKEN = 1024
INVITE_ROLES = (Role.PRESENTER, Role.MEMBER, Role.VIEWER)


def hash_password(password: str, *, salt: bytes | None = None) -> dict[str, Any]:
    """A storable record of `password` (salt, parameters, scrypt hash), never the password."""
    if not isinstance(password, str) or not 1 <= len(password) <= MAX_PASSWORD:
        raise ValidationError(f"a room password is 1-{MAX_PASSWORD} characters")
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return {"salt": salt.hex(), "hash": digest.hex(), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}


def check_password(password: Any, record: dict[str, Any]) -> bool:
    """Whether `password` matches a record from `hash_password` (constant-time compare)."""
    if not isinstance(password, str) or not 1 <= len(password) <= MAX_PASSWORD:
        return False
    digest = hashlib.scrypt(
        password.encode(),
        salt=bytes.fromhex(record["salt"]),
        n=int(record["n"]),
        r=int(record["r"]),
        p=int(record["p"]),
        dklen=32,
    )
    return hmac.compare_digest(digest.hex(), str(record["hash"]))


def load_or_create_secret(path: Path) -> bytes:
    """The relay's signing secret, created (mode 0600) on first use."""
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Invite:
    """What a valid invite grants."""

    room: str
    """The room it lets you into."""
    role: Role
    """The role you get on first joining."""
    expires: float
    """Unix time after which it is refused."""


def make_invite(secret: bytes, room: str, role: Role, ttl_s: float, *, now: float | None = None) -> str:
    """A signed token letting its holder into `room` as `role` for `ttl_s` seconds."""
    check_id(room, "room id")
    if role not in INVITE_ROLES:
        raise ValidationError(f"invites grant presenter, member or viewer; got {role.value}")
    if not 0 < ttl_s <= 365 * 86400:
        raise ValidationError(f"invite lifetime must be in (0, 1 year] seconds; got {ttl_s}")
    exp = (time.time() if now is None else now) + ttl_s
    payload = json.dumps({"r": room, "role": role.value, "exp": round(exp), "n": secrets.token_hex(6)},
                         separators=(",", ":")).encode()
    sig = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(sig)}"


def token_from_link(invite: str) -> str:
    """The token in `deeproom://host:port/room?invite=TOKEN` (or `invite` itself when it is a token)."""
    if "://" in invite or "?" in invite:
        query = urllib.parse.urlsplit(invite).query
        found = urllib.parse.parse_qs(query).get("invite")
        if not found:
            raise ValidationError("an invite link carries its token as ?invite=...")
        return found[0]
    return invite


def invite_link(relay_url: str, room: str, token: str) -> str:
    """A `deeproom://` link for `token` on the relay at `relay_url` (http://host:port)."""
    netloc = urllib.parse.urlsplit(relay_url).netloc
    return f"deeproom://{netloc}/{urllib.parse.quote(room)}?invite={token}"


def relay_url_from_link(link: str) -> tuple[str, str, str]:
    """(relay http URL, room, token) from a `deeproom://` link."""
    parts = urllib.parse.urlsplit(link)
    if parts.scheme != "deeproom":
        raise ValidationError(f"an invite link starts with deeproom://; got {link[:40]!r}")
    room = urllib.parse.unquote(parts.path.lstrip("/"))
    return f"http://{parts.netloc}", check_id(room, "room id"), token_from_link(link)


def verify_invite(secret: bytes, token: Any, room: str, *, now: float | None = None) -> Invite:
    """The invite `token` grants for `room`; raises JoinRefused if it is forged, expired or for another room."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 1:
        raise JoinRefused("the invite is not a valid invite token")
    body, sig = token.split(".")
    try:
        payload = _unb64(body)
        given = _unb64(sig)
    except (ValueError, TypeError):
        raise JoinRefused("the invite is not a valid invite token") from None
    if not hmac.compare_digest(hmac.new(secret, payload, hashlib.sha256).digest(), given):
        raise JoinRefused("the invite's signature is not this relay's (forged or from another relay)")
    try:
        data = json.loads(payload)
        invite = Invite(str(data["r"]), Role(data["role"]), float(data["exp"]))
    except (ValueError, KeyError, TypeError):
        raise JoinRefused("the invite is not a valid invite token") from None
    if invite.room != room:
        raise JoinRefused(f"the invite is for room {invite.room!r}, not {room!r}")
    if invite.expires < (time.time() if now is None else now):
        raise JoinRefused("the invite has expired; ask the host for a new one")
    return invite
