"""Where a new panel goes: a free place beside its source panel, never over another panel.

`free_slot(room, beside, size)` returns a transform dict (position, rotation facing the
viewer, scale 1) for a panel of `size` (width, height in metres). Two panels "overlap"
when, seen from the viewer, their horizontal angle ranges and their height ranges both
overlap, whatever their depth: a panel behind another is hidden by it. Candidates are
tried beside the source panel (right, left, above, below), then further out along the
same ring, then in rows above and below, always at the source's distance; the first
one that overlaps nothing (with a small gap) wins. Pure Python: engines, training runs
and the app all place panels with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from deeproom.state import Panel, Room

Vec3 = tuple[float, float, float]

GAP = 0.08
"""Metres left between neighbouring panels."""
DEFAULT_RADIUS = 3.0
LOWEST_BOTTOM = 0.25
"""No panel is placed with its bottom edge below this height (metres)."""
HIGHEST_TOP = 4.5


def _right_vector(q: Sequence[float]) -> Vec3:
    w, x, y, z = (float(c) for c in q)
    n = math.sqrt(w * w + x * x + y * y + z * z) or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    return (1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y))


def _azimuth(p: Sequence[float], viewer: Sequence[float]) -> float:
    return math.atan2(p[0] - viewer[0], p[2] - viewer[2])


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def facing_rotation(position: Sequence[float], viewer: Sequence[float]) -> list[float]:
    """Yaw-only quaternion (w, x, y, z) turning a panel's face (local -z) toward the viewer."""
    dx, dz = viewer[0] - position[0], viewer[2] - position[2]
    yaw = math.atan2(-dx, -dz)
    return [math.cos(yaw / 2), 0.0, math.sin(yaw / 2), 0.0]


class Footprint:
    """A panel as the viewer sees it: centre azimuth, half angular width, height range, distance."""

    __slots__ = ("azimuth", "bottom", "half_angle", "panel_id", "radius", "top")

    def __init__(self, azimuth: float, half_angle: float, bottom: float, top: float, radius: float,
                 panel_id: str = "") -> None:
        self.azimuth, self.half_angle = azimuth, half_angle
        self.bottom, self.top, self.radius = bottom, top, radius
        self.panel_id = panel_id

    @classmethod
    def of_panel(cls, panel: Panel, viewer: Sequence[float]) -> Footprint:
        t = panel.transform
        pos = t.position
        hw = panel.size[0] * t.scale[0] / 2
        hh = panel.size[1] * t.scale[1] / 2
        r = _right_vector(t.rotation)
        centre = _azimuth(pos, viewer)
        ends = [(pos[0] + s * r[0] * hw, pos[2] + s * r[2] * hw) for s in (-1, 1)]
        offs = [abs(_wrap(math.atan2(ex - viewer[0], ez - viewer[2]) - centre)) for ex, ez in ends]
        # A tilted panel's vertical extent grows by its up vector's tilt; rooms use yaw-only panels,
        # so the height range is taken as is.
        radius = math.hypot(pos[0] - viewer[0], pos[2] - viewer[2])
        return cls(centre, max(offs), pos[1] - hh, pos[1] + hh, radius, panel.id)

    def overlaps(self, other: Footprint, gap: float = GAP) -> bool:
        # The gap is metres at the nearer of the two distances, turned into an angle.
        r = max(0.3, min(self.radius, other.radius))
        dang = abs(_wrap(self.azimuth - other.azimuth))
        if dang >= self.half_angle + other.half_angle + gap / r:
            return False
        return self.bottom < other.top + gap and other.bottom < self.top + gap


def footprints(room: Room | None, viewer: Sequence[float], skip: Iterable[str] = ()) -> list[Footprint]:
    skipped = set(skip)
    if room is None:
        return []
    return [Footprint.of_panel(p, viewer) for p in room.panels.values() if p.id not in skipped]


def _candidates(base_az: float, base_y: float, base_half_h: float, base_half_angle: float,
                w: float, h: float, radius: float) -> Iterator[tuple[float, float]]:
    """(azimuth, centre height) candidates, nearest to the base first."""
    half_angle = math.atan2(w / 2, radius)
    step = 2 * half_angle + GAP / radius
    first = base_half_angle + half_angle + GAP / radius
    up = base_y + base_half_h + GAP + h / 2
    down = base_y - base_half_h - GAP - h / 2
    yield base_az + first, base_y
    yield base_az - first, base_y
    yield base_az, up
    yield base_az, down
    rows = [base_y, up, down]
    for k in range(1, 6):
        rows += [up + k * (h + GAP), down - k * (h + GAP)]
    max_steps = int(math.pi / max(step, 1e-3)) + 1
    for row in rows:
        for i in range(max_steps):
            for sgn in (1, -1):
                yield base_az + sgn * (first + i * step), row
            if row != base_y and i == 0:
                yield base_az, row


def free_slot(room: Room | None, beside: str | None, size: tuple[float, float], *,
              viewer: Sequence[float] = (0.0, 1.6, 0.0), skip: Iterable[str] = ()) -> dict[str, list[float]]:
    """A transform for a new panel of `size` beside panel `beside` (or in front of the viewer
    when it is None or not in the room) that overlaps no panel of `room` (except those in `skip`,
    e.g. the panel being replaced)."""
    w, h = float(size[0]), float(size[1])
    if not (w > 0 and h > 0):
        raise ValueError(f"panel size must be positive; got {size!r}")
    taken = footprints(room, viewer, skip)
    src = next((f for f in taken if f.panel_id == beside), None) if beside else None
    if src is not None:
        radius = max(1.0, src.radius)
        base = (src.azimuth, (src.bottom + src.top) / 2, (src.top - src.bottom) / 2, src.half_angle)
    else:
        radius = DEFAULT_RADIUS
        base = (0.0, viewer[1] + 0.2, h / 2, math.atan2(w / 2, radius))
    az0, y0, hh0, ha0 = base
    tried = _candidates(az0, y0, hh0, ha0, w, h, radius) if src is not None else _front(w, h, radius, y0)
    for az, y in tried:
        if y - h / 2 < LOWEST_BOTTOM or y + h / 2 > HIGHEST_TOP:
            continue
        cand = Footprint(az, math.atan2(w / 2, radius), y - h / 2, y + h / 2, radius)
        if not any(cand.overlaps(f, GAP / 2) for f in taken):
            return _transform(az, y, radius, viewer)
    # Everything near is taken: go above the highest panel, straight ahead of the source.
    top = max((f.top for f in taken), default=viewer[1])
    return _transform(az0, top + GAP + h / 2, radius, viewer)


def _front(w: float, h: float, radius: float, y0: float) -> Iterator[tuple[float, float]]:
    yield 0.0, y0  # straight ahead first, then around it
    yield from _candidates(0.0, y0, h / 2, math.atan2(w / 2, radius), w, h, radius)


def _transform(az: float, y: float, radius: float, viewer: Sequence[float]) -> dict[str, list[float]]:
    pos = [viewer[0] + radius * math.sin(az), y, viewer[2] + radius * math.cos(az)]
    return {"position": pos, "rotation": facing_rotation(pos, viewer), "scale": [1.0, 1.0, 1.0]}


def overlapping(room: Room, viewer: Sequence[float] = (0.0, 1.6, 0.0), gap: float = 0.0) -> list[tuple[str, str]]:
    """Pairs of panels of `room` that overlap as seen from the viewer (for tests and checks)."""
    fs = footprints(room, viewer)
    out: list[tuple[str, str]] = []
    for i, a in enumerate(fs):
        for b in fs[i + 1:]:
            if a.overlaps(b, gap):
                out.append(tuple(sorted((a.panel_id, b.panel_id))))  # type: ignore[arg-type]
    return sorted(out)


def describe(transform: dict[str, Any]) -> str:
    x, y, z = transform["position"]
    return f"({x:.2f}, {y:.2f}, {z:.2f})"
