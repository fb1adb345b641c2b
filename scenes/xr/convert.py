"""Pure conversions between OpenXR's space and Ursina's (and Panda3D's).

OpenXR is right-handed with +x right, +y up and -z forward (metres). Ursina sets
Panda3D's coordinate system to y-up-left (`coordinate-system y-up-left`), so every
NodePath under Ursina speaks Ursina's axes: +x right, +y up, +z forward. So

    OpenXR position (x, y, z)  ->  Ursina / Panda node position (x, y, -z)

a reflection through the z = 0 plane. A rotation R becomes S R S (S = diag(1,1,-1)),
which for a quaternion flips the sign of its x and y parts (xr_to_room_quat). The
room's quaternions (state, presence, scenes.geometry) and NodePath.setQuat both use
the ordinary quaternion-to-matrix formula in those axes, so one conversion serves all.
(Panda's default z-up mapping would swap yaw and pitch: the bug noted for
panda3d-openxr under Ursina.)

numpy only: the tests check this against Monado's simulated headset and against
projections computed in OpenXR's own conventions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deeproom.scenes.geometry import quat_matrix


@dataclass(frozen=True)
class XRPose:
    """A pose in OpenXR's space: position (x, y, z) metres, orientation (x, y, z, w)."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]

    @classmethod
    def from_xr(cls, pose: object) -> XRPose:
        """From an `xr.Posef` (anything with .position.x.. and .orientation.x..w)."""
        p = pose.position  # type: ignore[attr-defined]
        o = pose.orientation  # type: ignore[attr-defined]
        return cls((float(p.x), float(p.y), float(p.z)), (float(o.x), float(o.y), float(o.z), float(o.w)))


@dataclass(frozen=True)
class XRFov:
    """A view's field of view as OpenXR gives it: angles in radians, left/down negative."""

    angle_left: float
    angle_right: float
    angle_up: float
    angle_down: float

    @classmethod
    def from_xr(cls, fov: object) -> XRFov:
        return cls(
            float(fov.angle_left),  # type: ignore[attr-defined]
            float(fov.angle_right),  # type: ignore[attr-defined]
            float(fov.angle_up),  # type: ignore[attr-defined]
            float(fov.angle_down),  # type: ignore[attr-defined]
        )


def xr_to_ursina_position(p: tuple[float, float, float]) -> tuple[float, float, float]:
    """OpenXR position -> Ursina (y-up, +z forward) position."""
    return (p[0], p[1], -p[2])


def ursina_to_xr_position(p: tuple[float, float, float]) -> tuple[float, float, float]:
    """Ursina position -> OpenXR position (the map is its own inverse)."""
    return (p[0], p[1], -p[2])


def quat_to_matrix(q: tuple[float, float, float, float]) -> np.ndarray:
    """Rotation matrix (3x3, column vectors) of a unit quaternion in OpenXR's order (x, y, z, w)."""
    x, y, z, w = q
    return quat_matrix((w, x, y, z))


def yaw_pitch_of(q: tuple[float, float, float, float]) -> tuple[float, float]:
    """Heading of an OpenXR orientation, degrees: yaw (positive = turned left,
    counter-clockwise seen from above) and pitch (positive = looking up)."""
    forward = quat_to_matrix(q) @ np.array([0.0, 0.0, -1.0])
    yaw = math.degrees(math.atan2(-forward[0], -forward[2]))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, float(forward[1])))))
    return yaw, pitch


def lens_film(fov: XRFov) -> tuple[tuple[float, float], tuple[float, float]]:
    """Film size and offset for a Panda PerspectiveLens with focal length 1 that
    reproduces an asymmetric OpenXR field of view exactly."""
    left, right = math.tan(fov.angle_left), math.tan(fov.angle_right)
    up, down = math.tan(fov.angle_up), math.tan(fov.angle_down)
    return (right - left, up - down), ((right + left) / 2.0, (up + down) / 2.0)


def project_xr(
    point: tuple[float, float, float], eye: XRPose, fov: XRFov, width: int, height: int
) -> tuple[float, float] | None:
    """Where a world point (OpenXR space) lands in an eye's image, in pixels from the
    top-left corner; None when behind the eye. Computed in OpenXR's conventions only,
    so it checks the Panda/Ursina side independently."""
    rot = quat_to_matrix(eye.orientation)
    local = rot.T @ (np.asarray(point, dtype=float) - np.asarray(eye.position, dtype=float))
    if local[2] >= -1e-6:
        return None
    tx = local[0] / -local[2]
    ty = local[1] / -local[2]
    left, right = math.tan(fov.angle_left), math.tan(fov.angle_right)
    up, down = math.tan(fov.angle_up), math.tan(fov.angle_down)
    u = (tx - left) / (right - left)
    v = (up - ty) / (up - down)
    return (u * width, v * height)


def xr_to_room_quat(q: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """OpenXR orientation (x, y, z, w) -> room orientation (w, x, y, z) in Ursina's axes.

    The room's quaternions (deeproom.state.Transform, presence poses, scenes.geometry)
    are ordinary rotation matrices written in Ursina's (x, y, z) axes, so the rotation
    is S R S with S = diag(1, 1, -1): the x and y parts change sign."""
    x, y, z, w = q
    return (w, -x, -y, z)


@dataclass(frozen=True)
class RigOrigin:
    """Where the tracked play space sits in the room: a position (Ursina axes, metres)
    and a yaw (radians; positive turns forward (+z) toward +x, as scenes.geometry.yaw_quat)."""

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw: float = 0.0

    def yaw_matrix(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])

    def quat(self) -> tuple[float, float, float, float]:
        half = self.yaw / 2.0
        return (math.cos(half), 0.0, math.sin(half), 0.0)

    def to_room(self, pose: XRPose) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        """A tracked pose (OpenXR, play space) as a room pose: (position, quaternion w,x,y,z)."""
        local = np.asarray(xr_to_ursina_position(pose.position))
        pos = np.asarray(self.position) + self.yaw_matrix() @ local
        q = _quat_mul(self.quat(), xr_to_room_quat(pose.orientation))
        return (float(pos[0]), float(pos[1]), float(pos[2])), q

    def room_direction(self, pose: XRPose, local_xr: tuple[float, float, float] = (0.0, 0.0, -1.0)) -> tuple[float, float, float]:
        """A direction fixed to a tracked pose (default: where it points) in room axes."""
        d_xr = quat_to_matrix(pose.orientation) @ np.asarray(local_xr, dtype=float)
        d = self.yaw_matrix() @ np.asarray(xr_to_ursina_position((float(d_xr[0]), float(d_xr[1]), float(d_xr[2]))))
        n = float(np.linalg.norm(d)) or 1.0
        return (float(d[0] / n), float(d[1] / n), float(d[2] / n))


def _quat_mul(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    )
