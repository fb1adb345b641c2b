"""Latent-cloud tools: select a sphere or a box of points, label them, retrain on them,
show their images, colour the cloud by label / prediction / confidence."""

from __future__ import annotations

import concurrent.futures
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from deeproom.content import encode_content
from deeproom.scenes import geometry
from deeproom.scenes.painting import thumbnail_atlas
from deeproom.scenes.views import CloudView, Hit, PanelView

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

SELECTED = "points selected — digits label, R retrain, I images, right-click for actions"
ROOM_WIDTH = 4.0
"""Metres across a latent cloud opened at room scale."""
ROOM_REACH = 1.0
"""At room scale a click places the selection sphere this far along the pointer."""
ROOM_RADIUS = 0.25
"""The selection sphere's radius at room scale, in metres (the wheel scales it)."""
COLOUR_MODES = ("label", "prediction", "confidence")


class CloudTools:
    def __init__(self, app: RoomApp) -> None:
        self.app = app
        self.tool = "sphere"
        self.radius = 0.08
        self.box_start: tuple[str, np.ndarray] | None = None

    def selected_cloud(self) -> tuple[PanelView, CloudView] | None:
        view = self.app.panels.get(self.app.selected or "")
        if view is not None and isinstance(view.content, CloudView):
            return view, view.content
        return None

    def has_selection(self) -> bool:
        sel = self.selected_cloud()
        return sel is not None and len(sel[1].selection) > 0

    def click(self, view: PanelView, cloud: CloudView, hit: Hit) -> None:
        local = view.to_local(np.asarray(hit.point))
        mid = cloud.pos[:, 2].mean() if len(cloud.pos) else 0.0
        centre = np.array([local[0], local[1], mid], np.float32)
        if self.tool == "box":
            self.box_start = (view.panel.id, centre)
        else:
            sel = cloud.select_sphere(centre, self.radius)
            self.app.notify(f"{len(sel)} {SELECTED}", error=False)

    def select_sphere_at(self, centre: Any, radius: float, *, announce: bool = True) -> int | None:
        """Select the points inside a sphere given in world space (in a headset the hands place
        and size it), in the cloud whose panel the centre is in front of (nearest first).
        Returns how many points, or None if no cloud is there."""
        app = self.app
        c = np.asarray(centre, dtype=np.float64)
        best: tuple[float, PanelView, CloudView] | None = None
        for view in app.panels.values():
            if not isinstance(view.content, CloudView):
                continue
            f = view.frame()
            u, v = f.local(c)
            depth = abs(float((c - f.centre) @ f.normal))
            if abs(u) <= f.half_width and abs(v) <= f.half_height and depth <= max(f.half_width, f.half_height) \
                    and (best is None or depth < best[0]):
                best = (depth, view, view.content)
        if best is None:
            return None
        _, view, cloud = best
        scale = float(view.transform[2][0]) or 1.0
        sel = cloud.select_sphere(view.to_local(c), float(radius) / scale)
        app.input.select(view.panel.id)
        if announce:
            app.notify(f"{len(sel)} {SELECTED}", error=False)
        return len(sel)

    def finish_box(self, origin: np.ndarray, direction: np.ndarray) -> None:
        assert self.box_start is not None
        pid, start = self.box_start
        self.box_start = None
        view = self.app.panels.get(pid)
        if view is None or not isinstance(view.content, CloudView):
            return
        f = view.frame()
        res = geometry.ray_plane(origin, direction, f.centre, f.normal)
        if res is None:
            return
        local = view.to_local(res[1])
        cloud = view.content
        zs = cloud.pos[:, 2]
        lo = np.array([start[0], start[1], float(zs.min()) - 0.01], np.float32)
        hi = np.array([local[0], local[1], float(zs.max()) + 0.01], np.float32)
        sel = cloud.select_box(lo, hi)
        self.app.notify(f"{len(sel)} {SELECTED}", error=False)

    def act(self, action: str, label: int | None = None) -> bool:
        """Act on the selected points of the selected cloud: label, retrain, images."""
        app = self.app
        sel = self.selected_cloud()
        if sel is None or not len(sel[1].selection):
            app.notify("select points in a latent cloud first")
            return False
        view, cloud = sel
        idx = [int(i) for i in cloud.selection]
        if action == "images":
            self.show_images(view, cloud, idx)
            return True
        if self.send_declared(view, action, idx, label):
            return True
        payload: dict[str, Any] = {"panel_id": view.panel.id, "ids": idx, "source": dict(view.panel.content.source)}
        if action == "label":
            payload["label"] = int(label if label is not None else 0)
        else:
            payload["select"] = "ids"
        app.room_actions.ask_engine(action, payload, view.panel.owner)
        app.notify(f"{action} on {len(idx)} points sent", error=False)
        return True

    def send_declared(self, view: PanelView, name: str, idx: list[int], label: int | None) -> bool:
        """The keys' shortcut to the cloud's declared selection action `name` (digits: "label"
        with that class, R: "retrain"): the same steer request the action menu sends. False
        when the cloud declares no such action (a training run's cloud: its steer commands)."""
        from deeproom.scenes import actions as act
        from deeproom.scenes.action_menus import given_params

        app = self.app
        source = view.panel.content.source
        specs, _, _ = act.parse_actions(source)
        spec = next((a for a in specs if a.name == name and a.on == "selection"), None)
        if spec is None:
            return False
        if not act.role_allows(app.menus.role(), spec.role):
            app.notify(f"{spec.label} needs the {spec.role} role")
            return True
        engine = source.get("engine") if isinstance(source.get("engine"), str) else view.panel.owner
        flow = act.ActionFlow(view.panel.id, str(engine), spec, given_params(spec, {"ids": idx}))
        for p in spec.params:
            if p.name in flow.values:
                continue
            if p.type == "class" and label is not None:
                flow.choose(p, int(label))
            elif p.default is not None or p.optional:
                flow.choose(p, p.default)
            else:  # a parameter the key cannot give: ask with the menu's pickers
                app.menus.ask(flow)
                return True
        app.menus.send(flow)
        app.notify(f"{spec.label}: {len(idx)} points sent", error=False)
        return True

    def show_images(self, view: PanelView, cloud: CloudView, idx: list[int]) -> None:
        app = self.app
        thumbs = cloud.content.thumbnails
        if thumbs is None:
            app.notify("this cloud has no images")
            return
        ti = cloud.content.thumbnail_index
        chosen = np.asarray(idx, dtype=np.int64)
        sel = chosen if ti is None else ti[chosen]
        without = int((sel < 0).sum())
        sel = sel[sel >= 0][:256]
        if not len(sel):
            app.notify("none of these points has an image")
            return
        if without:
            app.notify(f"{without} of {len(chosen)} selected points have no image", error=False)
        grid, _, _ = thumbnail_atlas(np.asarray(thumbs)[sel])
        title = f"{len(idx)} selected images" if not without else f"{len(sel)} images of {len(idx)} selected"
        blob = encode_content({"kind": "image"}, {"image": grid})
        size = (0.8, 0.8)
        transform = app.room_actions.beside(view, size)
        pid = f"images-{int(time.time() * 1000) % 10**9}"
        fut = app.session.put_blob(blob)

        def placed(f2: concurrent.futures.Future[str]) -> None:
            if f2.exception() is None:
                app.apply({"op": "add_panel", "panel_id": pid, "kind": "image", "title": title,
                           "transform": transform, "size": list(size),
                           "content": {"source": {"from": view.panel.id}, "refs": [f2.result()]}})

        fut.add_done_callback(placed)

    # --- room scale (Kath et al.: the cloud around the people labeling it) -----------------------

    def room_cloud(self) -> PanelView | None:
        """The room-scale cloud around the viewer (else the nearest one), if any."""
        app = self.app
        rooms = [v for v in app.panels.values() if v.room_scale and isinstance(v.content, CloudView)]
        if not rooms or app.rig is None:
            return None
        head = np.asarray(app.rig.head()[0], float)
        return min(rooms, key=lambda v: float(np.linalg.norm(v.frame().centre - head)))

    def toggle_room_scale(self, view: PanelView | None = None) -> None:
        """Open a latent cloud at room scale around you (ROOM_WIDTH across, its frame gone), or put a
        room-scale one back as a panel in front of you. A move of the panel: everyone sees it."""
        app = self.app
        if view is None:
            sel = self.selected_cloud()
            view = sel[0] if sel is not None else self.room_cloud()
        if view is None or view.panel.kind.value != "latent_cloud":
            app.notify("select a latent cloud first (click it), then O")
            return
        _, rot, _ = view.transform
        w, h = view.size
        if view.room_scale:
            t = app.room_actions.in_front((w, h), 1.6)
            app.room_actions.move(view, tuple(t["position"]), tuple(t["rotation"]), (1.0, 1.0, 1.0))
            app.notify("the cloud is a panel again", error=False)
            return
        k = ROOM_WIDTH / max(w, 0.1)
        head = np.asarray(app.rig.head()[0] if app.rig is not None else (0.0, 1.6, 0.0), float)
        centre = np.array([head[0], 1.4, head[2]])
        depth = min(w, h) * 0.9 * 0.5 + 0.02  # where CloudView puts the middle of the cloud (local -z)
        position = centre + geometry.quat_matrix(rot) @ np.array([0.0, 0.0, depth * k])
        app.room_actions.move(view, tuple(float(c) for c in position), rot, (k, k, k))
        app.input.select(None)
        app.notify("the cloud is around you: click to place the sphere, O to put it back", error=False)

    def place_sphere(self, origin: np.ndarray, direction: np.ndarray) -> int | None:
        """At room scale: the selection sphere ROOM_REACH along the pointer (a hand in XR: its ray)."""
        centre = np.asarray(origin, float) + np.asarray(direction, float) * ROOM_REACH
        return self.select_sphere_at(centre, ROOM_RADIUS * self.radius / 0.08)

    def toggle_tool(self) -> None:
        self.tool = "box" if self.tool == "sphere" else "sphere"
        self.app.notify(f"cloud selection: {self.tool}", error=False)

    def scale_radius(self, up: bool) -> None:
        self.radius = float(np.clip(self.radius * (1.2 if up else 1 / 1.2), 0.01, 1.0))

    def recolour(self, cloud: CloudView) -> None:
        modes = list(COLOUR_MODES)
        cloud.recolour(modes[(modes.index(cloud.colour_by) + 1) % len(modes)])
        self.app.notify(f"colour by {cloud.colour_by}", error=False)
