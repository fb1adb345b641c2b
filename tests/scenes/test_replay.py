"""Replaying a recording in the app: a real session recorded on a real relay, replayed offscreen.

At two chosen times the panels in the app are where the recording has them and the pixels
differ where the panel moved; a rendered click on the timeline's bar seeks there; edits are
refused; the recording indicator shows in a live app when the host turns recording on.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.content import encode_content
from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.recording import RecordingStore, hooks
from deeproom.presence import PointerRay, Pose
from deeproom.recording import Chapter, read_timeline
from deeproom.scenes.replay import SPEEDS, ReadOnly, ReplaySession, TimelineGeometry
from tests.net.conftest import eventually


async def _record(data_dir: Path) -> dict[str, Any]:
    """Host and Bo: an image panel from a blob, a metrics panel moved step by step, the host's
    poses with a laser, a summon."""
    live: dict[str, Any] = {"p1": []}
    async with EmbeddedRelay(data_dir=data_dir, leave_grace_s=0.5) as relay, \
            RoomClient(relay.url, room="lecture", name="Host") as host, \
            RoomClient(relay.url, room="lecture", name="Bo") as bo:
        if True:
            await eventually(lambda: bo.participant_id in host.room.participants)
            img = np.zeros((32, 32, 3), np.uint8)
            img[:, :16] = (240, 40, 40)
            img[:, 16:] = (40, 220, 60)
            sha = await host.put_blob(encode_content({"kind": "image"}, {"image": img}))
            await host.apply({"op": "add_panel", "panel_id": "p2", "kind": "image", "title": "Picture",
                              "content": {"source": {"type": "test"}, "refs": [sha]},
                              "transform": {"position": [-1.6, 1.5, 2.0]}})
            await host.apply({"op": "add_panel", "panel_id": "p1", "kind": "metrics", "title": "Loss",
                              "transform": {"position": [0.0, 1.5, 2.0]}})
            await host.apply({"op": "set_recording", "recording": True})
            rec = hooks.recorder_of(relay.server.rooms["lecture"])
            assert rec is not None
            for i in range(12):
                x = 0.25 * i
                await host.apply({"op": "move_panel", "panel_id": "p1", "transform": {"position": [x, 1.5, 2.0]}})
                host.publish_pose(Pose(head_position=(x - 1.0, 1.6, 0.5),
                                       pointer=PointerRay((x - 1.0, 1.3, 0.5), (0.3, 0.0, 1.0))))
                await eventually(lambda x=x: abs(bo.room.panels["p1"].transform.position[0] - x) < 1e-6)
                live["p1"].append((rec.now(), x))
                if i == 6:
                    await host.send_event("summon", {"panel_id": "p1"})
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.3)
            live["host"] = host.participant_id
            live["id"] = rec.id
            live["sha"] = sha
            await host.apply({"op": "set_recording", "recording": False})
    return live


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data = tmp_path_factory.mktemp("replay") / "relay"
    live = asyncio.run(_record(data))
    return data, live


def test_timeline_geometry_picks() -> None:
    g = TimelineGeometry((0.0, 1.2, 0.0), (1.0, 0.0, 0.0, 0.0), 100.0, ((40.0, "summon to p1"),))
    eye = np.array([0.0, 1.2, -1.0])

    def at(u: float, v: float) -> tuple[str, float] | None:
        p = g.world(u, v)
        return g.pick(eye, (p - eye) / np.linalg.norm(p - eye))

    assert at(g.button_u(0), g.button_v) == ("play", 0.0)
    assert [at(g.button_u(i + 1), g.button_v) for i in range(len(SPEEDS))] == [("speed", s) for s in SPEEDS]
    kind, t = at(g.u_of(75.0), g.bar_v)  # type: ignore[misc]
    assert kind == "seek" and abs(t - 75.0) < 0.01
    assert at(g.u_of(40.0) + 0.005, g.bar_v) == ("chapter", 40.0)  # near a mark: the chapter itself
    assert at(0.0, 0.0) == ("panel", 0.0)
    assert g.pick(eye, (0.0, 1.0, 0.0)) is None


def test_session_is_read_only_and_reads_blobs(recorded: tuple[Path, dict[str, Any]]) -> None:
    data, live = recorded
    store = RecordingStore(data / "recordings")
    tl = store.open(live["id"])
    assert [c.kind for c in tl.chapters] == ["summon"] and isinstance(tl.chapters[0], Chapter)
    s = ReplaySession(tl, data / "recordings" / "blobs", at=1.0, playing=False)
    try:
        for fut in (s.apply({"op": "move_panel", "panel_id": "p1"}), s.put_blob(b"x"),
                    s.send_event("summon", {}), s.call("kick", "p")):
            with pytest.raises(ReadOnly, match="read-only"):
                fut.result(1)
        assert s.fetch_blob(live["sha"])[:4] == store.blob_path(live["sha"]).read_bytes()[:4]
        with pytest.raises(KeyError):
            s.fetch_blob("../../etc/passwd")
        with pytest.raises(KeyError, match="not in the recording"):
            s.fetch_blob("0" * 64)
    finally:
        s.close()


REPLAY = '''
from deeproom.recording import read_timeline
from deeproom.scenes.replay import ReplaySession, attach_timeline
tl = read_timeline(TIMELINE)
session = ReplaySession(tl, BLOBS, at=T_A, playing=False)
app = RoomApp(session, options=AppOptions(offscreen=True, size=(480, 270), start_position=(0.0, 1.7, -1.4)))
timeline = attach_timeline(app)
app.start()
app.rig.teleport((0.0, 1.7, -1.4), 0.0)
out = {}
def p1x():
    v = app.panels.get("p1")
    return None if v is None else v.transform[0][0]
out["a_ok"] = wait(app, lambda: p1x() is not None and abs(session.clock.t - T_A) < 1e-6 and settle(app, 1.0)
                   and HOST in app.avatars)
out["a_x"] = p1x()
out["p2_error"] = app.panels["p2"].is_error
out["p2_content"] = app.panels["p2"].content is not None
def screen_of(x):
    return app.world_to_screen((x, 1.5, 2.0))
out["a_screen"] = screen_of(out["a_x"])
img_a = app.screenshot()[:, :, :3].astype(int)
app.save_snapshot("a.png")
session.seek(T_B)
out["b_ok"] = wait(app, lambda: abs(session.clock.t - T_B) < 1e-6 and abs(p1x() - out["a_x"]) > 0.3)
app.step(20)
out["b_x"] = p1x()
out["b_screen"] = screen_of(out["b_x"])
img_b = app.screenshot()[:, :, :3].astype(int)
app.save_snapshot("b.png")
def diff_at(xy, r=6):
    x, y = int(xy[0]), int(xy[1])
    return float(np.abs(img_a[y - r:y + r, x - r:x + r] - img_b[y - r:y + r, x - r:x + r]).mean())
out["diff_a"] = diff_at(out["a_screen"])
out["diff_b"] = diff_at(out["b_screen"])
av = app.avatars[HOST]
def head_still():  # the avatar eases toward its recorded head at frame rate: wait until it is there
    before = [float(c) for c in av.head_pos]
    app.step()
    return max(abs(a - b) for a, b in zip(before, av.head_pos)) < 1e-3
wait(app, head_still, 15)
out["laser"] = bool(av.laser.shown)
out["avatar_head"] = [float(c) for c in av.head_pos]
# a rendered click on the timeline's bar
g = timeline.geometry
sx, sy = app.world_to_screen(g.world(g.u_of(T_SEEK), g.bar_v))
out["bar_pixel"] = pixel(app, sx, sy)
app.pointer_press(*app.screen_ray(sx, sy))
app.pointer_release()
out["seek_ok"] = wait(app, lambda: abs(session.clock.t - T_B) > 0.5)
out["seek_t"] = session.clock.t
out["seek_x"] = wait(app, lambda: True) and p1x()
# an edit is refused locally, with a notice; the room stays as recorded
app.apply({"op": "move_panel", "panel_id": "p1", "transform": {"position": [9.0, 1.5, 2.0]}})
wait(app, lambda: any("read-only" in s for _, s, _ in app.notices), 10)
out["notices"] = [s for _, s, _ in app.notices]
out["after_edit_x"] = p1x()
# play at 4x: the playhead moves
app.pointer_press(*app.screen_ray(*app.world_to_screen(g.world(g.button_u(4), g.button_v))))
app.pointer_press(*app.screen_ray(*app.world_to_screen(g.world(g.button_u(0), g.button_v))))
t0 = session.clock.t
wait(app, lambda: session.clock.t > t0 + 1.0, 20)
out["played"] = [t0, session.clock.t, session.clock.speed]
app.close(); session.close()
done(out)
'''


def test_replay_offscreen(recorded: tuple[Path, dict[str, Any]], run_scene: Any) -> None:
    data, live = recorded
    store = RecordingStore(data / "recordings")
    path = store.timeline_path(live["id"])
    tl = read_timeline(path)
    (t_a, x_a), (t_b, x_b) = live["p1"][2], live["p1"][10]
    t_a, t_b = t_a + 0.05, t_b + 0.05  # within a tick after the moment seen live
    t_seek = live["p1"][5][0] + 0.05
    script = (f"TIMELINE = {str(path)!r}\nBLOBS = {str(data / 'recordings' / 'blobs')!r}\n"
              f"T_A, T_B, T_SEEK = {t_a!r}, {t_b!r}, {t_seek!r}\nHOST = {live['host']!r}\n" + REPLAY)
    out = run_scene(script, name="replay")
    assert out["a_ok"] and out["b_ok"], out
    # the app's panel views stand where the recording has the panel at those times
    assert abs(out["a_x"] - x_a) < 1e-6 and abs(out["b_x"] - x_b) < 1e-6, (out, x_a, x_b)
    assert out["p2_content"] and not out["p2_error"], out  # the image panel's blob came from the store
    # pixels changed where the panel was and where it went
    assert out["diff_a"] > 20 and out["diff_b"] > 20, out
    assert out["laser"], out
    assert abs(out["avatar_head"][0] - (x_b - 1.0)) < 0.3, out  # eased toward the recorded head
    # the click on the bar landed at the expected time (within 1 s), the panel where it was then
    assert out["seek_ok"] and abs(out["seek_t"] - t_seek) <= 1.0, (out, t_seek)
    assert abs(out["seek_x"] - live["p1"][5][1]) <= 0.25 + 1e-6, out
    assert any("read-only" in n for n in out["notices"]), out
    assert abs(out["after_edit_x"] - out["seek_x"]) < 1e-6
    t0, t1, speed = out["played"]
    assert speed == 4.0 and t1 > t0 + 1.0, out
    assert tl.duration > t_b


INDICATOR = '''
from deeproom.net import BackgroundClient
from deeproom.scenes.session import RelaySession
host = BackgroundClient(None, room="rec", name="Host", data_dir="data").wait_ready(60)
bo = BackgroundClient(host.url, room="rec", name="Bo", data_dir="data-bo").wait_ready(60)
app = RoomApp(RelaySession(bo), options=AppOptions(offscreen=True, size=(480, 270)))
app.start()
def red_in_corner():
    img = app.screenshot()[:, :, :3].astype(int)
    h, w = img.shape[:2]
    c = img[: h // 8, w * 3 // 4:]
    return int(((c[..., 0] > 180) & (c[..., 1] < 90) & (c[..., 2] < 90)).sum())
app.step(10)
out = {"before": red_in_corner()}
host.apply({"op": "set_recording", "recording": True}).result(30)
end = time.monotonic() + 30
while time.monotonic() < end and not (app.room is not None and app.room.settings.recording):
    app.step(); time.sleep(0.02)
app.step(5)
out["after"] = red_in_corner()
out["text"] = app.hud.rec.text if app.hud.rec.enabled else ""
app.save_snapshot("rec.png")
host.apply({"op": "set_recording", "recording": False}).result(30)
end = time.monotonic() + 30
while time.monotonic() < end and app.room.settings.recording:
    app.step(); time.sleep(0.02)
app.step(5)
out["off"] = red_in_corner()
app.close(); bo.close(); host.close()
done(out)
'''


def test_recording_indicator_in_a_live_app(run_scene: Any) -> None:
    out = run_scene(INDICATOR, name="indicator")
    assert out["before"] == 0 and out["off"] == 0, out
    assert out["after"] > 20 and out["text"] == "recording", out


def test_damaged_recording_plays_its_intact_part(recorded: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    import queue as queue_mod

    from deeproom.scenes.replay import ReplayClock
    from deeproom.scenes.session import Notice, RoomUpdate

    data, live = recorded
    raw = RecordingStore(data / "recordings").timeline_path(live["id"]).read_bytes()
    cut = tmp_path / "cut" / "timeline.drrec"
    cut.parent.mkdir()
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    tl = read_timeline(cut)
    assert tl.damage is not None
    s = ReplaySession(tl, data / "recordings" / "blobs", at=tl.duration / 2, playing=False)
    try:
        got: list[Any] = []
        while not any(isinstance(m, RoomUpdate) for m in got):
            got.append(s.inbox.get(timeout=10))
        assert any(isinstance(m, Notice) and "damaged" in m.text for m in got), got
        room = next(m.room for m in got if isinstance(m, RoomUpdate))
        assert "p1" in room.panels and "p2" in room.panels
        s.seek(tl.duration + 100)  # past the intact part: the end of what plays
        end = None
        while end is None:
            m = s.inbox.get(timeout=10)
            if isinstance(m, ReplayClock) and m.t == tl.duration:
                end = m
        assert not end.playing
    except queue_mod.Empty:
        raise AssertionError(f"the replay posted nothing: {got}") from None
    finally:
        s.close()
