"""How readable a model graph's group labels are from where the viewer stands.

Each collapsed group's box on a graph panel is one label to read. A label counts as
readable when, projected through the app's camera onto its screen, the height of a
capital letter is at least `READABLE_CAP_PX` pixels and the whole label lies on the
screen. A group box whose label is not drawn at all counts as unreadable. Capital
height is measured, not assumed: the font's capital "H" is laid out once to find its
height in the labels' own units, and each label's is projected from there.

`readable_group_labels_ratio(app)` is the room benchmark's `readable_group_labels_ratio`
(DenseNet-121 opened by `deeproom open`, 1280x720, the default viewpoint).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

READABLE_CAP_PX = 9.0
"""Smallest readable capital height in pixels. About 9 px capitals is a 13 px font
(cap height ~0.7 em): the size of ordinary desktop UI text at 1280x720."""


@dataclass(frozen=True, slots=True)
class LabelHeight:
    """One group box's label as the camera sees it."""

    panel_id: str
    group: str
    text: str
    cap_px: float
    """Height of a capital letter on the screen, pixels (0 when the label is not drawn)."""
    on_screen: bool
    """The whole label is inside the screen (and in front of the camera)."""

    def readable(self, min_px: float = READABLE_CAP_PX) -> bool:
        return self.on_screen and self.cap_px >= min_px


_cap_local: float | None = None


def _cap_height_local() -> float:
    """Height of a capital "H" in a label's own units (the same font and text scale)."""
    global _cap_local
    if _cap_local is None:
        from ursina import Text, destroy

        probe = Text("H", origin=(0, 0), enabled=True)
        lo, hi = probe.getTightBounds(probe)
        _cap_local = float(hi[1] - lo[1])  # glyphs lie in the x-y plane of the Text node
        destroy(probe)
    return _cap_local


def group_label_heights(app: Any, panel_ids: Iterable[str] | None = None) -> list[LabelHeight]:
    """Every collapsed group box of every graph panel (or of `panel_ids`), as seen now."""
    from panda3d.core import Point3

    from deeproom.scenes.views import GraphView

    cap = _cap_height_local()
    w, h = app.screen_size()
    render = app.ursina.render
    wanted = set(panel_ids) if panel_ids is not None else None
    out: list[LabelHeight] = []
    for pid, view in app.panels.items():
        content = view.content
        if (wanted is not None and pid not in wanted) or not isinstance(content, GraphView) or content.layout is None:
            continue
        drawn = dict(content.labels)
        for i, nd in enumerate(content.layout.nodes):
            if not nd.collapsed:
                continue
            t = drawn.get(i)
            if t is None:
                out.append(LabelHeight(pid, str(nd.group), nd.label, 0.0, False))
                continue
            lo, hi = t.getTightBounds(t)
            cx, cy = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2
            top = app.world_to_screen(render.getRelativePoint(t, Point3(cx, cy + cap / 2, 0)))
            bottom = app.world_to_screen(render.getRelativePoint(t, Point3(cx, cy - cap / 2, 0)))
            corners = [app.world_to_screen(render.getRelativePoint(t, Point3(x, y, 0)))
                       for x in (lo[0], hi[0]) for y in (lo[1], hi[1])]
            on = all(c is not None and 0 <= c[0] <= w and 0 <= c[1] <= h for c in corners)
            px = 0.0 if top is None or bottom is None else float(((top[0] - bottom[0]) ** 2 + (top[1] - bottom[1]) ** 2) ** 0.5)
            out.append(LabelHeight(pid, str(nd.group), nd.label, px, on))
    return out


def readable_group_labels_ratio(app: Any, min_px: float = READABLE_CAP_PX,
                                panel_ids: Iterable[str] | None = None) -> float:
    """Share of the group boxes on graph panels whose label is readable from the camera
    (capital height >= `min_px` pixels, wholly on screen); 0.0 when no group is shown."""
    seen = group_label_heights(app, panel_ids)
    return sum(1 for s in seen if s.readable(min_px)) / len(seen) if seen else 0.0
