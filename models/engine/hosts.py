"""Hosts: what `deeproom open` and `deeproom demo` bring into a room, served by one EngineService.

A host runs its set-up on a thread (load the models and data, or train the demo CNN),
hosts the models in the service and sets `ready`; `request(action, payload)` (the app's
provider call) and "steer" events from the relay both end in the service. `failed` holds
the set-up error, if any. `close()` stops the service.
"""

from __future__ import annotations

import math
import threading
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deeproom.models.engine.link import EngineLink
from deeproom.models.engine.service import EngineService


def facing(pos: tuple[float, float, float], viewer: tuple[float, float, float] = (0.0, 1.6, 0.0)) -> list[float]:
    from deeproom.placement import facing_rotation

    return facing_rotation(pos, viewer)


def side_by_side(i: int, n: int, width: float = 2.4, gap: float = 0.3, depth: float = 3.3) -> dict[str, list[float]]:
    """Model `i` of `n` on a gentle arc in front of the viewer at the origin."""
    x = (i - (n - 1) / 2) * (width + gap)
    angle = math.atan2(x, depth)
    pos = (depth * math.sin(angle) * 1.05, 1.9, depth * math.cos(angle))
    return {"position": list(pos), "rotation": facing(pos), "scale": [1, 1, 1]}


class Host:
    """The shape shared by hosts: set-up on a thread, then the service serves requests."""

    thread_name = "deeproom-host"

    def __init__(self, link: EngineLink, *, seed: int = 0, progress: Callable[[str], None] | None = None,
                 notify: Callable[[str, bool], None] | None = None, cache_dir: str | None = None) -> None:
        self.link = link
        self.progress = progress or (lambda s: None)
        self._notify = notify or (lambda text, error: None)
        self.service = EngineService(link, seed=seed, cache_dir=cache_dir, notify=self.say)
        self.seed = seed
        self.ready = threading.Event()
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._main, name=self.thread_name, daemon=True)

    def say(self, text: str, error: bool = False) -> None:
        self.progress(text)
        self._notify(text, error)

    def start(self) -> Any:
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            self.setup()
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            self.say(f"{self.thread_name} failed: {self.failed}", True)
            traceback.print_exc()
        finally:
            self.ready.set()

    def setup(self) -> None:
        raise NotImplementedError

    def request(self, action: str, payload: Mapping[str, Any]) -> None:
        self.service.request(action, payload)

    def close(self) -> None:
        self.service.close()
        self.link.close()  # the engine's own participant leaves; an app's session is the app's to close


# --- deeproom open ----------------------------------------------------------------------------


class ModelsHost(Host):
    """`deeproom open MODEL... [--data PATH]`: each model's graph side by side, its actions declared,
    and with data an input strip beside it (choosing a tile recomputes that model's panels)."""

    thread_name = "deeproom-open"

    def __init__(self, link: EngineLink, paths: list[Path], *, data: Path | None = None,
                 preprocess: Mapping[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(link, **kw)
        self.paths = paths
        self.data = data
        self.preprocess = dict(preprocess or {})

    def setup(self) -> None:
        from deeproom.content import encode_content
        from deeproom.errors import DeepRoomError
        from deeproom.models.loading import load_model

        n = len(self.paths)
        for i, path in enumerate(self.paths):
            key = f"m{i + 1}"
            pid = f"graph-{i + 1}"
            try:
                loaded = load_model(path)
                dataset = load_data_for(self.data, path, loaded, self.preprocess) if self.data else None
                self.service.host_model(key, loaded, dataset, title=Path(loaded.source or loaded.name).name,
                                        graph_panel=pid, transform=side_by_side(i, n), strip=False)
                if dataset is not None:
                    skipped = sum(dict(getattr(dataset, "skipped", {}) or {}).values())
                    self.say(f"{path.name}: {len(dataset)} images from {self.data}"
                             + (f" ({skipped} skipped)" if skipped else ""), False)
            except (DeepRoomError, OSError) as exc:
                blob = encode_content({"kind": "note", "text": f"Could not open {path.name}:\n{exc}"}, {})
                self.service.put_panel(pid, blob, kind="note", title=f"{path.name} (not opened)",
                                       transform=side_by_side(i, n), size=(2.4, 1.1), source={"model": path.name})
            self.say(f"opened {path.name}", False)
        for h in list(self.service.hosted.values()):  # strips go beside their graphs once all graphs are placed
            if h.dataset is not None and len(h.dataset):
                self.service.publish_strip(h)
        if len(self.service.hosted) > 1:  # each graph also offers what needs the other models
            self.service.refresh_sources()


def load_data_for(data: Path, model_path: Path, loaded: Any, options: Mapping[str, Any]) -> Any:
    """The user's data for one model, preprocessed to its input: options (CLI) over the sidecar
    beside the model over what the model's input shape says (the data engineer's API when present)."""
    from deeproom.models import datasets as D

    if hasattr(D, "load_user_data") and hasattr(D, "resolve_preprocess"):
        opts = D.Preprocess.from_options(**{k: v for k, v in options.items() if v is not None})
        pre, sidecar = D.resolve_preprocess(model_path, loaded.input_shape, opts)
        classes = sidecar.classes if sidecar is not None else None
        return D.load_user_data(data, pre, classes=classes)
    return _fallback_data(data, loaded, options)


def _fallback_data(data: Path, loaded: Any, options: Mapping[str, Any]) -> Any:
    """Until the data API lands: read with load_dataset, then resize / channels / mean-std."""
    import torch
    import torch.nn.functional as F

    from deeproom.models.datasets import ImageDataset, load_dataset
    from deeproom.models.errors import DatasetError

    ds = load_dataset(data)
    x = ds.x
    shape = loaded.input_shape
    size = _size(options.get("size")) or (tuple(shape[2:4]) if shape is not None and len(shape) == 4
                                          and all(isinstance(d, int) for d in shape[2:4]) else None)
    if size is not None and tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    want_c = int(options["channels"]) if options.get("channels") else (
        shape[1] if shape is not None and len(shape) == 4 and isinstance(shape[1], int) else None)
    if want_c is not None and x.shape[1] != want_c:
        if x.shape[1] == 1:
            x = x.repeat(1, want_c, 1, 1)
        elif want_c == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise DatasetError(f"{data}: images have {x.shape[1]} channels; the model takes {want_c}")
    for name in ("mean", "std"):
        v = options.get(name)
        if v:
            vals = torch.tensor([float(t) for t in str(v).split(",")]).reshape(1, -1, 1, 1)
            x = x - vals if name == "mean" else x / vals
    return ImageDataset(x.contiguous(), ds.y, ds.classes, ds.name, ds.files)


def _size(text: Any) -> tuple[int, int] | None:
    if not text:
        return None
    parts = [int(p) for p in str(text).replace("x", ",").split(",") if p.strip()]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


# --- deeproom demo ----------------------------------------------------------------------------


class Slot:
    def __init__(self, panel_id: str, kind: str, title: str, angle: float, height: float,
                 size: tuple[float, float], radius: float = 3.3) -> None:
        self.panel_id, self.kind, self.title = panel_id, kind, title
        self.angle, self.height, self.size, self.radius = angle, height, size, radius


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
             "Click a layer for its feature maps, filters and Grad-CAM; right-click for more.\n"
             "Click in the latent cloud to select points, then press a digit to label them or R to retrain.")


def slot_transform(slot: Slot, viewer: tuple[float, float, float] = (0.0, 1.6, 0.0)) -> dict[str, list[float]]:
    a = math.radians(slot.angle)
    pos = (viewer[0] + slot.radius * math.sin(a), slot.height, viewer[2] + slot.radius * math.cos(a))
    return {"position": list(pos), "rotation": facing(pos, viewer), "scale": [1.0, 1.0, 1.0]}


class DemoHost(Host):
    """Trains the digits CNN (a few seconds) and fills the demo's panels; the model is hosted in
    the service, so a layer click or any declared action computes through the registry. The
    cloud's label and retrain actions are the host's own."""

    thread_name = "deeproom-demo-engine"

    def __init__(self, link: EngineLink, *, slots: list[Slot] | None = None, **kw: Any) -> None:
        super().__init__(link, **kw)
        self.slots = slots or DEMO_SLOTS
        self.trained: Any = None
        self._cloud_positions: Any = None

    def setup(self) -> None:
        import torch

        from deeproom.models.engine import demo as d

        torch.set_num_threads(2)
        room = self.link.current_room()
        for slot in self.slots:  # panels appear at once (loading cards) while the model trains
            if room is None or slot.panel_id not in room.panels:
                self.link.apply({"op": "add_panel", "panel_id": slot.panel_id, "kind": slot.kind,
                                 "title": slot.title, "transform": slot_transform(slot),
                                 "size": list(slot.size)}).result(30)
        self.say("training the digits CNN…")
        wanted = {s.panel_id for s in self.slots}

        def live(history: dict[str, list[float]], model: Any, test: Any) -> None:
            if "metrics" in wanted:
                self._publish("metrics", d.metrics_blob(history))
            if "cloud" in wanted:  # each epoch's cloud carries trails from the one before
                self.trained = d.TrainedDemo(model, None, test)
                self._publish("cloud", self._cloud())

        t = d.train_demo(self.seed, progress=self.progress, on_epoch=live)
        self.trained = t
        self.say(f"trained in {t.seconds:.1f} s; test accuracy {t.history['val_acc'][-1]:.3f}", False)
        self._host()
        sample = t.test.x[3]
        for pid, make in (("metrics", lambda: d.metrics_blob(t.history)), ("cloud", self._cloud),
                          ("image", lambda: d.image_blob(sample)), ("note", lambda: d.note_blob(DEMO_NOTE))):
            if pid in wanted:
                self._publish(pid, make())
        analyses = [("confusion", "confusion_matrix", {}), ("fmaps", "feature_maps", {"layer": "conv2"}),
                    ("filters", "filters", {"layer": "conv1"}), ("gradcam", "gradcam", {"layer": "conv2"})]
        self._run_slots([(p, a, q) for p, a, q in analyses if p in wanted], "digits")
        if "attention" in wanted:
            self._run_slots([("attention", "attention", {"layer": "blocks.0.attn.softmax"})], "vit")
        self.say("demo room ready", False)

    def _host(self) -> None:
        """(Re)host the trained model: a retrained model has a new digest, so nothing stale is cached."""
        import torch

        from deeproom.models.loading import load_model
        from deeproom.models.zoo import TinyViT

        t = self.trained
        loaded = load_model(t.model, input_shape=(1, 1, 8, 8), name="Digits CNN")
        wanted = {s.panel_id for s in self.slots}
        first = "digits" not in self.service.hosted
        h = self.service.host_model("digits", loaded, t.test, title="Digits CNN", graph_panel="graph",
                                    graph=first and "graph" in wanted, strip=False,
                                    transform=slot_transform(self.slots[0]))
        h.input_index = 3
        if not first:
            return
        torch.manual_seed(self.seed)
        vit = load_model(TinyViT().eval(), input_shape=(1, 1, 8, 8), name="tiny ViT")
        self.service.host_model("vit", vit, t.test, title="tiny ViT", graph=False, strip=False).input_index = 0
        if "cloud" in wanted:
            for name, label in (("label", "Label the selection"), ("retrain", "Retrain on the selection")):
                params: list[dict[str, Any]] = [{"name": "ids", "type": "selection"}]
                if name == "label":
                    params.append({"name": "label", "type": "class"})
                self.service.add_action("cloud", {"name": name, "label": label, "group": "Selection",
                                                  "role": "member", "on": "selection", "params": params},
                                        lambda req, name=name: self._retrain(name, req.params))

    def _run_slots(self, todo: list[tuple[str, str, dict[str, Any]]], key: str) -> None:
        """Compute analyses into the demo's panels through the service; wait until they are in."""
        from deeproom.models.engine.service import Request

        done = threading.Event()
        left = {p for p, _, _ in todo}
        if not left:
            return

        def submit() -> None:
            for pid, action, params in todo:
                req = Request(f"demo-{pid}", action, "graph", self.service.engine_id, dict(params),
                              self.service.hosted[key])

                def finished(blob: bytes | None, err: str | None, pid: str = pid) -> None:
                    left.discard(pid)
                    if err:
                        self.say(err, True)
                    if not left:
                        done.set()

                req.on_done = finished
                try:
                    self.service.submit(req, result_panel=pid,
                                        title=next(s.title for s in self.slots if s.panel_id == pid))
                except Exception as exc:  # one refused panel must not keep the others from the room
                    finished(None, f"{pid}: {exc}")

        self.service.run_on_thread(submit)
        done.wait(600)

    def _publish(self, pid: str, blob: bytes, source: dict[str, Any] | None = None) -> None:
        slot = next((s for s in self.slots if s.panel_id == pid), None)
        src = source or {"demo": "digits", "panel": pid, "engine": self.service.engine_id}
        if pid == "cloud" and "cloud" in self.service.extra:
            src = {**src, "actions": [a.declaration for a in self.service.extra["cloud"].values()],
                   "classes": [str(i) for i in range(10)]}
        self.service.put_panel(pid, blob, kind=slot.kind if slot else "image", title=slot.title if slot else pid,
                               size=slot.size if slot else (1.0, 0.8),
                               transform=slot_transform(slot) if slot else None, source=src)

    def _cloud(self) -> bytes:
        import numpy as np

        from deeproom.content import decode_content
        from deeproom.models.engine import demo as d

        blob: bytes = d.cloud_blob(self.trained.model, self.trained.test, previous=self._cloud_positions)
        self._cloud_positions = np.asarray(decode_content(blob)[1]["positions"])
        return blob

    def request(self, action: str, payload: Mapping[str, Any]) -> None:
        if action == "fill_panel":
            self.service.run_on_thread(lambda: self._fill(str(payload.get("kind")), str(payload.get("panel_id"))))
            return
        super().request(action, payload)

    def _fill(self, kind: str, pid: str) -> None:
        from deeproom.models.engine import demo as d

        t = self.trained
        if t is None:
            self.say("the model is still training", True)
            return
        makers: dict[str, Callable[[], bytes]] = {
            "metrics": lambda: d.metrics_blob(t.history), "latent_cloud": self._cloud,
            "image": lambda: d.image_blob(t.test.x[0]), "note": lambda: d.note_blob("New note"),
            "model_graph": lambda: d.graph_blob(t.model, "Digits CNN", t.test.x[:1]),
        }
        analyses = {"confusion_matrix": ("confusion_matrix", {}), "feature_maps": ("feature_maps", {"layer": "conv1"}),
                    "filters": ("filters", {"layer": "conv2"}), "grad_cam": ("gradcam", {"layer": "conv1"}),
                    "attention": ("attention", {"layer": "blocks.0.attn.softmax"})}
        if kind in makers:
            self.service.put_panel(pid, makers[kind](), kind=kind, title=kind, source={"demo": "digits"})
        elif kind in analyses:
            from deeproom.models.engine.service import Request

            action, params = analyses[kind]
            key = "vit" if kind == "attention" else "digits"
            self.service.submit(Request(f"fill-{pid}"[:64], action, "graph", self.service.engine_id, dict(params),
                                        self.service.hosted[key]), result_panel=pid)

    def _retrain(self, action: str, params: Mapping[str, Any]) -> str:
        from deeproom.models.engine import demo as d

        t = self.trained
        if t is None:
            return "the model is still training"
        msg = d.retrain(t, action, params)
        self._host()  # new weights, new digest
        self._publish("cloud", self._cloud())
        from deeproom.models.engine.service import Request

        req = Request(f"retrain-confusion-{len(t.history['step'])}", "confusion_matrix", "graph",
                      self.service.engine_id, {}, self.service.hosted["digits"])
        self.service.submit(req, result_panel="confusion", title="Confusion matrix (test)")
        self._publish("metrics", d.metrics_blob(t.history))
        self.say(msg, False)
        return msg
