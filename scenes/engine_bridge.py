"""The scenes' side of the engine: train the demo CNN, turn model and analyses into blobs.

Runs in its own thread (never in a frame). Graph extraction is the engine's
(`deeproom.models.graph`); the digits CNN and dataset are the engine's
(`deeproom.models.zoo`, `deeproom.models.datasets`). The few per-panel analyses the
demo shows (activations, filters, Grad-CAM, confusion matrix, a PCA embedding of
fc1) are computed here with torch directly from the trained model, each small and
exact, until the engine's analysis jobs are wired in (see docs/scenes.md).
Everything returned is a content blob (`deeproom.content`), as the relay carries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


def train_demo(seed: int = 0, epochs: int = 4, progress: Callable[[str], None] | None = None) -> TrainedDemo:
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
        et = time.perf_counter() - t0
        hist["epoch_time"][-1] = et
        if progress is not None:
            progress(f"epoch {epoch + 1}/{epochs}: val acc {hist['val_acc'][-1]:.3f}")
    model.eval()
    return TrainedDemo(model, train, test, hist, time.perf_counter() - t_all)


def graph_blob(model: Any, title: str, example: Any) -> bytes:
    from deeproom.models.graph import extract_torch_graph
    from deeproom.models.graph import graph_blob as engine_graph_blob

    g = extract_torch_graph(model, example)
    g.title = title
    return engine_graph_blob(g)


def metrics_blob(history: dict[str, list[float]]) -> bytes:
    arrays = {k: np.asarray(v, np.float32) for k, v in history.items()}
    return encode_content({"kind": "metrics", "series": [k for k in history if k != "step"], "x": "step"}, arrays)


def confusion_blob(model: Any, data: Any) -> bytes:
    import torch

    with torch.no_grad():
        pred = model(data.x).argmax(1).numpy()
    true = data.y.numpy()
    c = len(data.classes)
    m = np.zeros((c, c), np.int32)
    np.add.at(m, (true, pred), 1)
    tp = np.diag(m).astype(np.float64)
    precision = tp / np.maximum(m.sum(axis=0), 1)
    recall = tp / np.maximum(m.sum(axis=1), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return encode_content({"kind": "confusion_matrix", "labels": list(data.classes), "precision": precision.tolist(),
                           "recall": recall.tolist(), "f1": f1.tolist()}, {"matrix": m})


def _activations(model: Any, layer: str, x: Any) -> Any:
    import torch

    module = dict(model.named_modules())[layer]
    out: list[Any] = []
    handle = module.register_forward_hook(lambda m, i, o: out.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return out[0]


def cloud_blob(model: Any, data: Any, layer: str = "fc1", previous: np.ndarray | None = None) -> bytes:
    """A 3D PCA of `layer`'s activations for every sample, with thumbnails and predictions."""
    import torch

    acts = _activations(model, layer, data.x).flatten(1)
    centred = acts - acts.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=3, center=False, niter=4)
    pos = (centred @ v[:, :3]).numpy().astype(np.float32)
    with torch.no_grad():
        prob = torch.softmax(model(data.x), 1)
    arrays: dict[str, np.ndarray] = {
        "positions": pos,
        "labels": data.y.numpy().astype(np.int16),
        "predictions": prob.argmax(1).numpy().astype(np.int16),
        "confidence": prob.max(1).values.numpy().astype(np.float16),
        "thumbnails": data.thumbnails(),
    }
    if previous is not None and previous.shape == pos.shape:
        arrays["trails"] = np.stack([previous, pos]).astype(np.float32)
    return encode_content({"kind": "latent_cloud", "classes": list(data.classes), "layer": layer, "method": "pca"}, arrays)


def feature_maps_blob(model: Any, layer: str, image: Any) -> bytes:
    a = _activations(model, layer, image[None])[0]
    if a.ndim != 3:
        a = a.reshape(-1, 1, 1)
    return encode_content({"kind": "feature_maps", "layer": layer}, {"maps": a.numpy().astype(np.float16)})


def filters_blob(model: Any, layer: str) -> bytes:
    module = dict(model.named_modules())[layer]
    w = module.weight.detach()
    if w.ndim == 4:
        f = w.mean(1) if w.shape[1] != 3 else w.permute(0, 2, 3, 1)
    else:
        side = int(np.ceil(np.sqrt(w.shape[1])))
        f = np.zeros((w.shape[0], side * side), np.float32)
        f[:, : w.shape[1]] = w.numpy()
        return encode_content({"kind": "filters", "layer": layer}, {"filters": f.reshape(-1, side, side).astype(np.float16)})
    return encode_content({"kind": "filters", "layer": layer}, {"filters": f.numpy().astype(np.float16)})


def grad_cam_blob(model: Any, layer: str, image: Any, target: int | None = None) -> bytes:
    """Grad-CAM: channel weights = mean gradient of the target logit; ReLU of the weighted sum."""
    import torch

    module = dict(model.named_modules())[layer]
    acts: list[Any] = []
    def keep(m: Any, i: Any, o: Any) -> None:
        o.retain_grad()
        acts.append(o)

    handle = module.register_forward_hook(keep)
    try:
        out = model(image[None])
        t = int(out.argmax(1)) if target is None else int(target)
        out[0, t].backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    a = acts[0]
    if a.ndim != 4:
        raise ValueError(f"Grad-CAM needs a convolutional layer; {layer} gives shape {tuple(a.shape)}")
    w = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((w * a).sum(1))[0].detach()
    cam = cam / cam.max() if float(cam.max()) > 0 else cam
    img = (image[0].clamp(0, 1) * 255).to(torch.uint8).numpy()
    return encode_content({"kind": "grad_cam", "layer": layer, "target": t, "method": "Grad-CAM"},
                          {"image": img, "cam": cam.numpy().astype(np.float16)})


def image_blob(image: Any) -> bytes:
    img = (image[0].clamp(0, 1) * 255).to(dtype=__import__("torch").uint8).numpy()
    return encode_content({"kind": "image"}, {"image": img})


def note_blob(text: str) -> bytes:
    return encode_content({"kind": "note", "text": text}, {})


def attention_blob(seed: int = 0) -> bytes:
    """Attention maps per head of the engine's tiny ViT on one digit (briefly trained)."""
    import torch

    from deeproom.models.datasets import load_digits
    from deeproom.models.zoo import SelfAttention, TinyViT

    torch.manual_seed(seed)
    model = TinyViT().eval()
    x = load_digits().x[:1]
    att: list[Any] = []
    mod = next(m for m in model.modules() if isinstance(m, SelfAttention))
    name = next(n for n, m in model.named_modules() if m is mod)
    # The engine's attention writes its softmax as a module, so its output is the per-head map.
    h = mod.softmax.register_forward_hook(lambda m, i, o: att.append(o[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return encode_content({"kind": "attention", "layer": name}, {"attention": att[0].numpy().astype(np.float16)})
