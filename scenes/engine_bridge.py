"""The scenes' side of the engine: train the demo CNN, turn model and analyses into blobs.

Runs in the demo engine's thread (never in a frame). Every analysis is the engine's
(`deeproom.models.analysis`: Activations, Filters, GradCAM, AttentionMaps,
ConfusionMatrix; `deeproom.models.embeddings.ActivationEmbedding`), as are the model,
the dataset, graph extraction and the blob encoders (`deeproom.models.blobs`). This
module only chooses what the demo shows and records the training curves.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deeproom.content import encode_content
from deeproom.scenes import geometry


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
        et = time.perf_counter() - t0
        hist["epoch_time"][-1] = et
        if progress is not None:
            progress(f"epoch {epoch + 1}/{epochs}: val acc {hist['val_acc'][-1]:.3f}")
        if on_epoch is not None:  # the curves grow and the cloud moves while the model trains
            model.eval()
            on_epoch({k: list(v) for k, v in hist.items()}, model, test)
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
    from deeproom.models import blobs
    from deeproom.models.analysis import ConfusionMatrix

    ev = ConfusionMatrix(model, classes=len(data.classes)).compute(data.x, data.y)
    return blobs.confusion_blob(ev, data.classes)


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


def feature_maps_blob(model: Any, layer: str, image: Any) -> bytes:
    from deeproom.models import blobs
    from deeproom.models.analysis import Activations

    return blobs.feature_maps_blob(Activations(model, layer).compute(image[None]), layer)


def filters_blob(model: Any, layer: str) -> bytes:
    from deeproom.models import blobs
    from deeproom.models.analysis import Filters

    return blobs.filters_blob(Filters(model, layer).compute(), layer)


def grad_cam_blob(model: Any, layer: str, image: Any, target: int | None = None) -> bytes:
    from deeproom.models import blobs
    from deeproom.models.analysis import GradCAM

    cam = GradCAM(model, layer)
    maps = cam.compute(image[None], target)
    t = int(cam.last_targets[0]) if cam.last_targets is not None else int(target or 0)
    return blobs.grad_cam_blob(image, maps, layer=layer, target=t, method="Grad-CAM")


def image_blob(image: Any) -> bytes:
    from deeproom.models import blobs

    return blobs.image_blob(image)


def note_blob(text: str) -> bytes:
    return encode_content({"kind": "note", "text": text}, {})


def attention_blob(seed: int = 0) -> bytes:
    """Attention maps per head of the engine's tiny ViT on one digit."""
    import torch

    from deeproom.models import blobs
    from deeproom.models.analysis import AttentionMaps
    from deeproom.models.datasets import load_digits
    from deeproom.models.zoo import TinyViT

    torch.manual_seed(seed)
    model = TinyViT().eval()
    layer = "blocks.0.attn.softmax"
    return blobs.attention_blob(AttentionMaps(model, layer).compute(load_digits().x[:1]), layer)


class EngineThread(ABC):
    """The shape shared by the scenes' engines (demo, open): work done on one thread,
    fed by `request(action, payload)`, telling the room through the session's inbox."""

    thread_name = "deeproom-engine"

    def __init__(self, session: Any, progress: Callable[[str], None] | None = None) -> None:
        import queue
        import threading
        from collections.abc import Mapping

        self.session = session
        self.progress = progress or (lambda s: None)
        self.ready = threading.Event()
        self.failed: str | None = None
        self._queue: queue.Queue[tuple[str, Mapping[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name=self.thread_name, daemon=True)

    def start(self) -> Any:
        self._thread.start()
        return self

    def request(self, action: str, payload: Any) -> None:
        self._queue.put((action, payload))

    def close(self) -> None:
        self._queue.put(None)

    def _say(self, text: str, error: bool = False) -> None:
        from deeproom.scenes.session import Notice

        self.progress(text)
        self.session.inbox.put(Notice(text, error=error))

    @abstractmethod
    def _main(self) -> None:
        """The thread: build what the room shows, set `ready`, then `_serve_requests()`."""

    @abstractmethod
    def _handle(self, action: str, payload: Any) -> None:
        """One request from the room (a layer clicked, a panel to fill, ...)."""

    def _serve_requests(self) -> None:
        """Handle queued requests until close(); one that fails is reported, not fatal."""
        while (item := self._queue.get()) is not None:
            action, payload = item
            try:
                self._handle(action, payload)
            except Exception as exc:  # one failed request must not end the engine
                self._say(f"{action} failed: {type(exc).__name__}: {exc}", error=True)

    def _put_panel(self, panel_id: str, blob: bytes, *, kind: str, title: str, transform: Any, size: Any,
                   source: dict[str, Any]) -> None:
        """Store `blob` and show it: new content for an existing panel, else a new panel."""
        sha = self.session.put_blob(blob).result(60)
        room = self.session.current_room()
        content = {"source": source, "refs": [sha]}
        if room is not None and panel_id in room.panels:
            self.session.apply({"op": "set_content", "panel_id": panel_id, "content": content}).result(30)
            return
        self.session.apply({"op": "add_panel", "panel_id": panel_id, "kind": kind, "title": title[:120],
                            "transform": transform, "size": list(size), "content": content}).result(30)

    def _open_layer_panels(self, model: Any, name: str, sample: Any, payload: Any, source: dict[str, Any]) -> None:
        """A clicked layer's feature maps, filters (when it has weights) and Grad-CAM (when
        it is spatial), in a row above the graph panel that was clicked."""
        from deeproom.errors import DeepRoomError

        base = payload.get("transform") or {}
        pos = list(base.get("position", [0, 2.3, 3.5]))
        rot = list(base.get("rotation", [1, 0, 0, 0]))
        right = geometry.quat_matrix(rot)[:, 0]
        out: list[tuple[str, str, bytes]] = [("feature_maps", f"Feature maps · {name}", feature_maps_blob(model, name, sample))]
        try:
            out.append(("filters", f"Filters · {name}", filters_blob(model, name)))
        except DeepRoomError:
            pass  # no weights here (an activation, a pooling layer): maps only
        try:
            out.append(("grad_cam", f"Grad-CAM · {name}", grad_cam_blob(model, name, sample)))
        except (ValueError, DeepRoomError):
            pass  # Grad-CAM needs a spatial layer; a linear layer shows maps and weights only
        for i, (kind, title, blob) in enumerate(out):
            off = (i - (len(out) - 1) / 2) * 1.15
            at = [pos[0] + right[0] * off, pos[1] + 1.05, pos[2] + right[2] * off]
            pid = f"{kind.replace('_', '-')}-{name.replace('.', '-').replace('/', '-')}"[:60]
            self._put_panel(pid, blob, kind=kind, title=title, size=(1.05, 0.8),
                            transform={"position": at, "rotation": rot, "scale": [1, 1, 1]},
                            source={**source, "layer": name, "analysis": kind})
        self._say(f"opened {name}", error=False)
