"""What is pinned to the screen: room status, the lost-connection banner, notices, help.

(The add-panel menu is a panel in the world, scenes/menu.py: overlay UI never reaches a headset.)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ursina import Entity, Text, camera, color, window

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

HELP = ("WASD walk · right-drag look · right-click: actions · drag title bar: move · Q/E rotate · +/- scale · "
        "corner: resize · Tab: add panel · / find layer · T teleport · F follow · G summon · P people · H hand")
NOTICE_SECONDS = 6.0


class Hud:
    def __init__(self, app: RoomApp) -> None:
        self.app = app
        self._cache: dict[str, Any] = {}

    def build(self) -> None:
        ui = camera.ui
        self.status = Text("", parent=ui, origin=(-0.5, 0.5), scale=0.9, color=color.rgb(0.85, 0.88, 0.95))
        self.banner_bg = Entity(parent=ui, model="quad", color=color.rgba(0.7, 0.12, 0.15, 0.92), enabled=False)
        self.banner = Text("", parent=ui, origin=(0, 0), scale=1.0, color=color.white, enabled=False)
        self.follow = Text("", parent=ui, origin=(0, 0.5), scale=1.0, color=color.rgb(1, 0.85, 0.4))
        self.notice = Text("", parent=ui, origin=(-0.5, -0.5), scale=0.85)
        self.search = Text("", parent=ui, origin=(0, 0.5), scale=1.0, color=color.rgb(0.95, 0.95, 0.7))
        self.invite = Text("", parent=ui, origin=(0, 0.5), scale=0.8, color=color.rgb(0.6, 0.9, 1.0))
        self.help = Text(HELP, parent=ui, origin=(0, -0.5), scale=0.7, color=color.rgb(0.6, 0.64, 0.72))
        # "● recording", red, for everyone while the room's setting `recording` is on (not in a replay)
        red = color.rgb(0.95, 0.15, 0.15)
        self.rec_dot = Entity(parent=ui, model="circle", scale=0.018, color=red, enabled=False)
        self.rec = Text("recording", parent=ui, origin=(0.5, 0.5), scale=0.9, color=red, enabled=False)
        self.layout()

    def layout(self) -> None:
        a = window.aspect_ratio
        self.status.position = (-a / 2 + 0.015, 0.49)
        self.banner_bg.position = (0, 0.45)
        self.banner_bg.scale = (a, 0.06)
        self.banner.position = (0, 0.45)
        self.follow.position = (0, 0.40)
        self.search.position = (0, 0.36)
        self.invite.position = (0, 0.32)
        self.notice.position = (-a / 2 + 0.015, -0.44)
        self.help.position = (0, -0.495)
        self.rec.position = (a / 2 - 0.04, 0.49)
        self.rec_dot.position = (a / 2 - 0.025, 0.475)

    def _set(self, name: str, entity: Text, text: str) -> None:
        if self._cache.get(name) != text:
            self._cache[name] = text
            entity.text = text

    def update(self, now: float) -> None:
        app = self.app
        room = app.room
        name = room.settings.name if room is not None else "…"
        people = len(room.participants) if room is not None else 0
        conn = "connected" if app.connected else "offline"
        self._set("status", self.status, f"DeepRoom · {name} · {people} here · {conn}")
        recording = room is not None and room.settings.recording and not getattr(app.session, "is_replay", False)
        self.rec.enabled = self.rec_dot.enabled = recording
        lost = not app.connected
        self.banner.enabled = self.banner_bg.enabled = lost
        if lost:
            self._set("banner", self.banner, f"Connection lost — reconnecting…  {app.status_text}"[:120])
        self._set("follow", self.follow, f"Following {app.name_of(app.following)}" if app.following else "")
        self._set("search", self.search, app.search.hud_text())
        self._set("invite", self.invite, app.people.invite or "")
        live = [(t, s, e) for t, s, e in app.notices if now - t < NOTICE_SECONDS]
        text = "\n".join(s for _, s, _ in live[-3:])
        self._set("notice", self.notice, text)
        err = any(e for _, _, e in live[-1:])
        self.notice.color = color.rgb(1, 0.55, 0.55) if err else color.rgb(0.7, 0.95, 0.75)
