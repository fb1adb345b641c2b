"""The scene side of tests/scenes/test_replay_watch.py (each run in its own process: Ursina is one
app per process). `python replay_watch_prog.py MODE ARGS_JSON`:

- `summon`: a recording replayed offscreen; playing past a recorded summon moves the camera,
  seeking past it does not, and G turns it off.
- `driver` / `follower`: the two sides of a watch party on a real relay. They take turns through
  flag files in ARGS_JSON["flags"] (each waits for the other's flag while stepping frames).

The last line of output is one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deeproom.errors import DeepRoomError
from deeproom.net.recording import RecordingStore
from deeproom.recording import read_timeline
from deeproom.scenes.app import AppOptions, RoomApp
from deeproom.scenes.replay import ReplaySession, attach_timeline
from deeproom.scenes.replay_watch import LIVE_PREFIX, WatchSession, open_watch
from deeproom.scenes.runner import content_settled

EYE = (0.0, 1.7, -1.4)
SIZE = (480, 270)


def done(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def wait(app: RoomApp, check: Callable[[], Any], timeout: float = 60.0, extra: int = 3) -> bool:
    """Step frames (they drain the inbox) until check() holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.step()
        if check():
            app.step(extra)
            return True
        time.sleep(0.01)
    return False


def settled(app: RoomApp, timeout: float = 60.0) -> bool:
    return wait(app, lambda: content_settled(app), timeout)


def p1x(app: RoomApp) -> float | None:
    v = app.panels.get("p1")
    return None if v is None else float(v.transform[0][0])


def image(app: RoomApp) -> np.ndarray:
    return app.screenshot()[:, :, :3].astype(int)


def diff_at(a: np.ndarray, b: np.ndarray, xy: Any, r: int = 6) -> float:
    if xy is None:
        return -1.0
    x, y = int(xy[0]), int(xy[1])
    h, w = a.shape[:2]
    if not (r <= x < w - r and r <= y < h - r):
        return -1.0
    return float(np.abs(a[y - r:y + r, x - r:x + r] - b[y - r:y + r, x - r:x + r]).mean())


def title_green(img: np.ndarray) -> int:
    """Pixels of a panel's green title bar in the top two thirds of the view (the timeline is below)."""
    top = img[: img.shape[0] * 2 // 3]
    r, g, b = top[..., 0], top[..., 1], top[..., 2]
    return int(((g > r + 40) & (g > b + 15) & (g > 90)).sum())


def head(app: RoomApp) -> list[float]:
    assert app.rig is not None
    return [round(float(c), 4) for c in app.rig.head()[0]]


def notices(app: RoomApp) -> list[str]:
    return [s for _, s, _ in app.notices]


# --- summons ----------------------------------------------------------------------------------


def summon(a: dict[str, Any]) -> dict[str, Any]:
    tl = read_timeline(a["timeline"])
    t_before, t_after = a["t_summon"] - 1.0, a["t_summon"] + 0.6
    session = ReplaySession(tl, a["blobs"], at=t_before, playing=False)
    app = RoomApp(session, options=AppOptions(offscreen=True, size=SIZE, start_position=EYE))
    attach_timeline(app)
    app.start()
    assert app.rig is not None
    app.rig.teleport(EYE, 0.0)
    out: dict[str, Any] = {}
    out["ready"] = wait(app, lambda: p1x(app) is not None and abs(session.clock.t - t_before) < 1e-6) and settled(app)
    out["head_before"] = head(app)
    img0 = image(app)
    app.save_snapshot("before-summon.png")
    p1_before = app.world_to_screen((p1x(app), 1.5, 2.0))
    # play through the summon: the camera goes where it sends people, turned as it says
    session.play()
    out["moved"] = wait(app, lambda: head(app) != out["head_before"] and session.clock.t > a["t_summon"], 30, 0)
    session.pause()
    out["t_moved"] = session.clock.t
    wait(app, lambda: not session.clock.playing, 10, 10)
    out["head_after"] = head(app)
    out["yaw_after"] = float(app.rig.yaw)
    settled(app, 10)
    img1 = image(app)
    app.save_snapshot("after-summon.png")
    x = p1x(app)
    out["p1_after_screen"] = app.world_to_screen((x, 1.5, 2.0))
    out["p1_before_screen"] = p1_before
    out["diff_whole"] = float(np.abs(img0 - img1).mean())
    out["diff_at_p1_after"] = diff_at(img0, img1, out["p1_after_screen"])
    out["green_before"], out["green_after"] = title_green(img0), title_green(img1)
    out["notices"] = notices(app)
    # seeking past it does not move anyone
    app.rig.teleport(EYE, 0.0)
    wait(app, lambda: True, 1, 3)
    session.seek(t_before)
    wait(app, lambda: abs(session.clock.t - t_before) < 1e-6, 20, 5)
    session.seek(t_after)
    wait(app, lambda: abs(session.clock.t - t_after) < 1e-6, 20, 10)
    out["head_after_seek"] = head(app)
    # G: recorded summons no longer move this viewer
    session.seek(t_before)
    wait(app, lambda: abs(session.clock.t - t_before) < 1e-6, 20, 5)
    app.input.key("g")
    session.play()
    wait(app, lambda: session.clock.t > a["t_summon"] + 0.3, 30, 10)
    session.pause()
    wait(app, lambda: not session.clock.playing, 10, 5)
    out["head_opted_out"] = head(app)
    out["notices_end"] = notices(app)
    app.close()
    session.close()
    return out


# --- a watch party ----------------------------------------------------------------------------


class Flags:
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def put(self, name: str, value: Any = None) -> None:
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text(json.dumps({"at": time.monotonic(), "value": value}))
        tmp.replace(self.folder / name)

    def get(self, name: str) -> dict[str, Any] | None:
        p = self.folder / name
        return json.loads(p.read_text()) if p.is_file() else None


def sampler(session: WatchSession, trace: list[list[float]]) -> Callable[[RoomApp], None]:
    def frame(app: RoomApp) -> None:
        c = session.clock
        trace.append([time.monotonic(), c.t, 1.0 if c.playing else 0.0])

    return frame


def driver(a: dict[str, Any]) -> dict[str, Any]:
    flags = Flags(a["flags"])
    store = RecordingStore(a["store"])
    session = open_watch(a["url"], a["room"], "Host", store, a["rid"], at=a["t_a"], playing=False, say=print)
    flags.put("shared")
    app = RoomApp(session, options=AppOptions(offscreen=True, size=SIZE, start_position=EYE))
    attach_timeline(app)
    trace: list[list[float]] = []
    app.on_frame.append(sampler(session, trace))
    app.start()
    assert app.rig is not None
    app.rig.teleport(EYE, 0.0)
    out: dict[str, Any] = {"role": session.role()}

    def live() -> list[str]:
        return [pid for pid in app.avatars if pid.startswith(LIVE_PREFIX)]

    out["follower_seen"] = wait(app, lambda: live() and flags.get("ready"), 240)
    follower = live()[0] if live() else ""
    out["live_avatars"] = live()
    out["live_tags"] = [app.avatars[pid].tag.text for pid in live()]
    out["recorded_avatars"] = [pid for pid in app.avatars if not pid.startswith(LIVE_PREFIX)]
    out["follower_head"] = [float(c) for c in app.avatars[follower].head_pos] if follower else None
    # seek while paused: the follower jumps there
    session.seek(a["t_b"])
    wait(app, lambda: abs(session.clock.t - a["t_b"]) < 1e-6)
    flags.put("sought", a["t_b"])
    out["follower_at_b"] = wait(app, lambda: flags.get("at_b"), 60)
    # play 1.5 s at 1x, pause: the follower plays along and stops where the driver did
    session.play()
    wait(app, lambda: session.clock.playing, 10, 1)
    start = time.monotonic()
    wait(app, lambda: time.monotonic() - start > 1.5, 10, 0)
    session.pause()
    wait(app, lambda: not session.clock.playing, 10, 3)
    out["t_pause"] = session.clock.t
    flags.put("paused", session.clock.t)
    # the follower tries to drive: nothing changes here
    out["follower_tried"] = wait(app, lambda: flags.get("tried"), 60)
    wait(app, lambda: True, 1, 20)
    out["after_try"] = [session.clock.t, session.clock.playing]
    # the host hands control (what the People panel's "Promote to presenter" applies)
    fut = app.apply({"op": "set_role", "participant_id": follower, "role": "presenter"})
    try:
        fut.result(30)
        out["handed"] = True
    except DeepRoomError as exc:
        out["handed"] = str(exc)
    flags.put("handed")

    def at_followers() -> bool:
        drove = flags.get("drove")
        return drove is not None and abs(session.clock.t - drove["value"]) < 0.15

    out["followed_follower"] = wait(app, at_followers, 60, 10)
    out["t_end"] = session.clock.t
    out["p1x_end"] = p1x(app)
    app.save_snapshot("driver.png")
    out["sent"] = session.sent
    out["trace"] = trace
    out["notices"] = notices(app)
    flags.put("done")
    app.close()
    session.close()
    return out


def follower(a: dict[str, Any]) -> dict[str, Any]:
    flags = Flags(a["flags"])
    store = RecordingStore(a["store"])
    t0 = time.monotonic()
    session = open_watch(a["url"], a["room"], "Ann", store, None, say=print)
    out: dict[str, Any] = {"open_s": time.monotonic() - t0, "ids": store.ids(), "role": session.role()}
    app = RoomApp(session, options=AppOptions(offscreen=True, size=SIZE, start_position=EYE))
    timeline = attach_timeline(app)
    trace: list[list[float]] = []
    app.on_frame.append(sampler(session, trace))
    app.start()
    assert app.rig is not None
    app.rig.teleport(EYE, 0.0)
    out["at_a"] = wait(app, lambda: abs(session.clock.t - a["t_a"]) < 0.15 and p1x(app) is not None, 60) \
        and settled(app)
    out["p1x_a"] = p1x(app)
    out["t_a_seen"] = session.clock.t
    img_a = image(app)
    app.save_snapshot("follower-a.png")
    screen_a = app.world_to_screen((out["p1x_a"], 1.5, 2.0))
    flags.put("ready")
    # the driver seeks: this playhead and the panel follow
    wait(app, lambda: flags.get("sought"), 120, 0)
    out["at_b"] = wait(app, lambda: abs(session.clock.t - a["t_b"]) < 0.15 and p1x(app) is not None
                       and abs(p1x(app) - a["x_b"]) < 1e-6, 30, 0)  # type: ignore[operator]
    sought = flags.get("sought")
    out["seek_follow_s"] = time.monotonic() - sought["at"] if sought else None
    wait(app, lambda: True, 1, 10)
    settled(app, 10)
    out["p1x_b"] = p1x(app)
    img_b = image(app)
    app.save_snapshot("follower-b.png")
    screen_b = app.world_to_screen((out["p1x_b"], 1.5, 2.0))
    out["diff_a"] = diff_at(img_a, img_b, screen_a)
    out["diff_b"] = diff_at(img_a, img_b, screen_b)
    flags.put("at_b")
    # the driver plays, then pauses
    out["saw_playing"] = wait(app, lambda: session.clock.playing, 30, 0)
    wait(app, lambda: flags.get("paused") and not session.clock.playing, 30, 5)
    paused = flags.get("paused")
    out["driver_t_pause"] = paused["value"] if paused else None
    wait(app, lambda: True, 0.5, 5)
    out["t_pause"] = session.clock.t
    # try to drive: a click on the bar, space; then a hostile watch event straight to the relay
    g = timeline.geometry
    assert g is not None
    sx, sy = app.world_to_screen(g.world(g.u_of(a["t_a"]), g.bar_v))  # type: ignore[misc]
    app.pointer_press(*app.screen_ray(sx, sy))
    app.pointer_release()
    app.input.key("space")
    wait(app, lambda: True, 1.0, 10)
    out["after_try"] = [session.clock.t, session.clock.playing]
    out["refused_notices"] = [n for n in notices(app) if "drives this replay" in n]
    try:
        session.client.send_event("watch", {"recording": session.manifest_sha, "t": 0.0, "playing": True,
                                            "speed": 1.0, "duration": session.timeline.duration}).result(30)
        out["relay_refused"] = None
    except DeepRoomError as exc:
        out["relay_refused"] = f"{type(exc).__name__}: {exc}"
    flags.put("tried")
    # handed control: now this viewer drives (a click on the bar seeks everyone)
    out["can_drive"] = wait(app, lambda: flags.get("handed") and session.can_drive(), 60)
    out["role_after"] = session.role()
    app.pointer_press(*app.screen_ray(sx, sy))
    app.pointer_release()
    out["drove"] = wait(app, lambda: abs(session.clock.t - a["t_a"]) < 1.0, 20)
    wait(app, lambda: True, 0.3, 5)
    out["t_drove"] = session.clock.t
    out["p1x_drove"] = p1x(app)
    flags.put("drove", session.clock.t)
    wait(app, lambda: flags.get("done"), 60, 0)
    out["trace"] = trace
    app.close()
    session.close()
    return out


if __name__ == "__main__":
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    done({"summon": summon, "driver": driver, "follower": follower}[mode](args))
