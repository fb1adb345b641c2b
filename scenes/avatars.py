"""Other people in the room: head, hands, name tag, speaking ring and laser pointer.

Poses arrive ~20-30 times a second; each avatar eases toward its latest pose every
frame (exponential smoothing of positions, normalised lerp of rotations), so
motion looks continuous whatever the network's rhythm. The interpolation is plain
arithmetic, so it is allowed in the per-frame pump.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from panda3d.core import Quat
from ursina import Entity, Text, color, destroy

from deeproom.presence import Pose
from deeproom.scenes import colormap

SMOOTHING = 14.0
"""How fast an avatar catches up with its pose (1/s): ~95% within 0.2 s."""
LASER_LENGTH = 4.0
NEAR_HIDE = 0.45
"""Metres from the viewer within which an avatar is hidden."""


def _nlerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    if float(a @ b) < 0:
        b = -b
    q = a * (1 - t) + b * t
    return q / (np.linalg.norm(q) or 1.0)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) or 1.0)


class Laser:
    """A pointer beam and the dot where it ends (on what it hits, else LASER_LENGTH away):
    remote participants' lasers, and a headset wearer's own."""

    def __init__(self, parent: Entity, colour: Any) -> None:
        self.beam = Entity(parent=parent, model="cube", scale=(0.006, 0.006, 1.0), color=colour, enabled=False)
        self.dot = Entity(parent=parent, model="sphere", scale=0.03, color=colour, enabled=False)
        self._colour = colour

    @property
    def shown(self) -> bool:
        return bool(self.beam.enabled)

    def show(self, origin: Any, direction: Any, hit_distance: float | None = None) -> None:
        o = np.asarray(origin, float)
        d = _unit(np.asarray(direction, float))
        length = min(hit_distance, LASER_LENGTH) if hit_distance is not None else LASER_LENGTH
        self.beam.enabled = self.dot.enabled = True
        self.beam.position = tuple(o + d * length / 2)
        self.beam.look_at(tuple(o + d * length))
        self.beam.scale = (0.006, 0.006, length)
        self.dot.position = tuple(o + d * length)

    def hide(self) -> None:
        self.beam.enabled = self.dot.enabled = False

    def colour(self, colour: Any) -> None:
        if colour != self._colour:
            self._colour = self.beam.color = self.dot.color = colour

    def teardown(self) -> None:
        destroy(self.beam)
        destroy(self.dot)


class AvatarView:
    """One remote participant. `build`, `sync(pose, name, colour)`, `tick(dt)`, `teardown`."""

    def __init__(self, parent: Entity, participant_id: str) -> None:
        self.parent = parent
        self.participant_id = participant_id
        self.name = participant_id
        self.colour = "#888888"
        self.target: Pose | None = None
        self.head_pos = np.zeros(3)
        self.head_rot = np.array([1.0, 0, 0, 0])
        self.hand_pos = {"left": np.zeros(3), "right": np.zeros(3)}
        self.speaking = False
        self._placed = False
        self._phase = 0.0
        self.too_close = False

    def build(self) -> None:
        c = color.rgb(0.6, 0.6, 0.6)
        self.root = Entity(parent=self.parent, name=f"avatar-{self.participant_id}")
        self.head = Entity(parent=self.root, model="sphere", scale=(0.2, 0.24, 0.22), color=c)
        self.visor = Entity(parent=self.head, model="cube", scale=(0.8, 0.28, 0.3), position=(0, 0.08, 0.42),
                            color=color.rgb(0.08, 0.09, 0.12))
        self.ring = Entity(parent=self.root, model="sphere", scale=(0.34, 0.02, 0.34), y=-0.16,
                           color=color.rgb(0.3, 1.0, 0.5), enabled=False)
        self.body = Entity(parent=self.root, model="cube", scale=(0.3, 0.5, 0.16), y=-0.48, color=c)
        self.tag = Text(self.name, parent=self.root, y=0.36, scale=2.5, origin=(0, 0), billboard=True,
                        color=color.white, background=True)
        self.hands = {
            side: Entity(parent=self.parent, model="cube", scale=(0.07, 0.04, 0.11), color=c, enabled=False)
            for side in ("left", "right")
        }
        self.laser = Laser(self.parent, c)
        # A raised hand: a yellow hand (palm and raised arm) above the name tag, seen from anywhere.
        self.hand_up = Entity(parent=self.root, y=0.62, billboard=True, enabled=False)
        Entity(parent=self.hand_up, model="quad", scale=(0.16, 0.2), color=color.rgb(1.0, 0.82, 0.15))
        Entity(parent=self.hand_up, model="quad", scale=(0.05, 0.16), y=-0.17, color=color.rgb(1.0, 0.82, 0.15))
        self.hand_raised = False

    def set_hand(self, raised: bool) -> None:
        if raised != self.hand_raised:
            self.hand_raised = raised
            self.hand_up.enabled = raised

    def sync(self, pose: Pose | None, name: str, colour: str) -> None:
        if name != self.name:
            self.name = name
            self.tag.text = name
            self.tag.background = True  # Ursina sizes the background once, for the text it had then
        if colour != self.colour:
            self.colour = colour
            c = colormap.hex_rgb(colour)
            col = color.rgb(c[0] / 255, c[1] / 255, c[2] / 255)
            for e in (self.head, self.body, self.hands["left"], self.hands["right"]):
                e.color = col
            self.laser.colour(col)
        if pose is not None:
            self.target = pose
            if not self._placed:  # the first pose is taken as is, not eased in from the origin
                self.head_pos = np.array(pose.head_position, float)
                self.head_rot = np.array(pose.head_rotation, float)
                for side in ("left", "right"):
                    hand = getattr(pose, side)
                    if hand is not None:
                        self.hand_pos[side] = np.array(hand.position, float)
                self._placed = True
        self.root.enabled = self._placed and not self.too_close

    def tick(self, dt: float, hit_distance: float | None = None, viewer: np.ndarray | None = None) -> None:
        p = self.target
        if p is None:
            return
        # An avatar standing where we stand (teleported onto, or following) would fill the
        # view with the inside of its head: hide it while it is that close.
        near = viewer is not None and float(np.linalg.norm(self.head_pos - viewer)) < NEAR_HIDE
        if near != self.too_close:
            self.too_close = near
            self.root.enabled = self._placed and not near
        t = 1.0 - math.exp(-SMOOTHING * max(dt, 0.0))
        self.head_pos += (np.array(p.head_position) - self.head_pos) * t
        self.head_rot = _nlerp(self.head_rot, np.array(p.head_rotation, float), t)
        self.root.position = tuple(self.head_pos)
        self.head.set_quat(Quat(*self.head_rot))
        for side in ("left", "right"):
            hand = getattr(p, side)
            e = self.hands[side]
            e.enabled = hand is not None
            if hand is not None:
                self.hand_pos[side] += (np.array(hand.position) - self.hand_pos[side]) * t
                e.position = tuple(self.hand_pos[side])
                e.set_quat(Quat(*hand.rotation))
        self._phase += dt
        self.ring.enabled = p.speaking
        if p.speaking:
            s = 0.34 + 0.05 * math.sin(self._phase * 12)
            self.ring.scale = (s, 0.02, s)
        ray = p.pointer
        if ray is None:
            self.laser.hide()
        else:
            self.laser.show(ray.origin, ray.direction, hit_distance)

    def teardown(self) -> None:
        for e in self.hands.values():
            destroy(e)
        self.laser.teardown()
        destroy(self.root)
