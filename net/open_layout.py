"""`deeproom open --layout FILE`: put the opened room's panels where a layout file has them.

The file is read and checked before anything opens (`check_layout_file`). Once the engine
has published its panels (its `ready` event) and the room has the file's panels, or has
stopped gaining panels for a moment, the file is imported as a version of the room's
layouts and loaded, on a thread of its own: the render loop never waits for it. Panels
of the file that the room lacks are listed as not loaded (unless their content is still
on the relay, which puts them back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deeproom.errors import DeepRoomError
from deeproom.layout import Layout, read_layout_file

SETTLE_S = 2.0
"""The room counts as published when it has gained no panel for this long."""


def check_layout_file(path: str | Path) -> Layout:
    """The file's layout, or LayoutFileError with the reason (before the room opens)."""
    return read_layout_file(path)


def layout_name(path: str | Path) -> str:
    """The name the file is saved under in the room: its stem, printable and at most 64 characters."""
    stem = "".join(ch for ch in Path(path).stem if ch.isprintable()).strip()
    return stem[:64] or "layout file"


def load_when_published(client: Any, layout: Layout, path: str | Path, ready: threading.Event,
                        say: Callable[[str], None], *, timeout: float = 120.0) -> threading.Thread:
    """Start a thread that loads `layout` into `client`'s room (a BackgroundClient) once
    `ready` is set and the panels have arrived; it reports what happened through `say`."""

    def run() -> None:
        deadline = time.monotonic() + timeout
        ready.wait(timeout)
        wanted = {p.id for p in layout.panels}
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            room = client.room
            have = set(room.panels) if room is not None else set()
            if wanted <= have:
                break
            if len(have) != seen:
                seen, since = len(have), time.monotonic()
            elif time.monotonic() - since > SETTLE_S:
                break
            time.sleep(0.1)
        name = layout_name(path)
        try:
            info = client.import_layout(layout, name).result(60)
            loaded = client.load_layout(name, info.version).result(60)
        except DeepRoomError as exc:
            say(f"layout {path}: not loaded: {exc}")
            return
        say(f"layout {path}: loaded as {name!r} version {info.version} ({loaded.changed} changes)")
        for n in loaded.not_loaded:
            say(f"layout {path}: panel {n.panel_id!r} not loaded: {n.reason}")

    thread = threading.Thread(target=run, name="deeproom-open-layout", daemon=True)
    thread.start()
    return thread
