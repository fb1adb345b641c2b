"""Panel actions as a person meets them: a right-click on a panel opens its action menu in
the world, rendered clicks pick the action and its parameters and send the request; the
engine's progress draws a bar on the panel; a refusal shows on the panel and in the HUD;
a source's error is an error card; confusion matrices show per-class P/R/F1; a click on a
tile of an input strip sends the declared tile action. Plus the pure parts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deeproom.scenes import actions as act
from deeproom.scenes import colormap, painting

SOURCE: dict[str, Any] = {
    "engine": "eng",
    "classes": ["cat", "dog", "bird"],
    "actions": [
        {"name": "recompute", "label": "Recompute", "group": "Analysis", "role": "member",
         "params": [{"name": "target", "type": "class", "label": "class"},
                    {"name": "method", "type": "choice", "choices": ["pca", "tsne", "umap"], "default": "tsne"}]},
        {"name": "wipe", "label": "Wipe", "role": "host", "params": []},
        {"name": "gradcam", "label": "Grad-CAM", "on": "layer", "params": [{"name": "layer", "type": "layer"}]},
    ],
    "unavailable": [{"name": "attention", "label": "Attention", "reason": "the model has no attention layers"}],
}


def test_declared_actions_are_validated_and_bad_ones_skipped_with_why() -> None:
    src = {**SOURCE, "actions": [*SOURCE["actions"], {"name": "Bad Name"}, {"name": "x", "role": "god"},
                                 {"name": "y", "params": [{"name": "n", "type": "int", "min": 5, "max": 1}]}]}
    actions, unavailable, problems = act.parse_actions(src)
    assert [a.name for a in actions] == ["recompute", "wipe", "gradcam"]
    assert unavailable[0].reason == "the model has no attention layers"
    assert len(problems) == 3 and any("role" in p for p in problems) and any("min <= max" in p for p in problems)
    assert act.parse_actions({"actions": "nope"})[2] == ["actions must be a list"]


def test_menu_entries_follow_where_you_click_and_your_role() -> None:
    ok, greyed = act.menu_entries(SOURCE, None, "member")
    assert [a.name for a in ok] == ["recompute"]
    assert [label for label, _ in greyed] == ["Wipe", "Attention"] and "host" in greyed[0][1]
    ok, greyed = act.menu_entries(SOURCE, None, "host")
    assert {a.name for a in ok} == {"recompute", "wipe"}
    ok, greyed = act.menu_entries(SOURCE, "layer", "member")
    assert [a.name for a in ok] == ["gradcam"] and greyed == []


def test_pickers_offer_classes_choices_and_ranges() -> None:
    actions, _, _ = act.parse_actions(SOURCE)
    target, method = actions[0].params
    assert act.param_options(target, classes=["cat", "dog", "bird"])[1] == ("1 dog", 1)
    assert act.param_options(target, n_classes=4)[3] == ("3", 3)
    assert act.param_options(method)[0] == ("tsne (default)", "tsne")
    count = act.parse_param({"name": "count", "type": "int", "min": 1, "max": 64, "default": 16})
    values = [v for _, v in act.param_options(count)]
    assert values[0] == 16 and min(values) == 1 and max(values) == 64 and len(values) <= 12
    flow = act.ActionFlow("p", "eng", actions[0], {})
    assert flow.next_param() is target
    flow.choose(target, 2)
    flow.choose(method, "umap")
    assert flow.next_param() is None and flow.params() == {"target": 2, "method": "umap"}


def test_progress_reports_are_read_at_the_boundary() -> None:
    p = act.parse_progress({"panel_id": "g", "channel": "action", "request_id": "me:1:2", "state": "running",
                            "progress": 7, "message": "x" * 999, "result_panel": 5})
    assert p is not None and p.progress == 1.0 and len(p.message) == act.MAX_TEXT and p.result_panel is None
    assert act.parse_progress({"channel": "metrics"}) is None
    with pytest.raises(act.ActionError):
        act.parse_progress({"panel_id": "g", "channel": "action", "request_id": "bad id!", "state": "done"})
    with pytest.raises(act.ActionError):
        act.parse_progress({"panel_id": "g", "channel": "action", "request_id": "r", "state": "exploded"})


def test_tile_at_maps_face_pixels_to_tiles() -> None:
    tiles = {"rows": 2, "cols": 4, "count": 7}
    # a 32x64 strip fit into a 208x108 face with a 4 px margin: 200x100, drawn at (4, 4)
    assert act.tile_at(tiles, (32, 64), (208, 108), 4 + 25, 4 + 25) == 0
    assert act.tile_at(tiles, (32, 64), (208, 108), 4 + 175, 4 + 25) == 3
    assert act.tile_at(tiles, (32, 64), (208, 108), 4 + 125, 4 + 75) == 6
    assert act.tile_at(tiles, (32, 64), (208, 108), 4 + 175, 4 + 75) is None  # past count
    assert act.tile_at(tiles, (32, 64), (208, 108), 1, 1) is None


def test_tile_at_uses_the_strips_tile_size_and_pad() -> None:
    from deeproom.content import decode_content
    from deeproom.models.blobs import strip_blob

    # 10 tiles of 6x4 px in rows of 4, 2 px pad: a 26x26 image; face pixels = image pixels here
    meta, arrays = decode_content(strip_blob(np.zeros((10, 6, 4), np.uint8), [str(i) for i in range(10)], cols=4))
    tiles, (ih, iw) = meta["tiles"], arrays["image"].shape[:2]
    assert tiles["tile"] == [6, 4] and tiles["pad"] == 2 and (ih, iw) == (3 * 8 + 2, 4 * 6 + 2)
    face = (iw + 8, ih + 8)  # the painter's 4 px margin, no scaling

    def at(x: float, y: float) -> int | None:
        return act.tile_at(tiles, (ih, iw), face, 4 + x, 4 + y)

    assert at(2.5, 2.5) == 0 and at(5.9, 7.9) == 0
    assert at(8.5, 2.5) == 1 and at(2 + 3 * 6 + 0.5, 2 + 8 + 0.5) == 7
    assert at(2.5, 2 + 2 * 8 + 0.5) == 8 and at(8.5, 2 + 2 * 8 + 0.5) == 9
    assert at(14.5, 2 + 2 * 8 + 0.5) is None  # the third row has two tiles
    assert at(1.0, 1.0) is None  # the outer pad


def test_numbers_back_from_the_room_document_are_ints_again_where_they_were() -> None:
    # a source read back from the room document has 0.0 for 0: an "int" param must send 0
    a = act.parse_action({"name": "fv", "params": [
        {"name": "channel", "type": "int", "min": 0.0, "max": 4095.0, "default": 0.0},
        {"name": "dims", "type": "choice", "choices": [2.0, 3.0], "default": 3.0},
        {"name": "step", "type": "float", "min": 0.0, "max": 1.0, "default": 1.0}]})
    channel, dims, step = a.params
    assert channel.default == 0 and type(channel.default) is int
    assert dims.choices == (2, 3) and all(type(c) is int for c in dims.choices) and type(dims.default) is int
    assert type(step.default) is float
    assert [type(v) for _, v in act.param_options(channel)] == [int] * len(act.param_options(channel))


def test_a_selection_param_is_given_by_the_click_under_its_declared_name() -> None:
    from deeproom.scenes.action_menus import given_params

    a = act.parse_action({"name": "label", "on": "selection", "params": [
        {"name": "points", "type": "selection"}, {"name": "label", "type": "class"}]})
    flow = act.ActionFlow("cloud", "eng", a, given_params(a, {"ids": [1, 5]}))
    assert flow.values == {"points": [1, 5]}
    assert flow.next_param() is not None and flow.next_param().name == "label"  # type: ignore[union-attr]
    assert act.param_options(a.params[0]) == []  # never a picker
    plain = act.parse_action({"name": "retrain", "on": "selection"})
    assert given_params(plain, {"ids": [3]}) == {"ids": [3]}  # no selection param: the ids as "ids"
    lay = act.parse_action({"name": "cam", "on": "layer", "params": [{"name": "where", "type": "layer"}]})
    assert given_params(lay, {"layer": "conv1"}) == {"where": "conv1"}


def test_confusion_paints_per_class_precision_recall_f1() -> None:
    m = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 4]])
    prec = np.array([0.7, 0.75, 1.0])
    rec = np.array([0.83, 0.6, 1.0])
    f1 = np.array([0.1, 0.5, 0.9])
    img = painting.paint_confusion({"classes": ["cat", "dog", "bird"]}, {"matrix": m, "precision": prec, "recall": rec,
                                                                          "f1": f1}, 420, 300)
    lay = painting.matrix_layout(3, 420, 300, scores=True)
    for r, value in enumerate(f1):
        x0, y0, _, _ = painting.score_cell(lay, 3, 420, r, 2)
        px = img[int(y0 + 2), int(x0 + 3)]
        assert np.abs(px.astype(int) - colormap.sequential(np.array([value]))[0].astype(int)).max() <= 2, (r, px)


SCENE = '''
from deeproom.content import encode_content
from deeproom.document import new_room
from deeproom.scenes.session import LocalSession, EventMessage
from deeproom.scenes import painting, panel_status
from deeproom.scenes.prepared import texture_size

SOURCE = __SOURCE__
doc = new_room("a", name="actions", host_id="me", host_name="Me")
session = LocalSession(doc, "me")
events = []
session.on_event(lambda kind, sender, payload: events.append([kind, dict(payload)]))
def put(meta, arrays):
    return session.put_blob(encode_content(meta, arrays)).result()
def add(pid, kind, pos, size, refs, source):
    doc.apply({"op": "add_panel", "panel_id": pid, "kind": kind, "title": pid, "transform": {"position": pos},
               "size": size, "content": {"source": source, "refs": refs}}, "me")
m = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 4]], np.int32)
cm = put({"kind": "confusion_matrix", "classes": ["cat", "dog", "bird"]},
         {"matrix": m, "precision": np.array([0.7, 0.75, 1.0], np.float32),
          "recall": np.array([0.83, 0.6, 1.0], np.float32), "f1": np.array([0.1, 0.5, 0.9], np.float32)})
add("cm", "confusion_matrix", [0.0, 1.6, 2.0], [1.0, 0.7], [cm], SOURCE)
strip = np.zeros((32, 64, 3), np.uint8)
for i in range(8):
    strip[(i // 4) * 16:(i // 4) * 16 + 16, (i % 4) * 16:(i % 4) * 16 + 16] = (30 * i, 200 - 20 * i, 90)
st = put({"kind": "image", "tiles": {"rows": 2, "cols": 4, "count": 8, "labels": list("abcdefgh")}}, {"image": strip})
add("strip", "image", [1.3, 1.6, 2.0], [1.0, 0.55], [st],
    {"engine": "eng", "actions": [{"name": "choose_input", "label": "Use this input", "on": "tile",
                                   "params": [{"name": "index", "type": "tile"}]}]})
rng = np.random.default_rng(0)
cl = put({"kind": "latent_cloud", "classes": [str(i) for i in range(10)]},
         {"positions": rng.uniform(-1, 1, (40, 3)).astype(np.float32), "labels": (np.arange(40) % 10).astype(np.int32)})
sel = [{"name": "ids", "type": "selection"}]
add("cloud", "latent_cloud", [0.0, 1.6, -2.0], [1.0, 1.0], [cl],
    {"engine": "eng", "classes": [str(i) for i in range(10)], "actions": [
        {"name": "label", "label": "Label the selection", "on": "selection",
         "params": [*sel, {"name": "label", "type": "class"}]},
        {"name": "retrain", "label": "Retrain on the selection", "on": "selection", "params": sel}]})
add("bad", "grad_cam", [-1.3, 1.6, 2.0], [0.8, 0.6], [], {"engine": "eng", "error": "Score-CAM failed: out of memory"})
app = RoomApp(session, options=AppOptions(offscreen=True, size=(480, 320), start_position=(0.0, 1.6, 0.0)))
app.start()
out = {"settled": settle(app)}
view = app.panels["cm"]

def face_point(view, fx, fy):
    """World point of face pixel (fx, fy) (from the top-left) of a painted panel."""
    w, h = view.size
    tw, th = texture_size((w, h))
    return view.frame().world(fx / tw * w - w / 2, h / 2 - fy / th * h)

def screen_of(view, u, v):
    return app.world_to_screen(view.frame().world(u, v))

# confusion P/R/F1 drawn: the F1 cell of row 2 has the colour of 0.9
w, h = view.size
tw, th = texture_size((w, h))
lay = painting.matrix_layout(3, tw, th, scores=True)
x0, y0, x1, y1 = painting.score_cell(lay, 3, tw, 2, 2)
out["f1_pixel"] = pixel(app, *app.world_to_screen(face_point(view, (x0 + x1) / 2, y0 + 3)))

# right-click on the panel: the action menu opens in the world
app.pointer_context(*app.screen_ray(*screen_of(view, 0.3, 0.1)))
app.step(2)
g = app.menu.geometry
out["menu"] = {"open": app.menu_open, "title": g.title, "items": list(g.items), "enabled": list(g.enabled)}
from deeproom.scenes.menu import ROW
out["menu_pixel"] = pixel(app, *app.world_to_screen(g.frame().world(g.size[0] * 0.45, g.size[1] / 2 - ROW * 2.5)))
def click_row(i):
    g = app.menu.geometry
    sx, sy = app.world_to_screen(g.frame().world(*g.row_centre(i)))
    app.pointer_press(*app.screen_ray(sx, sy)); app.pointer_release(); app.step(2)
# a greyed row says why and keeps the menu open
click_row(2)
out["greyed_notice"] = app.notices[-1][1]
out["still_open"] = app.menu_open
click_row(1)  # Recompute: the class picker comes
g = app.menu.geometry
out["class_picker"] = {"title": g.title, "items": list(g.items)}
click_row(g.items.index("2 bird"))
g = app.menu.geometry
out["method_picker"] = {"title": g.title, "items": list(g.items)}
click_row(0)  # the default
out["closed"] = not app.menu_open
out["sent"] = [{k: v for k, v in s.items() if k != "at"} for s in app.menus.sent]
out["events"] = events[:]
rid = app.menus.sent[-1]["request_id"]
app.step(3)
# progress from the engine ("stream", channel "action") draws a bar on the panel
session.inbox.put(EventMessage("stream", "eng", {"panel_id": "cm", "channel": "action", "request_id": rid,
    "action": "recompute", "by": "me", "state": "running", "progress": 0.5, "message": "Recompute 50%"}))
app.step(3)
strip_y = -h / 2 + panel_status.STRIP / 2
out["bar_left"] = pixel(app, *screen_of(view, -w / 2 + 0.05, strip_y - 0.02))
out["bar_right"] = pixel(app, *screen_of(view, w / 2 - 0.05, strip_y - 0.02))
# a refusal shows on the panel (red) and in the HUD of whoever asked
session.inbox.put(EventMessage("stream", "eng", {"panel_id": "cm", "channel": "action", "request_id": rid,
    "action": "recompute", "by": "me", "state": "refused", "message": "Recompute needs the presenter role"}))
app.step(3)
out["refused_strip"] = pixel(app, *screen_of(view, w / 2 - 0.05, strip_y - 0.02))
out["hud"] = [t for _, t, _ in app.notices]
out["hud_text"] = app.hud.notice.text
# a malformed report is a notice, not a crash
session.inbox.put(EventMessage("stream", "eng", {"panel_id": "cm", "channel": "action", "request_id": "x y",
                                                  "state": "running"}))
app.step(2)
out["bad_report"] = app.notices[-1][1]
# error card for source["error"]
bad = app.panels["bad"]
app.rig.look_at((-1.3, 1.6, 2.0)); app.step(3)
out["error_card"] = {"is_error": bad.is_error, "message": getattr(bad.prepared, "message", None),
                     "pixel": pixel(app, *screen_of(bad, -bad.size[0] / 2 + 0.02, -bad.size[1] / 2 + 0.03))}
app.rig.look_at((0.6, 1.6, 2.0)); app.step(3)
# a click on tile 6 of the input strip sends the declared tile action with its index
sv = app.panels["strip"]
sw, sh = sv.size
tw, th = texture_size((sw, sh))
ih, iw = 32, 64
s = min((tw - 8) / iw, (th - 8) / ih)
dw, dh = int(iw * s), int(ih * s)
ox, oy = 4 + (tw - 8 - dw) // 2, 4 + (th - 8 - dh) // 2
tx, ty = ox + dw * (2.5 / 4), oy + dh * (1.5 / 2)
app.pointer_press(*app.screen_ray(*app.world_to_screen(face_point(sv, tx, ty)))); app.pointer_release(); app.step(2)
out["tile_sent"] = {k: v for k, v in app.menus.sent[-1].items() if k != "at"}
# the cloud's keys: a digit labels the selection, R retrains on it, through the declared actions
n_before = len(app.menus.sent)
cv = app.panels["cloud"]
app.input.select("cloud")
cv.content.select_sphere(np.zeros(3, np.float32), 5.0)
app.key("7")
app.key("r")
out["cloud_keys"] = [{k: v for k, v in s.items() if k not in ("at", "request_id")} for s in app.menus.sent[n_before:]]
done(out)
'''


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import os
    import subprocess
    import sys
    import textwrap

    from tests.scenes.conftest import PRELUDE, parse  # type: ignore[import-not-found]

    folder = tmp_path_factory.mktemp("actions")
    path = folder / "actions_scene.py"
    path.write_text(PRELUDE + textwrap.dedent(SCENE).replace("__SOURCE__", repr(SOURCE)))
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.run([sys.executable, str(path)], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    return parse(proc.returncode, proc.stdout, proc.stderr)


def near(px: list[int], rgb: tuple[float, ...], tol: float = 12.0) -> bool:
    return all(abs(int(p) - float(c)) <= tol for p, c in zip(px, rgb, strict=True))


@pytest.mark.slow
def test_a_right_click_opens_the_panels_action_menu_in_the_world(seen: dict[str, Any]) -> None:
    menu = seen["menu"]
    assert menu["open"] and menu["title"].startswith("cm")
    # the room's host sees the host-only action too; unavailable ones are greyed with why
    assert menu["items"] == ["Wipe", "Analysis · Recompute", "Attention — unavailable"]
    assert menu["enabled"] == [True, True, False]
    assert near(seen["menu_pixel"], (0.1 * 255, 0.11 * 255, 0.16 * 255), 3) \
        or near(seen["menu_pixel"], (0.14 * 255, 0.15 * 255, 0.21 * 255), 3), seen["menu_pixel"]
    assert seen["greyed_notice"] == "Attention: the model has no attention layers" and seen["still_open"]


@pytest.mark.slow
def test_rendered_clicks_pick_parameters_and_send_the_request(seen: dict[str, Any]) -> None:
    assert seen["class_picker"]["title"] == "Recompute: class"
    assert seen["class_picker"]["items"] == ["0 cat", "1 dog", "2 bird"]
    assert seen["method_picker"]["items"][0] == "tsne (default)"
    assert seen["closed"]
    sent = seen["sent"][0]
    assert sent["action"] == "recompute" and sent["panel_id"] == "cm" and sent["to"] == "eng"
    assert sent["params"] == {"target": 2, "method": "tsne"}
    kind, payload = seen["events"][0]
    assert kind == "steer" and payload["request_id"] == sent["request_id"] and payload["params"] == sent["params"]


@pytest.mark.slow
def test_progress_draws_a_bar_and_a_refusal_shows_on_panel_and_hud(seen: dict[str, Any]) -> None:
    bar = tuple(c * 255 for c in (0.3, 0.62, 1.0))
    track = tuple(c * 255 for c in (0.12, 0.14, 0.2))
    red = tuple(c * 255 for c in (0.62, 0.12, 0.14))
    assert near(seen["bar_left"], bar), seen["bar_left"]
    assert near(seen["bar_right"], track), seen["bar_right"]
    assert near(seen["refused_strip"], red), seen["refused_strip"]
    assert "Recompute needs the presenter role" in seen["hud"]
    assert "presenter role" in seen["hud_text"]
    assert "bad action report" in seen["bad_report"]


@pytest.mark.slow
def test_a_source_error_is_an_error_card(seen: dict[str, Any]) -> None:
    card = seen["error_card"]
    assert card["is_error"] and card["message"] == "Score-CAM failed: out of memory"
    assert near(card["pixel"], painting.ERROR_BG, 6), card["pixel"]


@pytest.mark.slow
def test_confusion_shows_f1_and_a_tile_click_sends_the_tile_action(seen: dict[str, Any]) -> None:
    assert near(seen["f1_pixel"], tuple(colormap.sequential(np.array([0.9]))[0]), 14), seen["f1_pixel"]
    tile = seen["tile_sent"]
    assert tile["action"] == "choose_input" and tile["params"] == {"index": 6} and tile["to"] == "eng"


def test_the_clouds_keys_send_its_declared_label_and_retrain_actions(seen: dict[str, Any]) -> None:
    label, retrain = seen["cloud_keys"]
    assert label["action"] == "label" and label["to"] == "eng" and label["panel_id"] == "cloud"
    assert label["params"]["label"] == 7 and sorted(label["params"]["ids"]) == list(range(40))
    assert retrain == {"action": "retrain", "panel_id": "cloud", "params": {"ids": label["params"]["ids"]},
                       "to": "eng"}
