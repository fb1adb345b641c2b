"""Passwords and invite tokens: pure functions, exact refusals."""

from __future__ import annotations

import pytest

from deeproom.errors import ValidationError
from deeproom.net.auth import (
    check_password,
    hash_password,
    invite_link,
    make_invite,
    relay_url_from_link,
    token_from_link,
    verify_invite,
)
from deeproom.net.errors import JoinRefused
from deeproom.state import Role

SECRET = b"k" * 32


def test_password_hash_is_salted_and_checks() -> None:
    a, b = hash_password("hunter2"), hash_password("hunter2")
    assert a["hash"] != b["hash"] and "hunter2" not in str(a)
    assert check_password("hunter2", a) and not check_password("hunter3", a)
    assert not check_password(None, a) and not check_password("", a)
    with pytest.raises(ValidationError):
        hash_password("")


def test_invite_round_trip_and_link() -> None:
    token = make_invite(SECRET, "room-1", Role.VIEWER, 60, now=1000.0)
    inv = verify_invite(SECRET, token, "room-1", now=1030.0)
    assert inv.role is Role.VIEWER and inv.room == "room-1"
    link = invite_link("http://127.0.0.1:8765", "room-1", token)
    assert link.startswith("deeproom://127.0.0.1:8765/room-1?invite=")
    assert token_from_link(link) == token and token_from_link(token) == token
    assert relay_url_from_link(link) == ("http://127.0.0.1:8765", "room-1", token)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: t, "expired"),
        (lambda t: "x" + t[1:], "signature|valid"),
        (lambda t: t.split(".")[0] + "." + "A" * 43, "signature"),
        (lambda t: "nonsense", "valid"),
        (lambda t: t + ".x", "valid"),
    ],
)
def test_bad_invites_are_refused(mangle: object, message: str) -> None:
    token = make_invite(SECRET, "room-1", Role.MEMBER, 60, now=1000.0)
    with pytest.raises(JoinRefused, match=message):
        verify_invite(SECRET, mangle(token), "room-1", now=2000.0)  # type: ignore[operator]


def test_invite_for_another_room_or_relay_is_refused() -> None:
    token = make_invite(SECRET, "room-1", Role.MEMBER, 60)
    with pytest.raises(JoinRefused, match="for room 'room-1'"):
        verify_invite(SECRET, token, "room-2")
    with pytest.raises(JoinRefused, match="signature"):
        verify_invite(b"other" * 8, token, "room-1")
    with pytest.raises(ValidationError):
        make_invite(SECRET, "room-1", Role.HOST, 60)
