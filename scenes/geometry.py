"""Pure geometry for the scenes: rotations, rays against panels, graph layout, selections.

Nothing here imports Ursina, so the maths that decides where things are drawn and
what a pointer hits is tested directly. Coordinates are Ursina's: metres, x right,
y up, z forward (away from a viewer at the origin looking ahead). A panel's face is
its local z = 0 plane, seen from local -z, centred on its position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]  # (w, x, y, z)


def quat_matrix(q: Sequence[float]) -> np.ndarray:
    """3x3 rotation matrix of a unit quaternion (w, x, y, z), applied to column vectors."""
    w, x, y, z = (float(c) for c in q)
    n = math.sqrt(w * w + x * x + y * y + z * z) or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw_quat(radians: float) -> Quat:
    """Rotation about the up axis (positive turns the forward axis toward +x)."""
    return (math.cos(radians / 2), 0.0, math.sin(radians / 2), 0.0)


def quat_mul(a: Sequence[float], b: Sequence[float]) -> Quat:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    )


def facing_quat(position: Sequence[float], target: Sequence[float]) -> Quat:
    """Yaw-only rotation that turns a panel at `position` to face a viewer at `target`."""
    dx, dz = target[0] - position[0], target[2] - position[2]
    # The panel's face looks along its local -z; we want that to point at the target.
    return yaw_quat(math.atan2(-dx, -dz))


def ahead(position: Sequence[float], rotation: Sequence[float], distance: float) -> np.ndarray:
    """The point `distance` metres ahead of a viewer, level with their eyes (their pitch ignored)."""
    fwd = quat_matrix(rotation)[:, 2]
    flat = np.array([fwd[0], 0.0, fwd[2]])
    n = float(np.linalg.norm(flat))
    flat = flat / n if n > 1e-9 else np.array([0.0, 0.0, 1.0])
    return np.asarray(position, dtype=np.float64) + flat * distance


@dataclass(frozen=True, slots=True)
class PanelFrame:
    """Where a panel's face is: centre, orthonormal axes and half extents (metres)."""

    centre: np.ndarray
    right: np.ndarray
    up: np.ndarray
    normal: np.ndarray  # the direction the face looks (local -z)
    half_width: float
    half_height: float

    @classmethod
    def of(cls, position: Sequence[float], rotation: Sequence[float], scale: Sequence[float],
           size: Sequence[float]) -> PanelFrame:
        m = quat_matrix(rotation)
        return cls(
            centre=np.asarray(position, dtype=np.float64),
            right=m[:, 0],
            up=m[:, 1],
            normal=-m[:, 2],
            half_width=0.5 * float(size[0]) * float(scale[0]),
            half_height=0.5 * float(size[1]) * float(scale[1]),
        )

    def local(self, world: Sequence[float] | np.ndarray) -> tuple[float, float]:
        """Face coordinates (u, v) of a world point, in metres from the centre."""
        d = np.asarray(world, dtype=np.float64) - self.centre
        return float(d @ self.right), float(d @ self.up)

    def world(self, u: float, v: float) -> np.ndarray:
        return self.centre + u * self.right + v * self.up

    def unit(self, world: Sequence[float] | np.ndarray) -> tuple[float, float]:
        """Face coordinates in [0, 1] x [0, 1] from the bottom-left corner."""
        u, v = self.local(world)
        return (u / (2 * self.half_width) + 0.5, v / (2 * self.half_height) + 0.5)


def ray_plane(origin: Sequence[float], direction: Sequence[float], point: np.ndarray,
              normal: np.ndarray) -> tuple[float, np.ndarray] | None:
    """Distance along the ray and the hit point on a plane, or None if parallel or behind."""
    o = np.asarray(origin, dtype=np.float64)
    d = np.asarray(direction, dtype=np.float64)
    denom = float(d @ normal)
    if abs(denom) < 1e-9:
        return None
    t = float((point - o) @ normal) / denom
    if t < 0:
        return None
    return t, o + t * d


def ray_panel(origin: Sequence[float], direction: Sequence[float], frame: PanelFrame,
              margin: float = 0.0) -> tuple[float, np.ndarray, float, float] | None:
    """(distance, hit point, u, v) where the ray meets the panel face (plus margin), else None."""
    hit = ray_plane(origin, direction, frame.centre, frame.normal)
    if hit is None:
        return None
    t, p = hit
    u, v = frame.local(p)
    if abs(u) > frame.half_width + margin or abs(v) > frame.half_height + margin:
        return None
    return t, p, u, v


def ray_sphere(origin: Sequence[float], direction: Sequence[float], centre: Sequence[float],
               radius: float) -> float | None:
    o = np.asarray(origin, dtype=np.float64) - np.asarray(centre, dtype=np.float64)
    d = np.asarray(direction, dtype=np.float64)
    d = d / (np.linalg.norm(d) or 1.0)
    b = float(o @ d)
    c = float(o @ o) - radius * radius
    disc = b * b - c
    if disc < 0:
        return None
    t = -b - math.sqrt(disc)
    return t if t >= 0 else (-b + math.sqrt(disc) if -b + math.sqrt(disc) >= 0 else None)


# --- selections in a cloud --------------------------------------------------------------


def select_sphere(points: np.ndarray, centre: Sequence[float], radius: float) -> np.ndarray:
    """Indices of points within `radius` of `centre` (points: [N, 2|3])."""
    p = np.asarray(points, dtype=np.float32)
    c = np.asarray(centre, dtype=np.float32)[: p.shape[1]]
    return np.flatnonzero(((p - c) ** 2).sum(axis=1) <= radius * radius)


def select_box(points: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    """Indices of points inside the axis-aligned box [lo, hi] (any corner order)."""
    p = np.asarray(points, dtype=np.float32)
    a = np.asarray(lo, dtype=np.float32)[: p.shape[1]]
    b = np.asarray(hi, dtype=np.float32)[: p.shape[1]]
    low, high = np.minimum(a, b), np.maximum(a, b)
    return np.flatnonzero(np.all((p >= low) & (p <= high), axis=1))


def fit_unit(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Points centred and scaled into [-0.5, 0.5]^D; returns (fitted, centre, scale)."""
    p = np.nan_to_num(np.asarray(points, dtype=np.float32))
    if p.size == 0:
        return p.reshape(0, p.shape[1] if p.ndim == 2 else 3), np.zeros(3, np.float32), 1.0
    lo, hi = p.min(axis=0), p.max(axis=0)
    centre = (lo + hi) / 2
    span = float((hi - lo).max()) or 1.0
    return (p - centre) / span, centre, span


# --- model graph layout -----------------------------------------------------------------


# GraphNode, GraphLayout, layout_graph and default_collapsed live in graph_layout (the
# graph panel's layout: collapsed groups, wrapped rows, label size); re-exported here.
from deeproom.scenes.graph_layout import HUGE_GRAPH as HUGE_GRAPH  # noqa: E402
from deeproom.scenes.graph_layout import GraphLayout as GraphLayout  # noqa: E402
from deeproom.scenes.graph_layout import GraphNode as GraphNode  # noqa: E402
from deeproom.scenes.graph_layout import default_collapsed as default_collapsed  # noqa: E402
from deeproom.scenes.graph_layout import layout_graph as layout_graph  # noqa: E402


def viewpoint_facing(frame: PanelFrame, point: Sequence[float] | np.ndarray,
                     distance: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Where to stand to read `point` on a panel's face: `distance` metres in front of it,
    looking at it. Returns (eye position, point to look at), world coordinates."""
    p = np.asarray(point, dtype=np.float64)
    return p + frame.normal * float(distance), p


def edge_polyline(a: np.ndarray, b: np.ndarray, rank_span: int, bow: float, segments: int = 8) -> np.ndarray:
    """Points of an edge; edges skipping ranks (skip connections) arc out toward the viewer."""
    if rank_span <= 1:
        return np.stack([a, b])
    t = np.linspace(0.0, 1.0, segments + 1, dtype=np.float32)[:, None]
    line = a[None, :] * (1 - t) + b[None, :] * t
    lift = np.sin(np.pi * t[:, 0]) * bow * min(rank_span, 6)
    line[:, 2] -= lift  # local -z is toward the viewer
    line[:, 1] += lift * 0.6
    return line
