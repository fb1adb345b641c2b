"""The demo room and the engine side of `open`: place panels, fill them with computed blobs.

`DemoEngine` runs in its own thread. It trains the built-in digits CNN (a few
seconds), publishes the model graph, curves, confusion matrix, latent cloud,
feature maps, filters, Grad-CAM, attention, an input image and a note as content
blobs, and adds (or, for a room that already has them, refills) the panels. It
then serves the app's requests: a clicked layer opens its feature maps, filters and
Grad-CAM; a selection in the cloud is labelled or retrained on, and the cloud,
matrix and curves update (with trails from the old positions).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from deeproom.scenes import geometry
from deeproom.scenes.engine_bridge import EngineThread
from deeproom.scenes.session import Session


@dataclass(frozen=True)
class Slot:
    panel_id: str
    kind: str
    title: str
    angle: float  # degrees from straight ahead (+z), positive to the right
    height: float  # centre height, metres
    size: tuple[float, float]
    radius: float = 3.3


DEMO_SLOTS = [
    Slot("graph", "model_graph", "Digits CNN — graph", 0, 2.3, (2.6, 1.0), 3.5),
    Slot("cloud", "latent_cloud", "Latent space (fc1, PCA)", 0, 1.05, (1.6, 1.0), 3.0),
    Slot("metrics", "metrics", "Training curves", -36, 2.15, (1.3, 0.85)),
    Slot("confusion", "confusion_matrix", "Confusion matrix (test)", -36, 1.05, (1.0, 0.95)),
    Slot("fmaps", "feature_maps", "Feature maps · conv2", 36, 2.15, (1.3, 0.85)),
    Slot("filters", "filters", "Filters · conv1", 36, 1.05, (1.1, 0.9)),
    Slot("gradcam", "grad_cam", "Grad-CAM · conv2", 66, 2.15, (1.2, 0.72)),
    Slot("attention", "attention", "Attention · tiny ViT", 66, 1.05, (1.2, 0.85)),
    Slot("image", "image", "Input image", -66, 2.15, (0.75, 0.75)),
    Slot("note", "note", "Notes", -66, 1.05, (1.1, 0.8)),
]

DEMO_NOTE = ("Welcome to DeepRoom.\n"
             "Drag a title bar to move a panel; the corner resizes it.\n"
             "Click a layer in the graph to open its feature maps, filters and Grad-CAM.\n"
             "Click in the latent cloud to select points, then press a digit to label them or R to retrain.")


def slot_transform(slot: Slot, viewer: tuple[float, float, float] = (0.0, 1.6, 0.0)) -> dict[str, list[float]]:
    a = math.radians(slot.angle)
    pos = (viewer[0] + slot.radius * math.sin(a), slot.height, viewer[2] + slot.radius * math.cos(a))
    rot = geometry.facing_quat(pos, viewer)
    return {"position": list(pos), "rotation": list(rot), "scale": [1.0, 1.0, 1.0]}


@dataclass
class TrainedLive:
    """The model and test set while training runs (what the cloud is computed from)."""

    model: Any
    test: Any


class DemoEngine(EngineThread):
    """Trains and publishes in a thread; `request(action, payload)` queues more work."""

    thread_name = "deeproom-demo-engine"

    def __init__(self, session: Session, *, seed: int = 0, progress: Callable[[str], None] | None = None,
                 slots: list[Slot] | None = None) -> None:
        super().__init__(session, progress)
        self.seed = seed
        self.slots = slots or DEMO_SLOTS
        self.trained: Any = None
        self._cloud_positions: Any = None

    def start(self) -> DemoEngine:
        super().start()
        return self

    # --- thread -------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            import torch

            torch.set_num_threads(2)
            self._populate()
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            self._say(f"demo engine failed: {self.failed}", error=True)
            traceback.print_exc()
        finally:
            self.ready.set()
        self._serve_requests()

    def _publish(self, slot_id: str, blob: bytes, *, kind: str | None = None, title: str | None = None,
                 transform: dict[str, Any] | None = None, size: tuple[float, float] | None = None,
                 source: dict[str, Any] | None = None) -> None:
        slot = next((s for s in self.slots if s.panel_id == slot_id), None)
        self._put_panel(slot_id, blob, kind=kind or (slot.kind if slot else "image"),
                        title=title or (slot.title if slot else slot_id),
                        transform=transform or (slot_transform(slot) if slot else {}),
                        size=size or (slot.size if slot else (1.0, 0.8)),
                        source=source or {"demo": "digits", "panel": slot_id})

    def _populate(self) -> None:
        from deeproom.scenes import engine_bridge as eb

        room = self.session.current_room()
        for slot in self.slots:  # panels appear at once (loading cards) while the model trains
            if room is None or slot.panel_id not in room.panels:
                self.session.apply({"op": "add_panel", "panel_id": slot.panel_id, "kind": slot.kind,
                                    "title": slot.title, "transform": slot_transform(slot),
                                    "size": list(slot.size)}).result(30)
        self._say("training the digits CNN…")
        wanted = {s.panel_id for s in self.slots}

        def live(history: dict[str, list[float]], model: Any, test: Any) -> None:
            if "metrics" in wanted:
                self._publish("metrics", eb.metrics_blob(history))
            if "cloud" in wanted:  # each epoch's cloud carries trails from the one before
                self.trained = TrainedLive(model, test)
                self._publish("cloud", self._cloud(eb))

        t = eb.train_demo(self.seed, progress=self.progress, on_epoch=live)
        self.trained = t
        self._say(f"trained in {t.seconds:.1f} s; test accuracy {t.history['val_acc'][-1]:.3f}", error=False)
        sample = t.test.x[3]
        jobs: list[tuple[str, Callable[[], bytes]]] = [
            ("graph", lambda: eb.graph_blob(t.model, "Digits CNN", t.test.x[:1])),
            ("metrics", lambda: eb.metrics_blob(t.history)),
            ("confusion", lambda: eb.confusion_blob(t.model, t.test)),
            ("cloud", lambda: self._cloud(eb)),
            ("fmaps", lambda: eb.feature_maps_blob(t.model, "conv2", sample)),
            ("filters", lambda: eb.filters_blob(t.model, "conv1")),
            ("gradcam", lambda: eb.grad_cam_blob(t.model, "conv2", sample)),
            ("attention", lambda: eb.attention_blob(self.seed)),
            ("image", lambda: eb.image_blob(sample)),
            ("note", lambda: eb.note_blob(DEMO_NOTE)),
        ]
        for pid, make in jobs:
            if pid in wanted:
                self._publish(pid, make())
        self._say("demo room ready", error=False)

    def _cloud(self, eb: Any) -> bytes:
        import numpy as np

        from deeproom.content import decode_content

        blob: bytes = eb.cloud_blob(self.trained.model, self.trained.test, previous=self._cloud_positions)
        self._cloud_positions = np.asarray(decode_content(blob)[1]["positions"])
        return blob

    def _handle(self, action: str, payload: Mapping[str, Any]) -> None:
        from deeproom.scenes import engine_bridge as eb

        t = self.trained
        if t is None:
            self._say("the model is still training", error=True)
            return
        if action == "open_layer":
            self._open_layer(str(payload.get("layer", "")), payload)
        elif action == "fill_panel":
            kind = str(payload.get("kind"))
            pid = str(payload.get("panel_id"))
            makers: dict[str, Callable[[], bytes]] = {
                "metrics": lambda: eb.metrics_blob(t.history),
                "confusion_matrix": lambda: eb.confusion_blob(t.model, t.test),
                "latent_cloud": lambda: self._cloud(eb),
                "feature_maps": lambda: eb.feature_maps_blob(t.model, "conv1", t.test.x[0]),
                "filters": lambda: eb.filters_blob(t.model, "conv2"),
                "grad_cam": lambda: eb.grad_cam_blob(t.model, "conv1", t.test.x[0]),
                "attention": lambda: eb.attention_blob(self.seed),
                "image": lambda: eb.image_blob(t.test.x[0]),
                "model_graph": lambda: eb.graph_blob(t.model, "Digits CNN", t.test.x[:1]),
                "note": lambda: eb.note_blob("New note"),
            }
            if kind in makers:
                self._publish(pid, makers[kind]())
        elif action in ("label", "retrain"):
            self._retrain(action, payload)

    def _layer_module(self, layer: str) -> str | None:
        """The module a graph node stands for (node names are module paths or ops in them)."""
        names = dict(self.trained.model.named_modules())
        for cand in (layer, layer.split(".")[0], layer.rsplit(".", 1)[0]):
            if cand in names and cand:
                return cand
        graph = self._graph_names()
        name = graph.get(layer)
        return name if name in names else None

    def _graph_names(self) -> dict[str, str]:
        room = self.session.current_room()
        if room is None or "graph" not in room.panels or not room.panels["graph"].content.refs:
            return {}
        from deeproom.content import decode_content

        meta, _ = decode_content(self.session.fetch_blob(room.panels["graph"].content.refs[0]))
        return {str(n.get("id")): str(n.get("name")) for n in meta.get("nodes", [])}

    def _open_layer(self, layer: str, payload: Mapping[str, Any]) -> None:
        name = self._layer_module(layer)
        if name is None:
            self._say(f"layer {layer!r} has no module to analyse", error=True)
            return
        self._open_layer_panels(self.trained.model, name, self.trained.test.x[3], payload, {"demo": "digits"})

    def _retrain(self, action: str, payload: Mapping[str, Any]) -> None:
        import torch
        from torch import nn

        from deeproom.scenes import engine_bridge as eb

        t = self.trained
        idx = [int(i) for i in payload.get("ids", []) if isinstance(i, int) and 0 <= i < len(t.test)]
        if not idx:
            self._say("no points selected", error=True)
            return
        x = t.test.x[idx]
        if action == "label":
            y = torch.full((len(idx),), int(payload.get("label", 0)) % len(t.test.classes), dtype=torch.long)
        else:
            y = t.test.y[idx]
        # Fill up to a batch with random training samples so the model does not forget the rest.
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
        self._publish("cloud", self._cloud(eb))
        self._publish("confusion", eb.confusion_blob(t.model, t.test))
        self._publish("metrics", eb.metrics_blob(h))
        self._say(f"{action} on {len(idx)} points: val acc {acc:.3f}", error=False)
