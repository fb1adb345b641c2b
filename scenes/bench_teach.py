"""`deeproom bench teach`: steering a run and running a class from inside the room.

Last line of output: one JSON object.

- `steer_to_effect_s` (target <= 1.0): a `watch()` run trains the digits CNN (scikit-learn's
  digits, `models.zoo.DigitsCNN`) on a thread; an offscreen app of a member (same process, its
  own relay participant on an embedded relay) opens the run graph's action menu on `conv1` by a
  rendered right-click and picks "Freeze" by a rendered click. Measured from the pick click to the
  end of the training loop's first step after which conv1's weights no longer change (each step
  records a hash of conv1's weights). Median over `repeats` freezes (each followed by an unfreeze
  picked the same way, and weights changing again). Baseline in the same run:
  `steer_to_effect_baseline_s`, the same freeze sent from Python as a "steer" event to the run's
  owner (no menu). `steer_effect_steps`: steps between the click and the effect.
- `step_to_pixels_ms` (target <= 1000): `scenes.bench_live.step_to_pixels()` (a logged step of a
  training script process -> another participant's rendered pixels), with its other fields.
- `class_join_s`: 30 headless participants (plain `RoomClient`s in one process) join a room of
  20 panels, each with its own content blob, until every one of them holds every blob. Baseline:
  `class_join_one_s`, one participant doing the same alone.
- `layout_load_s`: `net.bench_layouts.measure_layout_load()` with a 50-panel version (its
  baseline, one move_panel per panel, as `layout_load_baseline_s`).
- `peak_rss_mb`: the largest peak resident memory of this process and of the measurement processes.

The two app measurements run in processes of their own (Ursina allows one app per process).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# --- steer_to_effect_s -------------------------------------------------------------------------


def steer_to_effect(*, repeats: int = 3, size: tuple[int, int] = (640, 360), step_sleep_s: float = 0.01,
                    timeout: float = 240.0) -> dict[str, Any]:
    """Menu freeze -> first step with frozen weights (see the module's text). Call it in a process
    without an Ursina app."""
    import torch
    from torch import nn

    from deeproom.models.training import watch
    from deeproom.models.training.demo import digits
    from deeproom.models.zoo import DigitsCNN
    from deeproom.net import BackgroundClient
    from deeproom.scenes.app import AppOptions, RoomApp
    from deeproom.scenes.session import RelaySession

    tmp = Path(tempfile.mkdtemp(prefix="deeproom-bench-teach-"))
    host = BackgroundClient(None, room="teach", name="Host", data_dir=str(tmp / "host")).wait_ready(60)
    member = BackgroundClient(host.url, room="teach", name="Ann", data_dir=str(tmp / "ann")).wait_ready(60)
    host.apply({"op": "set_role", "participant_id": member.participant_id, "role": "member"}).result(30)
    app = RoomApp(RelaySession(member), options=AppOptions(offscreen=True, size=size, start_position=(0.0, 1.6, 0.0)))
    app.start()
    torch.manual_seed(0)
    train, val = digits()
    model = DigitsCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run = watch(model, room="teach", server=host.url, optimizer=opt, train_data=(train.x, train.y),
                val_data=(val.x[:64], val.y[:64]), name="run", embed=False, data_dir=str(tmp / "run"))
    steps: list[tuple[int, float, bytes]] = []  # (step, end of step, hash of conv1's weights)
    stop = threading.Event()

    def loop() -> None:
        i, n = 0, len(train.y)
        while not stop.is_set() and not run.stopped:
            a = (i * 32) % (n - 32)
            xb, yb = train.x[a:a + 32], train.y[a:a + 32]
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log(loss=loss)
            w = model.conv1.weight.detach().numpy().tobytes() + model.conv1.bias.detach().numpy().tobytes()
            steps.append((run.step, time.monotonic(), hashlib.sha1(w).digest()))
            i += 1
            time.sleep(step_sleep_s)

    thread = threading.Thread(target=loop, name="bench-teach-train", daemon=True)
    thread.start()
    end = time.monotonic() + timeout

    def wait(cond: Any, limit: float = 60.0) -> bool:
        stop_at = min(end, time.monotonic() + limit)
        while time.monotonic() < stop_at:
            app.step()
            if cond():
                return True
            time.sleep(0.005)
        return False

    def effect_after(t0: float, frozen: bool, limit: float = 30.0) -> tuple[float, int] | None:
        """(seconds, steps) from t0 to the end of the first step whose conv1 equals (frozen) / differs from
        (not frozen) the step before, and stays so for the next 10 steps (frozen)."""
        stop_at = time.monotonic() + limit
        while time.monotonic() < stop_at:
            app.step()
            seen = [s for s in list(steps) if s[1] >= t0]
            before = [s for s in list(steps) if s[1] < t0]
            if before and len(seen) > 12:
                chain = [before[-1], *seen]
                for k in range(1, len(chain) - 10):
                    same = chain[k][2] == chain[k - 1][2]
                    if frozen and same and all(c[2] == chain[k][2] for c in chain[k:k + 11]):
                        return chain[k][1] - t0, k
                    if not frozen and not same:
                        return chain[k][1] - t0, k
            time.sleep(0.005)
        return None

    def pick(action: str) -> float:
        """Rendered right-click on conv1 in the run's graph, rendered click on `action`; the click's time."""
        g = app.panels["run.graph"].content
        names = [nd.name for nd in g.layout.nodes]
        i = names.index("conv1")
        gv = app.panels["run.graph"]
        sx, sy = app.world_to_screen(gv.frame().world(float(g.world[i, 0]), float(g.world[i, 1])))
        app.pointer_context(*app.screen_ray(sx, sy))
        app.step(2)
        row = next(k for k, r in enumerate(app.menus.rows) if r[0] == "action" and r[1].name == action)
        mg = app.menus.geometry
        u, v = mg.row_centre(row)
        mx, my = app.world_to_screen(mg.frame().world(u - mg.size[0] * 0.3, v))
        ray = app.screen_ray(mx, my)
        t0 = time.monotonic()
        app.pointer_press(*ray)
        app.pointer_release()
        return t0

    def drawn(pid: str) -> bool:
        v = app.panels.get(pid)
        return v is not None and v.content is not None and pid not in app.pump.pending_content

    times: list[float] = []
    counts: list[int] = []
    baseline: list[float] = []
    errors: list[str] = []
    try:
        if not wait(lambda: drawn("run.graph"), 120):
            raise TimeoutError("the run's graph panel was not drawn")
        f = app.panels["run.graph"].frame()
        spot = f.centre + f.normal * 1.1
        app.rig.teleport((float(spot[0]), float(spot[1]), float(spot[2])), None)
        app.rig.look_at(tuple(float(c) for c in f.centre))
        app.step(3)
        owner = run.link.participant_id
        for _ in range(repeats):
            t0 = pick("freeze")
            got = effect_after(t0, frozen=True)
            if got is None:
                errors.append("a menu freeze had no effect within 30 s")
                break
            times.append(got[0])
            counts.append(got[1])
            wait(lambda: "conv1" in app.runs.state("run").frozen, 20)
            t1 = pick("unfreeze")
            if effect_after(t1, frozen=False) is None:
                errors.append("a menu unfreeze had no effect within 30 s")
                break
            wait(lambda: "conv1" not in app.runs.state("run").frozen, 20)
            # the baseline: the same freeze as a "steer" event from Python
            t2 = time.monotonic()
            member.send_event("steer", {"cmd": "freeze", "layer": "conv1"}, to=owner).result(30)
            got = effect_after(t2, frozen=True)
            if got is not None:
                baseline.append(got[0])
            member.send_event("steer", {"cmd": "unfreeze", "layer": "conv1"}, to=owner).result(30)
            effect_after(time.monotonic(), frozen=False)
            wait(lambda: "conv1" not in app.runs.state("run").frozen, 20)
    finally:
        stop.set()
        thread.join(10)
        run.close()
        app.close()
        member.close()
        host.close()
    return {
        "steer_to_effect_s": statistics.median(times) if times else None,
        "steer_to_effect_s_max": max(times) if times else None,
        "steer_to_effect_baseline_s": statistics.median(baseline) if baseline else None,
        "steer_effect_steps": counts,
        "steer_step_s": statistics.median([b[1] - a[1] for a, b in itertools.pairwise(steps)])
        if len(steps) > 1 else None,
        "steer_errors": errors,
    }


# --- class_join_s ------------------------------------------------------------------------------


async def _class_join(data_dir: Path, participants: int, panels: int, blob_bytes: int) -> dict[str, Any]:
    from deeproom.net import EmbeddedRelay, RoomClient

    async def join_and_fetch(url: str, i: int) -> None:
        c = RoomClient(url, "class", f"Student {i}")
        await c.connect()
        clients.append(c)
        want: set[str] = set()
        while len(want) < panels:  # the room document arrives with the join; blobs are fetched from it
            want = {r for p in c.room.panels.values() for r in p.content.refs} if c.room else set()
            if len(want) < panels:
                await asyncio.sleep(0.005)
        await asyncio.gather(*(c.get_blob(sha) for sha in want))

    clients: list[Any] = []
    async with EmbeddedRelay(data_dir=data_dir, leave_grace_s=0.5, capacity=participants + 8) as relay, \
            RoomClient(relay.url, "class", "Host", participant_id="host") as host:
        for i in range(panels):
            data = (f"panel {i} ".encode() * (blob_bytes // 8 + 1))[:blob_bytes]
            sha = await host.put_blob(data)
            await host.apply({"op": "add_panel", "panel_id": f"p{i}", "kind": "note", "title": f"Panel {i}",
                              "transform": {"position": [(i % 10) * 1.2, 1.0 + (i // 10), 3.0]},
                              "content": {"source": {"bench": i}, "refs": [sha]}})
        try:
            t0 = time.perf_counter()
            await asyncio.wait_for(join_and_fetch(relay.url, -1), 60)
            one = time.perf_counter() - t0
            t0 = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(join_and_fetch(relay.url, i) for i in range(participants))), 120)
            many = time.perf_counter() - t0
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return {"class_join_s": many, "class_join_one_s": one, "class_participants": participants,
            "class_panels": panels, "class_blob_bytes": blob_bytes}


def class_join(participants: int = 30, panels: int = 20, blob_bytes: int = 64 * 1024) -> dict[str, Any]:
    """Seconds until `participants` new RoomClients all hold every one of `panels` content blobs (call it from
    no event loop)."""
    with tempfile.TemporaryDirectory(prefix="deeproom-bench-class-") as tmp:
        return asyncio.run(_class_join(Path(tmp), participants, panels, blob_bytes))


# --- the command -------------------------------------------------------------------------------


def _child(args: list[str], timeout: float, log: Any) -> dict[str, Any]:
    """Run `python -m ...` and return the JSON object of its last line ({} and a log line on failure)."""
    try:
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"bench teach: {' '.join(args)} ran past {timeout:.0f} s")
        return {}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        log(f"bench teach: {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
        return {}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_bench(*, quick: bool = False, log: Any = print) -> int:
    out: dict[str, Any] = {}
    log("bench teach: steering from the run graph's menu…")
    out.update(_child(["deeproom.scenes.bench_teach", "steer", "2" if quick else "3"], 600, log))
    log("bench teach: a logged step to another participant's pixels…")
    out.update(_child(["deeproom.scenes.bench_live"], 400, log))
    log("bench teach: 30 participants joining a room of 20 panels…")
    out.update(class_join())
    log("bench teach: loading a 50-panel layout version…")
    from deeproom.net.bench_layouts import measure_layout_load

    out.update(measure_layout_load(50, 3 if quick else 5))
    for key in ("steer_to_effect_s", "step_to_pixels_ms"):
        out.setdefault(key, None)
    out["targets"] = {"steer_to_effect_s": 1.0, "step_to_pixels_ms": 1000}
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["peak_rss_mb"] = round(max(me, kids) / 1024, 1)
    print(json.dumps(out), flush=True)
    return 0 if out["steer_to_effect_s"] is not None and out["step_to_pixels_ms"] is not None else 1


if __name__ == "__main__":  # python -m deeproom.scenes.bench_teach [steer [repeats]]
    if len(sys.argv) > 1 and sys.argv[1] == "steer":
        print(json.dumps(steer_to_effect(repeats=int(sys.argv[2]) if len(sys.argv) > 2 else 3)), flush=True)
    else:
        sys.exit(run_bench())
