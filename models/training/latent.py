"""Labeling in a 3-D latent cloud (Kath et al.): a VAE with a 3-unit latent plus a classifier.

The encoder's 3-D means are the cloud's positions. A participant places a sphere
(centre, radius, in latent coordinates) and gives the points inside it a label; the
model fine-tunes on the labels so far (reconstruction + KL on every point,
cross-entropy on the labelled ones), so same-label points gather and groups
separate, and the cloud moves. `LabelingSession` is the model and its data;
`LabelingLoop` runs it on a worker thread: labels arriving as "steer" events are
applied between fine-tuning steps, and a moved frame goes out a few steps later,
so a label shows its effect in well under a second. The classifier's accuracy on
held-out true labels (never shown to the labeller) is reported as labels grow.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from deeproom.models.training.errors import SteerError
from deeproom.models.training.link import RoomLink

ProgressFn = Callable[[int, int], bool]
Answer = Callable[[bool, str], None]


class LabelingVAE(nn.Module):
    """Encoder to a 3-D latent (mean, log-variance), decoder back to pixels, classifier on the latent."""

    def __init__(self, inputs: int = 64, classes: int = 10, hidden: int = 128, latent: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU())
        self.mu = nn.Linear(hidden // 2, latent)
        self.logvar = nn.Linear(hidden // 2, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, hidden), nn.ReLU(), nn.Linear(hidden, inputs)
        )
        self.classifier = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, classes))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(-10, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar, self.classifier(z)


@dataclass
class LabelEvent:
    """One sphere placed: which points it labelled."""

    center: tuple[float, float, float]
    radius: float
    label: int
    ids: np.ndarray
    when: float = field(default_factory=time.perf_counter)


def parse_sphere(payload: Any, classes: int) -> tuple[tuple[float, float, float], float, int]:
    """Check a {"cmd": "label_sphere", "center": [x, y, z], "radius": r, "label": k} payload."""
    if not isinstance(payload, dict):
        raise SteerError("a label_sphere payload must be an object")
    c = payload.get("center")
    if (not isinstance(c, list | tuple) or len(c) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e6 for v in c)):
        raise SteerError(f"'center' must be 3 finite numbers (latent coordinates); got {c!r:.80}")
    r = payload.get("radius")
    if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r) or not 0 < r <= 1e4:
        raise SteerError(f"'radius' must be a number in (0, 10000]; got {r!r:.40}")
    label = payload.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < classes:
        raise SteerError(f"'label' must be an integer in [-1, {classes - 1}] (-1 removes labels); got {label!r:.40}")
    return (float(c[0]), float(c[1]), float(c[2])), float(r), label


class LabelingSession:
    """A VAE + classifier on a dataset, its labels so far, and a held-out set for accuracy."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        classes: Sequence[str] | None = None,
        heldout_fraction: float = 0.25,
        seed: int = 0,
        beta: float = 1.0,
        label_weight: float = 20.0,
        batch_size: int = 64,
        lr: float = 3e-3,
    ) -> None:
        x = x.reshape(len(x), -1).float()
        if x.min() < 0 or x.max() > 1:
            raise SteerError("LabelingSession wants inputs scaled into [0, 1]")
        n_cls = int(y.max()) + 1
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n_cls)]
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(x), generator=self.generator)
        n_held = round(len(x) * heldout_fraction)
        self.heldout_x, self.heldout_y = x[perm[:n_held]], y[perm[:n_held]]
        self.pool_index = perm[n_held:]
        self.x, self.y_true = x[self.pool_index], y[self.pool_index]
        self.labels = torch.full((len(self.x),), -1, dtype=torch.long)
        self.model = LabelingVAE(x.shape[1], len(self.classes))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr)
        self.beta = beta
        self.label_weight = label_weight
        self.batch_size = batch_size
        self.steps = 0
        self.history: list[tuple[int, float]] = []
        self._positions = self.positions()

    @property
    def n_labelled(self) -> int:
        return int((self.labels >= 0).sum())

    def _step(self, batch: torch.Tensor) -> float:
        self.model.train()
        xb = self.x[batch]
        recon, mu, logvar, logits = self.model(xb)
        rec = nn.functional.binary_cross_entropy_with_logits(recon, xb, reduction="sum") / len(batch)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(batch)
        loss = rec + self.beta * kl
        lab = self.labels[batch]
        mask = lab >= 0
        if mask.any():
            loss = loss + self.label_weight * nn.functional.cross_entropy(logits[mask], lab[mask])
        # Labelled points are few: add a batch of them on every step so the classifier sees them.
        labelled = torch.nonzero(self.labels >= 0).flatten()
        if len(labelled):
            pick = labelled[torch.randint(0, len(labelled), (min(len(labelled), 64),), generator=self.generator)]
            *_, logits_l = self.model(self.x[pick])
            loss = loss + self.label_weight * nn.functional.cross_entropy(logits_l, self.labels[pick])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach())

    def train(self, steps: int, *, progress: ProgressFn | None = None) -> None:
        """`steps` mini-batch steps over all points (labels used where there are some)."""
        n = len(self.x)
        perm = torch.randperm(n, generator=self.generator)
        pos = 0
        for i in range(steps):
            if pos + self.batch_size > n:
                perm = torch.randperm(n, generator=self.generator)
                pos = 0
            self._step(perm[pos : pos + self.batch_size])
            pos += self.batch_size
            if progress is not None and progress(i + 1, steps) is False:
                return

    def pretrain(self, epochs: int = 25, *, progress: ProgressFn | None = None) -> None:
        """Unsupervised start: the cloud before any label."""
        per_epoch = max(1, math.ceil(len(self.x) / self.batch_size))
        self.train(epochs * per_epoch, progress=progress)
        self._positions = self.positions()

    @torch.no_grad()
    def positions(self) -> np.ndarray:
        """Latent means of the pool's points, float32 [N, 3]."""
        self.model.eval()
        return self.model.encode(self.x)[0].numpy().astype(np.float32)

    @torch.no_grad()
    def predict(self, x: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        self.model.eval()
        mu = self.model.encode(self.x if x is None else x)[0]
        probs = torch.softmax(self.model.classifier(mu), 1)
        conf, pred = probs.max(1)
        return pred.numpy(), conf.numpy()

    def heldout_accuracy(self) -> float:
        """Classifier accuracy on the held-out points' true labels."""
        pred, _ = self.predict(self.heldout_x)
        return float((torch.from_numpy(pred) == self.heldout_y).float().mean())

    def points_in_sphere(self, center: Sequence[float], radius: float, positions: np.ndarray | None = None) -> np.ndarray:
        pos = self._positions if positions is None else positions
        d = np.linalg.norm(pos - np.asarray(center, np.float32)[None, :], axis=1)
        return np.flatnonzero(d <= radius)

    def label_sphere(self, center: Sequence[float], radius: float, label: int) -> LabelEvent:
        """Label (or with -1 unlabel) the points inside the sphere, as the cloud was last shown."""
        ids = self.points_in_sphere(center, radius)
        if len(ids) == 0:
            raise SteerError(f"the sphere at {list(center)} with radius {radius} holds no points; nothing was labelled")
        self.labels[torch.from_numpy(ids)] = label
        return LabelEvent((float(center[0]), float(center[1]), float(center[2])), float(radius), label, ids)

    def label_ids(self, ids: Sequence[int], label: int) -> None:
        """Label points by id (what a sphere in the scene resolves to; also for scripted tests)."""
        idx = torch.as_tensor(list(ids), dtype=torch.long)
        if len(idx) and (int(idx.max()) >= len(self.x) or int(idx.min()) < 0):
            raise SteerError(f"point ids must be in 0..{len(self.x) - 1}")
        self.labels[idx] = label

    def train_on(self, ids: Sequence[int], steps: int = 20) -> int:
        """Fine-tune `steps` steps on batches that hold the selected points (up to a batch) filled with
        random ones; the selection's labels weigh in through the label loss. Returns how many of the
        selected points carry a label (refused when none does: there is nothing to learn from them)."""
        idx = torch.as_tensor(list(ids), dtype=torch.long)
        if len(idx) == 0 or int(idx.max()) >= len(self.x) or int(idx.min()) < 0:
            raise SteerError(f"point ids must be a non-empty list in 0..{len(self.x) - 1}")
        labelled = int((self.labels[idx] >= 0).sum())
        if labelled == 0:
            raise SteerError("none of the selected points has a label yet: label them first")
        for _ in range(steps):
            pick = idx[torch.randperm(len(idx), generator=self.generator)[: self.batch_size]]
            fill = torch.randint(0, len(self.x), (max(0, self.batch_size - len(pick)),), generator=self.generator)
            self._step(torch.cat([pick, fill]))
        return labelled

    def refresh_positions(self) -> np.ndarray:
        self._positions = self.positions()
        return self._positions

    def cloud_content(self, thumbnails: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        pred, conf = self.predict()
        arrays: dict[str, np.ndarray] = {
            "positions": self._positions.astype(np.float32),
            "labels": self.labels.numpy().astype(np.int16),
            "predictions": pred.astype(np.int16),
            "confidence": conf.astype(np.float16),
        }
        if thumbnails is not None:
            arrays["thumbnails"] = thumbnails
        meta = {"kind": "latent_cloud", "classes": self.classes, "labelled": self.n_labelled,
                "heldout_accuracy": round(self.heldout_accuracy(), 4), "steps": self.steps}
        return meta, arrays


class LabelingLoop:
    """Runs a LabelingSession on a worker thread, fed by label commands, emitting moved frames.

    Commands (the "steer" payloads): {"cmd": "label_sphere", "center", "radius", "label"},
    {"cmd": "label_ids", "ids", "label"}. After a label, `rounds` rounds of `steps_per_frame`
    fine-tuning steps run, each followed by a frame (positions + predictions).
    """

    def __init__(
        self,
        session: LabelingSession,
        *,
        link: RoomLink | None = None,
        name: str = "labels",
        steps_per_frame: int = 4,
        rounds: int = 25,
        thumbnails: np.ndarray | None = None,
        on_frame: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        self.session = session
        self.link = link
        self.name = name
        self.steps_per_frame = steps_per_frame
        self.rounds = rounds
        self.thumbnails = thumbnails
        self.on_frame = on_frame
        self.frame = 0
        self.events: list[dict[str, Any]] = []
        self.label_events: list[LabelEvent] = []
        self.last_frame_at = 0.0
        self._commands: list[tuple[str | None, dict[str, Any], Answer | None]] = []
        self._cv = threading.Condition()
        self.engine: Any = None
        """Its engine (`deeproom.models.training.hosting.LabelEngine`) when the cloud declares actions."""
        self._stop = False
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"deeproom-labeling-{name}", daemon=True)

    def start(self) -> LabelingLoop:
        self._publish()
        self._thread.start()
        return self

    def submit(self, payload: dict[str, Any], sender: str | None = None, on_done: Answer | None = None) -> None:
        """Queue a command; `on_done(ok, message)` is called once it was applied (on the loop's thread)."""
        with self._cv:
            self._commands.append((sender, payload, on_done))
            self._idle.clear()
            self._cv.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until the loop has applied every command and finished fine-tuning."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self.link is not None:
            self._publish()
            self.link.flush(30)
        if self.engine is not None:
            self.engine.close()

    def _take(self) -> list[tuple[str | None, dict[str, Any], Answer | None]]:
        with self._cv:
            out, self._commands = self._commands, []
        if self.link is not None:
            out.extend((s, p, None) for s, p in self.link.poll())
        return out

    def _main(self) -> None:
        rounds_left = 0
        while True:
            with self._cv:
                if self._stop:
                    return
                if rounds_left == 0 and not self._commands:
                    self._idle.set()
                    self._cv.wait(0.05)
                    if self._stop:
                        return
            commands = self._take()
            if commands:
                self._idle.clear()
            if any([self._apply(s, p, a) for s, p, a in commands]):  # apply every one, not just up to the first
                rounds_left = self.rounds
            if rounds_left > 0:
                self.session.train(self.steps_per_frame)
                rounds_left -= 1
                self._emit()
                if rounds_left == 0:
                    acc = self.session.heldout_accuracy()
                    self.session.history.append((self.session.n_labelled, acc))
                    self._report({"type": "label_accuracy", "labelled": self.session.n_labelled, "accuracy": round(acc, 4)})
                    self._publish()

    def _apply(self, sender: str | None, payload: dict[str, Any], on_done: Answer | None = None) -> bool:
        before = len(self.events)
        ok = self._apply_one(sender, payload)
        if on_done is not None:
            said = self.events[before:]
            on_done(ok, str(said[-1].get("message") if not ok and said else
                            f"labelled {self.session.n_labelled} points so far" if ok else "refused"))
        return ok

    def _apply_one(self, sender: str | None, payload: dict[str, Any]) -> bool:
        try:
            cmd = payload.get("cmd") if isinstance(payload, dict) else None
            if cmd == "label_sphere":
                center, radius, label = parse_sphere(payload, len(self.session.classes))
                ev = self.session.label_sphere(center, radius, label)
                self.label_events.append(ev)
                self._report({"type": "labelled", "by": sender, "count": len(ev.ids), "label": label,
                              "labelled": self.session.n_labelled})
                return True
            if cmd == "label_ids":
                ids, id_label = payload.get("ids"), payload.get("label")
                if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                    raise SteerError("'ids' must be a non-empty list of point ids")
                if isinstance(id_label, bool) or not isinstance(id_label, int) or not -1 <= id_label < len(self.session.classes):
                    raise SteerError(f"'label' must be an integer in [-1, {len(self.session.classes) - 1}]")
                self.session.label_ids(ids, id_label)
                self.label_events.append(LabelEvent((0.0, 0.0, 0.0), 0.0, id_label, np.asarray(ids)))
                self._report({"type": "labelled", "by": sender, "count": len(ids), "label": id_label,
                              "labelled": self.session.n_labelled})
                return True
            if cmd == "retrain_ids":
                ids = payload.get("ids")
                if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                    raise SteerError("'ids' must be a non-empty list of point ids")
                n = self.session.train_on(ids, self.steps_per_frame * 5)
                self._report({"type": "retrained", "by": sender, "count": len(ids), "labelled_in_selection": n})
                return True
            raise SteerError(f"unknown labeling command {cmd!r:.40}; allowed: label_sphere, label_ids, retrain_ids")
        except SteerError as exc:
            self._report({"type": "error", "where": "labeling", "message": str(exc)})
            return False

    def _emit(self) -> None:
        pos = self.session.refresh_positions()
        self.frame += 1
        self.last_frame_at = time.perf_counter()
        if self.link is not None:
            pred, _ = self.session.predict()
            self.link.stream({
                "run": self.name, "type": "latent_frame", "frame": self.frame, "n": len(pos), "dims": 3,
                "interval_s": 0.1,
                "positions": base64.b64encode(pos.astype("<f2").tobytes()).decode("ascii"),
                "predictions": base64.b64encode(pred.astype("<i2").tobytes()).decode("ascii"),
                "labelled": self.session.n_labelled,
            })
        if self.on_frame is not None:
            self.on_frame(self.frame, pos)

    def _report(self, event: dict[str, Any]) -> None:
        event = {"run": self.name, **event}
        self.events.append(event)
        if self.link is not None:
            self.link.stream(event)

    def _publish(self) -> None:
        if self.link is None:
            return
        session = self.session
        source = {"kind": "latent_labeling", "run": self.name, "owner": self.link.participant_id,
                  "labelled": session.n_labelled, "commands": ["label_sphere", "label_ids", "retrain_ids"]}
        cloud = {**source, **(self.engine.declare() if self.engine is not None else {})}
        self.link.publish(f"{self.name}.latent", "latent_cloud", f"{self.name}: label the latent space", cloud,
                          lambda: session.cloud_content(self.thumbnails))
        hist = list(session.history)
        if hist:
            def accuracy_content() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
                return ({"kind": "metrics", "series": ["heldout_accuracy"], "x": "labelled"},
                        {"labelled": np.asarray([h[0] for h in hist], np.float32),
                         "heldout_accuracy": np.asarray([h[1] for h in hist], np.float32)})

            self.link.publish(f"{self.name}.accuracy", "metrics", f"{self.name}: accuracy vs labels", source, accuracy_content)


def simulate_labeller(session: LabelingSession, targets: Sequence[int], seed: int = 0,
                      on_label: Callable[[int], None] | None = None) -> list[tuple[int, float]]:
    """A scripted labeller for tests and benchmarks: spheres around single unlabelled points.

    Each sphere is centred on a random unlabelled point with a radius half the distance
    to its nearest neighbour (so it holds that point alone), labelled with the point's
    true class, as a person reading the thumbnail would; after each sphere the model
    fine-tunes a little. Returns (labels, held-out accuracy) when the count reaches each target.
    """
    rng = np.random.default_rng(seed)
    results: list[tuple[int, float]] = []
    for target in sorted(targets):
        while session.n_labelled < target:
            pos = session.refresh_positions()
            unlabelled = np.flatnonzero(session.labels.numpy() < 0)
            i = int(rng.choice(unlabelled))
            d = np.linalg.norm(pos - pos[i], axis=1)
            d[i] = np.inf
            radius = max(float(d.min()) * 0.5, 1e-6)
            session.label_sphere(pos[i].tolist(), radius, int(session.y_true[i]))
            if on_label is not None:
                on_label(session.n_labelled)
            session.train(10)
        session.train(60)
        results.append((session.n_labelled, session.heldout_accuracy()))
    return results
