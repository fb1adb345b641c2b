"""Controllers through OpenXR actions: one action set, suggested bindings for the
common controller profiles, and the per-frame state the interaction code reads.

Actions (each with /user/hand/left and /user/hand/right as subaction paths):
grip pose and aim pose (the laser starts at the aim pose), `grab` (squeeze),
`select` (trigger), `stick` (thumbstick or trackpad), `menu`, `hand` (raise or lower your
hand: A/X on Touch, A on Index; the Vive wand and the simple controller have no spare
button: there the participants panel's row does it). Profiles without a
control simply leave that action unbound: the Khronos simple controller has no
squeeze or stick, so there `menu` doubles as grab.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from .convert import XRPose

HANDS = ("left", "right")

# profile -> action -> list of (hand, component path); "{h}" is the hand.
BINDINGS: dict[str, dict[str, list[str]]] = {
    "/interaction_profiles/khr/simple_controller": {
        "grip_pose": ["/user/hand/{h}/input/grip/pose"],
        "aim_pose": ["/user/hand/{h}/input/aim/pose"],
        "select": ["/user/hand/{h}/input/select/click"],
        "grab": ["/user/hand/{h}/input/menu/click"],
    },
    "/interaction_profiles/oculus/touch_controller": {
        "grip_pose": ["/user/hand/{h}/input/grip/pose"],
        "aim_pose": ["/user/hand/{h}/input/aim/pose"],
        "select": ["/user/hand/{h}/input/trigger/value"],
        "grab": ["/user/hand/{h}/input/squeeze/value"],
        "stick": ["/user/hand/{h}/input/thumbstick"],
        "menu": ["/user/hand/left/input/menu/click", "/user/hand/right/input/b/click"],
        "hand": ["/user/hand/left/input/x/click", "/user/hand/right/input/a/click"],
    },
    "/interaction_profiles/valve/index_controller": {
        "grip_pose": ["/user/hand/{h}/input/grip/pose"],
        "aim_pose": ["/user/hand/{h}/input/aim/pose"],
        "select": ["/user/hand/{h}/input/trigger/value"],
        "grab": ["/user/hand/{h}/input/squeeze/value"],
        "stick": ["/user/hand/{h}/input/thumbstick"],
        "menu": ["/user/hand/{h}/input/b/click"],
        "hand": ["/user/hand/{h}/input/a/click"],
    },
    "/interaction_profiles/htc/vive_controller": {
        "grip_pose": ["/user/hand/{h}/input/grip/pose"],
        "aim_pose": ["/user/hand/{h}/input/aim/pose"],
        "select": ["/user/hand/{h}/input/trigger/value"],
        "grab": ["/user/hand/{h}/input/squeeze/click"],
        "stick": ["/user/hand/{h}/input/trackpad"],
        "menu": ["/user/hand/{h}/input/menu/click"],
    },
}

ACTION_TYPES = {
    "grip_pose": "POSE_INPUT",
    "aim_pose": "POSE_INPUT",
    "select": "FLOAT_INPUT",
    "grab": "FLOAT_INPUT",
    "stick": "VECTOR2F_INPUT",
    "menu": "BOOLEAN_INPUT",
    "hand": "BOOLEAN_INPUT",
}


def expand_bindings(profile: str) -> list[tuple[str, str]]:
    """(action name, full input path) pairs of one profile, both hands expanded."""
    out: list[tuple[str, str]] = []
    for action, paths in BINDINGS[profile].items():
        for path in paths:
            if "{h}" in path:
                out.extend((action, path.format(h=h)) for h in HANDS)
            else:
                out.append((action, path))
    return out


@dataclass
class HandInput:
    """One hand's controller this frame (OpenXR play space)."""

    grip: XRPose | None = None
    aim: XRPose | None = None
    select: float = 0.0
    grab: float = 0.0
    stick: tuple[float, float] = (0.0, 0.0)
    menu: bool = False
    hand: bool = False
    active: bool = False


@dataclass
class ControllerState:
    hands: dict[str, HandInput] = field(default_factory=lambda: {h: HandInput() for h in HANDS})
    profiles: dict[str, str] = field(default_factory=dict)
    """Interaction profile the runtime chose per hand ('' until one is bound)."""


class Controllers:
    """The action set. Created with the instance; attached when the session exists."""

    def __init__(self, instance: Any) -> None:
        import xr

        self.instance = instance
        self.hand_paths = {h: xr.string_to_path(instance, f"/user/hand/{h}") for h in HANDS}
        self.action_set = xr.create_action_set(
            instance,
            xr.ActionSetCreateInfo(action_set_name="deeproom", localized_action_set_name="DeepRoom", priority=0),
        )
        self.actions: dict[str, Any] = {}
        for name, kind in ACTION_TYPES.items():
            self.actions[name] = xr.create_action(
                self.action_set,
                xr.ActionCreateInfo(
                    action_type=getattr(xr.ActionType, kind),
                    action_name=name,
                    localized_action_name=name.replace("_", " "),
                    subaction_paths=list(self.hand_paths.values()),
                ),
            )
        self.suggested: list[str] = []
        self.rejected: dict[str, str] = {}
        for profile in BINDINGS:
            bindings = [
                xr.ActionSuggestedBinding(action=self.actions[a], binding=xr.string_to_path(instance, p))
                for a, p in expand_bindings(profile)
            ]
            try:
                xr.suggest_interaction_profile_bindings(
                    instance,
                    xr.InteractionProfileSuggestedBinding(
                        interaction_profile=xr.string_to_path(instance, profile), suggested_bindings=bindings
                    ),
                )
                self.suggested.append(profile)
            except xr.exception.XrException as exc:  # a runtime may not know a profile
                self.rejected[profile] = str(exc)
        self.spaces: dict[tuple[str, str], Any] = {}
        self.state = ControllerState()
        self.session: Any = None

    def attach(self, session: Any) -> None:
        """Attach the action set to the new session and make a space per hand pose."""
        import xr

        self.session = session.session
        xr.attach_session_action_sets(self.session, xr.SessionActionSetsAttachInfo(action_sets=[self.action_set]))
        for name in ("grip_pose", "aim_pose"):
            for hand, path in self.hand_paths.items():
                self.spaces[(name, hand)] = xr.create_action_space(
                    self.session,
                    xr.ActionSpaceCreateInfo(action=self.actions[name], subaction_path=path, pose_in_action_space=xr.Posef()),
                )

    def sync(self, session: Any, display_time: int) -> ControllerState:
        """xrSyncActions, then every action's state and both hands' poses at display_time."""
        import xr

        xr.sync_actions(
            self.session,
            xr.ActionsSyncInfo(active_action_sets=[xr.ActiveActionSet(action_set=self.action_set, subaction_path=xr.NULL_PATH)]),
        )
        for hand, path in self.hand_paths.items():
            h = self.state.hands[hand]

            def info(name: str, path: Any = path) -> Any:
                return xr.ActionStateGetInfo(action=self.actions[name], subaction_path=path)

            h.select = float(xr.get_action_state_float(self.session, info("select")).current_state)
            h.grab = float(xr.get_action_state_float(self.session, info("grab")).current_state)
            stick = xr.get_action_state_vector2f(self.session, info("stick")).current_state
            h.stick = (float(stick.x), float(stick.y))
            h.menu = bool(xr.get_action_state_boolean(self.session, info("menu")).current_state)
            h.hand = bool(xr.get_action_state_boolean(self.session, info("hand")).current_state)
            h.active = bool(xr.get_action_state_pose(self.session, info("grip_pose")).is_active)
            for name, attr in (("grip_pose", "grip"), ("aim_pose", "aim")):
                loc = xr.locate_space(self.spaces[(name, hand)], session.space, display_time)
                valid = int(loc.location_flags) & int(xr.SpaceLocationFlags.POSITION_VALID_BIT)
                setattr(h, attr, session._lift(XRPose.from_xr(loc.pose)) if h.active and valid else None)
            with contextlib.suppress(xr.exception.XrException):
                prof = xr.get_current_interaction_profile(self.session, path).interaction_profile
                self.state.profiles[hand] = xr.path_to_string(self.instance, prof) if prof else ""
        return self.state

    def destroy(self) -> None:
        import xr

        for space in self.spaces.values():
            with contextlib.suppress(Exception):
                xr.destroy_space(space)
        self.spaces = {}
        with contextlib.suppress(Exception):
            xr.destroy_action_set(self.action_set)
