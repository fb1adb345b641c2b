"""free_slot: new panels beside their source, never over another panel."""

from __future__ import annotations

import math
import random

import pytest

from deeproom.document import new_room
from deeproom.placement import Footprint, facing_rotation, free_slot, overlapping
from deeproom.state import Panel

VIEWER = (0.0, 1.6, 0.0)


def _add(doc, pid: str, transform: dict, size: tuple[float, float]) -> None:  # type: ignore[no-untyped-def]
    doc.apply({"op": "add_panel", "panel_id": pid, "kind": "image", "title": pid, "transform": transform,
               "size": list(size)}, "host")


def test_first_panel_goes_straight_ahead_facing_the_viewer() -> None:
    t = free_slot(None, None, (1.0, 0.8))
    x, y, z = t["position"]
    assert abs(x) < 1e-9 and z > 2 and 1.0 < y < 2.5
    # facing: the panel's local -z points at the viewer
    w, _, qy, _ = t["rotation"]
    yaw = 2 * math.atan2(qy, w)
    assert abs(math.sin(yaw)) < 1e-9 and math.cos(yaw) > 0  # unturned: its face (local -z) looks back at the viewer


def test_beside_the_source_and_never_overlapping() -> None:
    doc = new_room("r", name="r", host_id="host", host_name="H")
    _add(doc, "graph", free_slot(doc.snapshot(), None, (2.4, 1.1)), (2.4, 1.1))
    src = doc.snapshot().panels["graph"]
    placed = []
    for i in range(12):
        t = free_slot(doc.snapshot(), "graph", (1.05, 0.8))
        _add(doc, f"p{i}", t, (1.05, 0.8))
        placed.append(t)
        assert overlapping(doc.snapshot()) == [], (i, overlapping(doc.snapshot()))
    # the first one is right beside the source, at its height and distance
    first = placed[0]["position"]
    assert abs(first[1] - src.transform.position[1]) < 1e-6
    r_src = math.hypot(src.transform.position[0], src.transform.position[2])
    assert abs(math.hypot(first[0], first[2]) - r_src) < 1e-6
    gap_angle = abs(math.atan2(first[0], first[2]) - math.atan2(src.transform.position[0], src.transform.position[2]))
    assert gap_angle < 0.7  # next to it, not across the room


def test_three_panels_without_a_source_do_not_stack() -> None:
    """watch()'s three panels used to appear at one spot."""
    doc = new_room("r", name="r", host_id="host", host_name="H")
    for pid in ("metrics", "cloud", "confusion"):
        _add(doc, pid, free_slot(doc.snapshot(), None, (1.2, 0.9)), (1.2, 0.9))
    assert overlapping(doc.snapshot()) == []
    positions = {tuple(round(c, 3) for c in p.transform.position) for p in doc.snapshot().panels.values()}
    assert len(positions) == 3


def test_random_rooms_get_a_free_slot() -> None:
    rng = random.Random(5)
    for trial in range(20):
        doc = new_room("r", name="r", host_id="host", host_name="H")
        for i in range(rng.randint(1, 10)):  # panels somebody put anywhere (they may overlap each other)
            az = rng.uniform(-math.pi, math.pi)
            r = rng.uniform(1.5, 4.0)
            pos = [r * math.sin(az), rng.uniform(0.8, 2.6), r * math.cos(az)]
            _add(doc, f"u{i}", {"position": pos, "rotation": facing_rotation(pos, VIEWER)},
                 (rng.uniform(0.3, 2.0), rng.uniform(0.3, 1.2)))
        before = set(overlapping(doc.snapshot()))
        beside = rng.choice([None, *doc.snapshot().panels])
        size = (rng.uniform(0.4, 1.6), rng.uniform(0.4, 1.0))
        _add(doc, "new", free_slot(doc.snapshot(), beside, size), size)
        after = set(overlapping(doc.snapshot()))
        assert after == before, (trial, after - before)


def test_footprint_of_a_rotated_panel_covers_its_ends() -> None:
    doc = new_room("r", name="r", host_id="host", host_name="H")
    _add(doc, "edge", {"position": [0, 1.5, 3.0], "rotation": [math.cos(0.5), 0, math.sin(0.5), 0]}, (2.0, 1.0))
    p: Panel = doc.snapshot().panels["edge"]
    f = Footprint.of_panel(p, VIEWER)
    assert f.half_angle > 0.1 and f.bottom == pytest.approx(1.0) and f.top == pytest.approx(2.0)


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError):
        free_slot(None, None, (0.0, 1.0))
