"""The engine side of `deeproom open MODEL...`: each model's graph placed side by side.

Runs in its own thread: loads each file with the engine's loader (ONNX, TorchScript,
exported programs, weights-only checkpoints; refusals are shown in the room as a
note), extracts its graph and publishes it as a `model_graph` blob. Large graphs
open with their top-level groups collapsed (the graph view decides). A click on a
layer opens its feature maps, filters and Grad-CAM, computed on a sample input: a
digit from the built-in set, resized to the model's input (1, C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deeproom.scenes import engine_bridge as eb
from deeproom.scenes import geometry
from deeproom.scenes.session import Session


def side_by_side(i: int, n: int, width: float = 2.4, gap: float = 0.3, depth: float = 3.3) -> dict[str, list[float]]:
    """Model `i` of `n` on a gentle arc in front of the viewer at the origin."""
    x = (i - (n - 1) / 2) * (width + gap)
    angle = math.atan2(x, depth)
    pos = (depth * math.sin(angle) * 1.05, 1.9, depth * math.cos(angle))
    return {"position": list(pos), "rotation": list(geometry.facing_quat(pos, (0, 1.6, 0))), "scale": [1, 1, 1]}


class ModelsEngine(eb.EngineThread):
    """Loads each model, extracts its graph and publishes it, in a thread."""

    thread_name = "deeproom-open"

    def __init__(self, session: Session, paths: list[Path], *, progress: Callable[[str], None] | None = None) -> None:
        super().__init__(session, progress)
        self.paths = paths
        self.models: dict[str, Any] = {}  # graph panel id -> LoadedModel

    def start(self) -> ModelsEngine:
        super().start()
        return self

    def _main(self) -> None:
        try:
            self._open_all()
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            self._say(f"opening models failed: {self.failed}", error=True)
        finally:
            self.ready.set()
        self._serve_requests()

    def _handle(self, action: str, payload: Mapping[str, Any]) -> None:
        if action == "open_layer":
            loaded = self.models.get(str(payload.get("panel_id")))
            if loaded is None:
                self._say("that graph's model was not opened by this app", error=True)
                return
            self._open_layer_panels(loaded.module, str(payload.get("layer", "")), sample_input(loaded), payload,
                                    {"model": Path(loaded.source or loaded.name).name})
        elif action == "fill_panel" and payload.get("kind") == "note":
            self._put_panel(str(payload.get("panel_id")), eb.note_blob("New note"), kind="note", title="Note",
                            transform={}, size=(1.2, 0.9), source={})
        else:
            self._say(f"{action}: opened models fill graphs and, from a layer click, its maps, filters and "
                      "Grad-CAM; add other panels in the demo or from a training run", error=True)

    def _open_all(self) -> None:
        from deeproom.errors import DeepRoomError
        from deeproom.models.graph import extract_graph
        from deeproom.models.graph import graph_blob as engine_graph_blob
        from deeproom.models.loading import load_model

        n = len(self.paths)
        for i, path in enumerate(self.paths):
            pid = f"graph-{i + 1}"
            try:
                loaded = load_model(path)
                graph = extract_graph(loaded)
                blob = engine_graph_blob(graph)
                kind, title = "model_graph", f"{loaded.name} — {len(graph.nodes)} ops"
                self.models[pid] = loaded
            except (DeepRoomError, OSError) as exc:
                blob = eb.note_blob(f"Could not open {path.name}:\n{exc}")
                kind, title = "note", f"{path.name} (not opened)"
            self._put_panel(pid, blob, kind=kind, title=title, transform=side_by_side(i, n), size=(2.4, 1.1),
                            source={"model": path.name})
            self._say(f"opened {path.name}", error=False)


def sample_input(loaded: Any) -> Any:
    """One image the model can take, [C, H, W]: a digit from the built-in set, resized to
    the model's input and repeated over its channels. Refuses models that take no image."""
    import torch
    import torch.nn.functional as F

    from deeproom.models.datasets import load_digits
    from deeproom.models.errors import AnalysisError

    shape = loaded.input_shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise AnalysisError(f"per-layer analyses need an image input (1, C, H, W); {loaded.name} takes {shape}")
    _, c, h, w = shape
    digit = torch.as_tensor(load_digits().x[3], dtype=torch.float32).reshape(1, 1, 8, 8)
    return F.interpolate(digit, size=(h, w), mode="bilinear", align_corners=False).repeat(1, c, 1, 1)[0]
