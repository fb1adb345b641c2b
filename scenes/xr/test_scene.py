"""A ring of coloured panels around the play space, for checking XR by its pixels.

Used before (and besides) the real room: each panel has its own flat, unlit colour
and a known place, so a test can compute where a panel must appear in an eye's
image from the runtime's pose and field of view alone, and look for that colour there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RingPanel:
    name: str
    position: tuple[float, float, float]
    """Centre, Ursina axes (metres)."""
    yaw_deg: float
    """Ursina rotation_y that turns the panel to face the ring's centre."""
    size: tuple[float, float]
    color: tuple[int, int, int]
    """sRGB bytes."""


RING_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (230, 30, 30)),
    ("green", (30, 200, 40)),
    ("blue", (40, 60, 230)),
    ("yellow", (235, 220, 30)),
    ("magenta", (220, 40, 220)),
    ("cyan", (30, 215, 225)),
    ("orange", (245, 140, 20)),
    ("white", (245, 245, 245)),
)
BACKGROUND = (20, 20, 28)


def ring(radius: float = 2.5, height: float = 1.6, size: float = 1.0) -> list[RingPanel]:
    """Eight panels evenly around the origin at eye height; the first straight ahead (+z)."""
    out = []
    for i, (name, colour) in enumerate(RING_COLOURS):
        a = 2 * math.pi * i / len(RING_COLOURS)
        pos = (radius * math.sin(a), height, radius * math.cos(a))
        out.append(RingPanel(name, pos, math.degrees(a), (size, size), colour))
    return out


def build(panels: list[RingPanel]) -> list[object]:
    """Ursina entities for the panels (needs a running Ursina app)."""
    from ursina import Entity, color, window

    window.color = color.rgb32(*BACKGROUND)
    entities: list[object] = []
    for p in panels:
        e = Entity(
            model="quad", color=color.rgb32(*p.color), position=p.position, rotation_y=p.yaw_deg,
            scale=(p.size[0], p.size[1], 1), double_sided=True,
        )
        entities.append(e)
    return entities
