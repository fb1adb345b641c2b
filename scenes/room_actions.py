"""What a person does to the room itself: add a panel, move/lock/close the selected one,
teleport, follow, summon, mute and talk, and ask a panel's engine for something."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from deeproom import placement
from deeproom.scenes import geometry
from deeproom.scenes.views import PanelView
from deeproom.state import PanelKind

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

STEER_COMMANDS = {"label": "label_ids", "retrain": "retrain", "open_layer": "open_layer"}
"""Cloud and layer clicks as the "cmd" of the steer events a panel's owner receives (docs/scenes.md)."""
ROOM_VIEWER = (0.0, 1.6, 0.0)
"""The viewpoint panels are placed for (workspace/placement.py's default; the engine uses it too)."""


class RoomActions:
    def __init__(self, app: RoomApp) -> None:
        self.app = app
        self.muted = False

    # --- panels ---------------------------------------------------------------------------

    def beside(self, view: PanelView, size: tuple[float, float]) -> dict[str, Any]:
        """A transform for a new panel of `size` in a free place beside `view` (never
        overlapping another panel: workspace/placement.py)."""
        return placement.free_slot(self.app.room, view.panel.id, size, viewer=ROOM_VIEWER)

    def in_front(self, size: tuple[float, float], distance: float) -> dict[str, Any]:
        """Where the viewer looks, `distance` ahead, if that place is free; else the free
        place nearest to straight ahead of them."""
        app = self.app
        pos, rot = app.rig.head() if app.rig is not None else ((0.0, 1.6, 0.0), (1.0, 0.0, 0.0, 0.0))
        at = geometry.ahead(pos, rot, distance)
        at[1] = max(at[1], 1.2)
        face = geometry.facing_quat(at, pos)
        az = float(np.arctan2(at[0] - pos[0], at[2] - pos[2]))
        spot = placement.Footprint(az, float(np.arctan2(size[0] / 2, distance)), float(at[1]) - size[1] / 2,
                                   float(at[1]) + size[1] / 2, distance)
        if not any(spot.overlaps(f) for f in placement.footprints(app.room, pos)):
            return {"position": [float(c) for c in at], "rotation": list(face), "scale": [1, 1, 1]}
        return placement.free_slot(app.room, None, size, viewer=pos)

    def add_panel(self, kind: str, *, title: str | None = None, distance: float = 1.6) -> str:
        """Add a panel of `kind` in front of the viewer; the engine fills it if it can."""
        app = self.app
        kind = PanelKind(kind).value
        size = (1.2, 0.9)
        transform = self.in_front(size, distance)
        pid = f"{kind.replace('_', '-')}-{int(time.time() * 1000) % 10**9}"
        refs: list[str] = []
        source: dict[str, Any] = {}
        if app.room is not None:  # reuse what the room already shows of this kind until the engine updates it
            for p in app.room.panels.values():
                if p.kind.value == kind and p.content.refs:
                    refs, source = list(p.content.refs), dict(p.content.source)
                    break
        if kind == "note" and not refs:
            source = {"text": "New note"}
        op = {"op": "add_panel", "panel_id": pid, "kind": kind, "title": title or kind.replace("_", " ").capitalize(),
              "transform": transform, "size": list(size), "content": {"source": source, "refs": refs}}
        app.apply(op)
        if app.provider is not None and not refs:
            app.provider.request("fill_panel", {"panel_id": pid, "kind": kind})
        return pid

    def move(self, view: PanelView, pos: Any, rot: Any, scale: Any) -> None:
        # Shown at once; kept until the room confirms (or PREVIEW_TIMEOUT passes, if it refuses),
        # so a second key press builds on the first.
        view.set_preview(tuple(pos), tuple(rot), tuple(scale))
        self.app.previews[view.panel.id] = time.monotonic()
        self.app.apply({"op": "move_panel", "panel_id": view.panel.id,
                        "transform": {"position": list(pos), "rotation": list(rot), "scale": list(scale)}})

    def turn(self, view: PanelView, degrees: float) -> None:
        pos, rot, scale = view.transform
        self.move(view, pos, geometry.quat_mul(geometry.yaw_quat(math.radians(degrees)), rot), scale)

    def scale(self, view: PanelView, k: float) -> None:
        pos, rot, scale = view.transform
        self.move(view, pos, rot, tuple(float(np.clip(s * k, 0.1, 50)) for s in scale))

    def toggle_lock(self, view: PanelView) -> None:
        mine = view.panel.lock_holder == self.app.session.participant_id
        self.app.apply({"op": "unlock_panel" if mine else "lock_panel", "panel_id": view.panel.id})

    def remove(self, view: PanelView) -> None:
        self.app.apply({"op": "remove_panel", "panel_id": view.panel.id})

    # --- the engine ---------------------------------------------------------------------------

    def open_layer(self, view: PanelView, layer: str) -> None:
        """A layer was clicked: its feature maps, filters and Grad-CAM open next to the graph."""
        payload = {"panel_id": view.panel.id, "layer": layer, "source": dict(view.panel.content.source),
                   "transform": view.panel.transform.to_dict()}
        self.ask_engine("open_layer", payload, view.panel.owner)
        self.app.notify(f"opening {layer}…", error=False)

    def ask_engine(self, action: str, payload: Mapping[str, Any], owner: str) -> None:
        app = self.app
        if app.provider is not None:
            app.provider.request(action, payload)
        else:  # whoever owns the panel runs the engine for it (the training runs' "steer" commands)
            app.session.send_event("steer", {"cmd": STEER_COMMANDS.get(action, action), **payload}, to=owner)

    # --- people ---------------------------------------------------------------------------

    def teleport_to_pointer(self) -> None:
        app = self.app
        if app.rig is None:
            return
        ray = app.rig.pointer_ray()
        if ray is None:
            return
        o, d = ray
        hit = app.pick(o, d)
        if hit is not None:
            f = app.panels[hit.panel_id].frame()
            target = f.centre + f.normal * (1.4 + f.half_width)
            yaw = math.degrees(math.atan2(-f.normal[0], -f.normal[2]))
            app.rig.teleport((float(target[0]), 1.6, float(target[2])), yaw)
            return
        floor = geometry.ray_plane(o, d, np.zeros(3), np.array([0.0, 1.0, 0.0]))
        if floor is not None and floor[0] < 30:
            p = floor[1]
            app.rig.teleport((float(p[0]), 1.6, float(p[2])), None)

    def toggle_follow(self) -> None:
        app = self.app
        room = app.room
        if room is None:
            return
        me = app.session.participant_id
        on = room.settings.follow.value == "presenter" and room.settings.presenter == me
        app.apply({"op": "set_follow", "mode": "off" if on else "presenter", "presenter": None if on else me})

    def summon(self) -> None:
        app = self.app
        if app.rig is None:
            return
        pos, rot = app.rig.head()
        fwd = geometry.quat_matrix(rot)[:, 2]
        spot = np.array(pos) + np.array([fwd[0], 0, fwd[2]]) * 1.2
        yaw = math.degrees(math.atan2(-fwd[0], -fwd[2]))
        app.session.send_event("summon", {"position": [float(c) for c in spot], "yaw": yaw})
        app.notify("summoned everyone to you", error=False)

    def toggle_mute(self) -> None:
        self.muted = not self.muted
        if self.app.session.set_muted(self.muted):
            self.app.notify("microphone muted" if self.muted else "microphone on", error=False)
        else:
            self.app.notify("voice is off in this session", error=False)

    def talk(self, pressed: bool) -> None:
        self.app.session.press_to_talk(pressed)
