"""A watched training run: metrics, layer statistics and a streamed embedding into a room, steered from it.

`watch(model, optimizer=..., room=...)` hooks a user's own training loop: forward
hooks sample per-filter activation magnitudes, optimizer step hooks sample
per-filter gradient magnitudes, keep frozen filters unchanged and give steering
commands a safe point to run at (between two steps, on the training thread). Scalars
come in through `run.log(...)` and `run.epoch_end(...)`. Small deltas go out as
"stream" events a few times a second; full panel contents (metrics, confusion
matrix, latent cloud) are published every few seconds and at the end, so late
joiners see everything. The embedding runs on a worker thread with its own copy of
the model, so the training loop only pays for copying the weights.
"""

from __future__ import annotations

import base64
import copy
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn

from deeproom.models.training import steering as st
from deeproom.models.training.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from deeproom.models.training.errors import CheckpointError, SteerError, TrainingError
from deeproom.models.training.link import RoomLink
from deeproom.models.training.stream_embed import StreamedEmbedding

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Answer = Callable[[bool, str], None]
"""Told whether a steering command worked, with what it says (the engine's action report)."""
MAX_STREAM_FILTERS = 512


@dataclass(frozen=True)
class WatchOptions:
    """How a run samples, streams and publishes."""

    name: str = "run"
    """Run name: panel ids start with it (letters, digits, _ . : -)."""
    stats_every: int = 10
    """Sample per-filter activation and gradient magnitudes every this many steps."""
    stream_every_s: float = 0.25
    """Send collected metric rows and statistics at most this often."""
    publish_every_s: float = 5.0
    """Publish full panel contents at most this often (and at each epoch end and close)."""
    embed: bool = True
    """Stream an embedding of `embed_layer`'s activations on the probe points."""
    embed_dims: int = 2
    """2 or 3."""
    embed_filters: str | None = None
    """Also stream an embedding of this layer's filters (weights per output channel), as ReVACNN does."""
    embed_min_interval_s: float = 0.0
    """Least time between two embedding updates (0: as fast as the worker goes)."""
    probe_size: int = 2000
    """At most this many probe points are embedded."""
    batch_size: int = 64
    """Batch size for retraining on a selection."""
    good_state_every: int = 50
    """Keep an in-memory copy of the last good weights every this many steps (restored on NaN)."""
    max_rows: int = 20_000
    """Metric rows kept; older rows are thinned beyond this."""
    seed: int = 0


@dataclass
class Probe:
    """The points whose embedding is streamed: images, true labels, optional thumbnails."""

    x: torch.Tensor
    y: torch.Tensor
    thumbnails: np.ndarray | None = None


@dataclass
class EmbeddingFrame:
    """One streamed embedding update."""

    frame: int
    step: int
    positions: np.ndarray
    predictions: np.ndarray
    confidence: np.ndarray
    compute_s: float
    when: float = field(default_factory=time.perf_counter)


class Run:
    """One watched training run. Use `watch(...)` to make one."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        link: RoomLink | None = None,
        train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        probe: Probe | None = None,
        loss_fn: LossFn | None = None,
        classes: list[str] | None = None,
        embed_layer: str | None = None,
        checkpoint_dir: str | Path | None = None,
        options: WatchOptions | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.link = link
        self.options = options or WatchOptions()
        self.name = self.options.name
        self.train_data = train_data
        self.val_data = val_data
        self.loss_fn: LossFn = loss_fn or nn.functional.cross_entropy
        self.classes = classes
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self._on_close = on_close
        self.freezer = st.Freezer(model)
        self.layers = list(st.trainable_layers(model))
        self.step = 0
        self.epoch = 0
        self.status = "running"
        self.errors: list[str] = []
        self.events: list[dict[str, Any]] = []  # what the run reported (also streamed)
        self._lock = threading.RLock()
        self._rows: dict[int, dict[str, float]] = {}
        self._pending_rows: list[dict[str, float]] = []
        self._filter_act: dict[str, torch.Tensor] = {}
        self._filter_grad: dict[str, torch.Tensor] = {}
        self._stats_dirty = False
        self._sample_now = True
        self._commands: list[tuple[str | None, dict[str, Any], Answer | None]] = []
        self._at_safe_point: list[Callable[[], None]] = []
        self.engine: Any = None
        """The run's engine (`deeproom.models.training.hosting.RunEngine`) when it hosts its panels in a room."""
        self._commands_lock = threading.Lock()
        self._paused = False
        self._stopped = False
        self._in_service = False
        self._closed = False
        self._last_stream = 0.0
        self._last_publish = 0.0
        self._epoch_started = time.perf_counter()
        self._good_state: dict[str, Any] | None = None
        self._confusion: np.ndarray | None = None
        self._checkpoints_mem: dict[str, Checkpoint] = {}
        self._hooks: list[Any] = []
        # embedding
        self.probe = probe
        self.embed_layer = embed_layer or self._default_embed_layer()
        self.latest_frame: EmbeddingFrame | None = None
        self._cloud_published = False
        self._filters_published_step = -1
        self.frame_listeners: list[Callable[[EmbeddingFrame], None]] = []
        self._worker: _EmbeddingWorker | None = None
        if self.options.embed and probe is not None and self.embed_layer is not None:
            self._worker = _EmbeddingWorker(self, copy.deepcopy(model))
        self._install_hooks()
        self._keep_good_state()
        if self._worker is not None:
            self._worker.start()
            self._worker.offer(self._weights())
        self._report({"type": "status", "state": "running", "layers": self.layers[:200], "embed_layer": self.embed_layer})

    # ------------------------------------------------------------------ user API
    @property
    def stopped(self) -> bool:
        """True once someone in the room asked the run to stop (or the run was closed)."""
        return self._stopped

    @property
    def paused(self) -> bool:
        return self._paused

    def log(self, **scalars: float) -> None:
        """Record scalars (loss, acc, ...) at the current step; also a safe point for steering.

        Without an optimizer given to `watch`, each call with `loss` counts as one step.
        """
        values: dict[str, float] = {}
        for key, value in scalars.items():
            v = float(value.detach().item()) if isinstance(value, torch.Tensor) else float(value)
            values[key] = v
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            self._fault_nan(bad, values)
            values = {k: v for k, v in values.items() if k not in bad}
        if self.optimizer is None and "loss" in scalars:
            self.step += 1
        if self.optimizer is not None and self.optimizer.param_groups:
            values.setdefault("lr", float(self.optimizer.param_groups[0]["lr"]))
        self._record(self.step, values)
        if self.optimizer is None:
            self._service()
        else:
            self._flush_if_due()

    def epoch_end(self, **scalars: float) -> dict[str, float]:
        """Close an epoch: records its time, validation accuracy (if val_data) and the confusion matrix."""
        now = time.perf_counter()
        values: dict[str, float] = {"epoch_time": now - self._epoch_started, "epoch": float(self.epoch)}
        for key, value in scalars.items():
            values[key] = float(value)
        if self.val_data is not None:
            acc, matrix = self.evaluate(*self.val_data)
            values.setdefault("val_acc", acc)
            with self._lock:
                self._confusion = matrix
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        self._record(self.step, values)
        self.epoch += 1
        self._flush(force_publish=True)
        self._service()
        self._epoch_started = time.perf_counter()
        return values

    def steer(self, payload: dict[str, Any], sender: str | None = None, on_done: Answer | None = None) -> None:
        """Queue a steering command (what a "steer" event carries); it runs at the next safe point,
        then `on_done(ok, message)` is called (on the training thread)."""
        with self._commands_lock:
            self._commands.append((sender, payload, on_done))

    def at_safe_point(self, fn: Callable[[], None]) -> None:
        """Call `fn` on the training thread between two steps (at once when the run is closed: its
        model no longer trains). The engine takes weight snapshots for analyses this way."""
        if self._closed:
            fn()
            return
        with self._commands_lock:
            self._at_safe_point.append(fn)
        if self._closed:  # closed meanwhile: nobody else will run it
            self._run_safe_point_calls()

    def _run_safe_point_calls(self) -> None:
        with self._commands_lock:
            calls, self._at_safe_point = self._at_safe_point, []
        for fn in calls:
            try:
                fn()
            except Exception:  # one failed snapshot must not break training
                log.exception("safe-point call failed")

    def service(self) -> None:
        """Run queued steering commands now (the training loop's steps do this on their own)."""
        self._service()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> tuple[float, np.ndarray]:
        """Accuracy and confusion matrix (rows true, columns predicted) on (x, y)."""
        preds = self.predict(x, batch)[0]
        n_cls = int(max(int(y.max()) + 1 if len(y) else 0, len(self.classes or []), int(preds.max()) + 1 if len(preds) else 0))
        matrix = np.zeros((n_cls, n_cls), np.int32)
        np.add.at(matrix, (y.numpy(), preds.numpy()), 1)
        acc = float((preds == y).float().mean()) if len(y) else 0.0
        return acc, matrix

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted class, confidence) for each row of x, in eval mode, without sampling statistics."""
        was_training = self.model.training
        sample, self._sample_now = self._sample_now, False
        self.model.eval()
        try:
            outs = [torch.softmax(self.model(x[i : i + batch]), 1) for i in range(0, len(x), batch)]
        finally:
            self.model.train(was_training)
            self._sample_now = sample
        probs = torch.cat(outs) if outs else torch.zeros((0, 1))
        conf, pred = probs.max(1)
        return pred, conf

    def save_checkpoint(self, name: str) -> Checkpoint:
        """Save weights, optimizer state and the current embedding under `name` (atomically on disk)."""
        arrays: dict[str, torch.Tensor] = {}
        frame = self.latest_frame
        if frame is not None:
            arrays["positions"] = torch.from_numpy(frame.positions.copy())
        ckpt = Checkpoint(
            model={k: v.detach().clone() for k, v in self.model.state_dict().items()},
            optimizer=copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None,
            scalars={"step": self.step, "epoch": self.epoch},
            arrays=arrays,
        )
        if self.checkpoint_dir is not None:
            save_checkpoint(self.checkpoint_dir / f"{name}.pt", ckpt)
        self._checkpoints_mem[name] = ckpt
        return ckpt

    def load_checkpoint(self, name: str) -> Checkpoint:
        if name in self._checkpoints_mem:
            return self._checkpoints_mem[name]
        if self.checkpoint_dir is not None and (self.checkpoint_dir / f"{name}.pt").is_file():
            return load_checkpoint(self.checkpoint_dir / f"{name}.pt")
        raise CheckpointError(f"no checkpoint named {name!r}; saved: {sorted(self.checkpoint_names())}")

    def checkpoint_names(self) -> list[str]:
        names = set(self._checkpoints_mem)
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
            names |= {p.stem for p in self.checkpoint_dir.glob("*.pt")}
        return sorted(names)

    def restore_checkpoint(self, name: str) -> None:
        ckpt = self.load_checkpoint(name)
        try:
            self.model.load_state_dict(ckpt.model)
            if self.optimizer is not None and ckpt.optimizer is not None:
                self.optimizer.load_state_dict(ckpt.optimizer)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {name!r} does not fit this model: {exc}") from exc
        self.freezer.resnapshot()
        self._keep_good_state()

    def metrics_table(self) -> dict[str, np.ndarray]:
        """The metric series as aligned float32 arrays keyed by name ("step" first; NaN where not logged)."""
        with self._lock:
            steps = sorted(self._rows)
            names: list[str] = []
            for s in steps:
                for k in self._rows[s]:
                    if k not in names:
                        names.append(k)
            out = {"step": np.asarray(steps, np.float32)}
            for k in names:
                out[k] = np.asarray([self._rows[s].get(k, np.nan) for s in steps], np.float32)
            return out

    def close(self, error: BaseException | None = None) -> None:
        """Stop the embedding worker, publish the final state, leave the room. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stopped = True
        if error is not None:
            self.status = "failed"
            self._report({"type": "error", "where": "script", "message": f"{type(error).__name__}: {error}"})
        elif self.status == "running":
            self.status = "finished"
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self._worker is not None:
            self._worker.stop()
        self._report({"type": "status", "state": self.status})
        self._run_safe_point_calls()  # snapshots asked for before the close (the model is still now)
        try:
            self._flush(force_publish=True)
            if self.link is not None:
                self.link.flush(10.0)
        finally:
            if self.engine is not None:
                self.engine.close()
            if self.link is not None:
                self.link.close()
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        # A script that raises keeps its last good state in the room: the error is reported, the
        # panels keep the last published content plus status "failed".
        self.close(ev if isinstance(ev, Exception) else None)

    # ------------------------------------------------------------------ hooks
    def _default_embed_layer(self) -> str | None:
        # The input of the last layer with parameters (its penultimate representation) is the usual
        # choice; we hook outputs, so take the last trainable layer before the final one.
        layers = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
        if len(layers) >= 2:
            return layers[-2]
        return layers[-1] if layers else None

    def _install_hooks(self) -> None:
        for name in self.layers:
            module = self.freezer.module(name)
            if isinstance(getattr(module, "weight", None), nn.Parameter):
                self._hooks.append(module.register_forward_hook(self._make_act_hook(name)))
        if self.optimizer is not None:
            self._hooks.append(self.optimizer.register_step_pre_hook(self._pre_step))
            self._hooks.append(self.optimizer.register_step_post_hook(self._post_step))

    def _make_act_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._sample_now or not module.training or not isinstance(output, torch.Tensor) or output.dim() < 2:
                return
            with torch.no_grad():
                dims = [0, *range(2, output.dim())]
                self._filter_act[name] = output.detach().abs().mean(dim=dims)[:MAX_STREAM_FILTERS]
                self._stats_dirty = True

        return hook

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.freezer.before_step()
        if self._sample_now:
            with torch.no_grad():
                for name in self.layers:
                    w = getattr(self.freezer.module(name), "weight", None)
                    if isinstance(w, torch.Tensor) and w.grad is not None and w.dim() >= 1:
                        g = w.grad.detach()
                        self._filter_grad[name] = g.reshape(g.shape[0], -1).norm(dim=1)[:MAX_STREAM_FILTERS]
                    elif name in self._filter_grad:
                        self._filter_grad[name] = torch.zeros_like(self._filter_grad[name])

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.freezer.after_step()
        self.step += 1
        if self._sample_now:
            self._record_stats()
        every = max(1, self.options.stats_every)
        self._sample_now = self.step % every == 0
        if self.step % max(1, self.options.good_state_every) == 0:
            self._keep_good_state()
        if self._worker is not None and self._worker.wants_weights():
            self._worker.offer(self._weights())
        if not self._in_service:
            self._service()

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _keep_good_state(self) -> None:
        self._good_state = {
            "model": self._weights(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
            "step": self.step,
        }

    def _record_stats(self) -> None:
        row: dict[str, float] = {}
        for name, act in self._filter_act.items():
            row[f"act:{name}"] = float(act.mean())
        for name, grad in self._filter_grad.items():
            row[f"grad:{name}"] = float(grad.mean())
        if row:
            self._record(self.step, row, pending=False)

    def _record(self, step: int, values: dict[str, float], pending: bool = True) -> None:
        if not values:
            return
        with self._lock:
            self._rows.setdefault(step, {}).update(values)
            if pending:
                self._pending_rows.append({"step": float(step), **values})
            if len(self._rows) > self.options.max_rows:
                self._thin_rows()

    def _thin_rows(self) -> None:
        # Keep every row that carries an epoch-level value, and every other one of the rest.
        steps = sorted(self._rows)
        for i, s in enumerate(steps[:-100]):
            if i % 2 and "epoch_time" not in self._rows[s] and "val_acc" not in self._rows[s]:
                del self._rows[s]

    # ------------------------------------------------------------------ faults
    def _fault_nan(self, bad: list[str], values: dict[str, float]) -> None:
        good = self._good_state
        restored = False
        if good is not None and "loss" in bad:
            self.model.load_state_dict(good["model"])
            if self.optimizer is not None and good["optimizer"] is not None:
                self.optimizer.load_state_dict(good["optimizer"])
            self.freezer.resnapshot()
            restored = True
        message = f"non-finite {', '.join(bad)} at step {self.step}"
        if restored and good is not None:
            message += f"; weights restored to the last good state (step {good['step']})"
        self._report({"type": "error", "where": "nan", "message": message, "step": self.step})

    # ------------------------------------------------------------------ steering
    def _service(self) -> None:
        if self._in_service or self._closed:
            return
        self._in_service = True
        try:
            while True:
                self._run_commands()
                self._flush_if_due()
                if not self._paused or self._stopped:
                    break
                time.sleep(0.02)
        finally:
            self._in_service = False

    def _run_commands(self) -> None:
        incoming: list[tuple[str | None, dict[str, Any], Answer | None]] = []
        if self.link is not None:
            try:
                incoming.extend((s, p, None) for s, p in self.link.poll())
            except Exception as exc:  # a broken link must not break training
                log.debug("poll failed: %s", exc)
        with self._commands_lock:
            incoming.extend(self._commands)
            self._commands.clear()
        for sender, payload, on_done in incoming:
            self._apply(sender, payload, on_done)
        self._run_safe_point_calls()

    def _apply(self, sender: str | None, payload: Any, on_done: Answer | None = None) -> None:
        cmd_name = payload.get("cmd") if isinstance(payload, dict) else None
        try:
            cmd = st.parse_steer(payload)
            result = self._execute(cmd)
        except (SteerError, CheckpointError, TrainingError) as exc:
            self._report({"type": "error", "where": "steer", "cmd": str(cmd_name)[:40], "message": str(exc)}, to=None)
            if on_done is not None:
                on_done(False, str(exc))
            return
        except Exception as exc:  # a command that trips over the user's model must not end their run
            log.exception("steer command %s failed", cmd_name)
            self._report({"type": "error", "where": "steer", "cmd": str(cmd_name)[:40],
                          "message": f"{type(exc).__name__}: {exc}"}, to=None)
            if on_done is not None:
                on_done(False, f"{type(exc).__name__}: {exc}")
            return
        self._report({"type": "steered", "cmd": str(cmd_name), "by": sender, **result})
        if on_done is not None:
            on_done(True, _says(str(cmd_name), result))
        if isinstance(cmd, st.SaveCheckpoint | st.Freeze | st.Unfreeze) and self.engine is not None:
            self.publish()  # the panels' sources (checkpoint choices, frozen layers) follow at once

    def _execute(self, cmd: st.SteerCommand) -> dict[str, Any]:
        if isinstance(cmd, st.Freeze | st.Unfreeze):
            if cmd.filters is not None and self.optimizer is None:
                raise SteerError("freezing single filters needs the optimizer: pass optimizer= to watch()")
            (self.freezer.freeze if isinstance(cmd, st.Freeze) else self.freezer.unfreeze)(cmd.layer, cmd.filters)
            return {"frozen": self.freezer.describe()}
        if isinstance(cmd, st.Pause):
            self._paused = True
            self.status = "paused"
            return {"state": "paused"}
        if isinstance(cmd, st.Resume):
            self._paused = False
            self.status = "running"
            return {"state": "running"}
        if isinstance(cmd, st.Stop):
            self._stopped = True
            self._paused = False
            self.status = "stopped"
            return {"state": "stopped"}
        if isinstance(cmd, st.SetLearningRate):
            if self.optimizer is None:
                raise SteerError("changing the learning rate needs the optimizer: pass optimizer= to watch()")
            for g in self.optimizer.param_groups:
                g["lr"] = cmd.lr
            return {"lr": cmd.lr}
        if isinstance(cmd, st.Retrain):
            return self.retrain(cmd)
        if isinstance(cmd, st.SaveCheckpoint):
            self.save_checkpoint(cmd.name)
            return {"name": cmd.name}
        if isinstance(cmd, st.RestoreCheckpoint):
            self.restore_checkpoint(cmd.name)
            return {"name": cmd.name}
        if isinstance(cmd, st.CompareCheckpoints):
            return self.compare_checkpoints(cmd.a, cmd.b)
        if isinstance(cmd, st.EmbedLayer):
            self.freezer.module(cmd.layer)  # raises if there is no such layer
            self.embed_layer = cmd.layer
            if self._worker is not None:
                self._worker.set_layer(cmd.layer)
            return {"layer": cmd.layer}
        raise SteerError(f"steer command {cmd!r} is not handled")

    def select(self, cmd: st.Retrain) -> np.ndarray:
        """Probe point ids chosen by a retrain command."""
        if self.probe is None:
            raise SteerError("this run has no probe points to select from (pass probe= or train_data= to watch())")
        n = len(self.probe.y)
        if cmd.select == "ids":
            ids = np.asarray(cmd.ids, np.int64)
            if (ids >= n).any():
                raise SteerError(f"point ids must be in 0..{n - 1}; got {int(ids.max())}")
            return np.unique(ids)
        pred, conf = self.predict(self.probe.x)
        mask = pred != self.probe.y if cmd.select == "misclassified" else conf < cmd.threshold
        return np.flatnonzero(mask.numpy())

    def retrain(self, cmd: st.Retrain) -> dict[str, Any]:
        """Train `cmd.steps` steps on the selected probe points, each batch filled with random training samples."""
        if self.optimizer is None:
            raise SteerError("retraining needs the optimizer: pass optimizer= to watch()")
        if self.probe is None:
            raise SteerError("this run has no probe points to select from")
        ids = self.select(cmd)
        if len(ids) == 0:
            raise SteerError(f"the selection ({cmd.select}) has zero points; nothing to retrain on")
        fill_x, fill_y = self.train_data if self.train_data is not None else (self.probe.x, self.probe.y)
        g = torch.Generator().manual_seed(self.options.seed + self.step)
        bs = self.options.batch_size
        before_wrong = int((self.predict(self.probe.x[ids])[0] != self.probe.y[ids]).sum())
        was_training = self.model.training
        self.model.train()
        sel_t = torch.from_numpy(ids)
        for _ in range(cmd.steps):
            if len(sel_t) > bs:
                chosen = sel_t[torch.randperm(len(sel_t), generator=g)[:bs]]
            else:
                chosen = sel_t
            n_fill = max(0, bs - len(chosen))
            fill = torch.randint(0, len(fill_y), (n_fill,), generator=g)
            x = torch.cat([self.probe.x[chosen], fill_x[fill]])
            y = torch.cat([self.probe.y[chosen], fill_y[fill]])
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.model(x), y)
            if not torch.isfinite(loss):
                self._fault_nan(["loss"], {})
                break
            loss.backward()
            self.optimizer.step()
        self.model.train(was_training)
        after_wrong = int((self.predict(self.probe.x[ids])[0] != self.probe.y[ids]).sum())
        return {"points": len(ids), "wrong_before": before_wrong, "wrong_after": after_wrong, "steps": cmd.steps}

    def compare_checkpoints(self, a: str, b: str) -> dict[str, Any]:
        """How two checkpoints differ: a `checkpoint_diff` stream event (one layer's activation and
        filter change, embedding movement, with probe points) and a panel `<run>.diff.<a>.<b>` (kind
        metrics: per-layer relative weight change, the filters that changed most and, with validation
        data or probe points, each checkpoint's accuracy and how many predictions changed).
        Computed on copies of the model, between two steps; returns the panel id."""
        from deeproom.models.tasks import checkpoint_difference

        ca, cb = self.load_checkpoint(a), self.load_checkpoint(b)
        if self.probe is not None:
            from deeproom.models.training.compare import CheckpointDiff

            layer = self.embed_layer or self.layers[0]
            summary = CheckpointDiff(self.model, layer).compute(self.probe.x[:512], ca, cb).summary()
            self._report({"type": "checkpoint_diff", "a": a, "b": b, **summary})
        x, y = self.val_data if self.val_data is not None else (
            (self.probe.x, self.probe.y) if self.probe is not None else (None, None))
        try:
            blob = checkpoint_difference(ca.model, cb.model, x=x, y=y, names=(a, b), template=self.model)
        except Exception as exc:
            raise SteerError(f"checkpoints {a!r} and {b!r} cannot be compared: {exc}") from exc
        panel = f"{self.name}.diff.{a}.{b}"[:64]
        if self.link is not None:
            from deeproom.content import decode_content

            meta, arrays = decode_content(blob)
            preds = meta.get("predictions") or {}
            title = f"{self.name}: {a} → {b} weights"
            if preds.get("accuracy_a") is not None:
                title += (f" · acc {preds['accuracy_a']:.3f} → {preds['accuracy_b']:.3f}"
                          f" · {100 * preds['changed']:.0f}% predictions changed")
            self.link.publish(panel, "metrics", title, {**self.source("checkpoint_difference"), "a": a, "b": b},
                              lambda: (dict(meta), dict(arrays)))
        return {"a": a, "b": b, "panel": panel}

    # ------------------------------------------------------------------ streaming and publishing
    def _report(self, event: dict[str, Any], to: str | None = None) -> None:
        event = {"run": self.name, **event}
        self.events.append(event)
        if event.get("type") == "error":
            self.errors.append(str(event.get("message")))
            log.warning("run %s: %s", self.name, event.get("message"))
        if self.link is not None:
            self.link.stream(event, to=to)

    def _flush_if_due(self) -> None:
        now = time.perf_counter()
        if now - self._last_stream >= self.options.stream_every_s:
            self._flush(force_publish=now - self._last_publish >= self.options.publish_every_s)

    def _flush(self, force_publish: bool = False) -> None:
        now = time.perf_counter()
        self._last_stream = now
        with self._lock:
            rows, self._pending_rows = self._pending_rows, []
        if self.link is None:
            if force_publish:
                self._last_publish = now
            return
        if rows:
            self.link.stream({"run": self.name, "type": "metrics", "rows": rows[-500:]})
        if self._stats_dirty:
            self._stats_dirty = False
            layers = {}
            for name in self.layers:
                entry: dict[str, list[float]] = {}
                if name in self._filter_act:
                    entry["act"] = [round(float(v), 5) for v in self._filter_act[name].tolist()]
                if name in self._filter_grad:
                    entry["grad"] = [round(float(v), 6) for v in self._filter_grad[name].tolist()]
                if entry:
                    layers[name] = entry
            self.link.stream({"run": self.name, "type": "layer_stats", "step": self.step, "layers": layers})
        if force_publish:
            self._last_publish = now
            self.publish()

    def source(self, what: str) -> dict[str, Any]:
        """The panel content source: says which run feeds it and whom to send "steer" events to."""
        return {
            "kind": "live_training",
            "run": self.name,
            "what": what,
            "owner": self.link.participant_id if self.link is not None else None,
            "engine": self.link.participant_id if self.link is not None else None,  # whom actions go to
            "status": self.status,
            "step": self.step,
            "epoch": self.epoch,
            "layers": self.layers[:100],
            "frozen": self.freezer.describe(),
            "embed_layer": self.embed_layer,
            "checkpoints": self.checkpoint_names()[:50],
            **(self.engine.declare(what) if self.engine is not None else {}),
        }

    def publish(self) -> None:
        """Publish the full contents of the run's panels (newest wins; done off the training thread)."""
        if self.link is None:
            return
        self.link.publish(f"{self.name}.metrics", "metrics", f"{self.name}: training", self.source("metrics"), self.metrics_content)
        if self._confusion is not None:
            self.link.publish(f"{self.name}.confusion", "confusion_matrix", f"{self.name}: confusion matrix",
                              self.source("confusion_matrix"), self.confusion_content)
        if self.latest_frame is not None:
            self._cloud_published = True
            self.link.publish(f"{self.name}.embedding", "latent_cloud", f"{self.name}: {self.embed_layer} embedding",
                              self.source("latent_cloud"), self.cloud_content)

    def metrics_content(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = self.metrics_table()
        with self._lock:
            filt = {f"filter_act:{k}": v.numpy().astype(np.float32) for k, v in self._filter_act.items()}
            filt |= {f"filter_grad:{k}": v.numpy().astype(np.float32) for k, v in self._filter_grad.items()}
        # A blob holds at most 64 arrays: series first, per-filter arrays as room allows.
        room_left = 60 - len(arrays)
        extra = dict(list(filt.items())[: max(0, room_left)])
        meta = {
            "kind": "metrics", "series": [k for k in arrays if k != "step"], "x": "step", "run": self.name,
            "status": self.status, "filter_stats": list(extra), "frozen": self.freezer.describe(),
        }
        return meta, {**arrays, **extra}

    def confusion_content(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from deeproom.models.training.compare import confusion_meta

        with self._lock:
            matrix = np.array(self._confusion if self._confusion is not None else np.zeros((0, 0)), np.int32)
        return confusion_meta(matrix, self.classes, run=self.name), {"matrix": matrix}

    def cloud_content(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        frame = self.latest_frame
        assert frame is not None and self.probe is not None
        arrays: dict[str, np.ndarray] = {
            "positions": frame.positions.astype(np.float32),
            "labels": self.probe.y.numpy().astype(np.int16),
            "predictions": frame.predictions.astype(np.int16),
            "confidence": frame.confidence.astype(np.float16),
        }
        if self.probe.thumbnails is not None:
            arrays["thumbnails"] = self.probe.thumbnails
        if self._worker is not None:
            trails = self._worker.trails()
            if trails.shape[0] and trails.shape[1] == len(frame.positions):
                arrays["trails"] = trails
        n_cls = int(max(int(self.probe.y.max()) + 1, len(self.classes or [])))
        meta = {"kind": "latent_cloud", "classes": list(self.classes or [str(i) for i in range(n_cls)]),
                "layer": self.embed_layer, "frame": frame.frame, "step": frame.step, "run": self.name}
        return meta, arrays

    def _on_filter_frame(self, layer: str, step: int, positions: np.ndarray, trails: np.ndarray) -> None:
        if self.link is None:
            return
        pos16 = positions.astype("<f2")
        self.link.stream({"run": self.name, "type": "filter_embedding", "layer": layer, "step": step,
                          "n": int(pos16.shape[0]), "dims": 2, "positions": _b64(pos16)})

        def content() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
            n = len(positions)
            arrays: dict[str, np.ndarray] = {"positions": positions.astype(np.float32), "labels": np.full(n, -1, np.int16),
                      "predictions": np.full(n, -1, np.int16), "confidence": np.ones(n, np.float16)}
            if trails.shape[0]:
                arrays["trails"] = trails
            return {"kind": "latent_cloud", "classes": [], "layer": layer, "what": "filters", "step": step}, arrays

        if step - self._filters_published_step >= 50 or self._filters_published_step < 0:
            self._filters_published_step = step
            self.link.publish(f"{self.name}.filters", "latent_cloud", f"{self.name}: {layer} filters",
                              self.source("filter_embedding"), content)

    def _on_frame(self, frame: EmbeddingFrame) -> None:
        self.latest_frame = frame
        if self.link is not None:
            pos16 = frame.positions.astype("<f2")
            self.link.stream({
                "run": self.name, "type": "embedding", "frame": frame.frame, "step": frame.step,
                "layer": self.embed_layer, "n": int(pos16.shape[0]), "dims": int(pos16.shape[1]),
                "positions": base64.b64encode(pos16.tobytes()).decode("ascii"),
                "predictions": base64.b64encode(frame.predictions.astype("<i2").tobytes()).decode("ascii"),
            })
            if not self._cloud_published:  # the first frame may come after the last epoch's publish
                self.publish()
        for fn in list(self.frame_listeners):
            fn(frame)


def _says(cmd: str, result: dict[str, Any]) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("frozen",) and not isinstance(v, dict | list))
    return f"{cmd}: {shown}" if shown else cmd


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(a.tobytes()).decode("ascii")


def decode_positions(event: dict[str, Any]) -> np.ndarray:
    """Positions float32 [n, dims] from an "embedding" stream event (for scenes and tests)."""
    n, dims = int(event["n"]), int(event["dims"])
    if not (0 <= n <= 200_000 and dims in (2, 3)):
        raise TrainingError(f"embedding event with n={n}, dims={dims} is out of range")
    raw = base64.b64decode(event["positions"], validate=True)
    if len(raw) != n * dims * 2:
        raise TrainingError(f"embedding event holds {len(raw)} bytes, expected {n * dims * 2}")
    return np.frombuffer(raw, "<f2").reshape(n, dims).astype(np.float32)


class _EmbeddingWorker:
    """Embeds the probe points' activations on its own thread, with its own copy of the model."""

    def __init__(self, run: Run, model_copy: nn.Module) -> None:
        self.run = run
        self.model = model_copy
        self.model.eval()
        for m in self.model.modules():  # the user's own hooks are not ours to fire twice
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        self.embedding = StreamedEmbedding(run.options.embed_dims, seed=run.options.seed)
        self.filter_embedding: StreamedEmbedding | None = None
        self.filter_positions: np.ndarray | None = None
        self._cv = threading.Condition()
        self._weights: dict[str, torch.Tensor] | None = None
        self._step = 0
        self._busy = False
        self._stop = False
        self._layer = run.embed_layer
        self._layer_changed = False
        self._last = 0.0
        self.frames = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._main, name=f"deeproom-embed-{run.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wants_weights(self) -> bool:
        return (not self._busy and self._weights is None
                and time.perf_counter() - self._last >= self.run.options.embed_min_interval_s)

    def offer(self, weights: dict[str, torch.Tensor]) -> None:
        with self._cv:
            self._weights = weights
            self._step = self.run.step
            self._cv.notify_all()

    def set_layer(self, layer: str) -> None:
        with self._cv:
            self._layer = layer
            self._layer_changed = True

    def trails(self) -> np.ndarray:
        with self._cv:
            return self.embedding.trail_array()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _main(self) -> None:
        probe = self.run.probe
        assert probe is not None
        x = probe.x[: self.run.options.probe_size]
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stop or self._weights is not None)
                if self._stop:
                    return
                weights, self._weights = self._weights, None
                step = self._step
                layer = self._layer
                if self._layer_changed:
                    self._layer_changed = False
                    self.embedding.reset()
                self._busy = True
            try:
                t0 = time.perf_counter()
                assert weights is not None and layer is not None
                feats, pred, conf = self._features(weights, x, layer)
                with self._cv:
                    pos = self.embedding.update(feats)
                self.frames += 1
                frame = EmbeddingFrame(self.frames, step, pos, pred, conf, time.perf_counter() - t0)
                self.run._on_frame(frame)
                if self.run.options.embed_filters:
                    self._embed_filters(weights, self.run.options.embed_filters, step)
            except Exception as exc:
                self.errors += 1
                log.warning("embedding update failed: %s", exc)
                if self.errors <= 3:
                    self.run._report({"type": "error", "where": "embedding", "message": str(exc)})
            finally:
                self._last = time.perf_counter()
                self._busy = False

    def _embed_filters(self, weights: dict[str, torch.Tensor], layer: str, step: int) -> None:
        w = weights.get(f"{layer}.weight")
        if w is None or w.dim() < 2 or w.shape[0] < 4:
            raise TrainingError(f"layer {layer!r} has no weight with at least 4 filters to embed")
        if self.filter_embedding is None:
            self.filter_embedding = StreamedEmbedding(2, k=min(15, w.shape[0] - 1), seed=self.run.options.seed)
        pos = self.filter_embedding.update(w.reshape(w.shape[0], -1).numpy())
        self.filter_positions = pos
        self.run._on_filter_frame(layer, step, pos, self.filter_embedding.trail_array())

    @torch.inference_mode()
    def _features(self, weights: dict[str, torch.Tensor], x: torch.Tensor, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.model.load_state_dict(weights)
        module = dict(self.model.named_modules())[layer]
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o.detach().flatten(1)))
        try:
            logits = [self.model(x[i : i + 1024]) for i in range(0, len(x), 1024)]
        finally:
            handle.remove()
        probs = torch.softmax(torch.cat(logits), 1)
        conf, pred = probs.max(1)
        return torch.cat(captured).numpy(), pred.numpy(), conf.numpy()
