"""One view per panel: a frame (title bar, grab handle, resize corner, close, lock) and its content.

Every view has `build()`, `sync(...)` and `teardown()` and owns the entities it
creates. A `PanelView` places its root where the panel's transform says and draws
the frame; its content view (chosen by what the content worker prepared) draws what
the panel shows: a painted face (one textured quad), a 3D model graph (one mesh of
boxes, one of edges), a latent cloud (one point draw, one thumbnail draw for the
points near the viewer, one trail draw) or a wall of feature-map tiles (one mesh).

Hit testing is done here in panel face coordinates (metres from the face centre,
unscaled), so input from a mouse, a controller or a test lands on the same regions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from panda3d.core import NodePath, Quat, TransparencyAttrib
from ursina import Entity, Text, color
from ursina.texture import Texture as UrsinaTexture

from deeproom.scenes import batch, colormap, geometry, graph_layout, painting
from deeproom.scenes.prepared import (
    CloudContent,
    ContentFailure,
    GraphContent,
    PaintedContent,
    Prepared,
    WallContent,
    render_failure,
)
from deeproom.state import Panel

TITLE_BAR = 0.075
"""Height of the title bar above a panel's face (metres, before scaling)."""
CORNER = 0.07
"""Side of the resize corner at the bottom right."""

_KIND_ACCENT = {
    "model_graph": "#5a8dee", "metrics": "#45b38a", "confusion_matrix": "#d9a441", "latent_cloud": "#b36ae2",
    "feature_maps": "#3fb7c9", "filters": "#e07a5f", "grad_cam": "#e05f8a", "attention": "#8ab34a",
    "image": "#9aa3b5", "note": "#d8c46a",
}


def rgb(c: tuple[int, int, int] | np.ndarray, a: float = 1.0) -> Any:
    return color.rgba(float(c[0]) / 255, float(c[1]) / 255, float(c[2]) / 255, a)


def ursina_texture(image: np.ndarray, *, nearest: bool = False, mipmap: bool = False) -> UrsinaTexture:
    tex = batch.texture(image, nearest=nearest, mipmap=mipmap)
    ut = UrsinaTexture(tex, filtering=None if nearest else ("mipmap" if mipmap else "bilinear"))
    ut._cached_image = None  # Ursina's Texture expects these for textures it did not load itself
    ut.path = None
    return ut


@dataclass(frozen=True, slots=True)
class Hit:
    """What a pointer ray hit on a panel: the region and face coordinates (unscaled metres)."""

    panel_id: str
    region: str  # "title", "close", "resize", "body"
    u: float
    v: float
    distance: float
    point: tuple[float, float, float]


class ContentView:
    """Draws a panel's content inside its face area (width x height, centred at the origin)."""

    def __init__(self, parent: Entity, width: float, height: float) -> None:
        self.parent = parent
        self.width = width
        self.height = height
        self.entities: list[Entity] = []
        self.nodes: list[NodePath] = []

    def build(self) -> None: ...

    def sync(self, viewer_local: np.ndarray | None, now: float) -> None:
        """Per-frame work that is only arithmetic (level of detail); no I/O."""

    def click(self, u: float, v: float) -> str | None:
        """A click on the face at (u, v); returns an action name for the app, or None."""
        return None

    def teardown(self) -> None:
        for e in self.entities:
            e.parent = None
            from ursina import destroy

            destroy(e)
        for n in self.nodes:
            n.remove_node()
        self.entities.clear()
        self.nodes.clear()


class FaceView(ContentView):
    """A painted image on one quad (all 2D kinds, and error / waiting cards)."""

    def __init__(self, parent: Entity, width: float, height: float, image: np.ndarray, nearest: bool = False) -> None:
        super().__init__(parent, width, height)
        self.image = image
        self.nearest = nearest

    def build(self) -> None:
        self.quad = Entity(parent=self.parent, model="quad", scale=(self.width, self.height), z=-0.002,
                           texture=ursina_texture(self.image, nearest=self.nearest), color=color.white)
        self.entities.append(self.quad)


_OP_COLOURS = {
    "conv": (90, 141, 238), "linear": (235, 150, 70), "gemm": (235, 150, 70), "matmul": (235, 150, 70),
    "norm": (90, 200, 130), "relu": (150, 156, 170), "gelu": (150, 156, 170), "pool": (170, 120, 230),
    "add": (240, 210, 80), "cat": (240, 210, 80), "attention": (230, 100, 150), "group": (60, 190, 200),
    "input": (230, 230, 230), "output": (230, 230, 230),
}


def op_colour(op: str) -> tuple[int, int, int]:
    o = op.lower()
    for key, c in _OP_COLOURS.items():
        if key in o:
            return c
    return (130, 140, 160)


class GraphView(ContentView):
    """A model graph: layers and collapsed groups as labelled boxes (one mesh, with the
    plates of expanded groups), edges as lines (one mesh), a text per label (at most
    `graph_layout.MAX_LABELS`). The layout wraps into rows to fit the face, with the
    largest text that fits; clicks expand and collapse groups in place."""

    TEXT_FILL = 1.0
    """Label text line height as a share of the layout's text height."""

    def __init__(self, parent: Entity, width: float, height: float, meta: dict[str, Any],
                 collapsed: set[str] | None = None) -> None:
        super().__init__(parent, width, height)
        self.meta = meta
        self.index = graph_layout.GraphIndex(meta)
        self.collapsed = set(graph_layout.default_collapsed(self.index) if collapsed is None else collapsed)
        self.selected: int | None = None
        self.selected_key: str | None = None
        self.layout: geometry.GraphLayout | None = None
        self.world: np.ndarray = np.zeros((0, 3), np.float32)
        self.half: np.ndarray = np.zeros((0, 3), np.float32)
        self.labels: list[tuple[int, Text]] = []
        """(node index, its label) for every label drawn."""
        self.frozen_marked: set[str] = set()
        """Layers drawn as frozen (a training run's; `mark_frozen`)."""
        self._frozen_node: Any = None

    @property
    def face(self) -> tuple[float, float]:
        """The area the graph is laid out in (metres, unscaled), inside the panel's margins."""
        return self.width * 0.96, self.height * 0.92

    def build(self) -> None:
        self.layout = lay = graph_layout.layout_graph(self.index, self.collapsed, self.face)
        n = len(lay.nodes)
        pos = lay.positions.astype(np.float32).copy()
        half = lay.half.astype(np.float32).copy()
        s = lay.text_height
        if n:
            params = np.array([max(nd.params, 1) for nd in lay.nodes], np.float64)
            rel = np.log10(params) / max(float(np.log10(params.max())), 1.0)
            half[:, 2] = (0.15 + 0.35 * rel) * np.minimum(half[:, 0], half[:, 1])
        pos[:, 2] = -(half[:, 2] + 0.006)  # boxes stand in front of the face (and of the plates)
        self.world, self.half = pos, half
        cols = np.array([op_colour(nd.op) for nd in lay.nodes], np.uint8).reshape(-1, 3)
        centres, halves, colours = [pos], [half], [cols]
        if lay.plates:
            pc = np.array([[(p.lo[0] + p.hi[0]) / 2, (p.lo[1] + p.hi[1]) / 2, -0.003] for p in lay.plates], np.float32)
            ph = np.array([[(p.hi[0] - p.lo[0]) / 2, (p.hi[1] - p.lo[1]) / 2, 0.002] for p in lay.plates], np.float32)
            pc[:, 2] -= np.array([0.0005 * p.depth for p in lay.plates], np.float32)  # inner plates in front
            shade = np.array([[44 + 14 * min(p.depth, 5), 52 + 14 * min(p.depth, 5), 70 + 16 * min(p.depth, 5)]
                              for p in lay.plates], np.uint8)
            centres.append(pc)
            halves.append(ph)
            colours.append(shade)
        if n:
            node = batch.boxes("graph-nodes", np.concatenate(centres), np.concatenate(halves), np.concatenate(colours))
            node.reparent_to(self.parent)
            self.nodes.append(node)
        if lay.edges:
            e = np.asarray(lay.edges, np.int64)
            ranks = np.array([nd.rank for nd in lay.nodes], np.int64)
            skip = ranks[e[:, 1]] - ranks[e[:, 0]] > 1
            pts = np.empty((2 * len(e), 3), np.float32)
            pts[0::2], pts[1::2] = pos[e[:, 0]], pos[e[:, 1]]
            pts[:, 2] = -0.0045  # on the plates, behind the boxes
            segs = np.arange(2 * len(e), dtype=np.int64).reshape(-1, 2)
            ecol = np.where(np.repeat(skip, 2)[:, None], np.array([250, 200, 90], np.uint8),
                            np.array([150, 160, 185], np.uint8)).astype(np.uint8)  # skip connections stand out
            edges = batch.lines("graph-edges", pts, segs, ecol, thickness=1.5)
            edges.reparent_to(self.parent)
            self.nodes.append(edges)
        self.labels = []
        for i in lay.labelled:
            nd = lay.nodes[i]
            c = cols[i].astype(np.float64)
            light = 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2] > 140
            size = s * float(lay.text_scale[i]) * self.TEXT_FILL / TEXT_LINE
            t = Text(nd.label, parent=self.parent, origin=(0, 0), scale=size,
                     position=(float(pos[i, 0]), float(pos[i, 1]), float(pos[i, 2] - half[i, 2] - 0.002)),
                     color=color.rgb(0.05, 0.06, 0.09) if light else color.rgb(0.95, 0.96, 0.99))
            self.entities.append(t)
            self.labels.append((i, t))
        room = graph_layout.MAX_LABELS - len(self.labels)
        for p in lay.plates[: max(room, 0)]:  # expanded groups' names, in the strip along their top
            t = Text(p.label, parent=self.parent, origin=(-0.5, 0), scale=s * graph_layout.PLATE_HEADER * 0.8 / TEXT_LINE,
                     position=(p.lo[0] + 0.3 * s, p.hi[1] - graph_layout.PLATE_HEADER * s / 2, -0.0065),
                     color=color.rgb(0.75, 0.8, 0.9))
            self.entities.append(t)
        self.outline = Entity(parent=self.parent, model="wireframe_cube", color=color.white, enabled=False)
        self.entities.append(self.outline)
        self._frozen_node = None
        if self.frozen_marked:
            self.mark_frozen(self.frozen_marked)
        if self.selected_key is not None:
            keys = [nd.key for nd in lay.nodes]
            self.select(keys.index(self.selected_key) if self.selected_key in keys else None)

    def frozen_nodes(self, frozen: set[str] | frozenset[str]) -> list[int]:
        """The drawn boxes of layers that are frozen (or inside a frozen module)."""
        if self.layout is None:
            return []
        return [i for i, nd in enumerate(self.layout.nodes)
                if not nd.collapsed and any(nd.name == f or nd.name.startswith(f + ".") for f in frozen)]

    def mark_frozen(self, frozen: set[str] | frozenset[str]) -> None:
        """Draw an ice-blue shell over the boxes of frozen layers (one mesh); empty: none."""
        from deeproom.scenes.live_runs import FROZEN_COLOUR

        self.frozen_marked = set(frozen)
        if self._frozen_node is not None:
            self._frozen_node.remove_node()
            if self._frozen_node in self.nodes:
                self.nodes.remove(self._frozen_node)
            self._frozen_node = None
        idx = self.frozen_nodes(self.frozen_marked)
        if not idx:
            return
        pos = self.world[idx].copy()
        half = self.half[idx].copy()
        half[:, 0] += 0.006
        half[:, 1] += 0.006
        pos[:, 2] -= 0.001  # a shell a little bigger than the box: in front of it, behind its label
        node = batch.boxes("graph-frozen", pos, half, np.tile(np.array(FROZEN_COLOUR, np.uint8), (len(idx), 1)))
        node.reparent_to(self.parent)
        self.nodes.append(node)
        self._frozen_node = node

    def rebuild(self) -> None:
        """Lay the graph out again (after the collapsed set changed) and redraw it."""
        self.teardown()
        self.build()

    def set_collapsed(self, collapsed: set[str] | frozenset[str]) -> None:
        self.collapsed = {str(g) for g in collapsed}
        self.rebuild()

    def toggle_group(self, group_id: str) -> set[str]:
        """Collapse an expanded group or expand a collapsed one; returns the new collapsed set."""
        gid = str(group_id)
        if gid not in self.index.parent:
            raise KeyError(f"no group {gid!r} in this graph")
        self.set_collapsed(self.collapsed ^ {gid})
        return set(self.collapsed)

    def find(self, query: str, limit: int = 20) -> list[graph_layout.Match]:
        """Layers and groups whose name holds `query` (any case), drawn or not, best first."""
        return graph_layout.find(self.index, query, limit)

    def focus(self, key: str) -> tuple[float, float, float]:
        """Show the layer or group `key` (a `Match.key`): expand what hides it, outline it and
        return where it is (panel-local, unscaled: `PanelView.to_world` makes it a world point)."""
        wanted = graph_layout.expand_to(self.index, self.collapsed, key)
        if wanted != self.collapsed:
            self.set_collapsed(wanted)
        assert self.layout is not None
        keys = [nd.key for nd in self.layout.nodes]
        if key in keys:
            i = keys.index(key)
            self.select(i)
            return (float(self.world[i, 0]), float(self.world[i, 1]), float(self.world[i, 2] - self.half[i, 2]))
        gid = key.partition(":")[2]  # an expanded group: the middle of its boxes
        inside = [i for i, nd in enumerate(self.layout.nodes)
                  if nd.group is not None and gid in self.index.chain.get(nd.group, [])]
        if not inside:
            raise KeyError(f"{key!r} is not drawn")
        self.select(None)
        c = self.world[inside].mean(axis=0)
        return (float(c[0]), float(c[1]), float(self.world[inside, 2].min()))

    def node_at(self, u: float, v: float, *, near: float = 0.012) -> int | None:
        """The box at (u, v), else the nearest box centre within `near` metres (tiny boxes)."""
        if self.layout is None or not len(self.world):
            return None
        slack = min(self.layout.text_height * 0.1, 0.004)
        d = np.abs(self.world[:, :2] - np.array([u, v], np.float32)) - self.half[:, :2] - slack
        inside = np.flatnonzero((d <= 0).all(axis=1))
        if len(inside):
            return int(inside[0])
        dist = np.hypot(self.world[:, 0] - u, self.world[:, 1] - v)
        i = int(dist.argmin())
        return i if dist[i] < near else None

    def select(self, index: int | None) -> None:
        self.selected = index
        self.selected_key = None if index is None or self.layout is None else self.layout.nodes[index].key
        if index is None:
            self.outline.enabled = False
            return
        self.outline.enabled = True
        self.outline.position = tuple(float(x) for x in self.world[index])
        self.outline.scale = tuple(float(x) * 2.0 + 0.01 for x in self.half[index])

    def click(self, u: float, v: float) -> str | None:
        """"expand:<group>" on a collapsed group, "layer:<name>" on a layer (selected),
        "collapse:<group>" on the plate of an expanded group, else None."""
        if self.layout is None:
            return None
        i = self.node_at(u, v, near=0.0)
        if i is None:
            plate = graph_layout.plate_at(self.layout, u, v)
            if plate is not None:
                return f"collapse:{plate.group}"
            i = self.node_at(u, v)
        if i is None:
            return None
        nd = self.layout.nodes[i]
        if nd.collapsed and nd.group is not None:
            return f"expand:{nd.group}"
        self.select(i)
        return f"layer:{nd.name}"  # the layer's name: a module path (torch) or node name (ONNX)


GLIDE_RATE = 9.0
"""How fast a gliding panel reaches its place (1/s): ~95% within a third of a second."""
ROOM_SCALE = 2.5
"""A latent cloud panel scaled at least this much is a room-scale cloud (drawn without its frame)."""
MAX_TRAIL_POINTS = 3000
"""Trails are drawn for the first this many points of a cloud."""
TEXT_LINE = 0.025
"""Line height of an Ursina Text of scale 1, in its parent's units (`Text.size`)."""


class CloudView(ContentView):
    """A latent cloud: every point in one draw; thumbnails for the points near the viewer."""

    NEAR = 0.9  # metres from the viewer within which points show their images
    MAX_THUMBS = 400
    REFRESH = 0.25  # seconds between level-of-detail updates

    def __init__(self, parent: Entity, width: float, height: float, content: CloudContent,
                 colour_by: str = "label") -> None:
        super().__init__(parent, width, height)
        self.content = content
        self.colour_by = colour_by
        self.selection: np.ndarray = np.zeros(0, np.int64)
        self._thumb_node: NodePath | None = None
        self._sel_node: NodePath | None = None
        self._last_lod = 0.0
        self._last_viewer: np.ndarray | None = None
        self.thumbs_shown = 0

    def _fit_frame(self) -> tuple[np.ndarray, float]:
        """Centre and span of what is drawn: the positions and, when there are trails, every trail
        frame too, so a cloud that grew or moved keeps its trail on the panel."""
        p = self.content.positions
        trails = self.content.trails
        if trails is not None and len(trails) > 1:
            keep = min(trails.shape[1], MAX_TRAIL_POINTS)
            p = np.concatenate([trails[:, :keep].reshape(-1, trails.shape[2]), p])
        _, centre, span = geometry.fit_unit(p)
        return centre, span

    def _place(self, arr: np.ndarray) -> np.ndarray:
        """Data coordinates → panel-local coordinates (the cloud floats in front of the face)."""
        centre, span = self._fit
        f = (np.nan_to_num(np.asarray(arr, np.float32)) - centre) / span
        if f.shape[-1] == 2:
            f = np.concatenate([f, np.zeros((*f.shape[:-1], 1), np.float32)], axis=-1)
        s = np.array([self.width * 0.9, self.height * 0.9, min(self.width, self.height) * 0.9], np.float32)
        out = f * s
        out[..., 2] -= s[2] * 0.5 + 0.02
        return out

    def local_positions(self) -> np.ndarray:
        self._fit = self._fit_frame()
        return self._place(self.content.positions)

    def colours(self) -> np.ndarray:
        c = self.content
        lab = c.labels if self.colour_by == "label" else c.predictions
        cols = colormap.label_colours(lab)
        if self.colour_by == "confidence":
            cols = colormap.sequential(np.clip(c.confidence, 0, 1))
        return cols

    def build(self) -> None:
        self.pos = self.local_positions()
        n = len(self.pos)
        size = 5.0 if n < 3000 else (3.0 if n < 20000 else 2.0)
        self.points = batch.points("cloud-points", self.pos, self.colours(), size=size)
        self.points.reparent_to(self.parent)
        self.nodes.append(self.points)
        if self.content.atlas is not None:
            reuse = getattr(self, "atlas_tex", None)  # a cloud that only moved keeps its thumbnails' texture
            self.atlas_tex = reuse if reuse is not None else batch.texture(self.content.atlas, nearest=False, mipmap=True)
        trails = self.content.trails
        if trails is not None and len(trails) > 1:
            t, n_pts, _ = trails.shape
            keep = np.arange(min(n_pts, MAX_TRAIL_POINTS))
            tr = self._place(trails[:, keep])  # in the same frame as the cloud
            pts = tr.reshape(-1, 3)
            idx = (np.arange(t - 1)[:, None] * len(keep) + np.arange(len(keep))[None, :]).ravel()
            segs = np.stack([idx, idx + len(keep)], axis=1)
            fade = np.repeat(np.linspace(60, 200, t).astype(np.uint8), len(keep))
            cols = np.stack([fade, fade, fade], axis=1)
            node = batch.lines("cloud-trails", pts, segs, cols, thickness=1.0)
            node.reparent_to(self.parent)
            self.nodes.append(node)
        self.sphere = Entity(parent=self.parent, model="sphere", color=color.rgba(1, 1, 1, 0.18), enabled=False)
        self.sphere.set_transparency(TransparencyAttrib.M_alpha)
        self.box = Entity(parent=self.parent, model="wireframe_cube", color=color.white, enabled=False)
        self.entities += [self.sphere, self.box]

    def recolour(self, colour_by: str) -> None:
        self.colour_by = colour_by
        self.points.remove_node()
        self.nodes.remove(self.points)
        n = len(self.pos)
        size = 5.0 if n < 3000 else (3.0 if n < 20000 else 2.0)
        self.points = batch.points("cloud-points", self.pos, self.colours(), size=size)
        self.points.reparent_to(self.parent)
        self.nodes.append(self.points)

    def sync(self, viewer_local: np.ndarray | None, now: float) -> None:
        if self.content.atlas is None or viewer_local is None:
            return
        if now - self._last_lod < self.REFRESH:
            return
        if self._last_viewer is not None and np.linalg.norm(viewer_local - self._last_viewer) < 0.02:
            return
        self._last_lod = now
        self._last_viewer = viewer_local.copy()
        self.update_thumbnails(viewer_local)

    def update_thumbnails(self, viewer_local: np.ndarray) -> None:
        """Level of detail: image quads for the nearest points, facing the viewer; dots elsewhere."""
        d2 = ((self.pos - viewer_local[None, :].astype(np.float32)) ** 2).sum(axis=1)
        near = np.flatnonzero(d2 < self.NEAR * self.NEAR)
        ti = self.content.thumbnail_index
        if ti is None:
            ti = np.arange(len(self.pos), dtype=np.int64)
        near = near[ti[near] >= 0]  # only points that have an image (a big cloud carries some)
        if len(near) > self.MAX_THUMBS:
            near = near[np.argpartition(d2[near], self.MAX_THUMBS)[: self.MAX_THUMBS]]
        if self._thumb_node is not None:
            self._thumb_node.remove_node()
            self.nodes.remove(self._thumb_node)
            self._thumb_node = None
        self.thumbs_shown = len(near)
        if not len(near):
            return
        fwd = self.pos[near].mean(axis=0) - viewer_local
        fwd = fwd / (np.linalg.norm(fwd) or 1.0)
        right = np.cross(np.array([0, 1, 0], np.float32), fwd)
        right = right / (np.linalg.norm(right) or 1.0)
        up = np.cross(fwd, right)
        side = 0.01 if len(self.pos) > 5000 else 0.014
        cols, rows = self.content.atlas_grid
        uv = painting.atlas_uv(ti[near], cols, rows)
        centres = self.pos[near] - fwd * 0.002
        tint = (self.colours()[near].astype(np.float32) * 0.6 + 102).clip(0, 255).astype(np.uint8)
        node = batch.quads("cloud-thumbs", centres, right * side, up * side, tint, uv)
        node.set_texture(self.atlas_tex, 1)
        node.set_two_sided(True)
        node.reparent_to(self.parent)
        self._thumb_node = node
        self.nodes.append(node)

    def to_data(self, local: np.ndarray) -> np.ndarray:
        """Panel-local coordinates back to the data's own coordinates."""
        p = self.content.positions
        _, centre, span = geometry.fit_unit(p)
        s = np.array([self.width * 0.9, self.height * 0.9, min(self.width, self.height) * 0.9], np.float32)
        q = np.asarray(local, np.float32).copy()
        q[..., 2] += s[2] * 0.5 + 0.02
        f = q / s
        return (f[..., : p.shape[1]] * span + centre[: p.shape[1]]).astype(np.float32)

    def select_sphere(self, centre_local: np.ndarray, radius: float) -> np.ndarray:
        self.selection = geometry.select_sphere(self.pos, centre_local, radius)
        self.sphere.enabled = True
        self.box.enabled = False
        self.sphere.position = tuple(float(x) for x in centre_local)
        self.sphere.scale = radius * 2
        self._show_selection()
        return self.selection

    def select_box(self, lo_local: np.ndarray, hi_local: np.ndarray) -> np.ndarray:
        self.selection = geometry.select_box(self.pos, lo_local, hi_local)
        self.box.enabled = True
        self.sphere.enabled = False
        lo, hi = np.minimum(lo_local, hi_local), np.maximum(lo_local, hi_local)
        self.box.position = tuple(float(x) for x in (lo + hi) / 2)
        self.box.scale = tuple(float(max(x, 0.005)) for x in hi - lo)
        self._show_selection()
        return self.selection

    def _show_selection(self) -> None:
        if self._sel_node is not None:
            self._sel_node.remove_node()
            self.nodes.remove(self._sel_node)
            self._sel_node = None
        if len(self.selection):
            node = batch.points("cloud-selection", self.pos[self.selection] - np.array([0, 0, 0.001], np.float32),
                                np.full((len(self.selection), 3), 255, np.uint8), size=7.0)
            node.reparent_to(self.parent)
            self._sel_node = node
            self.nodes.append(node)


class WallView(ContentView):
    """Thousands of feature-map tiles as one mesh over one atlas texture."""

    def __init__(self, parent: Entity, width: float, height: float, content: WallContent) -> None:
        super().__init__(parent, width, height)
        self.content = content

    def build(self) -> None:
        c = self.content
        rows, cols = painting.grid_shape(c.count, self.width / self.height)
        tw, th = self.width / cols, self.height / rows
        idx = np.arange(c.count)
        r, k = np.divmod(idx, cols)
        centres = np.stack([(k + 0.5) * tw - self.width / 2, self.height / 2 - (r + 0.5) * th,
                            np.full(c.count, -0.003)], axis=1).astype(np.float32)
        uv = painting.atlas_uv(idx, *c.atlas_grid)
        node = batch.quads("wall-tiles", centres, np.array([tw * 0.42, 0, 0], np.float32),
                           np.array([0, th * 0.42, 0], np.float32), None, uv)
        node.set_texture(batch.texture(c.atlas, mipmap=True), 1)
        node.reparent_to(self.parent)
        self.nodes.append(node)


class PanelView:
    """A panel in the room: its frame, its content view, its hit regions."""

    def __init__(self, parent: Entity, panel: Panel, colour_of: Callable[[str], str]) -> None:
        self.parent = parent
        self.panel = panel
        self.colour_of = colour_of
        self.content: ContentView | None = None
        self.content_key: str | None = None
        self.prepared: Prepared | None = None
        self.selected = False
        self.preview: tuple[tuple[float, float, float], tuple[float, float, float, float], tuple[float, float, float]] | None = None
        self.preview_size: tuple[float, float] | None = None
        self.graph_collapsed: set[str] | None = None
        self._frame: list[Entity] = []
        self.gliding: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        """Where the panel is drawn while it glides to the room's place (position, rotation, scale)."""

    # --- life cycle ------------------------------------------------------------------------

    def build(self) -> None:
        self.root = Entity(parent=self.parent, name=f"panel-{self.panel.id}")
        self.content_root = Entity(parent=self.root)
        self._build_frame()
        self._place()

    def _build_frame(self) -> None:
        for e in self._frame:
            from ursina import destroy

            destroy(e)
        self._frame = []
        p = self.panel
        w, h = self.size
        accent = colormap.hex_rgb(_KIND_ACCENT.get(p.kind.value, "#8890a0"))
        self.outline = Entity(parent=self.root, model="quad", scale=(w + 0.03, h + TITLE_BAR + 0.03),
                              y=TITLE_BAR / 2, z=0.006, color=color.rgb(1, 0.85, 0.3), enabled=self.selected)
        self.plate = Entity(parent=self.root, model="quad", scale=(w, h), z=0.003, color=rgb(painting.BACKGROUND))
        self.title_bar = Entity(parent=self.root, model="quad", scale=(w, TITLE_BAR), y=h / 2 + TITLE_BAR / 2,
                                color=rgb(np.array(accent) * 0.55))
        self.handle = Entity(parent=self.root, model="quad", scale=(min(0.12, w * 0.2), TITLE_BAR * 0.22),
                             position=(w / 2 - TITLE_BAR * 2.2 - min(0.06, w * 0.1), h / 2 + TITLE_BAR * 0.5, -0.001),
                             color=rgb(accent))
        title = p.title if len(p.title) <= 40 else p.title[:39] + "…"
        self.title = Text(title, parent=self.root, origin=(-0.5, 0), scale=2.8,
                          position=(-w / 2 + 0.02, h / 2 + TITLE_BAR * 0.42, -0.002), color=color.rgb(0.95, 0.96, 1))
        self.close_button = Entity(parent=self.root, model="quad", scale=(TITLE_BAR * 0.8, TITLE_BAR * 0.8),
                                   position=(w / 2 - TITLE_BAR / 2, h / 2 + TITLE_BAR / 2, -0.001),
                                   color=color.rgb(0.75, 0.22, 0.25))
        self.close_x = Text("x", parent=self.close_button, origin=(0, 0), scale=(2.6 / (TITLE_BAR * 0.8),) * 2,
                            z=-0.001, color=color.white)
        self.lock = Entity(parent=self.root, model="quad", scale=(TITLE_BAR * 0.55, TITLE_BAR * 0.55),
                           position=(w / 2 - TITLE_BAR * 1.5, h / 2 + TITLE_BAR / 2, -0.001), color=color.rgb(0.9, 0.7, 0.2))
        self.corner = Entity(parent=self.root, model=self._corner_mesh(), position=(w / 2, -h / 2, -0.004),
                             color=rgb(accent, 0.95))
        self._frame = [self.outline, self.plate, self.title_bar, self.handle, self.title, self.close_button,
                       self.close_x, self.lock, self.corner]
        self._sync_lock()

    @staticmethod
    def _corner_mesh() -> Any:
        from ursina import Mesh

        c = CORNER
        return Mesh(vertices=[(0, 0, 0), (0, c, 0), (-c, 0, 0)], triangles=[(0, 2, 1)], mode="triangle")

    def _sync_lock(self) -> None:
        holder = self.panel.lock_holder
        self.lock.enabled = holder is not None
        if holder is not None:
            self.lock.color = rgb(colormap.hex_rgb(self.colour_of(holder)))

    @property
    def size(self) -> tuple[float, float]:
        return self.preview_size or self.panel.size

    def teardown(self) -> None:
        from ursina import destroy

        if self.content is not None:
            self.content.teardown()
            self.content = None
        for e in self._frame:
            destroy(e)
        self._frame = []
        destroy(self.content_root)
        destroy(self.root)

    # --- state ------------------------------------------------------------------------------

    def sync(self, panel: Panel) -> bool:
        """Take the panel's new state; returns True if its content must be (re)prepared."""
        old = self.panel
        self.panel = panel
        if old.size != panel.size or old.title != panel.title or old.kind != panel.kind:
            self.preview_size = None
            self._build_frame()
            if old.size != panel.size and self.prepared is not None:
                self.show(self.prepared, self.content_key or "")
        if old.lock_holder != panel.lock_holder:
            self._sync_lock()
        if self.preview is None and self.gliding is None:
            self._place()
        return old.content != panel.content or old.size != panel.size

    @property
    def transform(self) -> tuple[tuple[float, float, float], tuple[float, float, float, float], tuple[float, float, float]]:
        if self.preview is not None:
            return self.preview
        t = self.panel.transform
        return t.position, t.rotation, t.scale

    def _place(self) -> None:
        pos, rot, scale = self.transform
        self.root.position = pos
        self.root.set_quat(Quat(*rot))
        self.root.scale = scale
        framed = not self.room_scale  # a room-scale cloud has no frame: people stand inside it
        for e in self._frame:
            if e is not self.outline and e is not self.lock:
                e.enabled = framed
        if not framed:
            self.outline.enabled = self.lock.enabled = False

    @property
    def room_scale(self) -> bool:
        """A latent cloud opened at room scale (several metres across, Kath et al.): no frame, not picked
        as a panel; clicks inside it place the selection sphere (`cloud_tools.CloudTools.place_sphere`)."""
        _, _, scale = self.transform
        return self.panel.kind.value == "latent_cloud" and min(scale[0], scale[1]) >= ROOM_SCALE

    def glide(self) -> None:
        """Draw the next move as a glide from where the panel is drawn now (a layout loaded)."""
        if self.gliding is None and self.preview is None:
            q = self.root.get_quat()
            self.gliding = (np.array(tuple(self.root.position), float), np.array([q[0], q[1], q[2], q[3]], float),
                            np.array(tuple(self.root.scale), float))

    def ease(self, dt: float) -> None:
        """Per frame while gliding: move toward the room's transform (plain arithmetic)."""
        if self.gliding is None:
            return
        if self.preview is not None:
            self.gliding = None
            return
        t = 1.0 - float(np.exp(-GLIDE_RATE * max(dt, 0.0)))
        pos, rot, scale = self.gliding
        target = self.panel.transform
        tp, tr, ts = np.array(target.position), np.array(target.rotation, float), np.array(target.scale)
        if float(rot @ tr) < 0:
            tr = -tr
        pos = pos + (tp - pos) * t
        rot = rot + (tr - rot) * t
        rot /= np.linalg.norm(rot) or 1.0
        scale = scale + (ts - scale) * t
        if np.abs(pos - tp).max() < 1e-3 and np.abs(scale - ts).max() < 1e-3 and np.abs(rot - tr).max() < 1e-3:
            self.gliding = None
            self._place()
            return
        self.gliding = (pos, rot, scale)
        self.root.position = tuple(float(c) for c in pos)
        self.root.set_quat(Quat(*(float(c) for c in rot)))
        self.root.scale = tuple(float(c) for c in scale)

    def set_preview(self, pos: tuple[float, float, float], rot: tuple[float, float, float, float],
                    scale: tuple[float, float, float]) -> None:
        """Show the panel where the user is dragging it, before the room confirms."""
        self.preview = (pos, rot, scale)
        self._place()

    def end_preview(self) -> None:
        self.preview = None
        self._place()

    def set_selected(self, on: bool) -> None:
        self.selected = on
        self.outline.enabled = on and not self.room_scale

    def show(self, prepared: Prepared, key: str) -> None:
        """Replace the content view with one for `prepared` (render thread; builds meshes only).
        A cloud that only moved (same points) keeps its selection and colouring."""
        keep: tuple[np.ndarray, str] | None = None
        atlas_tex = None
        if isinstance(self.content, CloudView) and isinstance(prepared, CloudContent) \
                and len(prepared.positions) == len(self.content.content.positions):
            keep = (self.content.selection, self.content.colour_by)
            if prepared.atlas is not None and prepared.atlas is self.content.content.atlas:
                atlas_tex = getattr(self.content, "atlas_tex", None)
        if self.content is not None:
            self.content.teardown()
        self.prepared = prepared
        self.content_key = key
        w, h = self.size
        view: ContentView
        if isinstance(prepared, PaintedContent):
            view = FaceView(self.content_root, w, h, prepared.image, nearest=self.panel.kind.value in ("image",))
        elif isinstance(prepared, GraphContent):
            view = GraphView(self.content_root, w, h, dict(prepared.meta), self.graph_collapsed)
        elif isinstance(prepared, CloudContent):
            view = CloudView(self.content_root, w, h, prepared, keep[1] if keep is not None else "label")
            if atlas_tex is not None:
                view.atlas_tex = atlas_tex
        elif isinstance(prepared, WallContent):
            view = WallView(self.content_root, w, h, prepared)
        else:
            failure = prepared if isinstance(prepared, ContentFailure) else ContentFailure(str(prepared))
            view = FaceView(self.content_root, w, h, render_failure(failure, (w, h)))
        try:
            view.build()
        except Exception as exc:  # a view that cannot be built must not take the room down
            view.teardown()
            view = FaceView(self.content_root, w, h, render_failure(ContentFailure(f"cannot draw: {exc}"), (w, h)))
            view.build()
        self.content = view
        if keep is not None and isinstance(view, CloudView) and len(keep[0]):
            view.selection = keep[0]
            view._show_selection()

    @property
    def is_error(self) -> bool:
        return isinstance(self.prepared, ContentFailure) and not self.prepared.waiting

    # --- geometry ---------------------------------------------------------------------------

    def frame(self) -> geometry.PanelFrame:
        pos, rot, scale = self.transform
        w, h = self.size
        return geometry.PanelFrame.of(pos, rot, scale, (w, h + 2 * TITLE_BAR))

    def hit(self, origin: np.ndarray, direction: np.ndarray) -> Hit | None:
        if self.room_scale:
            return None
        f = self.frame()
        res = geometry.ray_panel(origin, direction, f)
        if res is None:
            return None
        t, p, u, v = res
        _, _, scale = self.transform
        u, v = u / scale[0], v / scale[1]
        w, h = self.size
        if v > h / 2 + TITLE_BAR:
            return None  # the frame is symmetric; only the title bar is above the face
        if v > h / 2:
            region = "close" if u > w / 2 - TITLE_BAR else "title"
        elif v < -h / 2:
            return None
        elif u > w / 2 - CORNER and v < -h / 2 + CORNER and (u - (w / 2 - CORNER)) + (-h / 2 + CORNER - v) >= CORNER * 0.4:
            region = "resize"
        else:
            region = "body"
        return Hit(self.panel.id, region, u, v, t, (float(p[0]), float(p[1]), float(p[2])))

    def to_local(self, world: np.ndarray) -> np.ndarray:
        """World point into the panel's unscaled local frame (where content views draw)."""
        pos, rot, scale = self.transform
        m = geometry.quat_matrix(rot)
        return ((m.T @ (np.asarray(world, np.float64) - np.asarray(pos))) / np.asarray(scale)).astype(np.float32)

    def to_world(self, local: np.ndarray) -> np.ndarray:
        """A point of the panel's unscaled local frame in world space (the inverse of to_local)."""
        pos, rot, scale = self.transform
        return np.asarray(pos) + geometry.quat_matrix(rot) @ (np.asarray(local, np.float64) * np.asarray(scale))


def now() -> float:
    return time.monotonic()
