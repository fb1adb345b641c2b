"""The desktop rig: the camera as a head, the mouse as a pointer, the keyboard to walk.

A rig gives the app its camera, head/hand poses and pointer ray, and turns device
input into the app's input methods (see `deeproom.scenes.app`). Offscreen there is
no mouse or keyboard: tests and scripts aim the pointer with `aim(x, y)` and call
the app's `pointer_*` and `key` methods themselves.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from deeproom.presence import HandPose
from deeproom.scenes import geometry

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

WALK_SPEED = 2.2  # metres per second
TURN_SPEED = 90.0  # degrees per second (arrow keys)
LOOK_SPEED = 120.0  # degrees per unit of mouse travel
ACTION_KEYS = {"tab", "escape", "q", "e", "+", "=", "-", "l", "b", "v", "c", "r", "i", "t", "f", "g", "m", "space", "space up", "delete",
               "scroll up", "scroll down", "/", *"1234567890"}
SEARCH_KEYS = {"backspace", "enter", "escape", "tab", "space"}


class DesktopRig:
    """Keyboard and mouse (or a script, offscreen) driving Ursina's camera."""

    def __init__(self) -> None:
        self.app: RoomApp | None = None
        self.yaw = 0.0
        self.pitch = 0.0
        self.pointer_film: tuple[float, float] | None = None
        self._dragging = False
        self.active_hand = "right"
        self._right_down: tuple[float, float] | None = None  # (yaw, pitch) when the right button went down

    def attach(self, app: RoomApp) -> None:
        self.app = app

    def detach(self) -> None:
        self.app = None

    # --- poses --------------------------------------------------------------------------------

    def _camera(self):  # type: ignore[no-untyped-def]
        from ursina import camera

        return camera

    def head(self) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
        cam = self._camera()
        p = cam.world_position
        q = geometry.quat_mul(geometry.yaw_quat(math.radians(self.yaw)),
                              (math.cos(math.radians(self.pitch) / 2), math.sin(math.radians(self.pitch) / 2), 0.0, 0.0))
        return (float(p[0]), float(p[1]), float(p[2])), q

    def hands(self) -> tuple[HandPose | None, HandPose | None]:
        return None, None

    def pointer_ray(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.app is None:
            return None
        film = self.pointer_film
        if film is None and not self.app.options.offscreen:
            from ursina import mouse, window

            if mouse.position is not None:
                film = (float(mouse.x) / (window.aspect_ratio / 2), float(mouse.y) / 0.5)
        if film is None:
            return None
        return self.app.film_ray(*film)

    def hand_rays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The desktop has no tracked hands (a subclass that has a right hand points with the mouse)."""
        if self.hands()[1] is None:
            return {}
        ray = self.pointer_ray()
        return {"right": ray} if ray is not None else {}

    def aim(self, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        """Point at pixel (x, y) from the top-left (offscreen scripts); returns the ray."""
        assert self.app is not None
        w, h = self.app.screen_size()
        self.pointer_film = (2 * x / w - 1, 1 - 2 * y / h)
        return self.app.film_ray(*self.pointer_film)

    def _apply(self) -> None:
        cam = self._camera()
        cam.rotation = (self.pitch, self.yaw, 0)

    def teleport(self, position: tuple[float, float, float], yaw_degrees: float | None = None) -> None:
        cam = self._camera()
        cam.position = position
        if yaw_degrees is not None:
            self.yaw = float(yaw_degrees)
            self.pitch = 0.0
        self._apply()

    def look_at(self, target: tuple[float, float, float]) -> None:
        pos, _ = self.head()
        d = np.asarray(target, float) - np.asarray(pos, float)
        self.yaw = math.degrees(math.atan2(d[0], d[2]))
        self.pitch = -math.degrees(math.atan2(d[1], math.hypot(d[0], d[2])))
        self._apply()

    def follow(self, position: tuple[float, float, float], rotation: tuple[float, float, float, float], dt: float) -> None:
        cam = self._camera()
        t = 1.0 - math.exp(-6.0 * dt)
        p = np.array(cam.position, float)
        p += (np.asarray(position) - p) * t
        cam.position = tuple(p)
        fwd = geometry.quat_matrix(rotation)[:, 2]
        yaw = math.degrees(math.atan2(fwd[0], fwd[2]))
        pitch = -math.degrees(math.asin(float(np.clip(fwd[1], -1, 1))))
        dyaw = (yaw - self.yaw + 180) % 360 - 180
        self.yaw += dyaw * t
        self.pitch += (pitch - self.pitch) * t
        self._apply()

    # --- devices ------------------------------------------------------------------------------

    def update(self, dt: float) -> None:
        app = self.app
        if app is None or app.options.offscreen:
            return
        from ursina import held_keys, mouse

        turn = (held_keys["right arrow"] - held_keys["left arrow"]) * TURN_SPEED * dt
        tilt = (held_keys["down arrow"] - held_keys["up arrow"]) * TURN_SPEED * dt
        if mouse.right and mouse.velocity is not None:
            turn += float(mouse.velocity[0]) * LOOK_SPEED
            tilt -= float(mouse.velocity[1]) * LOOK_SPEED
        if turn or tilt:
            self.yaw += turn
            self.pitch = float(np.clip(self.pitch + tilt, -85, 85))
            self._apply()
        fwd = held_keys["w"] - held_keys["s"]
        if app.search.active:  # the keys are typing a layer's name
            fwd = side = 0
        else:
            side = held_keys["d"] - held_keys["a"]
        if (fwd or side) and app.following is None:
            y = math.radians(self.yaw)
            f = np.array([math.sin(y), 0.0, math.cos(y)])
            r = np.array([math.cos(y), 0.0, -math.sin(y)])
            cam = self._camera()
            cam.position = tuple(np.array(cam.position, float) + (f * fwd + r * side) * WALK_SPEED * dt)
        self.pointer_film = None
        ray = self.pointer_ray()
        if ray is not None and mouse.left and self._dragging:
            app.pointer_move(*ray)

    def input(self, key: str) -> None:
        app = self.app
        if app is None:
            return
        if key == "left mouse down":
            ray = self.pointer_ray()
            if ray is not None:
                menu_was_open = app.menu_open
                app.pointer_press(*ray)  # on the menu (a panel in the world) too
                self._dragging = not menu_was_open
        elif key == "left mouse up":
            ray = self.pointer_ray()
            self._dragging = False
            app.pointer_release(*(ray if ray is not None else (None, None)))
        elif key == "right mouse down":
            self._right_down = (self.yaw, self.pitch)
        elif key == "right mouse up":
            # a right-click (not a right-drag to look) opens the action menu of what it is on
            down, self._right_down = self._right_down, None
            ray = self.pointer_ray()
            if down is not None and ray is not None and abs(self.yaw - down[0]) + abs(self.pitch - down[1]) < 2.0:
                app.pointer_context(*ray)
        elif app.search.active and (key in SEARCH_KEYS or (len(key) == 1 and key.isprintable())):
            app.key(key)  # typed into the search
        elif key in ACTION_KEYS:
            app.key(key)
