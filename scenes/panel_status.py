"""A strip along the bottom of a panel's face: an action's progress bar while it is
queued or running, or the message of one that failed or was refused (red)."""

from __future__ import annotations

from typing import Any

from ursina import Entity, Text, color, destroy

STRIP = 0.06
"""Height of the strip (metres, before the panel's scale)."""
Z = -0.012
"""In front of the face (content draws at z >= -0.01)."""
BAR_COLOUR = (0.3, 0.62, 1.0)
TRACK_COLOUR = (0.12, 0.14, 0.2)
ERROR_COLOUR = (0.62, 0.12, 0.14)


class StatusStrip:
    def __init__(self, parent: Any, size: tuple[float, float]) -> None:
        self.parent = parent
        self.size = size
        self.state: tuple[float | None, str, bool] | None = None
        self.entities: list[Any] = []

    def show(self, progress: float | None, text: str, error: bool, size: tuple[float, float]) -> None:
        """progress in [0, 1] draws a bar (None: no bar); error draws the strip red."""
        state = (None if progress is None else round(progress, 3), text[:80], error)
        if state == self.state and size == self.size:
            return
        self.clear()
        self.state, self.size = state, size
        w, h = size
        y = -h / 2 + STRIP / 2
        track = Entity(parent=self.parent, model="quad", scale=(w, STRIP), position=(0, y, Z),
                       color=color.rgb(*(ERROR_COLOUR if error else TRACK_COLOUR)))
        self.entities = [track]
        if progress is not None and not error:
            p = max(0.02, min(1.0, progress))
            self.entities.append(Entity(parent=self.parent, model="quad", scale=(w * p, STRIP * 0.7),
                                        position=(-w / 2 + w * p / 2, y, Z - 0.001), color=color.rgb(*BAR_COLOUR)))
        if text:
            self.entities.append(Text(text[:80], parent=self.parent, origin=(-0.5, 0), scale=1.6,
                                      position=(-w / 2 + 0.015, y, Z - 0.002), color=color.rgb(0.96, 0.97, 1)))

    def clear(self) -> None:
        for e in self.entities:
            destroy(e)
        self.entities = []
        self.state = None
