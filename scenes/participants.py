"""Running a class from where you stand: the participants panel.

A panel in the world (the same kind of menu as the action menus, so a headset sees it too;
desktop: P, or the last row of the Tab menu in XR) lists everyone: name, role, speaking,
muted, hand raised (a yellow mark on the row, and a yellow hand over their avatar). A row
opens what you may do to that person; greyed rows say why not. Below the people, what
you may do to the room: raise or lower your hand (also H), mute all, lock the layout,
follow me, summon everyone here or to a panel, create an invite link (role, expiry: shown
in the HUD and printed on stdout), the class's voice modes (teaching mode: push-to-talk for
students; presenter only: only host and presenters heard) and the live room's layouts (save a
version, load one, export to a file, import one).

Everything is a core operation (`set_role`, `mute_participant`, `mute_all`, `set_voice`, `raise_hand`,
`lock_layout`, `set_follow`) or a relay call (`kick`, `create_invite_link`, the layout
calls) through the session; the room checks every one and a refusal comes back as a notice.
Calls that answer later hand their result to the render thread through `app.later`.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deeproom.scenes import geometry

if TYPE_CHECKING:
    from deeproom.scenes.app import RoomApp

RUNS_ROOM = ("host", "presenter")
"""Roles that run the room (the core operations' rule)."""
HAND_COLOUR = (1.0, 0.82, 0.15)
"""A raised hand: over the avatar and on the participants panel's row."""
SPEAKING_COLOUR = (0.3, 1.0, 0.5)
INVITE_ROLES = ("member", "viewer", "presenter")
INVITE_EXPIRY = (("1 hour", 3600.0), ("1 day", 86400.0), ("7 days", 7 * 86400.0))
LAYOUT_SUFFIX = ".layout.json"


def describe(name: str, role: str, *, me: bool, speaking: bool, muted: bool, hand: bool) -> str:
    """One participant's row on the panel."""
    parts = [name[:24], role]
    if me:
        parts.append("you")
    if speaking:
        parts.append("speaking")
    if muted:
        parts.append("muted")
    if hand:
        parts.append("hand raised")
    return " · ".join(parts)


class Participants:
    def __init__(self, app: RoomApp) -> None:
        self.app = app
        self._shown: tuple[Any, ...] | None = None  # what the open panel lists (it refreshes when this changes)
        self.invite: str | None = None
        """The last invite link created here (the HUD shows it)."""
        self.layouts: list[Any] = []

    # --- who may do what ----------------------------------------------------------------------

    def my_role(self) -> str:
        return self.app.menus.role()

    def _allowed(self, roles: tuple[str, ...], what: str) -> tuple[bool, str]:
        role = self.my_role()
        if role in roles:
            return True, ""
        return False, f"{what} needs the {' or '.join(roles)} role (you are {role})"

    # --- the panel ----------------------------------------------------------------------------

    def signature(self) -> tuple[Any, ...]:
        app = self.app
        room = app.room
        if room is None:
            return ()
        people = tuple((p.id, p.name, p.role.value, p.muted, p.hand_raised, self._speaking(p.id))
                       for p in room.participants.values())
        s = room.settings
        return people, s.muted_all, s.layout_locked, s.follow.value, s.presenter, s.voice.value, self.voice_state()

    def voice_state(self) -> tuple[str | None, str | None, str | None]:
        """This app's voice now: (carried over "mesh" / "sfu", talk mode "open" / "push", the SFU's URL);
        all None when the session carries no voice. Attribute reads only (safe per frame)."""
        voice = getattr(self.app.session, "voice", None)
        if voice is None:
            return None, None, None
        return voice.mode, voice.talk_mode, voice.sfu_url

    def _speaking(self, pid: str) -> bool:
        pose = self.app.poses.get(pid)
        return bool(pose is not None and pose.speaking)

    def is_open(self) -> bool:
        return self.app.menus.mode == "people"

    def open(self, keep_place: bool = False) -> None:
        """The participants panel, in front of you (or where it is, when it refreshes)."""
        app = self.app
        room = app.room
        if room is None:
            app.notify("not in a room yet")
            return
        me = app.session.participant_id
        rows: list[tuple[str, Any]] = []
        labels: list[str] = []
        marks: list[tuple[float, float, float] | None] = []
        enabled: list[bool] = []
        settings = room.settings
        for p in sorted(room.participants.values(), key=lambda p: (p.id != me, p.name.lower())):
            muted = p.muted or (settings.muted_all and p.role.value not in RUNS_ROOM)
            speaking = self._speaking(p.id)
            labels.append(describe(p.name, p.role.value, me=p.id == me, speaking=speaking, muted=muted,
                                   hand=p.hand_raised))
            rows.append(("open", lambda pid=p.id: self.person(pid)))
            marks.append(HAND_COLOUR if p.hand_raised else SPEAKING_COLOUR if speaking else None)
            enabled.append(True)
        mine = room.participants.get(me)
        hand = bool(mine is not None and mine.hand_raised)
        room_rows: list[tuple[str, Callable[[], None], tuple[str, ...] | None, str]] = [
            ("Lower my hand" if hand else "Raise my hand", self.toggle_hand, None, ""),
            ("Unmute all" if settings.muted_all else "Mute all", self.toggle_mute_all, RUNS_ROOM, "muting the room"),
            ("Unlock the layout" if settings.layout_locked else "Lock the layout", self.toggle_layout_lock, RUNS_ROOM,
             "locking the layout"),
            ("Stop follow me" if settings.follow.value == "presenter" and settings.presenter == me else "Follow me",
             app.room_actions.toggle_follow, RUNS_ROOM, "follow me"),
            ("Summon everyone here", app.room_actions.summon, RUNS_ROOM, "summoning"),
        ]
        voice_bits = [b for b, on in (("teaching mode", settings.voice.value == "sfu"),
                                      ("presenter only", settings.muted_all)) if on]
        for label, fn, roles, what in room_rows:
            ok, why = (True, "") if roles is None else self._allowed(roles, what)
            rows.append(("do", fn) if ok else ("why", why))
            labels.append(label)
            marks.append(None)
            enabled.append(ok)
        for label, fn, roles, what in [
            ("Summon everyone to a panel…", self.summon_to_panel_picker, RUNS_ROOM, "summoning"),
            ("Voice for the class…" + (f" ({', '.join(voice_bits)})" if voice_bits else ""), self.voice_menu, None, ""),
            ("Invite link…", self.invite_picker, ("host",), "creating invite links"),
            ("Layouts…", self.layouts_menu, None, ""),
        ]:
            ok, why = (True, "") if roles is None else self._allowed(roles, what)
            rows.append(("open", fn) if ok else ("why", why))
            labels.append(label)
            marks.append(None)
            enabled.append(ok)
        title = f"People · {len(room.participants)} here" + (" · layout locked" if settings.layout_locked else "")
        app.menus.open_list(title, rows, labels, enabled, marks=marks, keep_place=keep_place)
        app.menus.mode = "people"
        self._shown = self.signature()

    def tick(self) -> None:
        """Per frame: the open panel follows the room (a hand raised, a role changed, a voice mode)."""
        if self.is_open() and self.signature() != self._shown:
            self.open(keep_place=True)
        elif self.app.menus.mode == "people_voice" and self.signature() != self._shown:
            self.voice_menu()

    def row_of(self, participant_id: str) -> int | None:
        """The row of a participant on the open panel."""
        room = self.app.room
        if room is None or not self.is_open():
            return None
        me = self.app.session.participant_id
        order = [p.id for p in sorted(room.participants.values(), key=lambda p: (p.id != me, p.name.lower()))]
        return order.index(participant_id) if participant_id in order else None

    # --- voice for the class ----------------------------------------------------------------------

    def voice_menu(self) -> None:
        """The room's voice modes (host rows) and how this app's voice travels. The rows keep the menu
        open and it follows the room, so a toggle shows its new state once the room has it."""
        app = self.app
        room = app.room
        if room is None:
            return
        settings = room.settings
        carried, talk, sfu = self.voice_state()
        teaching = settings.voice.value == "sfu"
        host_ok, host_why = self._allowed(("host",), "changing the voice mode")
        if carried is None:
            status = f"Room voice: {settings.voice.value} · this app has no voice"
        else:
            status = f"Room voice: {settings.voice.value} · yours: {carried}, {'push-to-talk' if talk == 'push' else 'open mic'}"
        if sfu is None:
            note = "students use push-to-talk over the mesh; start the relay with --sfu for more than six voices"
        else:
            note = f"SFU at {sfu[:48]}: more than six voices switch to it"
        items: list[tuple[str, tuple[str, Any], bool]] = [
            (status, ("why", status), True),
            (f"Teaching mode (push-to-talk): {'on' if teaching else 'off'}",
             ("open", self.toggle_teaching) if host_ok else ("why", host_why), host_ok),
            (f"Presenter only: {'on' if settings.muted_all else 'off'}",
             ("open", self.toggle_mute_all) if host_ok else ("why", host_why), host_ok),
            (note, ("why", note), sfu is not None),  # greyed: there is no SFU to switch to
        ]
        rows: list[tuple[str, Any]] = [row for _, row, _ in items] + [("open", self.open)]
        app.menus.open_list("Voice for the class", rows, [label for label, _, _ in items] + ["back"],
                            [ok for _, _, ok in items] + [True], keep_place=app.menus.is_open)
        app.menus.mode = "people_voice"
        self._shown = self.signature()

    def toggle_teaching(self) -> None:
        """Teaching mode: students heard only while holding the talk key (`set_voice` "sfu": the SFU above
        six voices when the relay has one, else the mesh); off goes back to "auto"."""
        room = self.app.room
        if room is not None:
            self.app.apply({"op": "set_voice", "mode": "auto" if room.settings.voice.value == "sfu" else "sfu"})

    # --- one person ---------------------------------------------------------------------------

    def person(self, pid: str) -> None:
        app = self.app
        room = app.room
        if room is None or pid not in room.participants:
            app.notify("they left")
            self.open()
            return
        p = room.participants[pid]
        me = app.session.participant_id
        items: list[tuple[str, Callable[[], None] | None, str]] = []  # (label, action, why not)
        host_ok, host_why = self._allowed(("host",), "changing roles")
        for role in ("host", "presenter", "member", "viewer"):
            if role != p.role.value:
                verb = "Promote to" if _rank(role) > _rank(p.role.value) else "Demote to"
                fn: Callable[[], None] | None = (lambda r=role: self.set_role(pid, r)) if host_ok else None  # type: ignore[misc]
                items.append((f"{verb} {role}", fn, host_why))
        mute_ok, mute_why = (True, "") if pid == me and not p.muted else self._allowed(("host",), "muting others")
        muted = p.muted

        def toggle_mute() -> None:
            self.mute(pid, not muted)

        items.append(("Unmute" if muted else "Mute", toggle_mute if mute_ok else None, mute_why))
        if p.hand_raised:
            ok, why = (True, "") if pid == me else self._allowed(RUNS_ROOM, "lowering others' hands")
            lower: Callable[[], None] | None = (lambda: self.set_hand(pid, False)) if ok else None
            items.append(("Lower hand", lower, why))
        if pid != me:
            ok, why = self._allowed(("host",), "removing someone")
            kick: Callable[[], None] | None = (lambda: self.kick(pid)) if ok else None
            items.append(("Remove from the room", kick, why))
        rows: list[tuple[str, Any]] = [("do", fn) if fn is not None else ("why", why) for _, fn, why in items]
        rows.append(("open", self.open))
        labels = [label for label, _, _ in items] + ["back"]
        enabled = [fn is not None for _, fn, _ in items] + [True]
        app.menus.open_list(f"{p.name} · {p.role.value}", rows, labels, enabled, keep_place=True)
        app.menus.mode = "person"

    def set_role(self, pid: str, role: str) -> None:
        self.app.apply({"op": "set_role", "participant_id": pid, "role": role})
        self.app.notify(f"{self.app.name_of(pid)} is now {role}", error=False)

    def mute(self, pid: str, muted: bool) -> None:
        self.app.apply({"op": "mute_participant", "participant_id": pid, "muted": muted})

    def set_hand(self, pid: str, raised: bool) -> None:
        self.app.apply({"op": "raise_hand", "participant_id": pid, "raised": raised})

    def kick(self, pid: str) -> None:
        name = self.app.name_of(pid)
        self.call("kick", pid, then=lambda _: self.app.notify(f"{name} was removed", error=False),
                  what=f"removing {name}")

    # --- the room -------------------------------------------------------------------------------

    def toggle_hand(self) -> None:
        """Raise or lower your own hand (desktop H, a controller button in XR)."""
        app = self.app
        room = app.room
        me = app.session.participant_id
        if room is None or me not in room.participants:
            return
        raised = not room.participants[me].hand_raised
        self.set_hand(me, raised)
        app.notify("hand raised" if raised else "hand lowered", error=False)

    def toggle_mute_all(self) -> None:
        room = self.app.room
        if room is not None:
            self.app.apply({"op": "mute_all", "muted": not room.settings.muted_all})

    def toggle_layout_lock(self) -> None:
        room = self.app.room
        if room is not None:
            self.app.apply({"op": "lock_layout", "locked": not room.settings.layout_locked})

    def summon_to_panel_picker(self) -> None:
        app = self.app
        views = sorted(app.panels.values(), key=lambda v: v.panel.title.lower())[:9]
        rows: list[tuple[str, Any]] = [("do", lambda pid=v.panel.id: self.summon_to_panel(pid)) for v in views]
        rows.append(("open", self.open))
        app.menus.open_list("Summon everyone to…", rows, [v.panel.title[:50] for v in views] + ["back"],
                            [True] * len(rows), keep_place=True)
        app.menus.mode = "picker"

    def summon_to_panel(self, panel_id: str) -> None:
        """Everyone (you too) to 1.4 m in front of a panel, facing it."""
        app = self.app
        view = app.panels.get(panel_id)
        if view is None:
            return
        spot, yaw = in_front_of_panel(view.frame())
        app.session.send_event("summon", {"position": list(spot), "yaw": yaw})
        if app.rig is not None:
            app.rig.teleport(spot, yaw)
        app.notify(f"summoned everyone to {view.panel.title}", error=False)

    def invite_picker(self) -> None:
        rows: list[tuple[str, Any]] = [("open", lambda r=r: self.expiry_picker(r)) for r in INVITE_ROLES]
        self.app.menus.open_list("Invite link: role", rows, [f"as {r}" for r in INVITE_ROLES], [True] * len(rows),
                                 keep_place=True)
        self.app.menus.mode = "picker"

    def expiry_picker(self, role: str) -> None:
        rows: list[tuple[str, Any]] = [("do", lambda s=s, label=label: self.create_invite(role, s, label))
                                       for label, s in INVITE_EXPIRY]
        self.app.menus.open_list(f"Invite link ({role}): valid for", rows, [label for label, _ in INVITE_EXPIRY],
                                 [True] * len(rows), keep_place=True)
        self.app.menus.mode = "picker"

    def create_invite(self, role: str, ttl_s: float, label: str = "") -> None:
        def show(link: Any) -> None:
            self.invite = f"invite ({role}, {label or f'{ttl_s:.0f} s'}): {link}"
            print(self.invite, flush=True)
            self.app.notify(f"invite link for a {role} created (shown at the top; printed)", error=False)

        self.call("create_invite_link", role, ttl_s, then=show, what="creating an invite link")

    # --- layouts of the live room ---------------------------------------------------------------------

    def layouts_menu(self) -> None:
        runs_ok, why = self._allowed(RUNS_ROOM, "saving, loading and importing layouts")
        items: list[tuple[str, Callable[[], None], bool]] = [
            ("Save this layout as a version…", self.save_picker, runs_ok),
            ("Load a version…", lambda: self.list_layouts(self.load_picker), runs_ok),
            ("Export this layout to a file", self.export, True),
            ("Import a layout file…", self.import_picker, runs_ok),
        ]
        rows: list[tuple[str, Any]] = [("open", fn) if ok else ("why", why) for _, fn, ok in items]
        rows.append(("open", self.open))
        self.app.menus.open_list("Layouts", rows, [label for label, _, _ in items] + ["back"],
                                 [ok for _, _, ok in items] + [True], keep_place=True)
        self.app.menus.mode = "picker"

    def list_layouts(self, then: Callable[[list[Any]], None]) -> None:
        def got(infos: Any) -> None:
            self.layouts = list(infos)
            then(self.layouts)

        self.call("list_layouts", then=got, what="listing layouts")

    def save_picker(self) -> None:
        def show(infos: list[Any]) -> None:
            names = sorted({str(i.name) for i in infos})[:8]
            fresh = time.strftime("room-%Y%m%d-%H%M%S")
            rows: list[tuple[str, Any]] = [("do", lambda n=n: self.save(n)) for n in [*names, fresh]]
            labels = [f"{n} (next version)" for n in names] + [f"new: {fresh}"]
            self.app.menus.open_list("Save the layout as", rows, labels, [True] * len(rows), keep_place=True)
            self.app.menus.mode = "picker"

        self.list_layouts(show)

    def save(self, name: str) -> None:
        self.call("save_layout", name, then=lambda info: self.app.notify(
            f"layout saved: {info.name} v{info.version} ({info.panels} panels)", error=False), what="saving the layout")

    def load_picker(self, infos: list[Any]) -> None:
        if not infos:
            self.app.notify("no layout saved in this room yet")
            return
        newest = sorted(infos, key=lambda i: (-float(i.created), str(i.name)))[:9]
        rows: list[tuple[str, Any]] = [("do", lambda i=i: self.load(str(i.name), int(i.version))) for i in newest]
        labels = [f"{i.name} v{i.version} · {i.panels} panels · {time.strftime('%H:%M', time.localtime(i.created))}"
                  for i in newest]
        self.app.menus.open_list("Load a layout version", rows, labels, [True] * len(rows), keep_place=True)
        self.app.menus.mode = "picker"

    def load(self, name: str, version: int | None = None) -> None:
        def loaded(result: Any) -> None:
            missing = list(getattr(result, "not_loaded", ()))
            text = f"layout {result.name} v{result.version} loaded: {result.changed} panels moved"
            if missing:
                text += "; not loaded: " + ", ".join(f"{m.panel_id} ({m.reason})" for m in missing[:4])
            self.app.notify(text[:300], error=bool(missing))

        self.call("load_layout", name, version, then=loaded, what="loading the layout")

    def export(self) -> None:
        room = self.app.room
        name = room.settings.name if room is not None else "room"
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "room"
        path = Path.cwd() / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}{LAYOUT_SUFFIX}"

        def written(_: Any) -> None:
            print(f"layout exported to {path}", flush=True)
            self.app.notify(f"layout exported to {path.name}", error=False)

        self.call("export_layout", None, None, path=str(path), then=written, what="exporting the layout")

    def import_picker(self) -> None:
        """Layout files in the current folder (listed off the render thread)."""
        def listed(files: Any) -> None:
            if not files:
                self.app.notify(f"no *{LAYOUT_SUFFIX} file in {Path.cwd()}")
                return
            rows: list[tuple[str, Any]] = [("do", lambda f=f: self.import_file(f)) for f in files]
            self.app.menus.open_list("Import a layout file", rows, [Path(f).name[:56] for f in files],
                                     [True] * len(rows), keep_place=True)
            self.app.menus.mode = "picker"

        self.app.in_background(lambda: sorted(str(p) for p in Path.cwd().glob(f"*{LAYOUT_SUFFIX}"))[:9], listed,
                               "listing layout files")

    def import_file(self, path: str) -> None:
        name = Path(path).name[: -len(LAYOUT_SUFFIX)] if path.endswith(LAYOUT_SUFFIX) else Path(path).stem
        name = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:48] or "imported"
        self.call("import_layout", path, name, then=lambda info: self.load(str(info.name), int(info.version)),
                  what="importing the layout")

    # --- plumbing ----------------------------------------------------------------------------------

    def call(self, method: str, *args: Any, then: Callable[[Any], None], what: str, **kwargs: Any) -> None:
        """A relay call through the session; its result (or refusal) comes back on the render thread."""
        app = self.app
        try:
            fut = app.session.call(method, *args, **kwargs)
        except Exception as exc:
            app.notify(f"{what} failed: {exc}")
            return

        def done(f: concurrent.futures.Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                app.later(lambda: app.notify(f"{what} refused: {exc}"))
            else:
                result = f.result()
                app.later(lambda: then(result))

        fut.add_done_callback(done)


def _rank(role: str) -> int:
    return {"viewer": 0, "member": 1, "presenter": 2, "host": 3}.get(role, 0)


def in_front_of_panel(frame: geometry.PanelFrame, distance: float = 1.4) -> tuple[tuple[float, float, float], float]:
    """Where to stand to face a panel (eye height 1.6 m) and the yaw that looks at it."""
    target = frame.centre + frame.normal * (distance + frame.half_width)
    yaw = math.degrees(math.atan2(-frame.normal[0], -frame.normal[2]))
    return (float(target[0]), 1.6, float(target[2])), float(yaw)

