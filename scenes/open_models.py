"""The engine side of `deeproom open MODEL...`: each model's graph placed side by side.

Runs in its own thread: loads each file with the engine's loader (ONNX, TorchScript,
exported programs, weights-only checkpoints; refusals are shown in the room as a
note), extracts its graph and publishes it as a `model_graph` blob. Large graphs
open with their top-level groups collapsed (the graph view decides).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

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
        while (item := self._queue.get()) is not None:
            action, _ = item
            self._say(f"{action}: per-layer analyses of opened models are not available yet", error=True)

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
            except (DeepRoomError, OSError) as exc:
                blob = eb.note_blob(f"Could not open {path.name}:\n{exc}")
                kind, title = "note", f"{path.name} (not opened)"
            sha = self.session.put_blob(blob).result(60)
            room = self.session.current_room()
            content = {"source": {"model": path.name}, "refs": [sha]}
            if room is not None and pid in room.panels:
                self.session.apply({"op": "set_content", "panel_id": pid, "content": content}).result(30)
            else:
                self.session.apply({"op": "add_panel", "panel_id": pid, "kind": kind, "title": title[:120],
                                    "transform": side_by_side(i, n), "size": [2.4, 1.1], "content": content}).result(30)
            self._say(f"opened {path.name}", error=False)
