"""Summons in a replay, and one replay watched together on a relay.

A session is recorded on a real relay (a panel moved step by step, a summon to a place). Replayed
offscreen, playing past the summon moves the camera there (the rendered view changes and the
panel comes to the middle of the screen), seeking past it does not, and G turns it off. Then a
real relay process (`deeproom serve`) and two replay app processes: the driver shares the
recording and seeks, plays and pauses; the follower (who had no copy) fetches it, and its
playhead and the replayed panel follow; the follower's clicks are refused, and so is its
`watch` event at the relay; once the host makes it presenter, it drives and the host follows.
(The scenes run in tests/scenes/replay_watch_prog.py, one process each.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeproom.net import EmbeddedRelay, RoomClient
from deeproom.net.recording import RecordingStore, hooks
from deeproom.presence import Pose
from tests.net.conftest import eventually, free_port, start_relay_process, wait_for_port

PROG = Path(__file__).with_name("replay_watch_prog.py")
SUMMON_TO = (1.5, 1.6, 0.4)
SUMMON_YAW = 0.0  # facing +z: the panel, 1.6 m ahead


async def _record(data_dir: Path) -> dict[str, Any]:
    live: dict[str, Any] = {"p1": []}
    async with EmbeddedRelay(data_dir=data_dir, leave_grace_s=0.5) as relay, \
            RoomClient(relay.url, room="lecture", name="Host") as host, \
            RoomClient(relay.url, room="lecture", name="Bo") as bo:
        await eventually(lambda: bo.participant_id in host.room.participants)
        await host.apply({"op": "add_panel", "panel_id": "p1", "kind": "metrics", "title": "Loss",
                          "transform": {"position": [0.0, 1.5, 2.0]}})
        await host.apply({"op": "set_recording", "recording": True})
        rec = hooks.recorder_of(relay.server.rooms["lecture"])
        assert rec is not None
        for i in range(12):
            x = 0.25 * i
            await host.apply({"op": "move_panel", "panel_id": "p1", "transform": {"position": [x, 1.5, 2.0]}})
            host.publish_pose(Pose(head_position=(x - 1.0, 1.6, 0.5)))

            def moved(x: float = x) -> bool:
                return abs(bo.room.panels["p1"].transform.position[0] - x) < 1e-6

            await eventually(moved)
            live["p1"].append((rec.now(), x))
            if i == 6:
                await host.send_event("summon", {"position": list(SUMMON_TO), "yaw": SUMMON_YAW})
                live["summon"] = rec.now()
            await asyncio.sleep(0.45)
        await asyncio.sleep(0.3)
        live["id"] = rec.id
        await host.apply({"op": "set_recording", "recording": False})
    return live


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data = tmp_path_factory.mktemp("replay-watch") / "relay"
    live = asyncio.run(_record(data))
    return data, live


def _run(folder: Path, mode: str, args: dict[str, Any], timeout: float = 400,
         background: bool = False) -> Any:
    from tests.scenes.conftest import parse  # type: ignore[import-not-found]

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROG, folder / PROG.name)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    cmd = [sys.executable, PROG.name, mode, json.dumps(args)]
    if background:
        return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    return parse(proc.returncode, proc.stdout, proc.stderr)


def test_a_recorded_summon_moves_the_viewer(recorded: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    data, live = recorded
    store = RecordingStore(data / "recordings")
    out = _run(tmp_path / "summon", "summon", {"timeline": str(store.timeline_path(live["id"])),
                                               "blobs": str(data / "recordings" / "blobs"),
                                               "t_summon": live["summon"]})
    assert out["ready"] and out["moved"], out
    # the camera went where the summon sends people, turned the way it says
    assert np.allclose(out["head_after"], SUMMON_TO, atol=1e-3), out
    assert abs(out["yaw_after"] - SUMMON_YAW) < 1e-6, out
    assert any("summoned you" in n for n in out["notices"]), out["notices"]
    # the rendered view changed: the panel, off to the right and far before, is now large and
    # straight ahead (its green title bar covers several times the pixels)
    w, h = 480, 270
    sx, sy = out["p1_after_screen"]
    assert abs(sx - w / 2) < w * 0.25 and abs(sy - h / 2) < h * 0.3, out
    assert out["diff_whole"] > 5 and out["green_after"] > 3 * max(out["green_before"], 100), out
    # seeking past a summon does not move the viewer; with G off, playing past it does not either
    assert np.allclose(out["head_after_seek"], (0.0, 1.7, -1.4), atol=1e-3), out
    assert np.allclose(out["head_opted_out"], (0.0, 1.7, -1.4), atol=1e-3), out
    assert any("no longer move you" in n for n in out["notices_end"]), out


def _t_x(live: dict[str, Any], i: int) -> tuple[float, float]:
    """A time in the middle of step i (steps are about half a second apart) and the panel's x then."""
    t, x = live["p1"][i]
    return t + 0.2, x


def _lag(driver: list[list[float]], follower: list[list[float]], t0: float, t1: float) -> tuple[float, float]:
    """Largest and median |follower t - driver t| at the same moment (monotonic clock, shared by the
    processes) between t0 and t1, the driver's playhead interpolated."""
    d = np.asarray(driver)
    gaps = [abs(t - float(np.interp(at, d[:, 0], d[:, 1]))) for at, t, _ in follower
            if t0 <= at <= t1 and d[0, 0] <= at <= d[-1, 0]]
    assert len(gaps) >= 5, gaps
    return max(gaps), float(np.median(gaps))


def test_watch_a_replay_together_on_a_relay(recorded: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    data, live = recorded
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir()
    port = free_port()
    relay = start_relay_process(relay_dir, port)
    driver: Any = None
    try:
        wait_for_port(port, relay)
        url = f"http://127.0.0.1:{port}"
        flags = tmp_path / "flags"
        flags.mkdir()
        t_a, x_a = _t_x(live, 2)
        t_b, x_b = _t_x(live, 7)  # after the summon: following a seek there does not summon
        common = {"url": url, "room": "party", "flags": str(flags), "t_a": t_a, "x_a": x_a, "t_b": t_b, "x_b": x_b}
        driver = _run(tmp_path / "driver", "driver", {**common, "store": str(data / "recordings"), "rid": live["id"]},
                      background=True)
        for _ in range(600):
            if (flags / "shared").exists() or driver.poll() is not None:
                break
            import time

            time.sleep(0.2)
        assert (flags / "shared").exists(), driver.communicate(timeout=30)[0][-3000:]
        fol = _run(tmp_path / "follower", "follower", {**common, "store": str(tmp_path / "ann" / "recordings")})
        stdout, _ = driver.communicate(timeout=300)
        from tests.scenes.conftest import parse  # type: ignore[import-not-found]

        drv = parse(driver.returncode, stdout)
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        relay.terminate()
        relay.wait(10)
    # the follower had no copy: it fetched the driver's through the relay, and follows as a member
    assert fol["ids"] == [live["id"]] and fol["role"] == "member" and drv["role"] == "host", (fol, drv)
    # the live watcher is an avatar beside the recorded ones, marked as watching
    assert drv["follower_seen"] and len(drv["live_avatars"]) == 1, drv
    assert drv["live_tags"][0].endswith("(watching)") and len(drv["recorded_avatars"]) >= 1, drv
    assert np.allclose(drv["follower_head"], (0.0, 1.7, -1.4), atol=0.05), drv  # where the follower stands
    # where the driver stood: the follower opened at its paused playhead, with the panel where it was
    assert fol["at_a"] and abs(fol["p1x_a"] - x_a) < 1e-6, fol
    # the driver sought: the follower's playhead and panel followed, and the pixels show it
    assert fol["at_b"] and abs(fol["p1x_b"] - x_b) < 1e-6 and fol["seek_follow_s"] < 2.0, fol
    assert fol["diff_a"] > 20 and fol["diff_b"] > 20, fol
    # played and paused together: within two ticks while playing, and where the driver stopped
    assert fol["saw_playing"], fol
    assert abs(fol["t_pause"] - drv["t_pause"]) < 0.15, (fol["t_pause"], drv["t_pause"])
    start = next(at for at, _, playing in drv["trace"] if playing)
    stop = max(at for at, _, playing in drv["trace"] if playing)
    lag, typical = _lag(drv["trace"], fol["trace"], start + 0.5, stop)
    print(f"follower vs driver playhead while playing: max {lag * 1000:.0f} ms, median {typical * 1000:.0f} ms; "
          f"a seek followed in {fol['seek_follow_s'] * 1000:.0f} ms; {drv['sent']} watch events sent")
    assert lag < 0.25 and typical < 0.1, (lag, typical)
    # the follower cannot drive: its clicks and keys are refused here, its watch event at the relay
    assert fol["refused_notices"], fol
    assert abs(fol["after_try"][0] - fol["t_pause"]) < 0.05 and not fol["after_try"][1], fol
    assert fol["relay_refused"] and fol["relay_refused"].startswith("PermissionDenied"), fol
    assert abs(drv["after_try"][0] - drv["t_pause"]) < 0.05 and not drv["after_try"][1], drv
    # the host handed control: the follower's click on the bar moved the host's playhead and panel
    assert drv["handed"] is True and fol["can_drive"] and fol["role_after"] == "presenter", (drv, fol)
    assert fol["drove"] and drv["followed_follower"], (fol["t_drove"], drv["t_end"])
    assert abs(drv["p1x_end"] - fol["p1x_drove"]) < 1e-6, (drv, fol)
