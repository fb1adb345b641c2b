"""A watched training run steered from the room, through a real relay.

A relay (embedded, 127.0.0.1) started by the room's host, an app process joined as a member; a `watch()` run in the same
process (its own relay participant, its engine hosting the run's panels) trains a small CNN on a
thread. The curves move with the run's 0.5 s stream deltas (pixels within a second of a delta
arriving, no blob fetched), the member freezes `conv1` by a rendered right-click on the graph and a
rendered click on the menu row, the weights stop changing, the graph tints the layer and the
metrics panel's `conv1` row says frozen; a layer that does not exist is refused on the panel and
training goes on; the metrics panel's `conv2` row offers the same freeze; made a viewer, the
app greys the run's actions (a click says why) and a steer sent anyway is refused and shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.scenes.test_render_relay import _run, _script  # type: ignore[import-not-found]

RUN = '''
import threading
import torch
from torch import nn
from deeproom.net import BackgroundClient
from deeproom.models.training import watch
from deeproom.scenes import geometry, painting
from deeproom.scenes.session import RelaySession
from deeproom.scenes.live_runs import FROZEN_COLOUR
host = BackgroundClient(None, room="lab", name="Host", data_dir="data-host").wait_ready(60)  # an embedded relay
URL = host.url
client = BackgroundClient(URL, room="lab", name="Ann", data_dir="data").wait_ready(60)  # a member
app = RoomApp(RelaySession(client), options=AppOptions(offscreen=True, size=(480, 360), start_position=(0.0, 1.6, 0.0)))
app.start()
torch.manual_seed(0)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 3)
    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))
model = Net()
x = torch.randn(96, 1, 8, 8); y = torch.randint(0, 3, (96,))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
run = watch(model, room="lab", server=URL, optimizer=opt, train_data=(x, y), val_data=(x[:32], y[:32]),
            name="run", stats_every=2, publish_every_s=3.0, data_dir="run-data", embed_layer="conv2")
stop = threading.Event()
weights = []
def train():
    i = 0
    while not stop.is_set() and not run.stopped:
        xb, yb = x[(i * 16) % 96:(i * 16) % 96 + 16], y[(i * 16) % 96:(i * 16) % 96 + 16]
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
        run.log(loss=loss, acc=float((model(xb).argmax(1) == yb).float().mean()))
        weights.append((run.step, float(model.conv1.weight.detach().abs().sum())))
        i += 1
        time.sleep(0.04)
t = threading.Thread(target=train, daemon=True); t.start()
out = {}
def face(pid, dist=1.3):
    f = app.panels[pid].frame()
    spot = f.centre + f.normal * dist
    app.rig.teleport((float(spot[0]), float(spot[1]), float(spot[2])), None)
    app.rig.look_at(tuple(float(c) for c in f.centre))
    app.step(2)
def painting_size(view):
    from deeproom.scenes.prepared import texture_size
    return texture_size(view.size)
def drawn(pid):
    v = app.panels.get(pid)
    return v is not None and v.content is not None and pid not in app.pump.pending_content and not (
        v.prepared is not None and getattr(v.prepared, "waiting", False))
out["panels"] = wait(app, lambda: drawn("run.metrics") and drawn("run.graph") and "layer_rows" in app.blob_facts.get("run.metrics", {}), 120)
# --- live curves: each delta that arrives is on the pixels within a second, without a blob fetch
face("run.metrics")
arrived = []
orig = app.runs.on_stream
def spy(sender, payload):
    if payload.get("type") == "metrics" and payload.get("rows"):
        arrived.append((float(payload["rows"][-1]["step"]), time.monotonic(), app.screenshot()))
    return orig(sender, payload)
app.runs.on_stream = spy
fetches = []
orig_fetch = app.session.fetch_blob
app.session.fetch_blob = lambda sha: (fetches.append(sha), orig_fetch(sha))[1]
lat, changed = [], []
for _ in range(4):
    n = len(arrived)
    wait(app, lambda: len(arrived) > n, 10)
    step, t_in, before = arrived[-1]
    ok = wait(app, lambda: app.runs.drawn.get("run.metrics", (-1, 0))[0] >= step, 5)
    after = app.screenshot()
    lat.append(app.runs.drawn["run.metrics"][1] - t_in if ok else None)
    changed.append(bool((abs(after[..., :3].astype(int) - before[..., :3].astype(int)) > 8).any()))
out["delta_to_pixels_s"] = lat
out["pixels_changed"] = changed
out["fetched_during"] = len(fetches)
# --- the embedding cloud moves with the run's embedding frames, keeping a selection
out["cloud"] = wait(app, lambda: drawn("run.embedding"), 90)
face("run.embedding")
cv = app.panels["run.embedding"]
app.select_sphere_at(cv.to_world(cv.content.pos.mean(axis=0)), 0.3, announce=False)
picked = cv.content.selection.copy()
frames = []
def spy_frames(sender, payload):
    if payload.get("type") == "embedding":
        frames.append(time.monotonic())
    return orig(sender, payload)
app.runs.on_stream = spy_frames
first = cv.content.content.positions.copy()
n = len(frames)
wait(app, lambda: len(frames) > n, 30)
moved = wait(app, lambda: not np.array_equal(app.panels["run.embedding"].content.content.positions, first), 5)
out["cloud_moved_s"] = (time.monotonic() - frames[-1]) if moved and frames else None
cc = app.panels["run.embedding"].content
out["cloud_trail"] = None if cc.content.trails is None else len(cc.content.trails)
out["selection_kept"] = bool(len(picked)) and np.array_equal(cc.selection, picked)
app.runs.on_stream = orig
app.session.fetch_blob = orig_fetch
# --- freeze conv1 from the graph: rendered right-click on its box, rendered click on the row
face("run.graph", 1.1)
gv = app.panels["run.graph"]
def conv1_menu():
    """Right-click conv1's box; True once the menu offers its layer actions (the run's next graph
    blob can rebuild the face under the click on a loaded machine: then close and click again)."""
    global sx, sy, before_px
    if app.menus.is_open:  # a menu stands in front of the eyes: close it before clicking again
        app.menus.close(); app.step(1)
    g = app.panels["run.graph"].content
    i = [nd.name for nd in g.layout.nodes].index("conv1")
    sx, sy = app.world_to_screen(gv.frame().world(float(g.world[i, 0]), float(g.world[i, 1])))
    before_px = pixel(app, sx, sy)
    app.pointer_context(*app.screen_ray(sx, sy))
    app.step(2)
    return any(r[0] == "action" and r[1].name == "freeze" for r in app.menus.rows)
wait(app, conv1_menu, 30)
labels = [r[1].label if r[0] == "action" else str(r[1]) for r in app.menus.rows]
out["menu"] = labels
row = next(k for k, r in enumerate(app.menus.rows) if r[0] == "action" and r[1].name == "freeze")
mg = app.menus.geometry
u, v = mg.row_centre(row)
mx, my = app.world_to_screen(mg.frame().world(u - mg.size[0] * 0.3, v))
app.pointer_press(*app.screen_ray(mx, my)); app.pointer_release()
out["sent"] = [s["action"] for s in app.menus.sent]
out["frozen_seen"] = wait(app, lambda: "conv1" in app.runs.state("run").frozen, 30)
t_frozen = time.monotonic()
wait(app, lambda: time.monotonic() - t_frozen > 1.5, 5)
app.step(3)
out["graph_px_before"] = before_px
out["graph_px_after"] = pixel(app, sx, sy)
out["frozen_colour"] = list(FROZEN_COLOUR)
out["badge"] = app.runs.badge("run.graph")
w_now = [w for s, w in weights if s > run.step - 5]
out["weights_after_freeze"] = sorted(set(round(w, 6) for s, w in weights[-10:]))
# --- the metrics panel's conv1 row shows it frozen; its conv2 row offers the graph's layer actions
face("run.metrics")
wait(app, lambda: app.runs.drawn.get("run.metrics", (-1, 0))[0] > run.step - 3, 10)
mv = app.panels["run.metrics"]
def row_px():  # conv1's row, left part: the median of eleven pixels along it
    pu, pv = app.menus.layer_row_point(mv, "conv1")
    lay = painting.rows_layout(len(app.blob_facts["run.metrics"]["layer_rows"]), *painting_size(mv))
    dv = lay.row_h / painting_size(mv)[1] * mv.size[1]
    samples = [pixel(app, *app.world_to_screen(mv.frame().world(-mv.size[0] * (0.5 - k / 40), pv - 0.3 * dv))) for k in range(1, 12)]
    return [int(np.median([s[c] for s in samples])) for c in range(3)]
# the row turns ice blue once a delta or blob of the run says conv1 is frozen (slow on a loaded machine)
def tint_share():  # the share of the metrics panel's screen area in the frozen tint
    img = app.screenshot()[:, :, :3].astype(int)
    xs, ys = zip(*(app.world_to_screen(mv.frame().world(dx * mv.size[0] / 2, dy * mv.size[1] / 2)) for dx in (-1, 1) for dy in (-1, 1)))
    h, w = img.shape[:2]
    box = img[max(int(min(ys)), 0):min(int(max(ys)), h), max(int(min(xs)), 0):min(int(max(xs)), w)]
    near = (np.abs(box - np.array(painting.FROZEN_TINT)).max(axis=2) < 16)
    return float(near.mean()) if near.size else 0.0
wait(app, lambda: all(abs(a - b) < 16 for a, b in zip(row_px(), painting.FROZEN_TINT)) or tint_share() > 0.01, 30)
out["row_px"] = row_px()
out["row_tint"] = list(painting.FROZEN_TINT)
out["tint_share"] = tint_share()
def conv2_row_menu():  # as conv1_menu: a new metrics blob may repaint the rows under the click
    if app.menus.is_open:
        app.menus.close(); app.step(1)
    pu2, pv2 = app.menus.layer_row_point(mv, "conv2")
    app.pointer_context(*app.screen_ray(*app.world_to_screen(mv.frame().world(pu2, pv2))))
    app.step(2)
    return any(r[0] == "action" and r[1].name == "freeze" for r in app.menus.rows)
wait(app, conv2_row_menu, 30)
out["row_menu_title"] = app.menus.geometry.title if app.menus.geometry else None
out["row_menu"] = [r[1].name for r in app.menus.rows if r[0] == "action"]
out["row_flow"] = [app.menus.flow.panel_id, dict(app.menus.flow.values)] if app.menus.flow else None
app.menus.close()
# --- a layer that does not exist: refused on the run's graph panel, training goes on
from deeproom.scenes import actions as act
spec = next(a for a in act.parse_actions(gv.panel.content.source)[0] if a.name == "freeze")
app.menus.send(act.ActionFlow("run.graph", gv.panel.content.source["engine"], spec, {"layer": "no_such_layer"}))
step0 = run.step
out["refused"] = wait(app, lambda: any(r.failed and r.panel_id == "run.graph" for r in app.menus.reports), 30)
out["refusal"] = next((r.message for r in app.menus.reports if r.failed), None)
out["strip"] = app.menus._strips.get("run.graph").state if "run.graph" in app.menus._strips else None
wait(app, lambda: run.step > step0 + 5, 20)
out["training_went_on"] = run.step > step0 + 5
# --- someone else's claim to speak for the run is dropped
host.send_event("stream", {"run": "run", "type": "steered", "cmd": "stop", "by": host.participant_id,
                           "state": "stopped"}).result(30)
t_claim = time.monotonic()
wait(app, lambda: time.monotonic() - t_claim > 1.5, 5)
out["spoofed"] = [app.runs.state("run").status, app.runs.badge("run.metrics")]
# --- made a viewer, Ann's steering is refused and she is told
host.apply({"op": "set_role", "participant_id": client.participant_id, "role": "viewer"}).result(30)
wait(app, lambda: app.menus.role() == "viewer", 20)
face("run.metrics")
app.notices.clear()
app.pointer_context(*app.screen_ray(*app.world_to_screen(mv.frame().centre)))
app.step(2)
greyed = [i for i, (what, _) in enumerate(app.menus.rows) if what == "why"]
out["viewer_menu_greyed"] = len(greyed)
out["viewer_menu_enabled"] = sum(1 for what, _ in app.menus.rows if what == "action")
g2 = app.menus.geometry
u, v = g2.row_centre(greyed[0])
app.pointer_press(*app.screen_ray(*app.world_to_screen(g2.frame().world(u - g2.size[0] * 0.3, v)))); app.pointer_release()
app.step(2)
out["viewer_told"] = app.hud.notice.text
app.menus.close()
spec = next(a for a in act.parse_actions(mv.panel.content.source)[0] if a.name == "pause")
app.menus.send(act.ActionFlow("run.metrics", mv.panel.content.source["engine"], spec, {}))
out["viewer_refused"] = wait(app, lambda: any(r.state == "refused" and r.panel_id == "run.metrics" for r in app.menus.reports), 20)
out["viewer_refusal"] = app.hud.notice.text
out["still_running"] = run.status == "running"
app.save_snapshot("run.png")
stop.set(); t.join(10)
run.close(); app.close(); client.close(); host.close()
done(out)
'''


@pytest.mark.slow
def test_run_steered_from_the_room(tmp_path: Path) -> None:
    path = _script(tmp_path / "run", "run", RUN)
    out: dict[str, Any] = _run(path, "-", timeout=400)
    assert out["panels"], out
    # live curves: every delta drawn within a second of arriving, pixels changed, no blob fetched for it
    assert all(t is not None and t < 1.0 for t in out["delta_to_pixels_s"]), out["delta_to_pixels_s"]
    assert all(out["pixels_changed"]), out
    # the embedding cloud moves with the run's frames (trails grow) and keeps a selection
    assert out["cloud"] and out["cloud_moved_s"] is not None and out["cloud_moved_s"] < 1.0, out
    assert out["cloud_trail"] >= 2 and out["selection_kept"], out
    # freeze from the graph's rendered menu
    assert "Freeze this layer" in out["menu"], out["menu"]
    assert "freeze" in out["sent"] and out["frozen_seen"], out
    assert len(out["weights_after_freeze"]) == 1, out["weights_after_freeze"]  # conv1's weights stand still
    assert out["graph_px_after"] != out["graph_px_before"]
    assert all(abs(a - b * s) < 40 for a, b, s in zip(out["graph_px_after"], out["frozen_colour"], (0.9, 0.9, 0.9), strict=True)), out
    assert "freeze conv1" in out["badge"] and "Ann" in out["badge"], out["badge"]
    # conv1's row is tinted: at its computed place, or (a row layout that moved under a new blob)
    # the tint covers part of the panel
    assert all(abs(a - b) < 16 for a, b in zip(out["row_px"], out["row_tint"], strict=True)) or out["tint_share"] > 0.01, (
        out["row_px"], out["row_tint"], out["tint_share"])
    # the metrics panel's conv2 row: the graph's layer actions with conv2 filled
    assert {"freeze", "unfreeze"} <= set(out["row_menu"]), out
    assert out["row_flow"] == ["run.graph", {"layer": "conv2"}], out
    # a command the run cannot apply: shown on the run's panel; training goes on
    assert out["refused"] and "no_such_layer" in (out["refusal"] or ""), out
    assert out["strip"] is not None and out["strip"][2], out
    assert out["training_went_on"]
    # a viewer: the run's actions greyed (a click says why), a steer sent anyway refused by the relay, shown
    assert out["viewer_menu_enabled"] == 0 and out["viewer_menu_greyed"] >= 3, out
    assert "member" in out["viewer_told"], out
    assert out["viewer_refused"] and "refused" in out["viewer_refusal"], out
    assert out["still_running"]
    assert out["spoofed"][0] == "running" and "stop" not in out["spoofed"][1], out
