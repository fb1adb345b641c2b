"""`deeproom open`'s engine, wired to the app's session. The engine is
`deeproom.models.engine.hosts.ModelsHost`; nothing of it lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deeproom.models.engine.hosts import ModelsHost, side_by_side
from deeproom.scenes.engine_bridge import notifier, session_link

__all__ = ["ModelsEngine", "side_by_side"]


def ModelsEngine(session: Any, paths: list[Path], *, link: Any = None, **kw: Any) -> ModelsHost:
    """The open host on `session` (or on `link`, e.g. the engine's own relay participant)."""
    return ModelsHost(link or session_link(session), paths, notify=notifier(session), **kw)
