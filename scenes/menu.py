"""Menus as panels in the world (the add-panel menu, a panel's action menu and its
pickers), because a headset's eyes never see 2-D overlay UI.

It opens a metre in front of the viewer's head, turned to face them (yaw only, so it
stands upright), and is picked with the same rays as everything else: the mouse's
on the desktop, the right controller's laser in XR. Where the rows are and which row a
ray hits is plain geometry (`MenuGeometry`), tested without rendering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deeproom.scenes import geometry
from deeproom.state import PanelKind

ROW = 0.05  # metres per row
WIDTH = 0.42
DISTANCE = 1.0  # metres in front of the eyes
DROP = 0.1  # a little below eye level, where a hand-held menu would be
TITLE = "Add a panel"


MARK = 0.032
"""Side of a row's mark (metres)."""
CHAR = 0.021  # metres per character of a row's text at its scale (for the menu's width)
MAX_WIDTH = 1.4


@dataclass(frozen=True)
class MenuGeometry:
    """A menu of `items` rows (below a title row) placed at `position` with `rotation`;
    rows whose `enabled` is False are drawn greyed and cannot be picked."""

    items: tuple[str, ...]
    position: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    title: str = TITLE
    enabled: tuple[bool, ...] = ()

    @property
    def width(self) -> float:
        longest = max([len(self.title), *(len(i) + 5 for i in self.items)])
        return float(min(max(WIDTH, 0.04 + CHAR * longest), MAX_WIDTH))

    @property
    def size(self) -> tuple[float, float]:
        return self.width, ROW * (len(self.items) + 1)

    def is_enabled(self, row: int) -> bool:
        return row >= len(self.enabled) or self.enabled[row]

    def frame(self) -> geometry.PanelFrame:
        return geometry.PanelFrame.of(self.position, self.rotation, (1.0, 1.0, 1.0), self.size)

    def row_centre(self, i: int) -> tuple[float, float]:
        """Face coordinates (metres from the centre) of row `i`'s middle."""
        return 0.0, self.size[1] / 2 - ROW * (i + 1.5)

    def pick(self, origin: Sequence[float], direction: Sequence[float]) -> int | None:
        """The item row a ray hits, or None (the title row, or off the menu)."""
        hit = geometry.ray_panel(origin, direction, self.frame())
        if hit is None:
            return None
        row = int((self.size[1] / 2 - hit[3]) // ROW) - 1
        return row if 0 <= row < len(self.items) else None


def in_front_of(head_position: Sequence[float], head_rotation: Sequence[float],
                items: Sequence[str] | None = None, *, title: str = TITLE,
                enabled: Sequence[bool] = ()) -> MenuGeometry:
    """A menu a metre in front of a head, facing it, upright whatever the head's pitch."""
    p = geometry.ahead(head_position, head_rotation, DISTANCE) - np.array([0.0, DROP, 0.0])
    kinds = tuple(items) if items is not None else tuple(k.value for k in PanelKind)
    # turned to face the eyes: its -z face looks back along the way the viewer looks
    return MenuGeometry(kinds, (float(p[0]), float(p[1]), float(p[2])), geometry.facing_quat(p, head_position),
                        title[:60], tuple(bool(e) for e in enabled))


class WorldMenu:
    """The entities of the menu; `open(head)` places and shows it, `close()` hides it."""

    def __init__(self) -> None:
        self.geometry: MenuGeometry | None = None
        self.root: Any = None

    @property
    def is_open(self) -> bool:
        return self.geometry is not None

    def open(self, head_position: Sequence[float], head_rotation: Sequence[float], parent: Any = None,
             items: Sequence[str] | None = None, *, title: str = TITLE, enabled: Sequence[bool] = (),
             marks: Sequence[tuple[float, float, float] | None] = (), keep_place: bool = False) -> MenuGeometry:
        """Show the menu (the panel kinds unless `items` are given) in front of a head; `marks`
        draws a coloured square at the right end of rows (a raised hand); `keep_place` opens it
        where the open one stands (a submenu, a refresh)."""
        from dataclasses import replace

        from panda3d.core import Quat
        from ursina import Entity, Text, color

        old = self.geometry
        self.close()
        g = in_front_of(head_position, head_rotation, items, title=title, enabled=enabled)
        if keep_place and old is not None:
            top = old.position[1] + old.size[1] / 2  # the top edge stays where it was
            g = replace(g, position=(old.position[0], top - g.size[1] / 2, old.position[2]), rotation=old.rotation)
        w, h = g.size
        self.root = Entity(name="world-menu", position=g.position, **({"parent": parent} if parent is not None else {}))
        self.root.set_quat(Quat(*g.rotation))
        Entity(parent=self.root, model="quad", scale=(w, h), z=0.004, color=color.rgb(0.1, 0.11, 0.16))
        Entity(parent=self.root, model="quad", scale=(w, ROW), y=h / 2 - ROW / 2, z=0.002,
               color=color.rgb(0.2, 0.32, 0.55))
        Text(g.title, parent=self.root, origin=(-0.5, 0), scale=1.9, position=(-w / 2 + 0.02, h / 2 - ROW / 2, -0.001),
             color=color.rgb(0.95, 0.96, 1))
        for i, kind in enumerate(g.items):
            _, y = g.row_centre(i)
            if i % 2:
                Entity(parent=self.root, model="quad", scale=(w, ROW), y=y, z=0.003, color=color.rgb(0.14, 0.15, 0.21))
            on = g.is_enabled(i)
            number = f"{(i + 1) % 10}  " if i < 10 else "    "
            Text(f"{number}{kind.replace('_', ' ')}", parent=self.root, origin=(-0.5, 0), scale=1.7,
                 position=(-w / 2 + 0.02, y, -0.001),
                 color=color.rgb(0.85, 0.88, 0.95) if on else color.rgb(0.45, 0.47, 0.52))
            mark = marks[i] if i < len(marks) else None
            if mark is not None:
                Entity(parent=self.root, model="quad", scale=(MARK, MARK), position=(w / 2 - MARK, y, -0.002),
                       color=color.rgb(*mark))
        self.geometry = g
        return g

    def close(self) -> None:
        if self.root is not None:
            from ursina import destroy

            destroy(self.root)
        self.root = None
        self.geometry = None

