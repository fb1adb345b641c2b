"""Running a class from inside the room: two app processes on a real relay.

The host's app (it starts the relay, embedded, on 127.0.0.1) and a student's app, both
offscreen. Everything the host does goes through rendered clicks on the participants panel
(a menu in the world) or the keys F and G; the student presses H and drags a panel's title
bar. The two processes wait for each other through files in a shared folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.scenes.conftest import parse  # type: ignore[import-not-found]
from tests.scenes.test_render_relay import _env, _script  # type: ignore[import-not-found]

COMMON = '''
from pathlib import Path
from deeproom.net import BackgroundClient
from deeproom.scenes.session import RelaySession
from deeproom.scenes.views import TITLE_BAR
from deeproom.scenes import menu as menu_mod
SHARED = Path(sys.argv[1])
def mark(name):
    (SHARED / name).write_text("1")
def wait_mark(app, name, timeout=120.0):
    return wait(app, lambda: (SHARED / name).exists(), timeout)
def open_people(app):
    if app.menus.is_open:
        app.key("escape")
    app.key("p")
    app.step(2)
'''

HOST = COMMON + '''
client = BackgroundClient(None, room="class", name="Host", data_dir="data").wait_ready(60)
app = RoomApp(RelaySession(client), options=AppOptions(offscreen=True, size=(480, 360), start_position=(0.0, 1.6, 0.0)))
app.start()
app.session.apply({"op": "add_panel", "panel_id": "board", "kind": "note", "title": "Board",
                   "transform": {"position": [-1.6, 1.5, 2.0]}, "size": [0.6, 0.4],
                   "content": {"source": {"text": "today: CNNs"}, "refs": []}}).result(30)
app.session.apply({"op": "add_panel", "panel_id": "notes", "kind": "note", "title": "Notes",
                   "transform": {"position": [1.6, 1.5, 2.0]}, "size": [0.6, 0.4],
                   "content": {"source": {"text": "homework"}, "refs": []}}).result(30)
(SHARED / "url.txt").write_text(client.url)
out = {}
me = client.participant_id
others = lambda: [p for p in app.room.participants.values() if p.id != me] if app.room else []
out["joined"] = wait(app, lambda: len(others()) == 1 and others()[0].id in app.avatars, 120)
vic = others()[0].id
# the student raises a hand: a yellow hand over the avatar, a yellow mark on the participants panel's row
out["hand_seen"] = wait(app, lambda: app.room.participants[vic].hand_raised and app.avatars[vic].hand_raised, 60)
wait(app, lambda: app.avatars[vic]._placed, 20)
app.rig.look_at((0.0, 2.1, 2.0)); app.step(5)
hx, hy = app.world_to_screen(app.avatars[vic].hand_up.world_position)
out["avatar_hand_px"] = pixel(app, hx, hy)
app.rig.look_at((0.0, 1.5, 2.0)); app.step(2)
open_people(app)
g = app.menus.geometry
row = app.people.row_of(vic)
out["row_text"] = g.items[row]
_, y = g.row_centre(row)
mx, my = app.world_to_screen(g.frame().world(g.size[0] / 2 - menu_mod.MARK, y))
out["row_mark_px"] = pixel(app, mx, my)
app.save_snapshot("people.png")
# demote the student to viewer (rendered clicks: their row, then the role)
click_row(app, out["row_text"][:8])
out["person_menu"] = list(app.menus.geometry.items)
click_row(app, "Demote to viewer")
out["demoted"] = wait(app, lambda: app.room.participants[vic].role.value == "viewer", 30)
mark("h_demoted")
wait_mark(app, "v_refused")
# promote them to member; save the layout as a version
open_people(app); click_row(app, app.menus.geometry.items[app.people.row_of(vic)][:8]); click_row(app, "Promote to member")
out["promoted"] = wait(app, lambda: app.room.participants[vic].role.value == "member", 30)
start = list(app.room.panels["board"].transform.position)
open_people(app); click_row(app, "Layouts"); click_row(app, "Save this layout")
wait(app, lambda: app.menus.geometry is not None and app.menus.geometry.title == "Save the layout as", 30)
click_row(app, "new: ")
out["saved"] = wait(app, lambda: any("layout saved" in n[1] for n in app.notices), 30)
app.apply({"op": "move_panel", "panel_id": "notes", "transform": {"position": [1.2, 1.0, 2.4]}})
wait(app, lambda: list(app.room.panels["notes"].transform.position) == [1.2, 1.0, 2.4], 30)
mark("h_promoted")
wait_mark(app, "v_moved")
out["moved_by_student"] = list(app.room.panels["board"].transform.position) != start
# load the saved version: the board goes back for everyone
open_people(app); click_row(app, "Layouts"); click_row(app, "Load a version")
wait(app, lambda: app.menus.geometry is not None and app.menus.geometry.title == "Load a layout version", 30)
click_row(app, "room-")
out["loaded"] = wait(app, lambda: np.allclose(app.room.panels["board"].transform.position, start, atol=1e-4), 30)
mark("h_loaded")
# lock the layout
open_people(app); click_row(app, "Lock the layout")
out["locked"] = wait(app, lambda: app.room.settings.layout_locked, 30)
mark("h_locked")
wait_mark(app, "v_lock_refused")
# follow me (F): the student's view follows mine
app.key("f")
out["follow_on"] = wait(app, lambda: app.room.settings.follow.value == "presenter" and app.room.settings.presenter == me, 30)
app.rig.teleport((1.0, 1.6, -0.5), 30.0); app.step(3)
mark("h_follow")
wait_mark(app, "v_followed")
app.key("f")
out["follow_off"] = wait(app, lambda: app.room.settings.follow.value == "off", 30)
# summon (G): everyone 1.2 m in front of me
app.key("g"); app.step(2)
mark("h_summoned")
wait_mark(app, "v_summoned")
# summon to a panel
open_people(app); click_row(app, "Summon everyone to a panel"); click_row(app, "Board")
mark("h_summon_panel")
wait_mark(app, "v_summon_panel")
# mute the student, create an invite link, then remove them
open_people(app); click_row(app, app.menus.geometry.items[app.people.row_of(vic)][:8]); click_row(app, "Mute")
out["muted"] = wait(app, lambda: app.room.participants[vic].muted, 30)
open_people(app); click_row(app, "Invite link"); click_row(app, "as viewer"); click_row(app, "1 day")
out["invite"] = wait(app, lambda: app.people.invite is not None, 30) and app.people.invite
out["invite_hud"] = app.hud.invite.text
open_people(app); click_row(app, app.menus.geometry.items[app.people.row_of(vic)][:8]); click_row(app, "Remove from the room")
out["kicked"] = wait(app, lambda: vic not in app.room.participants, 30)
mark("h_done")
app.close(); client.close()
done(out)
'''

STUDENT = COMMON + '''
wait_url = time.monotonic() + 120
while not (SHARED / "url.txt").exists() and time.monotonic() < wait_url:
    time.sleep(0.1)
client = BackgroundClient((SHARED / "url.txt").read_text(), room="class", name="Vic", data_dir="data").wait_ready(60)
app = RoomApp(RelaySession(client), options=AppOptions(offscreen=True, size=(480, 360), start_position=(0.0, 1.6, 2.0)))
app.start()
app.rig.teleport((0.0, 1.6, 2.0), 180.0)
out = {}
me = client.participant_id
wait(app, lambda: "board" in app.panels and app.panels["board"].content is not None, 60)
app.key("h")
out["raised"] = wait(app, lambda: app.room.participants[me].hand_raised, 30)
def drag_board():
    app.rig.teleport((-1.6, 1.5, 0.9), 0.0); app.rig.look_at((-1.6, 1.6, 2.0)); app.step(3)
    v = app.panels["board"]
    w, h = v.size
    x, y = app.world_to_screen(v.frame().world(-0.1 * w, h / 2 + TITLE_BAR / 2))
    hit = app.pointer_press(*app.screen_ray(x, y))
    for k in range(1, 5):
        app.pointer_move(*app.screen_ray(x + 10 * k, y - 4 * k)); app.step()
    app.pointer_release(*app.screen_ray(x + 40, y - 16))
    return hit.region if hit else None
wait_mark(app, "h_demoted")
start = list(app.room.panels["board"].transform.position)
out["start_board"] = start
out["viewer_region"] = drag_board()
out["viewer_refused"] = wait(app, lambda: any("refused" in n[1] for n in app.notices), 30)
out["viewer_notice"] = app.hud.notice.text
out["viewer_stayed"] = wait(app, lambda: list(app.room.panels["board"].transform.position) == start and not app.previews, 10)
mark("v_refused")
wait_mark(app, "h_promoted")
app.notices.clear()
drag_board()
out["member_moved"] = wait(app, lambda: list(app.room.panels["board"].transform.position) != start, 30)
mark("v_moved")
end = time.monotonic() + 120
out["back_after_load"] = False
while time.monotonic() < end:  # the frame the loaded layout arrives in: both panels start to glide
    app.step()
    if np.allclose(app.room.panels["board"].transform.position, start, atol=1e-4):
        out["back_after_load"] = True
        break
    time.sleep(0.02)
out["glided"] = [app.panels[p].gliding is not None for p in ("board", "notes")]
out["glide_ended"] = wait(app, lambda: all(app.panels[p].gliding is None for p in ("board", "notes")), 10)
out["drawn_at"] = list(app.panels["board"].root.position)
wait_mark(app, "h_locked")
app.notices.clear()
drag_board()
out["locked_refused"] = wait(app, lambda: any("refused" in n[1] for n in app.notices), 30)
out["locked_notice"] = app.hud.notice.text
out["locked_stayed"] = wait(app, lambda: np.allclose(app.room.panels["board"].transform.position, start, atol=1e-4) and not app.previews, 10)
mark("v_lock_refused")
wait_mark(app, "h_follow")
out["followed"] = wait(app, lambda: app.following is not None and np.linalg.norm(np.array(app.rig.head()[0]) - [1.0, 1.6, -0.5]) < 0.6, 30)
out["follow_view"] = list(app.rig.head()[0])
mark("v_followed")
wait_mark(app, "h_summoned")
out["summoned"] = wait(app, lambda: any("summoned you" in n[1] for n in app.notices), 30)
out["summon_view"] = list(app.rig.head()[0])
mark("v_summoned")
wait_mark(app, "h_summon_panel")
app.notices.clear()
wait(app, lambda: any("summoned you" in n[1] for n in app.notices), 30)
out["panel_summon_view"] = list(app.rig.head()[0])
v = app.panels["board"]
out["board_on_screen"] = app.world_to_screen(v.frame().centre)
mark("v_summon_panel")
wait_mark(app, "h_done", 180)
app.close(); client.close()
done(out)
'''


@pytest.mark.slow
def test_host_runs_the_class_from_the_participants_panel(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    host = _script(tmp_path / "host", "host", HOST)
    student = _script(tmp_path / "student", "student", STUDENT)
    hp = subprocess.Popen([sys.executable, str(host), str(shared)], cwd=host.parent, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sp = subprocess.Popen([sys.executable, str(student), str(shared)], cwd=student.parent, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        h_out, h_err = hp.communicate(timeout=480)
        s_out, s_err = sp.communicate(timeout=120)
    finally:
        for p in (hp, sp):
            if p.poll() is None:
                p.kill()
                p.wait(10)
    h: dict[str, Any] = parse(hp.returncode, h_out, h_err)
    s: dict[str, Any] = parse(sp.returncode, s_out, s_err)
    assert h["joined"] and s["raised"] and h["hand_seen"], (h, s)
    yellow = (255, 209, 38)
    assert all(abs(a - b) < 40 for a, b in zip(h["avatar_hand_px"], yellow, strict=True)), h
    assert "hand raised" in h["row_text"] and "Vic" in h["row_text"], h
    assert all(abs(a - b) < 40 for a, b in zip(h["row_mark_px"], yellow, strict=True)), h
    assert "Demote to viewer" in h["person_menu"] and h["demoted"], h
    # a viewer's move is refused, visibly; promoted to member, the same drag moves the panel
    assert s["viewer_region"] == "title" and s["viewer_refused"] and "refused" in s["viewer_notice"], s
    assert s["viewer_stayed"], s
    assert h["promoted"] and s["member_moved"] and h["moved_by_student"], (h, s)
    # a saved layout version loaded again: both see the old place
    assert h["saved"] and h["loaded"] and s["back_after_load"], (h, s)
    assert s["glided"] == [True, True] and s["glide_ended"], s  # both panels glided to their places
    assert np.allclose(s["drawn_at"], s["start_board"], atol=1e-3), s
    # a locked layout refuses a member's move, visibly
    assert h["locked"] and s["locked_refused"] and "refused" in s["locked_notice"] and s["locked_stayed"], s
    # F: the student's camera follows the host; G and summon-to-panel move it
    assert h["follow_on"] and s["followed"] and h["follow_off"], (h, s)
    assert s["summoned"] and np.linalg.norm(np.array(s["summon_view"]) - np.array(s["follow_view"])) > 0.3, s
    assert np.linalg.norm(np.array(s["panel_summon_view"]) - np.array(s["summon_view"])) > 0.3, s
    assert s["board_on_screen"] is not None and 100 < s["board_on_screen"][0] < 380, s
    # mute, an invite link (HUD and stdout), remove
    assert h["muted"], h
    assert h["invite"] and "invite=" in h["invite"] and "viewer" in h["invite"], h
    assert h["invite"] in h_out and "invite=" in h["invite_hud"], h
    assert h["kicked"], h
