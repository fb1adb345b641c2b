"""`deeproom bench training`: what watching and steering a run costs, measured in one process.

- overhead_ratio: the same training step with and without the watch instrumentation
  (hooks, per-filter statistics, metric rows, stream events and panel publishing to a
  live relay in its own process, as `deeproom serve` runs), in alternating blocks on two identical models, so machine noise hits
  both; the embedding worker is off here (it is its own thread, measured below), and
  is on for overhead_ratio_with_embedding; overhead_ratio_no_relay is the instrumentation
  alone (offline run), which separates the hooks' cost from the CPU the relay
  connection and the relay process take on a shared machine.
- freeze_epoch_time_ratio: epoch time with conv1 and conv2 frozen (by "steer" commands)
  over unfrozen, alternating, median of each.
- embedding_updates_per_s: streamed-embedding frames per second for 2,000 probe points
  while the run trains and streams to the relay.
- label_to_update_s: a second client sends a label_sphere "steer" event through the
  relay; time until it receives the first moved latent frame (median of several).
- label_accuracy: held-out accuracy of the VAE's classifier at 10, 50, 100 labels.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeproom.models.training import Run, watch
from deeproom.models.training.demo import DemoCNN, Split, digits, jittered


def _batches(train: Split, bs: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(train.x[i : i + bs], train.y[i : i + bs]) for i in range(0, len(train.y) - bs + 1, bs)]


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    loss = torch.nn.functional.cross_entropy(model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _timed_block(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[Any], run: Run | None) -> float:
    t0 = time.perf_counter()
    for xb, yb in batches:
        loss = _step(model, opt, xb, yb)
        if run is not None:
            run.log(loss=loss)
    return time.perf_counter() - t0


@contextlib.contextmanager
def relay_process(data_dir: Path) -> Iterator[str]:
    """A real relay (`deeproom serve --port 0`) in its own process, as a run would stream to; yields its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "deeproom.cli", "--data-dir", str(data_dir), "serve", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "listening on" in line:
                url = line.rsplit(" ", 1)[-1].strip()
                break
        if not url:
            raise RuntimeError("the relay process did not start")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def measure_overhead(train: Split, val: Split, base: Path, *, url: str | None, rounds: int, embed: bool, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    plain, watched = DemoCNN(), DemoCNN()
    watched.load_state_dict(plain.state_dict())
    opt_p = torch.optim.Adam(plain.parameters(), 1e-3)
    opt_w = torch.optim.Adam(watched.parameters(), 1e-3)
    run = watch(watched, room=f"bench-overhead-{int(embed)}", server=url, offline=url is None, optimizer=opt_w, train_data=(train.x, train.y),
                val_data=(val.x, val.y), data_dir=base / "overhead", embed=embed, name="overhead")
    try:
        batches = _batches(train)
        _timed_block(plain, opt_p, batches, None)
        _timed_block(watched, opt_w, batches, run)
        tp, tw = [], []
        for r in range(rounds):
            # Alternate which goes first so drifts in machine load cancel.
            if r % 2:
                tw.append(_timed_block(watched, opt_w, batches, run))
                tp.append(_timed_block(plain, opt_p, batches, None))
            else:
                tp.append(_timed_block(plain, opt_p, batches, None))
                tw.append(_timed_block(watched, opt_w, batches, run))
        n = len(batches)
        frames = run.latest_frame.frame if run.latest_frame else 0
    finally:
        run.close()
    # Median of the paired ratios: each pair ran back to back, so a load spike from the
    # shared machine spoils one pair rather than the whole figure.
    return {"plain_step_ms": 1000 * statistics.median(tp) / n, "watched_step_ms": 1000 * statistics.median(tw) / n,
            "ratio": statistics.median(w / p for w, p in zip(tw, tp, strict=True)), "frames": frames}


def measure_freeze(train: Split, base: Path, *, rounds: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = DemoCNN(width=32)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    run = watch(model, optimizer=opt, offline=True, train_data=(train.x, train.y), data_dir=base / "freeze",
                embed=False, name="freeze")
    batches = _batches(train)
    free, frozen = [], []
    try:
        _timed_block(model, opt, batches, run)
        for _ in range(rounds):
            free.append(_timed_block(model, opt, batches, run))
            run.steer({"cmd": "freeze", "layer": "conv1"})
            run.steer({"cmd": "freeze", "layer": "conv2"})
            run.service()
            frozen.append(_timed_block(model, opt, batches, run))
            run.steer({"cmd": "unfreeze", "layer": "conv1"})
            run.steer({"cmd": "unfreeze", "layer": "conv2"})
            run.service()
    finally:
        run.close()
    return {"unfrozen_epoch_s": statistics.median(free), "frozen_epoch_s": statistics.median(frozen),
            "ratio": statistics.median(frozen) / statistics.median(free)}


def measure_embedding(train: Split, val: Split, base: Path, *, url: str, seconds: float, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = DemoCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    probe = jittered(Split(torch.cat([train.x, val.x]), torch.cat([train.y, val.y])), 2000, seed)
    run = watch(model, room="bench-embedding", server=url, optimizer=opt, train_data=(train.x, train.y), val_data=(val.x, val.y),
                probe=(probe.x, probe.y), data_dir=base / "embedding", name="embedding", embed_layer="fc1")
    times: list[float] = []
    run.frame_listeners.append(lambda f: times.append(f.when))
    batches = _batches(train)
    try:
        # Let the first (from-scratch) layout finish; updates from then on are what streaming costs.
        t_end = time.perf_counter() + 60
        while not times and time.perf_counter() < t_end:
            _timed_block(model, opt, batches[:4], run)
        start_frames, t0 = len(times), time.perf_counter()
        steps0 = run.step
        while time.perf_counter() - t0 < seconds:
            _timed_block(model, opt, batches[:4], run)
        elapsed = time.perf_counter() - t0
        frames = len(times) - start_frames
        compute = run.latest_frame.compute_s if run.latest_frame else float("nan")
        steps = run.step - steps0
    finally:
        run.close()
    return {"updates_per_s": frames / elapsed, "points": len(probe.y), "last_update_compute_s": compute,
            "train_steps_per_s": steps / elapsed}


def measure_labeling(base: Path, *, url: str, repeats: int, seed: int) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    from deeproom.models.training.latent import LabelingLoop, LabelingSession, simulate_labeller
    from deeproom.models.training.link import RelayLink
    from deeproom.net import BackgroundClient

    d = load_digits()
    x = torch.from_numpy(d.images.reshape(-1, 64).astype(np.float32) / 16.0)
    y = torch.from_numpy(d.target)
    # Accuracy as labels grow, from a scripted labeller (spheres around single points).
    acc_session = LabelingSession(x, y, seed=seed)
    acc_session.pretrain(30)
    acc = simulate_labeller(acc_session, [10, 50, 100], seed=seed)
    # Label placed -> first moved frame, end to end through a live relay.
    session = LabelingSession(x, y, seed=seed)
    session.pretrain(10)
    link = RelayLink(url, "bench-labels", "labeling run")
    loop = LabelingLoop(session, link=link, name="labels", rounds=10).start()
    viewer = BackgroundClient(url, room="bench-labels", name="labeller").wait_ready(30)
    latencies: list[float] = []
    rng = np.random.default_rng(seed)
    try:
        owner = link.participant_id
        for _ in range(repeats):
            viewer.drain()
            pos = session.refresh_positions()
            unlabelled = np.flatnonzero(session.labels.numpy() < 0)
            i = int(rng.choice(unlabelled))
            d = np.linalg.norm(pos - pos[i], axis=1)
            d[i] = np.inf
            before = session.n_labelled
            t0 = time.perf_counter()
            viewer.send_event("steer", {"cmd": "label_sphere", "center": pos[i].tolist(),
                                        "radius": max(float(d.min()) * 0.5, 1e-6),
                                        "label": int(session.y_true[i])}, to=owner)
            got = None
            settled = False
            # First moved frame = the latency; then wait for the fine-tuning to finish so the
            # next sphere is placed on a cloud that is no longer moving (as a person would).
            while not settled and time.perf_counter() - t0 < 60:
                for item in viewer.drain():
                    if item.kind == "event" and item.data[0] == "stream":
                        p = item.data[2]
                        if p.get("type") == "error" and p.get("where") == "labeling":
                            settled = True
                        if p.get("labelled", 0) <= before:
                            continue
                        if p.get("type") == "latent_frame" and got is None:
                            got = time.perf_counter() - t0
                        if p.get("type") == "label_accuracy":
                            settled = True
                if not settled:
                    time.sleep(0.002)
            if got is not None:
                latencies.append(got)
    finally:
        viewer.close()
        loop.close()
        link.close()
    return {
        "label_to_update_s": statistics.median(latencies) if latencies else float("nan"),
        "label_to_update_max_s": max(latencies) if latencies else float("nan"),
        "label_updates_seen": len(latencies),
        "label_accuracy": {str(n): round(a, 4) for n, a in acc},
    }


def run_bench(*, quick: bool = False, seed: int = 0, threads: int = 1) -> dict[str, Any]:
    torch.set_num_threads(threads)
    train, val = digits(seed)
    with tempfile.TemporaryDirectory(prefix="deeproom-bench-training-") as tmp:
        base = Path(tmp)
        with relay_process(base / "relay") as url:
            over = measure_overhead(train, val, base, url=url, rounds=4 if quick else 10, embed=False, seed=seed)
            over_off = measure_overhead(train, val, base / "o", url=None, rounds=4 if quick else 8, embed=False, seed=seed)
            over_emb = measure_overhead(train, val, base / "e", url=url, rounds=3 if quick else 6, embed=True, seed=seed)
            freeze = measure_freeze(train, base, rounds=3 if quick else 6, seed=seed)
            emb = measure_embedding(train, val, base, url=url, seconds=4.0 if quick else 10.0, seed=seed)
            lab = measure_labeling(base, url=url, repeats=3 if quick else 7, seed=seed)
    return {
        "bench": "training",
        "overhead_ratio": round(over["ratio"], 4),
        "plain_step_ms": round(over["plain_step_ms"], 3),
        "watched_step_ms": round(over["watched_step_ms"], 3),
        "overhead_ratio_no_relay": round(over_off["ratio"], 4),
        "overhead_ratio_with_embedding": round(over_emb["ratio"], 4),
        "freeze_epoch_time_ratio": round(freeze["ratio"], 4),
        "unfrozen_epoch_s": round(freeze["unfrozen_epoch_s"], 4),
        "frozen_epoch_s": round(freeze["frozen_epoch_s"], 4),
        "embedding_updates_per_s": round(emb["updates_per_s"], 2),
        "embedding_points": emb["points"],
        "embedding_update_compute_s": round(emb["last_update_compute_s"], 4),
        "train_steps_per_s_while_embedding": round(emb["train_steps_per_s"], 1),
        "label_to_update_s": round(lab["label_to_update_s"], 4),
        "label_to_update_max_s": round(lab["label_to_update_max_s"], 4),
        "label_updates_seen": lab["label_updates_seen"],
        "label_accuracy": lab["label_accuracy"],
        "targets": {"overhead_ratio": "<= 1.10", "embedding_updates_per_s": ">= 5", "label_to_update_s": "<= 1.0"},
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "quick": quick,
    }
