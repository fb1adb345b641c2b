"""The XR rig as the scenes app's `Rig`: headset cameras, controllers as pointers.

`attach_to_app(app)` (called by the app for `--xr`) opens the runtime first, so a
missing or refusing runtime raises XRUnavailable before anything changes and the
app stays on the desktop rig. Controllers become the app's input: each hand has a
laser; the right hand's trigger or squeeze, or the left hand's trigger,
presses/drags/releases along that hand's laser (`pointer_press/move/release`; the
hand that last started a press is the pointer); the right stick snap-turns 30 degrees (sideways)
or teleports (push forward, aim the laser at the floor, let go); the left stick
walks (in the direction the head faces); the menu button (B on Touch and Index)
opens the add-panel menu, a panel in the world, picked with the laser. Holding the
left squeeze places the latent cloud's selection sphere between the hands and sizes
it to half their distance (the selection follows live; letting go keeps it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deeproom.presence import HandPose

from .convert import RigOrigin
from .errors import XRUnavailable

SNAP_DEGREES = 30.0
TELEPORT_RANGE = 10.0  # metres along the laser
WALK_SPEED = 1.5  # metres per second at full stick
EYE_HEIGHT = 1.6
SPHERE_STEP = 0.005  # metres the hands must move the selection sphere before it reselects


def attach_to_app(app: Any, *, render_scale: float = 1.0) -> AppXRRig:
    from .input import Controllers
    from .session import XRSession

    session = XRSession("DeepRoom", render_scale=render_scale)
    try:
        session.open()
        session.actions = Controllers(session.instance)
    except XRUnavailable:
        session.close()
        raise
    rig = AppXRRig(session)
    app.set_rig(rig)
    return rig


def floor_hit(origin: Any, direction: Any, max_distance: float = TELEPORT_RANGE) -> tuple[float, float, float] | None:
    """Where a ray meets the floor (y = 0) within max_distance, or None."""
    o = np.asarray(origin, dtype=float)
    d = np.asarray(direction, dtype=float)
    d = d / (np.linalg.norm(d) or 1.0)
    if d[1] >= -1e-6:
        return None
    t = -o[1] / d[1]
    if t < 0 or t > max_distance:
        return None
    p = o + t * d
    return (float(p[0]), 0.0, float(p[2]))


def sphere_from_hands(left: Any, right: Any, lo: float = 0.01, hi: float = 1.0) -> tuple[np.ndarray, float]:
    """Selection sphere from the two hands: centred between them, radius half their
    distance (clamped)."""
    a, b = np.asarray(left, dtype=float), np.asarray(right, dtype=float)
    return (a + b) / 2, float(np.clip(0.5 * np.linalg.norm(b - a), lo, hi))


class AppXRRig:
    """Implements the scenes app's Rig protocol on top of XRRig."""

    def __init__(self, session: Any) -> None:
        from .rig import XRRig

        self.xr = XRRig(session)
        self.app: Any = None
        self._pressed = False
        self._snap_armed = True
        self._teleport_armed = False
        self._menu_down = False
        self._hand_down = False
        self._sphere: tuple[np.ndarray, float] | None = None  # the sphere last selected with, while held
        self.active_hand = "right"  # whose laser is the pointer: the hand that last pressed
        self.hands_seen: set[str] = set()  # hands whose laser was drawn at least once

    def attach(self, app: Any) -> None:
        self.app = app
        self.xr.start()
        info = self.xr.session.info
        if info is not None:
            w, h = info.view_sizes[0]
            print(f"XR mode: {info.runtime} / {info.system}, {w}x{h} per eye; the window mirrors the left eye")

    def detach(self) -> None:
        stats = self.xr.stats
        if self.xr._base is not None:
            seen = ", ".join(sorted(self.hands_seen)) or "none"
            print(f"XR mode ended: {stats.frames_submitted} frames submitted to the headset; lasers drawn: {seen}")
        self.xr.close()

    # --- poses ---------------------------------------------------------------

    def head(self) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        if self.xr.head_pose is None:
            x, y, z = self.xr.origin_pose.position
            return (x, y + EYE_HEIGHT, z), self.xr.origin_pose.quat()
        return self.xr.room_pose(self.xr.head_pose)

    def _hand(self, side: str) -> Any:
        actions = self.xr.session.actions
        return actions.state.hands[side] if actions is not None else None

    def hands(self) -> tuple[HandPose | None, HandPose | None]:
        out: list[HandPose | None] = []
        for side in ("left", "right"):
            hand = self._hand(side)
            if hand is None or hand.grip is None:
                out.append(None)
            else:
                pos, rot = self.xr.room_pose(hand.grip)
                out.append(HandPose(position=pos, rotation=rot))
        return out[0], out[1]

    def _aim(self, side: str) -> tuple[np.ndarray, np.ndarray] | None:
        hand = self._hand(side)
        if hand is None or hand.aim is None:
            return None
        start, _ = self.xr.room_pose(hand.aim)
        return np.asarray(start), np.asarray(self.xr.origin_pose.room_direction(hand.aim))

    def hand_rays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """A laser from each tracked hand."""
        rays = {side: ray for side in ("left", "right") if (ray := self._aim(side)) is not None}
        self.hands_seen.update(rays)
        return rays

    def pointer_ray(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The active hand's laser (the other hand's when the active one is not tracked)."""
        other = "left" if self.active_hand == "right" else "right"
        return self._aim(self.active_hand) or self._aim(other)

    # --- moving the play space ---------------------------------------------------

    def teleport(self, position: tuple[float, float, float], yaw_degrees: float | None = None) -> None:
        """Put the wearer's eyes (roughly) at `position`: the floor goes EYE_HEIGHT below."""
        yaw = self.xr.origin_pose.yaw if yaw_degrees is None else math.radians(yaw_degrees)
        x, y, z = position
        self.xr.set_origin(RigOrigin((x, max(0.0, y - EYE_HEIGHT), z), yaw))

    def follow(self, position: tuple[float, float, float], rotation: tuple[float, float, float, float], dt: float) -> None:
        # Moving a headset wearer's view for them makes people sick; follow mode only
        # brings the play space next to the presenter once, when it is far away.
        hx, _, hz = self.head()[0]
        if math.hypot(position[0] - hx, position[2] - hz) > 3.0:
            self.teleport(position)

    def input(self, key: str) -> None:
        """Keyboard keys still reach the desktop handlers; nothing XR-specific."""

    # --- per frame: controllers -> the app's input ---------------------------------------

    def update(self, dt: float) -> None:
        if self.xr.error is not None:
            raise self.xr.error
        right, left = self._hand("right"), self._hand("left")
        if right is None or self.app is None:
            return
        # Either hand points and presses: the right with trigger or squeeze, the left with its
        # trigger (its squeeze holds the selection sphere). Between presses, the hand that
        # starts one becomes the pointer.
        presses = {"right": max(right.select, right.grab) > 0.5, "left": left is not None and left.select > 0.5}
        if not self._pressed:
            for side in ("right", "left"):
                if presses[side] and self._aim(side) is not None:
                    self.active_hand = side
                    break
        pressing = presses[self.active_hand]
        ray = self.pointer_ray()
        if ray is not None:
            if pressing and not self._pressed:
                self.app.pointer_press(ray[0], ray[1])
            elif pressing:
                self.app.pointer_move(ray[0], ray[1])
        if self._pressed and not pressing:
            self.app.pointer_release(*(ray if ray is not None else (None, None)))
        self._pressed = pressing
        sx, sy = right.stick
        if sy > 0.7 and abs(sx) < 0.5:
            self._teleport_armed = True
        elif self._teleport_armed and abs(sy) < 0.3:
            self._teleport_armed = False
            target = floor_hit(*ray) if ray is not None else None
            if target is not None:
                o = self.xr.origin_pose
                head = self.head()[0]
                # Keep the wearer's offset within the play space: their head lands on the target.
                dx, dz = target[0] - head[0], target[2] - head[2]
                self.xr.set_origin(RigOrigin((o.position[0] + dx, o.position[1], o.position[2] + dz), o.yaw))
        if abs(sx) > 0.7 and self._snap_armed:
            o = self.xr.origin_pose
            self.xr.set_origin(RigOrigin(o.position, o.yaw + math.copysign(math.radians(SNAP_DEGREES), sx)))
            self._snap_armed = False
        elif abs(sx) < 0.3:
            self._snap_armed = True
        menu = right.menu or (left is not None and left.menu)
        if menu and not self._menu_down:
            self.app.key("menu")
        self._menu_down = menu
        hand = right.hand or (left is not None and left.hand)
        if hand and not self._hand_down:  # raise or lower your hand (the participants panel shows it)
            self.app.key("hand")
        self._hand_down = hand
        left_pose, right_pose = self.hands()
        holding = left is not None and left.grab > 0.5 and left_pose is not None and right_pose is not None
        if holding:
            assert left_pose is not None and right_pose is not None
            centre, radius = sphere_from_hands(left_pose.position, right_pose.position)
            last = self._sphere
            # reselect (which rebuilds the highlight) only when the hands have moved the sphere
            if last is None or np.linalg.norm(centre - last[0]) > SPHERE_STEP or abs(radius - last[1]) > SPHERE_STEP:
                self.app.cloud_radius = radius
                self.app.select_sphere_at(centre, radius, announce=False)
                self._sphere = (centre, radius)
        elif self._sphere is not None:  # let go: the selection stays, and says how many
            self.app.select_sphere_at(*self._sphere)
            self._sphere = None
        if left is not None and math.hypot(*left.stick) > 0.15:
            _, head_rot = self.head()
            from deeproom.scenes.geometry import quat_matrix

            fwd = quat_matrix(head_rot)[:, 2]
            fwd = np.array([fwd[0], 0.0, fwd[2]])
            fwd /= np.linalg.norm(fwd) or 1.0
            right_dir = np.array([fwd[2], 0.0, -fwd[0]])
            step = (fwd * left.stick[1] + right_dir * left.stick[0]) * WALK_SPEED * dt
            o = self.xr.origin_pose
            p = np.asarray(o.position) + step
            self.xr.set_origin(RigOrigin((float(p[0]), float(p[1]), float(p[2])), o.yaw))
