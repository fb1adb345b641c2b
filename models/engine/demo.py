"""The demo's own parts: train the digits CNN recording its curves, the latent cloud with
trails, and label/retrain on a selection. Runs on the demo host's threads (never in a frame)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deeproom.content import encode_content


@dataclass
class TrainedDemo:
    model: Any
    train: Any
    test: Any
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


def train_demo(seed: int = 0, epochs: int = 4, progress: Callable[[str], None] | None = None,
               on_epoch: Callable[[dict[str, list[float]], Any, Any], None] | None = None) -> TrainedDemo:
    """Train the engine's digits CNN on digits, recording the curves the metrics panel shows."""
    import torch
    from torch import nn

    from deeproom.models.datasets import load_digits
    from deeproom.models.zoo import DigitsCNN

    torch.manual_seed(seed)
    train, test = load_digits().split(0.25, seed=seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {k: [] for k in ("step", "loss", "train_acc", "val_acc", "lr", "epoch_time")}
    step = 0
    t_all = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train), 64):
            idx = perm[i : i + 64]
            opt.zero_grad(set_to_none=True)
            out = model(train.x[idx])
            loss = loss_fn(out, train.y[idx])
            loss.backward()
            opt.step()
            step += 1
            if step % 6 == 0:
                model.eval()
                with torch.no_grad():  # a fixed slice of the test set keeps the curve cheap
                    va = float((model(test.x[:200]).argmax(1) == test.y[:200]).float().mean())
                model.train()
                hist["step"].append(step)
                hist["loss"].append(float(loss.detach()))
                hist["train_acc"].append(float((out.argmax(1) == train.y[idx]).float().mean()))
                hist["val_acc"].append(va)
                hist["lr"].append(5e-3)
                hist["epoch_time"].append(hist["epoch_time"][-1] if hist["epoch_time"] else 0.0)
        hist["epoch_time"][-1] = time.perf_counter() - t0
        if progress is not None:
            progress(f"epoch {epoch + 1}/{epochs}: val acc {hist['val_acc'][-1]:.3f}")
        if on_epoch is not None:  # the curves grow and the cloud moves while the model trains
            model.eval()
            on_epoch({k: list(v) for k, v in hist.items()}, model, test)
    model.eval()
    return TrainedDemo(model, train, test, hist, time.perf_counter() - t_all)


def retrain(t: TrainedDemo, action: str, params: Mapping[str, Any]) -> str:
    """Label the selected test points (`label`) or retrain on them with their labels (`retrain`),
    15 steps with random training samples filling the batch; the curves get the new point."""
    import torch
    from torch import nn

    ids = params.get("ids", [])
    idx = [int(i) for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(t.test)] \
        if isinstance(ids, list) else []
    if not idx:
        return "no points selected"
    x = t.test.x[idx]
    if action == "label":
        y = torch.full((len(idx),), int(params.get("label", 0)) % len(t.test.classes), dtype=torch.long)
    else:
        y = t.test.y[idx]
    g = torch.Generator().manual_seed(len(idx))
    extra = torch.randint(0, len(t.train), (max(0, 64 - len(idx)),), generator=g)
    xb = torch.cat([x, t.train.x[extra]])
    yb = torch.cat([y, t.train.y[extra]])
    opt = torch.optim.Adam(t.model.parameters(), lr=2e-3)
    t.model.train()
    for _ in range(15):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(t.model(xb), yb)
        loss.backward()
        opt.step()
    t.model.eval()
    with torch.no_grad():
        acc = float((t.model(t.test.x[:200]).argmax(1) == t.test.y[:200]).float().mean())
    h = t.history
    step = (h["step"][-1] if h["step"] else 0) + 15
    for k, v in (("step", step), ("loss", float(loss.detach())), ("train_acc", float("nan")), ("val_acc", acc),
                 ("lr", 2e-3), ("epoch_time", h["epoch_time"][-1] if h["epoch_time"] else 0.0)):
        h[k].append(v)
    return f"{action} on {len(idx)} points: val acc {acc:.3f}"


def graph_blob(model: Any, title: str, example: Any) -> bytes:
    from deeproom.models.graph import extract_torch_graph
    from deeproom.models.graph import graph_blob as engine_graph_blob

    g = extract_torch_graph(model, example)
    g.title = title
    return engine_graph_blob(g)


def metrics_blob(history: dict[str, list[float]]) -> bytes:
    arrays = {k: np.asarray(v, np.float32) for k, v in history.items()}
    return encode_content({"kind": "metrics", "series": [k for k in history if k != "step"], "x": "step"}, arrays)


def cloud_blob(model: Any, data: Any, layer: str = "fc1", previous: np.ndarray | None = None) -> bytes:
    """A 3D PCA of `layer`'s activations for every sample, with thumbnails (and trails from `previous`)."""
    from deeproom.content import decode_content
    from deeproom.models import blobs
    from deeproom.models.embeddings import ActivationEmbedding

    emb = ActivationEmbedding(model, layer, method="pca", dims=3).compute(data.x, data.y)
    blob = blobs.latent_cloud_blob(emb, data.classes, thumbnails=data.thumbnails())
    if previous is None or previous.shape != emb.positions.shape:
        return blob
    meta, arrays = decode_content(blob)
    arrays = dict(arrays)
    arrays["trails"] = np.stack([previous, emb.positions]).astype(np.float32)
    return encode_content(meta, arrays)


def image_blob(image: Any) -> bytes:
    from deeproom.models import blobs

    return blobs.image_blob(image)


def note_blob(text: str) -> bytes:
    return encode_content({"kind": "note", "text": text}, {})
