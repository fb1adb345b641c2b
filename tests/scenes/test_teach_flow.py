"""Steering a user's training script from the room: a real relay, two app processes, a script process.

The host's app (it starts the relay, embedded, on 127.0.0.1), a viewer's app (both offscreen) and
`teach_train.py`, a `watch()` script training the digits CNN in a process of its own that writes
per-step hashes of conv1's, conv2's and fc1's weights. The viewer right-clicks conv1 on the run's
graph: the freeze is greyed and a click says why; a freeze sent anyway is refused by the relay and
shown to the viewer; the script's conv1 keeps changing. Then the host freezes conv1 by a rendered
right-click and a rendered click on the menu row: the script's conv1 stands still from then on while
conv2 and fc1 still change, the host's graph tints conv1 (pixels) and says who froze it, and the
viewer's app sees it frozen too. The processes wait for each other through files in a shared folder.
(The class controls — roles, hands, layouts, follow — are tests/scenes/test_class.py's.)
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.scenes.conftest import parse  # type: ignore[import-not-found]
from tests.scenes.test_render_relay import _env, _script  # type: ignore[import-not-found]

COMMON = '''
from pathlib import Path
from deeproom.net import BackgroundClient
from deeproom.scenes.session import RelaySession
SHARED = Path(sys.argv[1])
def mark(name, text="1"):
    (SHARED / name).write_text(text)
def wait_mark(app, name, timeout=150.0):
    return wait(app, lambda: (SHARED / name).exists(), timeout)
def drawn(app, pid):
    v = app.panels.get(pid)
    return v is not None and v.content is not None and pid not in app.pump.pending_content
def face_graph(app):
    f = app.panels["run.graph"].frame()
    spot = f.centre + f.normal * 1.1
    app.rig.teleport((float(spot[0]), float(spot[1]), float(spot[2])), None)
    app.rig.look_at(tuple(float(c) for c in f.centre))
    app.step(3)
def conv1_on_screen(app):
    g = app.panels["run.graph"].content
    i = [nd.name for nd in g.layout.nodes].index("conv1")
    return app.world_to_screen(app.panels["run.graph"].frame().world(float(g.world[i, 0]), float(g.world[i, 1])))
def conv1_menu(app):
    """Right-click conv1 until the menu offers its layer actions (the script's next graph blob
    can rebuild the face under the click on a loaded machine: then close and click again)."""
    def once():
        if app.menus.is_open:
            app.menus.close(); app.step(1)
        app.pointer_context(*app.screen_ray(*conv1_on_screen(app)))
        app.step(2)
        g = app.menus.geometry
        return g is not None and any(t.startswith("Freeze this layer") for t in g.items)
    return wait(app, once, 30)
'''

HOST = COMMON + '''
from deeproom.scenes.live_runs import FROZEN_COLOUR
client = BackgroundClient(None, room="teach", name="Host", data_dir="data").wait_ready(60)
app = RoomApp(RelaySession(client), options=AppOptions(offscreen=True, size=(480, 360), start_position=(0.0, 1.6, 0.0)))
app.start()
(SHARED / "url.txt").write_text(client.url)
out = {}
me = client.participant_id
out["graph"] = wait(app, lambda: drawn(app, "run.graph"), 150)
viewer = lambda: next((p.id for p in app.room.participants.values() if p.name == "Vic"), None)
wait(app, lambda: viewer() is not None, 120)
app.session.apply({"op": "set_role", "participant_id": viewer(), "role": "viewer"}).result(30)
mark("h_viewer")
wait_mark(app, "v_refused")
steps = lambda: len((SHARED / "steps.txt").read_text().splitlines()) if (SHARED / "steps.txt").exists() else 0
n0 = steps()
wait(app, lambda: steps() >= n0 + 3, 90)  # the script trains on past the viewer's refusal (a loaded host is slow)
face_graph(app)
sx, sy = conv1_on_screen(app)
out["px_before"] = pixel(app, sx, sy)
conv1_menu(app)
out["menu"] = list(app.menus.geometry.items)
t_click = click_row(app, "Freeze this layer")
out["t_click"] = t_click
out["frozen_seen"] = wait(app, lambda: "conv1" in app.runs.state("run").frozen, 30)
out["t_seen"] = time.monotonic()
t = time.monotonic()
wait(app, lambda: time.monotonic() - t > 1.0, 5)
out["px_after"] = pixel(app, sx, sy)
out["frozen_colour"] = list(FROZEN_COLOUR)
out["badge"] = app.runs.badge("run.graph")
app.save_snapshot("host.png")
mark("h_frozen", str(t_click))
wait_mark(app, "v_seen", 60)
t = time.monotonic()  # a few more steps of the script with conv1 frozen
wait(app, lambda: time.monotonic() - t > 1.5, 5)
out["t_end"] = time.monotonic()
mark("stop")
app.close(); client.close()
done(out)
'''

VIEWER = COMMON + '''
end = time.monotonic() + 150
while not (SHARED / "url.txt").exists() and time.monotonic() < end:
    time.sleep(0.1)
client = BackgroundClient((SHARED / "url.txt").read_text(), room="teach", name="Vic", data_dir="data").wait_ready(60)
app = RoomApp(RelaySession(client), options=AppOptions(offscreen=True, size=(480, 360), start_position=(0.0, 1.6, 0.0)))
app.start()
out = {}
wait_mark(app, "h_viewer")
out["viewer"] = wait(app, lambda: app.menus.role() == "viewer" and drawn(app, "run.graph"), 150)
face_graph(app)
app.notices.clear()
conv1_menu(app)
out["menu"] = list(app.menus.geometry.items) if app.menus.geometry else []
click_row(app, "Freeze this layer")
out["why"] = app.hud.notice.text
app.menus.close()
# the same freeze sent anyway (as a modified app would): the relay refuses it and the viewer is told
from deeproom.scenes import actions as act
gv = app.panels["run.graph"]
spec = next(a for a in act.parse_actions(gv.panel.content.source)[0] if a.name == "freeze")
app.notices.clear()
app.menus.send(act.ActionFlow("run.graph", gv.panel.content.source["engine"], spec, {"layer": "conv1"}))
out["refused"] = wait(app, lambda: any(r.state == "refused" and r.panel_id == "run.graph" for r in app.menus.reports), 30)
out["refusal"] = app.hud.notice.text
out["t_refused"] = time.monotonic()
mark("v_refused")
wait_mark(app, "h_frozen")
out["frozen_seen"] = wait(app, lambda: "conv1" in app.runs.state("run").frozen, 30)
out["badge"] = app.runs.badge("run.graph")
mark("v_seen")
app.close(); client.close()
done(out)
'''


@pytest.mark.slow
def test_host_freezes_a_scripts_layer_from_the_menu_and_a_viewer_cannot(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    host = _script(tmp_path / "host", "host", HOST)
    viewer = _script(tmp_path / "viewer", "viewer", VIEWER)
    hp = subprocess.Popen([sys.executable, str(host), str(shared)], cwd=host.parent, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    train = None
    vp = None
    try:
        url = shared / "url.txt"
        for _ in range(1200):
            if url.exists() or hp.poll() is not None:
                break
            time.sleep(0.1)
        assert url.exists(), hp.communicate(timeout=30)
        train = subprocess.Popen([sys.executable, str(Path(__file__).with_name("teach_train.py")), url.read_text(),
                                  str(shared)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        vp = subprocess.Popen([sys.executable, str(viewer), str(shared)], cwd=viewer.parent, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        h_out, h_err = hp.communicate(timeout=420)
        v_out, v_err = vp.communicate(timeout=60)
        t_out, _ = train.communicate(timeout=180)  # its close() may wait out a publish of a loaded host
    finally:
        for p in (hp, vp, train):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
    h: dict[str, Any] = parse(hp.returncode, h_out, h_err)
    v: dict[str, Any] = parse(vp.returncode, v_out, v_err)
    assert train.returncode == 0, t_out[-3000:]
    rows = [ln.split() for ln in (shared / "steps.txt").read_text().splitlines()]
    steps = [(int(r[0]), float(r[1]), r[2], r[3], r[4]) for r in rows if len(r) == 5]
    assert h["graph"] and v["viewer"], (h, v)
    # the viewer: the freeze greyed, a click says why; sent anyway, refused by the relay and shown
    assert any(t.startswith("Freeze this layer") and "unavailable" in t for t in v["menu"]), v["menu"]
    assert "member" in v["why"], v
    assert v["refused"] and "refused" in v["refusal"], v
    # the script's conv1 kept changing after the viewer's attempt, until the host's freeze
    between = [s for s in steps if v["t_refused"] < s[1] < h["t_click"]]
    assert len(between) >= 2 and len({s[2] for s in between}) == len(between), between
    # the host's rendered menu freeze: from the app seeing it frozen, conv1 stands still; conv2 and fc1 move
    assert any(t.endswith("Freeze this layer") for t in h["menu"]) and h["frozen_seen"], h
    after = [s for s in steps if s[1] > h["t_seen"]]
    assert len(after) >= 5, (len(steps), h)
    assert len({s[2] for s in after}) == 1, after
    assert len({s[3] for s in after}) == len(after) and len({s[4] for s in after}) == len(after), after
    # conv1's last change came after the click (the freeze, not something earlier, stopped it)
    last_change = max(s[1] for a, s in itertools.pairwise(steps) if s[2] != a[2])
    assert h["t_click"] - 1.0 < last_change < h["t_seen"] + 0.5, (last_change, h)
    # the host's graph shows conv1 frozen (pixels) and who froze it; the viewer's app knows too
    assert h["px_after"] != h["px_before"], h
    assert all(abs(a - b * 0.9) < 40 for a, b in zip(h["px_after"], h["frozen_colour"], strict=True)), h
    assert "freeze conv1" in h["badge"] and "Host" in h["badge"], h["badge"]
    assert v["frozen_seen"] and "freeze conv1" in v["badge"], v
