"""OpenXR <-> Ursina conversions, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deeproom.scenes.geometry import quat_matrix
from deeproom.scenes.xr.convert import (
    RigOrigin,
    XRFov,
    XRPose,
    lens_film,
    project_xr,
    quat_to_matrix,
    ursina_to_xr_position,
    xr_to_room_quat,
    xr_to_ursina_position,
)

S = np.diag([1.0, 1.0, -1.0])


def _axis_quat(axis: tuple[float, float, float], angle: float) -> tuple[float, float, float, float]:
    a = np.asarray(axis) / np.linalg.norm(axis)
    s = math.sin(angle / 2)
    return (float(a[0] * s), float(a[1] * s), float(a[2] * s), math.cos(angle / 2))


@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 2, -0.5)])
@pytest.mark.parametrize("angle", [0.3, -1.1, 2.5])
def test_room_quat_is_the_reflected_rotation(axis: tuple[float, float, float], angle: float) -> None:
    q = _axis_quat(axis, angle)
    expected = S @ quat_to_matrix(q) @ S
    assert np.allclose(quat_matrix(xr_to_room_quat(q)), expected, atol=1e-9)


def test_turning_left_in_openxr_turns_toward_minus_x_in_the_room() -> None:
    # +90 degrees about OpenXR's +y is a left turn (counter-clockwise from above).
    q = _axis_quat((0, 1, 0), math.pi / 2)
    forward = quat_matrix(xr_to_room_quat(q)) @ np.array([0.0, 0.0, 1.0])
    assert np.allclose(forward, [-1, 0, 0], atol=1e-9)
    # and looking up stays looking up
    up = _axis_quat((1, 0, 0), math.pi / 4)
    f = quat_matrix(xr_to_room_quat(up)) @ np.array([0.0, 0.0, 1.0])
    assert f[1] > 0.7 and f[2] > 0.7


def test_positions_round_trip() -> None:
    p = (0.3, 1.6, -2.0)  # two metres ahead in OpenXR
    assert xr_to_ursina_position(p) == (0.3, 1.6, 2.0)
    assert ursina_to_xr_position(xr_to_ursina_position(p)) == p


def test_origin_places_and_turns_the_play_space() -> None:
    origin = RigOrigin(position=(1.0, 0.0, 2.0), yaw=math.pi / 2)  # turned to face +x
    pos, rot = origin.to_room(XRPose((0.0, 1.6, -1.0), (0.0, 0.0, 0.0, 1.0)))  # 1 m ahead
    assert np.allclose(pos, (2.0, 1.6, 2.0), atol=1e-9)
    assert np.allclose(quat_matrix(rot) @ np.array([0, 0, 1.0]), [1, 0, 0], atol=1e-9)
    assert np.allclose(origin.room_direction(XRPose((0, 0, 0), (0, 0, 0, 1))), (1, 0, 0), atol=1e-9)


def test_projection_centre_and_edges() -> None:
    fov = XRFov(-0.7, 0.9, 0.8, -0.6)
    eye = XRPose((0.0, 1.6, 0.0), (0.0, 0.0, 0.0, 1.0))
    w, h = 320, 240
    u, v = project_xr((math.tan(0.9) * 2, 1.6 + math.tan(0.8) * 2, -2.0), eye, fov, w, h)  # type: ignore[misc]
    assert u == pytest.approx(w) and v == pytest.approx(0.0, abs=1e-9)
    assert project_xr((0, 1.6, 2.0), eye, fov, w, h) is None  # behind


def test_lens_film_matches_panda_lens_projection() -> None:
    from panda3d.core import CS_yup_left, LPoint2f, LPoint3f, PerspectiveLens

    fov = XRFov(-0.7, 0.9, 0.8, -0.6)
    (fw, fh), (ox, oy) = lens_film(fov)
    lens = PerspectiveLens()
    lens.setCoordinateSystem(CS_yup_left)  # what Ursina sets
    lens.setFilmSize(fw, fh)
    lens.setFocalLength(1.0)
    lens.setFilmOffset(ox, oy)
    eye = XRPose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    for point_xr in [(0.3, 0.2, -2.0), (-0.8, -0.5, -1.5), (1.2, 1.0, -3.0)]:
        expected = project_xr(point_xr, eye, fov, 2, 2)
        assert expected is not None
        out = LPoint2f()
        assert lens.project(LPoint3f(*xr_to_ursina_position(point_xr)), out)
        # Panda's film coordinates are [-1, 1], y up; ours are pixels of a 2x2 image, y down.
        assert out.x + 1 == pytest.approx(expected[0], abs=1e-5)
        assert 1 - out.y == pytest.approx(expected[1], abs=1e-5)


def test_teleport_target_and_sphere_from_the_hands() -> None:
    from deeproom.scenes.xr.app_rig import floor_hit, sphere_from_hands

    # From 1.6 m up, pointing 45 degrees down and ahead: lands 1.6 m ahead.
    hit = floor_hit((0.0, 1.6, 0.0), (0.0, -1.0, 1.0))
    assert hit is not None and hit[0] == pytest.approx(0.0) and hit[2] == pytest.approx(1.6)
    assert floor_hit((0.0, 1.6, 0.0), (0.0, 0.2, 1.0)) is None  # pointing up
    assert floor_hit((0.0, 1.6, 0.0), (0.0, -0.01, 1.0)) is None  # beyond range
    centre, radius = sphere_from_hands((-0.2, 1.3, 0.5), (0.2, 1.5, 0.5))
    assert list(centre) == pytest.approx([0.0, 1.4, 0.5]) and radius == pytest.approx(0.5 * (0.4**2 + 0.2**2) ** 0.5)
    assert sphere_from_hands((0, 0, 0), (0, 0, 0))[1] == pytest.approx(0.01)
    assert sphere_from_hands((0, 0, 0), (5, 0, 0))[1] == pytest.approx(1.0)
