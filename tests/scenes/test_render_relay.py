"""Rendering with a real relay: others' avatars, and two people editing one room.

Every scene runs in its own process, offscreen, and talks to a real relay on
127.0.0.1 (embedded in a scene process, or `deeproom serve` started here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.net.procs import stop_process
from tests.scenes.conftest import PRELUDE, parse  # type: ignore[import-not-found]

AVATAR = '''
from deeproom.net import BackgroundClient
from deeproom.presence import Pose
from deeproom.scenes.session import RelaySession

alice = BackgroundClient(None, room="av", name="Alice", data_dir="data").wait_ready(60)
bob = BackgroundClient(alice.url, room="av", name="Bob", data_dir="data-bob", colour="#20e040").wait_ready(60)
app = RoomApp(RelaySession(alice), options=AppOptions(offscreen=True, size=(320, 240), start_position=(0.0, 1.6, 0.0)))
app.start()
out = {"bob": bob.participant_id}
def pose_at(p, speaking=False):
    return Pose(head_position=p, head_rotation=(1.0, 0.0, 0.0, 0.0), speaking=speaking, sent_at=time.time())
first = (0.5, 1.7, 2.0)
end = time.monotonic() + 30
while time.monotonic() < end:
    bob.publish_pose(pose_at(first))
    app.step()
    av = app.avatars.get(bob.participant_id)
    if av is not None and av._placed and np.allclose(av.head_pos, first, atol=1e-3):
        break
    time.sleep(0.02)
app.step(3)
av = app.avatars[bob.participant_id]
x, y = app.world_to_screen(first)
lo, hi = av.tag.getTightBounds(av.root)
out["first"] = {"screen": [x, y], "pixel": pixel(app, x, y), "name": av.tag.text, "head": av.head_pos.tolist(),
                "tag_width": float(hi[0] - lo[0]), "id_len": len(bob.participant_id)}
second = (-0.6, 1.4, 2.5)
end = time.monotonic() + 30
while time.monotonic() < end:
    bob.publish_pose(pose_at(second, speaking=True))
    app.step()
    if np.allclose(app.avatars[bob.participant_id].head_pos, second, atol=5e-3):
        break
    time.sleep(0.02)
app.step(3)
x2, y2 = app.world_to_screen(second)
out["second"] = {"screen": [x2, y2], "pixel": pixel(app, x2, y2), "old_pixel": pixel(app, x, y),
                 "speaking": bool(av.ring.enabled)}
app.save_snapshot("avatar.png")
# Bob, made presenter by the host, summons everyone: Alice's view jumps to where Bob says.
alice.apply({"op": "set_role", "participant_id": bob.participant_id, "role": "presenter"}).result(30)
bob.send_event("summon", {"position": [1.5, 1.6, -1.0], "yaw": 30.0}).result(30)
end = time.monotonic() + 30
while time.monotonic() < end and np.linalg.norm(np.array(app.rig.head()[0]) - [1.5, 1.6, -1.0]) > 1e-3:
    app.step(); time.sleep(0.02)
out["summoned"] = list(app.rig.head()[0])
# Alice (the host) makes Bob the presenter everyone follows: her view eases to just behind his head.
alice.apply({"op": "set_follow", "mode": "presenter", "presenter": bob.participant_id}).result(30)
end = time.monotonic() + 30
while time.monotonic() < end:
    bob.publish_pose(pose_at(second))
    app.step(); time.sleep(0.02)
    if np.linalg.norm(np.array(app.rig.head()[0]) - [-0.6, 1.4, 2.0]) < 0.02:
        break
out["following"] = app.following
# Bob points: others see his laser from where he points, along his ray.
from deeproom.presence import PointerRay
for _ in range(40):
    bob.publish_pose(Pose(head_position=second, pointer=PointerRay((-0.6, 1.3, 2.5), (0.0, 0.0, 1.0)), sent_at=time.time()))
    app.step(); time.sleep(0.02)
    if av.laser.shown:
        break
app.step(5)
out["laser"] = {"on": av.laser.shown, "dot": [float(c) for c in av.laser.dot.world_position]}
out["follow_view"] = list(app.rig.head()[0])
app.close(); bob.close(); alice.close()
done(out)
'''


def _script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DISPLAY"}


def close(a: list[int], b: tuple[int, ...], tol: int = 14) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_remote_avatar_appears_where_its_pose_says(tmp_path: Path) -> None:
    path = _script(tmp_path / "avatar", "avatar", AVATAR)
    proc = subprocess.run([sys.executable, str(path)], cwd=path.parent, env=_env(), capture_output=True,
                          text=True, timeout=240)
    out = parse(proc.returncode, proc.stdout, proc.stderr)
    bob = (0x20, 0xE0, 0x40)
    assert out["first"]["name"] == "Bob"
    # the tag's background fits "Bob", not the participant id the avatar was made with
    assert out["first"]["tag_width"] < 0.35, out["first"]
    assert close(out["first"]["pixel"], bob), out["first"]
    assert close(out["second"]["pixel"], bob), out["second"]
    assert not close(out["second"]["old_pixel"], bob, tol=40)  # it left its old place
    assert out["second"]["speaking"]
    assert out["second"]["screen"][0] < 160 < out["first"]["screen"][0]
    assert np.allclose(out["summoned"], [1.5, 1.6, -1.0], atol=1e-3)
    assert out["following"] == out["bob"]
    assert out["laser"]["on"] and np.allclose(out["laser"]["dot"], [-0.6, 1.3, 2.5 + 4.0], atol=1e-3)
    assert np.allclose(out["follow_view"], [-0.6, 1.4, 2.0], atol=0.02)  # half a metre behind his head


COMMON = '''
from deeproom.net import BackgroundClient
from deeproom.scenes import painting
from deeproom.scenes.session import RelaySession
from deeproom.scenes.views import TITLE_BAR
URL, ROOM = sys.argv[1], "e2e"
CM = np.array([[30, 2, 0], [4, 22, 1], [0, 6, 17]], np.int32)
def start(name, x=0.0):
    client = BackgroundClient(URL, room=ROOM, name=name, data_dir="data").wait_ready(60)
    app = RoomApp(RelaySession(client), options=AppOptions(offscreen=True, size=(320, 240), start_position=(x, 1.5, -0.6)))
    app.start()
    app.rig.look_at((0.0, 1.4, 2.5))
    return client, app
def cell_pixel(app, pid, r, c, n=3):
    view = app.panels[pid]
    lay = painting.matrix_layout(n, 300, 300)
    x0, y0, x1, y1 = lay.cell(r, c)
    px, py = x0 + (x1 - x0) * 0.2, y0 + (y1 - y0) * 0.2
    fw, fh = view.size
    sx, sy = app.world_to_screen(view.frame().world((px / 300 - 0.5) * fw, (0.5 - py / 300) * fh))
    return pixel(app, sx, sy)
def plate_pixel(app, pid):
    view = app.panels[pid]
    fw, fh = view.size
    return pixel(app, *app.world_to_screen(view.frame().world(-0.46 * fw, -0.44 * fh)))
def position(app, pid):
    return list(app.room.panels[pid].transform.position)
'''

ALICE = COMMON + '''
import torch
from deeproom.models.zoo import DigitsCNN
from deeproom.models.datasets import load_digits
from deeproom.content import encode_content
from deeproom.scenes.open_models import ModelsEngine
torch.manual_seed(0)
model = DigitsCNN().eval()
torch.jit.trace(model, torch.zeros(1, 1, 8, 8)).save("digits.pt")
client, app = start("Alice")
engine = ModelsEngine(app.session, [__import__("pathlib").Path("digits.pt")]).start()  # A opens a model
sha = app.session.put_blob(encode_content({"kind": "confusion_matrix", "labels": ["0", "1", "2"]}, {"matrix": CM})).result(30)
app.session.apply({"op": "add_panel", "panel_id": "confusion", "kind": "confusion_matrix", "title": "Confusion",
                   "transform": {"position": [-0.5, 0.95, 2.0]}, "size": [0.6, 0.6],
                   "content": {"source": {"model": "digits.pt"}, "refs": [sha]}}).result(30)
ok = wait(app, lambda: engine.ready.is_set() and "graph-1" in app.panels and settle(app, 1.0))
start_pos = position(app, "confusion")
out = {"ready": ok, "start": start_pos, "panels": sorted(app.panels), "graph_plate": plate_pixel(app, "graph-1"),
       "cell": cell_pixel(app, "confusion", 0, 0)}
open("a_ready.json", "w").write(json.dumps(out))
moved = wait(app, lambda: position(app, "confusion") != start_pos and app.room.panels["confusion"].lock_holder is None,
             timeout=150)  # B's drag is over when B's lock is released
out["moved"] = moved
out["end"] = position(app, "confusion")
out["cell_after"] = cell_pixel(app, "confusion", 0, 0)
app.save_snapshot("alice.png")
engine.close(); app.close(); client.close()
done(out)
'''

BOB = COMMON + '''
client, app = start("Bob", 0.25)
ok = wait(app, lambda: {"graph-1", "confusion"} <= set(app.panels) and settle(app, 1.0))
out = {"ready": ok, "graph_plate": plate_pixel(app, "graph-1"), "cell": cell_pixel(app, "confusion", 0, 0),
       "start": position(app, "confusion")}
v = app.panels["confusion"]
w, h = v.size
gx, gy = app.world_to_screen(v.frame().world(-0.2 * w, h / 2 + TITLE_BAR / 2))
hit = app.pointer_press(*app.screen_ray(gx, gy))
out["region"] = hit.region if hit else None
for k in range(1, 6):
    app.pointer_move(*app.screen_ray(gx + 12 * k, gy - 6 * k))
    app.step()
app.pointer_release(*app.screen_ray(gx + 60, gy - 30))
out["moved"] = wait(app, lambda: position(app, "confusion") != out["start"] and app.room.panels["confusion"].lock_holder is None)
out["end"] = position(app, "confusion")
out["cell_after"] = cell_pixel(app, "confusion", 0, 0)
app.save_snapshot("bob.png")
app.close(); client.close()
done(out)
'''

CAROL = COMMON + '''
client, app = start("Carol")
ok = wait(app, lambda: {"graph-1", "confusion"} <= set(app.panels) and settle(app, 1.0))
out = {"ready": ok, "positions": {pid: position(app, pid) for pid in app.panels},
       "cell": cell_pixel(app, "confusion", 0, 0), "graph_plate": plate_pixel(app, "graph-1")}
app.save_snapshot("carol.png")
app.close(); client.close()
done(out)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_relay(data: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from deeproom.cli import main; sys.exit(main())",
         "--data-dir", str(data), "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"relay exited: {proc.stdout.read() if proc.stdout else ''}") from None
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("relay did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    stop_process(proc, wait_s=20)


def _run(path: Path, url: str, timeout: float = 240) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(path), url], cwd=path.parent, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    return parse(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.slow
def test_two_processes_share_a_room_and_the_layout_survives_a_relay_restart(tmp_path: Path) -> None:
    from deeproom.layout import layout_of
    from deeproom.scenes.painting import BACKGROUND, confusion_colours
    from deeproom.storage import Store

    data = tmp_path / "relay-data"
    want_cell = tuple(int(c) for c in confusion_colours(np.array([[30, 2, 0], [4, 22, 1], [0, 6, 17]]))[0, 0])
    port = _free_port()
    relay = _start_relay(data, port)
    url = f"http://127.0.0.1:{port}"
    alice: subprocess.Popen[str] | None = None
    try:
        a_path = _script(tmp_path / "alice", "alice", ALICE)
        alice = subprocess.Popen([sys.executable, str(a_path), url], cwd=a_path.parent, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = a_path.parent / "a_ready.json"
        end = time.monotonic() + 180
        while not ready.exists() and time.monotonic() < end and alice.poll() is None:
            time.sleep(0.2)
        assert ready.exists(), alice.stdout.read() if alice.poll() is not None and alice.stdout else "A not ready"
        a_ready = json.loads(ready.read_text())
        assert a_ready["ready"] and {"graph-1", "confusion"} <= set(a_ready["panels"])

        bob = _run(_script(tmp_path / "bob", "bob", BOB), url)
        assert bob["ready"] and bob["region"] == "title"
        assert close(bob["cell"], want_cell) and close(bob["graph_plate"], BACKGROUND)  # B sees A's panels
        assert bob["moved"] and bob["end"] != bob["start"]

        a_out, _ = alice.communicate(timeout=180)
        a = parse(alice.returncode, a_out)
        assert a["moved"] and np.allclose(a["end"], bob["end"], atol=1e-6)  # A sees B's move
        assert close(a["cell_after"], want_cell) and close(a["cell"], want_cell)
    finally:
        if alice is not None and alice.poll() is None:
            alice.kill()
            alice.wait(10)
        _stop(relay)

    # Save the layout with the relay down, restart it, and reopen the room.
    from deeproom.cli import main

    assert main(["--data-dir", str(data), "layout", "save", "e2e", "review"]) == 0
    with Store(data / "deeproom.sqlite3") as store:
        saved = store.load_layout("e2e", "review")
        stored_room = store.load_room("e2e").snapshot()
    assert layout_of(stored_room) == saved
    port2 = _free_port()
    relay = _start_relay(data, port2)
    try:
        carol = _run(_script(tmp_path / "carol", "carol", CAROL), f"http://127.0.0.1:{port2}")
    finally:
        _stop(relay)
    assert carol["ready"]
    saved_pos = {p.id: list(p.transform.position) for p in stored_room.panels.values()}
    for pid, pos in saved_pos.items():
        assert np.allclose(carol["positions"][pid], pos, atol=1e-6), pid
    assert np.allclose(carol["positions"]["confusion"], bob["end"], atol=1e-6)
    assert close(carol["cell"], want_cell) and close(carol["graph_plate"], BACKGROUND)
