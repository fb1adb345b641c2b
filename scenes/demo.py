"""`deeproom demo`'s engine, wired to the app's session. The engine is
`deeproom.models.engine.hosts.DemoHost` (training, panels, actions); nothing of it lives here."""

from __future__ import annotations

from typing import Any

from deeproom.models.engine.hosts import DEMO_NOTE, DEMO_SLOTS, DemoHost, Slot, slot_transform
from deeproom.scenes.engine_bridge import notifier, session_link

__all__ = ["DEMO_NOTE", "DEMO_SLOTS", "DemoEngine", "Slot", "slot_transform"]


def DemoEngine(session: Any, *, link: Any = None, **kw: Any) -> DemoHost:
    """The demo host on `session` (or on `link`, e.g. the engine's own relay participant)."""
    return DemoHost(link or session_link(session), notify=notifier(session), **kw)
