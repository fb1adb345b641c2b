"""From a logged step to pixels on another participant's screen (for `deeproom bench teach`).

`step_to_pixels()` builds what a class sees: an embedded relay (127.0.0.1) and an offscreen app
of a participant looking at the run's metrics panel in this process, and a training script in
its own process — a `watch()` run training a small CNN, streaming every `stream_every_s` and
printing when it logged each step (CLOCK_MONOTONIC: one clock for both processes). Each time the app draws newer steps (`samples` times), it takes the time from the moment
the run logged the oldest of them (`run.log`; it waited longest) to the end of the first frame
that draws it (the worker's repaint shown and rendered) — and, as `..._newest_ms`, the same for
the newest, split into `..._to_app_ms` (logged until the app's frame drains the delta: the
run's link, the relay, the client) and `..._in_app_ms` (drained until drawn: the worker's repaint
and frames) — and checks that the frame's pixels differ from the frame before.
The time includes the run's stream interval (a step waits up to `stream_every_s` to be sent),
the relay, the app's once-per-frame drain, the worker's repaint and one frame.

Ursina allows one app per process: call it in a process that has no app yet.
`measure_step_to_pixels(app, panel_id, log_step)` (scenes/live_runs.py) is the same
measurement for an app and a run the caller already has.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from deeproom.net.procs import stop_process


def step_to_pixels(*, samples: int = 8, size: tuple[int, int] = (960, 540), stream_every_s: float = 0.25,
                   timeout: float = 180.0) -> dict[str, Any]:
    """{"step_to_pixels_ms": median over the drawn batches' oldest steps, "step_to_pixels_ms_max",
    "step_to_pixels_newest_ms" (median over their newest steps), "step_to_pixels_samples",
    "step_to_pixels_pixels_changed": share of samples whose frame changed}; the ms are None
    when nothing was drawn within `timeout` seconds."""
    import numpy as np

    from deeproom.net import BackgroundClient
    from deeproom.scenes.app import AppOptions, RoomApp
    from deeproom.scenes.session import RelaySession

    tmp = Path(tempfile.mkdtemp(prefix="deeproom-step-to-pixels-"))
    host = BackgroundClient(None, room="teach", name="Host", data_dir=str(tmp / "host")).wait_ready(60)
    viewer = BackgroundClient(host.url, room="teach", name="Student", data_dir=str(tmp / "student")).wait_ready(60)
    app = RoomApp(RelaySession(viewer), options=AppOptions(offscreen=True, size=size))
    app.start()
    logged: dict[float, float] = {}
    script = TRAIN_SCRIPT.format(url=host.url, every=float(stream_every_s), data=str(tmp / "run"))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)

    def read() -> None:  # "<step> <monotonic time>" per logged step (one clock for all processes)
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 2:
                try:
                    logged[float(parts[0])] = float(parts[1])
                except ValueError:
                    continue

    thread = threading.Thread(target=read, name="bench-steps", daemon=True)
    thread.start()
    pid = "run.metrics"
    times: list[float] = []
    changed: list[bool] = []
    frame_s: list[float] = []
    to_app: list[float] = []  # newest step: logged -> drained by the app's frame
    in_app: list[float] = []  # drained -> drawn and rendered
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not (pid in app.panels and app.runs.drawn.get(pid)):
            app.step()
            time.sleep(0.005)
        if pid in app.panels and app.rig is not None and hasattr(app.rig, "look_at"):
            f = app.panels[pid].frame()
            spot = f.centre + f.normal * 1.4
            app.rig.teleport((float(spot[0]), float(spot[1]), float(spot[2])), None)
            app.rig.look_at(tuple(float(c) for c in f.centre))
        app.step(2)
        before = app.screenshot()
        last = prev = app.runs.drawn.get(pid, (-1.0, 0.0))[0]
        newest: list[float] = []
        while len(times) < samples and time.monotonic() < end:
            t_frame = time.monotonic()
            app.step()
            frame_s.append(time.monotonic() - t_frame)
            drawn = app.runs.drawn.get(pid)
            if drawn is not None and drawn[0] > last:
                rendered = time.monotonic()
                last = drawn[0]
                at = logged.get(last)
                now_img = app.screenshot()
                changed.append(bool((np.abs(now_img[..., :3].astype(int) - before[..., :3].astype(int)) > 8).any()))
                before = now_img
                got = app.runs.arrived.get("run")
                if got is not None and got[0] == last and at is not None:
                    to_app.append(got[1] - at)
                    in_app.append(rendered - got[1])
                first = min((st for st in list(logged) if prev < st <= last), default=None)
                if at is not None and first is not None:
                    times.append(rendered - logged[first])  # the batch's oldest step waited longest
                    newest.append(rendered - at)
                prev = last
            time.sleep(0.002)
    finally:
        stop_process(proc, wait_s=20)
        thread.join(10)
        app.close()
        viewer.close()
        host.close()
    ms = [t * 1000.0 for t in times]
    return {
        "step_to_pixels_ms": statistics.median(ms) if ms else None,
        "step_to_pixels_ms_max": max(ms) if ms else None,
        "step_to_pixels_newest_ms": statistics.median(newest) * 1000.0 if newest else None,
        "step_to_pixels_samples": len(ms),
        "step_to_pixels_pixels_changed": (sum(changed) / len(changed)) if changed else None,
        "step_to_pixels_to_app_ms": statistics.median(to_app) * 1000.0 if to_app else None,
        "step_to_pixels_in_app_ms": statistics.median(in_app) * 1000.0 if in_app else None,
        "step_to_pixels_frame_ms": statistics.median(frame_s) * 1000.0 if frame_s else None,
        "step_to_pixels_stream_every_s": stream_every_s,
    }


TRAIN_SCRIPT = """
import sys, time, torch
from torch import nn
from deeproom.models.training import watch
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
run = watch(model, room="teach", server="{url}", optimizer=opt, name="run", embed=False,
            stream_every_s={every}, data_dir="{data}")
i = 0
while True:
    xb, yb = x[(i * 16) % 64:(i * 16) % 64 + 16], y[(i * 16) % 64:(i * 16) % 64 + 16]
    loss = nn.functional.cross_entropy(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    run.log(loss=loss)
    print(run.step, time.monotonic(), flush=True)
    i += 1
    time.sleep(0.02)
"""
"""The training script of the benchmark (its own process, as a user's script would be)."""


if __name__ == "__main__":  # python -m deeproom.scenes.bench_live
    import json

    print(json.dumps(step_to_pixels()))
