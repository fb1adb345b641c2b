"""Input: the same methods for a mouse, controllers and tests.

`press/move/release(origin, direction)` are the primary button along a ray;
`context(origin, direction)` the secondary one (right-click on the desktop, the menu
button with the laser on a panel in XR): it opens that panel's action menu.
`key(name)` is a named action from a keyboard, a controller button or a test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from deeproom.scenes import geometry
from deeproom.scenes.views import CloudView, GraphView, Hit, PanelView

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

MOVE_INTERVAL = 0.1
"""Seconds between move operations sent while dragging (the last one is always sent)."""


@dataclass
class Drag:
    panel_id: str
    mode: str  # "move" or "resize"
    plane_point: np.ndarray
    plane_normal: np.ndarray
    offset: np.ndarray  # panel centre minus grab point (move)
    last_sent: float = 0.0
    moved: bool = False


class Input:
    def __init__(self, app: RoomApp) -> None:
        self.app = app

    # --- the pointer ------------------------------------------------------------------------

    def press(self, origin: np.ndarray, direction: np.ndarray) -> Hit | None:
        """Primary button down along a ray. Returns the Hit (or None)."""
        app = self.app
        origin, direction = np.asarray(origin, float), np.asarray(direction, float)
        if app.menus.is_open:  # a click on a row picks it; anywhere else closes the menu
            app.menus.press(origin, direction)
            return None
        hit = app.pick(origin, direction)
        if app.clouds.room_cloud() is not None and (hit is None or hit.distance > 1.5):
            app.clouds.place_sphere(origin, direction)  # inside a room-scale cloud: the sphere, not a panel
            return None
        self.select(hit.panel_id if hit is not None else None)
        if hit is None:
            return None
        view = app.panels[hit.panel_id]
        if hit.region == "close":
            app.room_actions.remove(view)
        elif hit.region in ("title", "resize"):
            f = view.frame()
            pos, _, _ = view.transform
            app.drag = Drag(hit.panel_id, "move" if hit.region == "title" else "resize", f.centre.copy(),
                            f.normal.copy(), np.asarray(pos, float) - np.asarray(hit.point, float))
            if view.panel.lock_holder is None:
                app.apply({"op": "lock_panel", "panel_id": hit.panel_id})
        elif hit.region == "body":
            self.body_click(view, hit)
        return hit

    def context(self, origin: np.ndarray, direction: np.ndarray) -> Hit | None:
        """Secondary button along a ray: the action menu of the panel (or layer, tile,
        selection) it points at. Returns the Hit (or None)."""
        app = self.app
        origin, direction = np.asarray(origin, float), np.asarray(direction, float)
        if app.menus.is_open:
            app.menus.close()
            return None
        hit = app.pick(origin, direction)
        if hit is None:
            return None
        self.select(hit.panel_id)
        app.menus.open_actions(app.panels[hit.panel_id], hit)
        return hit

    def move(self, origin: np.ndarray, direction: np.ndarray) -> None:
        app = self.app
        d = app.drag
        if d is None:
            return
        view = app.panels.get(d.panel_id)
        if view is None:
            app.drag = None
            return
        res = geometry.ray_plane(origin, direction, d.plane_point, d.plane_normal)
        if res is None:
            return
        _, p = res
        d.moved = True
        if d.mode == "move":
            _, rot, scale = view.transform
            new = p + d.offset
            view.set_preview((float(new[0]), float(new[1]), float(new[2])), rot, scale)
        else:
            f = view.frame()
            u, v = f.local(p)
            _, _, scale = view.transform
            w0, h0 = view.panel.size
            left = -w0 / 2 * scale[0]
            top = h0 / 2 * scale[1]
            # the top-left corner stays put; the face grows toward the pointer
            w = float(np.clip((u - left) / scale[0], 0.2, 20.0))
            h = float(np.clip((top - v) / scale[1], 0.15, 20.0))
            view.preview_size = (w, h)
        now = time.monotonic()
        if now - d.last_sent >= MOVE_INTERVAL:
            d.last_sent = now
            self.send_drag(view, d)

    def release(self, origin: np.ndarray | None = None, direction: np.ndarray | None = None) -> None:
        app = self.app
        d = app.drag
        if d is None:
            if app.clouds.box_start is not None and origin is not None and direction is not None:
                app.clouds.finish_box(np.asarray(origin, float), np.asarray(direction, float))
            return
        if origin is not None and direction is not None:
            self.move(np.asarray(origin, float), np.asarray(direction, float))
        app.drag = None
        view = app.panels.get(d.panel_id)
        if view is None:
            return
        if d.moved:
            self.send_drag(view, d)
        if d.mode == "move":
            view.end_preview()
        elif view.preview_size is not None:
            view.preview_size = None
            view.panel = view.panel  # the room's confirmation rebuilds the frame at the new size
        if view.panel.lock_holder in (None, app.session.participant_id):
            app.apply({"op": "unlock_panel", "panel_id": d.panel_id})

    def send_drag(self, view: PanelView, d: Drag) -> None:
        if d.mode == "move":
            pos, rot, scale = view.transform
            self.app.apply({"op": "move_panel", "panel_id": d.panel_id,
                            "transform": {"position": list(pos), "rotation": list(rot), "scale": list(scale)}})
        elif view.preview_size is not None:
            self.app.apply({"op": "resize_panel", "panel_id": d.panel_id, "size": list(view.preview_size)})

    def select(self, panel_id: str | None) -> None:
        app = self.app
        if app.selected == panel_id:
            return
        if app.selected in app.panels:
            app.panels[app.selected].set_selected(False)
        app.selected = panel_id
        if panel_id is not None:
            app.panels[panel_id].set_selected(True)

    def body_click(self, view: PanelView, hit: Hit) -> None:
        app = self.app
        content = view.content
        if isinstance(content, GraphView):
            action = content.click(hit.u, hit.v)
            if action is None:
                return
            kind, _, arg = action.partition(":")
            if kind in ("expand", "collapse"):  # relaid out in place; a rebuild keeps the state
                try:
                    content.toggle_group(arg)
                except KeyError:
                    return
                view.graph_collapsed = set(content.collapsed)
            elif kind == "layer":
                app.room_actions.open_layer(view, arg)
        elif isinstance(content, CloudView):
            app.clouds.click(view, content, hit)
        elif app.menus.layer_row_of(view, hit) is not None:  # a run's layer row: what can be done to it
            app.menus.open_actions(view, hit)
        else:
            app.menus.tile_click(view, hit)

    # --- keys -----------------------------------------------------------------------------

    def key(self, name: str) -> None:
        """A named action from a keyboard, a controller button or a test."""
        app = self.app
        if app.search.active:
            app.search.key(name)
            return
        if app.menus.is_open:
            app.menus.key(name)
            return
        view = app.panels.get(app.selected or "")
        ra, clouds = app.room_actions, app.clouds
        if name == "menu" and app.rig is not None:  # XR: the menu button with the laser on a panel: its actions
            ray = app.rig.pointer_ray()
            if ray is not None and self.context(*ray) is not None:
                return
        if name in ("tab", "menu"):
            app.menus.open_add_panel()
        elif name == "/":
            app.search.open()
        elif name in ("q", "e") and view is not None:
            ra.turn(view, 15 if name == "e" else -15)
        elif name in ("+", "=", "-", "scroll up", "scroll down") and view is not None and clouds.tool != "box" \
                and not clouds.has_selection():
            ra.scale(view, 1.1 if name in ("+", "=", "scroll up") else 1 / 1.1)
        elif name in ("scroll up", "scroll down"):
            clouds.scale_radius(name == "scroll up")
        elif name == "delete" and view is not None:
            ra.remove(view)
        elif name == "l" and view is not None:
            ra.toggle_lock(view)
        elif name == "b":
            clouds.toggle_tool()
        elif name == "v" and view is not None:
            if isinstance(view.content, CloudView):
                clouds.recolour(view.content)
        elif name == "c" and view is not None:
            g = view.content
            if isinstance(g, GraphView) and g.selected is not None and g.layout is not None:
                grp = g.layout.nodes[g.selected].group
                if grp:
                    g.set_collapsed(set(g.collapsed) | {grp})
                    view.graph_collapsed = set(g.collapsed)
        elif name.isdigit() and clouds.has_selection():
            clouds.act("label", int(name))
        elif name == "r":
            clouds.act("retrain")
        elif name == "i":
            clouds.act("images")
        elif name == "t":
            ra.teleport_to_pointer()
        elif name == "f":
            ra.toggle_follow()
        elif name == "g":
            ra.summon()
        elif name == "p":
            app.people.open()
        elif name == "o":
            clouds.toggle_room_scale()
        elif name in ("h", "hand"):  # desktop H; an XR rig maps a controller button to "hand"
            app.people.toggle_hand()
        elif name == "m":
            ra.toggle_mute()
        elif name in ("space", "space up"):
            ra.talk(name == "space")
