"""Finding a layer: type a name (desktop `/`) or pick a group from a list (XR), and go there.

Every model graph on show is searched with `GraphView.find` (layers and groups, drawn or
hidden inside collapsed groups). Jumping to a hit expands what hides it
(`GraphView.focus`), outlines it and moves the viewer in front of it
(`geometry.viewpoint_facing`), so its label is readable. On the desktop the typed text
and the best hits show in the HUD (Enter jumps to the highlighted one, Tab moves the
highlight, Escape closes); in a headset, where there is no keyboard, a graph panel's
action menu has a "Search layer" row whose picker lists the graph's groups (or its
layers when it has none).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from deeproom.scenes import geometry
from deeproom.scenes.views import GraphView

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

MAX_QUERY = 60
SHOWN = 5
"""Hits listed in the HUD."""
READ_DISTANCE = 1.2
"""Metres in front of a found layer the viewer is put."""


class Hit(NamedTuple):
    panel_id: str
    key: str
    """graph_layout.Match.key: "n:<node id>" or "g:<group id>"."""
    name: str
    kind: str


class LayerSearch:
    def __init__(self, app: RoomApp) -> None:
        self.app = app
        self.active = False
        self.text = ""
        self.hits: list[Hit] = []
        self.highlight = 0

    def open(self) -> None:
        self.active, self.text, self.hits, self.highlight = True, "", [], 0

    def close(self) -> None:
        self.active = False

    def key(self, name: str) -> None:
        """A key while the search is open: text, backspace, tab, enter, escape."""
        if name == "escape":
            self.close()
        elif name == "enter":
            if self.hits:
                h = self.hits[self.highlight % len(self.hits)]
                self.close()
                self.jump(h.panel_id, h.key)
            else:
                self.app.notify(f"no layer or group named like {self.text!r}" if self.text else "type a layer name")
        elif name == "tab":
            self.highlight = (self.highlight + 1) % max(len(self.hits), 1)
        elif name == "backspace":
            self.text = self.text[:-1]
            self.update_hits()
        elif name == "space":
            self.type(" ")
        elif len(name) == 1 and name.isprintable():
            self.type(name)

    def type(self, text: str) -> None:
        self.text = (self.text + text)[:MAX_QUERY]
        self.update_hits()

    def update_hits(self) -> None:
        hits: list[Hit] = []
        for pid, view in self.app.panels.items():
            if isinstance(view.content, GraphView):
                hits += [Hit(pid, m.key, m.name, m.kind) for m in view.content.find(self.text, SHOWN)]
        self.hits = hits[: SHOWN * 2]
        self.highlight = 0

    def hud_text(self) -> str:
        """What the HUD shows while the search is open."""
        if not self.active:
            return ""
        lines = [f"Find layer: {self.text}_   (Enter go · Tab next · Esc close)"]
        for i, h in enumerate(self.hits[:SHOWN]):
            title = self.app.panels[h.panel_id].panel.title if h.panel_id in self.app.panels else h.panel_id
            mark = ">" if i == self.highlight % max(len(self.hits), 1) else " "
            lines.append(f"{mark} {h.name} ({h.kind}) · {title[:30]}")
        if self.text and not self.hits:
            lines.append("  no match")
        return "\n".join(lines)

    def choices(self, panel_id: str) -> list[tuple[str, str]]:
        """(label, key) rows for picking without a keyboard: the graph's groups, outermost
        first, or its layers when it has no groups."""
        view = self.app.panels.get(panel_id)
        if view is None or not isinstance(view.content, GraphView):
            return []
        ix = view.content.index
        if ix.group_name:
            order = sorted(ix.group_name, key=lambda g: (ix.depth.get(g, 0), ix.group_name[g]))
            return [("  " * min(ix.depth.get(g, 0), 4) + ix.group_name[g], "g:" + g) for g in order]
        return [(name, "n:" + nid) for name, nid in zip(ix.names, ix.ids, strict=False)]

    def jump(self, panel_id: str, key: str) -> bool:
        """Show `key` on graph panel `panel_id` (expanding what hides it) and put the viewer
        in front of it. Returns whether it was found."""
        app = self.app
        view = app.panels.get(panel_id)
        if view is None or not isinstance(view.content, GraphView):
            return False
        try:
            local = view.content.focus(key)
        except KeyError as exc:
            app.notify(f"cannot show that: {exc}")
            return False
        view.graph_collapsed = set(view.content.collapsed)
        app.input.select(panel_id)
        world = view.to_world(np.asarray(local, np.float64))
        eye, target = geometry.viewpoint_facing(view.frame(), world, READ_DISTANCE)
        rig = app.rig
        if rig is not None:
            d = np.asarray(target) - np.asarray(eye)
            rig.teleport((float(eye[0]), float(eye[1]), float(eye[2])), math.degrees(math.atan2(d[0], d[2])))
            if hasattr(rig, "look_at"):
                rig.look_at((float(target[0]), float(target[1]), float(target[2])))
        ix, ident = view.content.index, key.partition(":")[2]
        name = ix.group_name.get(ident, ident) if key.startswith("g:") else \
            (ix.names[ix.ids.index(ident)] if ident in ix.ids else ident)
        app.notify(f"found {name}", error=False)
        return True
