"""Thin wiring between the app's session and the engine service (`deeproom.models.engine`).

All engine code lives in `deeproom.models.engine`; this only turns the engine's messages
into notices in the session's inbox (what the HUD shows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def notifier(session: Any) -> Callable[[str, bool], None]:
    """`notify(text, error)` that puts a Notice into the session's inbox."""
    from deeproom.scenes.session import Notice

    return lambda text, error: session.inbox.put(Notice(text, error=error))


def session_link(session: Any) -> Any:
    """The engine on the app's own session (same participant)."""
    from deeproom.models.engine import SessionLink

    return SessionLink(session, notifier(session))
