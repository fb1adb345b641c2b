"""A watched run and a labeling loop host their panels through the engine service.

`RunEngine(run, link)` puts an `EngineService` (`deeproom.models.engine`) on the run's own
participant (`EngineLinkOver`): the run's graph panel `<run>.graph` declares the analyses of
the live model (the registry's, as for an opened model), so a layer click or a picked
action computes feature maps, filters, CAMs... there; the metrics panel declares pause,
resume, stop, learning rate and checkpoints (save, restore, compare: the difference is a
panel); the embedding cloud declares retraining on a selection; the graph declares
freezing a layer (or, with an optional "filters" list, some of its filters), and a filters
panel of the run declares freezing and unfreezing the clicked filter tile. Every action is role-checked and answered with the service's "stream"
reports. Steering payloads with "cmd" (freeze, set_lr, ...) keep working as before.

Thread safety: an analysis never touches the model being trained. When one is asked for,
the engine asks the run for its weights at the next safe point (between two optimizer
steps, on the training thread, where steering commands run too: one `state_dict` clone),
loads them into its own copy of the architecture on the service's thread and computes on
that copy; the result panel's source says the step. A closed run hands its weights over at once.

`LabelEngine(loop, link)` does the same for a labeling loop: its cloud declares `label`
(the selected points get a class) and `retrain` (fine-tune on the selection's labels).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from deeproom.models.training.link import EngineLinkOver, RelayLink

if TYPE_CHECKING:
    from deeproom.models.engine.service import Request
    from deeproom.models.training.latent import LabelingLoop
    from deeproom.models.training.run import Run

log = logging.getLogger(__name__)

MEMBER = "member"


def _action(name: str, label: str, group: str, params: list[dict[str, Any]] | None = None,
            on: str | None = None, kind: str | None = None) -> dict[str, Any]:
    a: dict[str, Any] = {"name": name, "label": label, "group": group, "role": MEMBER, "params": params or []}
    if on:
        a["on"] = on
    if kind:
        a["kind"] = kind
    return a


def _route_to(service: Any) -> Callable[[str, dict[str, Any]], bool]:
    """Panel actions ({"action", "request_id", ...}) and layer clicks ({"cmd": "open_layer"}) go to the
    service; other payloads ({"cmd": ...}: steering) stay with the run."""

    def route(sender: str, payload: dict[str, Any]) -> bool:
        if "action" in payload and "request_id" in payload:
            service.steer(sender, payload)
            return True
        if payload.get("cmd") == "open_layer":
            service.request("open_layer", payload)
            return True
        return False

    return route


class RunEngine:
    """The engine of a watched run (see the module's text)."""

    def __init__(self, run: Run, link: RelayLink) -> None:
        from deeproom.models.engine.service import EngineService

        self.run = run
        self.link = link
        self.service = _run_service(EngineService)(EngineLinkOver(link), seed=run.options.seed, notify=self._notify)
        self.service.filter_actions = self._filter_actions
        self.graph_panel = f"{run.name}.graph"
        self.key = run.name
        self._template = copy.deepcopy(run.model)  # the architecture; weights come from snapshots
        for m in self._template.modules():
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        self._last: Any = None
        x, y = _data(run)
        self.input_shape = (1, *x.shape[1:]) if x is not None else None
        self.dataset = _dataset(x, y, run.classes, run.name) if x is not None and x.dim() == 4 else None
        for panel, decls in self._declarations().items():
            for decl in decls:
                self.service.add_action(panel, decl, self._handler(decl["name"]))
        if self.input_shape is not None:
            # watch() is called before training starts: the weights are still, and the graph is traced
            # now, on this thread (torch.fx patches every module call while it traces: never during a step).
            from deeproom.models.graph import extract_graph, graph_blob

            first = self._build(run._weights(), run.step)
            try:
                g = extract_graph(first)
            except Exception as exc:  # a model the tracer cannot follow: the run goes on without a graph
                run._report({"type": "error", "where": "graph", "message": f"no graph panel: {exc}"})
            else:
                content = (graph_blob(g), len(g.nodes))
                self.service.run_on_thread(lambda: self._host(first, content))
        link.route(_route_to(self.service))

    def _notify(self, text: str, error: bool) -> None:
        """What the service says outside an action report (a bad layer click) goes out as run events."""
        if error:
            self.run._report({"type": "error", "where": "engine", "message": text[:500]})

    # --- the graph: the live model, analysed on copies ---------------------------------------

    def _host(self, first: Any, content: tuple[bytes, int]) -> None:
        self.service.host_model(self.key, first, self.dataset, title=f"{self.run.name}: model",
                                graph_panel=self.graph_panel, strip=False, graph_content=content,
                                extra_source={"kind": "live_training", "run": self.run.name, "what": "graph"},
                                live=self._live)

    def _live(self, done: Callable[[Any], None]) -> None:
        """Fresh weights for an analysis: cloned between two steps, loaded into a copy on our thread."""
        run = self.run

        def take() -> None:  # on the training thread, between two steps
            weights, step = run._weights(), run.step
            self.service.run_on_thread(lambda: done(self._build(weights, step)))

        run.at_safe_point(take)

    def _build(self, weights: dict[str, torch.Tensor], step: int) -> Any:
        from deeproom.models.loading import load_model
        from deeproom.models.tasks import _module_with

        loaded = load_model(_module_with(self._template, weights), input_shape=self.input_shape, name=self.run.name)
        if self._last is not None and self._last.digest == loaded.digest:
            return self._last  # unchanged weights: same model, same cached results
        loaded.extra["step"] = step
        self._last = loaded
        return loaded

    # --- the run's own actions: steering commands, run at the next step ------------------------

    def _declarations(self) -> dict[str, list[dict[str, Any]]]:
        name = self.run.name
        layer = [{"name": "layer", "type": "layer"}]
        return {
            self.graph_panel: [
                _action("freeze", "Freeze this layer", "Training", layer, on="layer"),
                _action("unfreeze", "Unfreeze this layer", "Training", layer, on="layer"),
                _action("embed_layer", "Embed this layer", "Training", layer, on="layer"),
            ],
            f"{name}.metrics": [
                _action("pause", "Pause", "Training"), _action("resume", "Resume", "Training"),
                _action("stop", "Stop", "Training"),
                _action("set_lr", "Learning rate", "Training",
                        [{"name": "lr", "type": "float", "min": 1e-6, "max": 10.0, "default": 1e-3}]),
                _action("save_checkpoint", "Save a checkpoint", "Checkpoints"),
                _action("restore_checkpoint", "Restore a checkpoint", "Checkpoints",
                        [{"name": "name", "type": "choice", "choices": []}]),
                _action("compare_checkpoints", "Checkpoint difference", "Checkpoints",
                        [{"name": "a", "type": "choice", "choices": []}, {"name": "b", "type": "choice", "choices": []}],
                        kind="metrics"),
            ],
            f"{name}.embedding": [
                _action("retrain", "Retrain on the selection", "Selection",
                        [{"name": "ids", "type": "selection"},
                         {"name": "steps", "type": "int", "min": 1, "max": 1000, "default": 30}], on="selection"),
                _action("retrain_misclassified", "Retrain on the misclassified points", "Selection"),
                _action("retrain_low_confidence", "Retrain on the low-confidence points", "Selection"),
            ],
        }

    def _filter_actions(self, panel_id: str, layer: str) -> list[dict[str, Any]]:
        """A filters panel of the run's layer `layer` (computed on the service's thread) offers freezing
        and unfreezing the clicked filter tile: declared on that panel, the layer taken from it."""
        decls = [_action(f"{verb}_filter", f"{verb.capitalize()} this filter", "Training",
                         [{"name": "filter", "type": "tile"}], on="tile") for verb in ("freeze", "unfreeze")]
        for decl in decls:
            self.service.add_action(panel_id, decl, self._handler(decl["name"], layer))
        return [copy.deepcopy(d) for d in decls]

    def declare(self, what: str) -> dict[str, Any]:
        """The source keys of the run's panel `what` ("metrics", "latent_cloud", ...): engine, actions
        and unavailable ones with the reason (checkpoint choices follow the checkpoints saved)."""
        panel = {"metrics": "metrics", "latent_cloud": "embedding"}.get(what)
        out: dict[str, Any] = {"engine": self.service.engine_id}
        if panel is None:
            return out
        names = self.run.checkpoint_names()[:50]
        actions, unavailable = [], []
        for ex in self.service.extra.get(f"{self.run.name}.{panel}", {}).values():
            a = copy.deepcopy(ex.declaration)
            if a["name"] in ("restore_checkpoint", "compare_checkpoints"):
                need = 1 if a["name"] == "restore_checkpoint" else 2
                if len(names) < need:
                    unavailable.append({"name": a["name"], "label": a["label"],
                                        "reason": f"save {'a checkpoint' if need == 1 else 'two checkpoints'} first"})
                    continue
                for i, p in enumerate(a["params"]):
                    p["choices"] = names
                    p["default"] = names[-1] if a["name"] == "restore_checkpoint" or i == 1 else names[-2]
            if a["name"].startswith("retrain") and (self.run.optimizer is None or self.run.probe is None):
                unavailable.append({"name": a["name"], "label": a["label"],
                                    "reason": "retraining needs the optimizer and probe points: pass optimizer= "
                                              "and train_data= to watch()"})
                continue
            actions.append(a)
        out["actions"] = actions
        if unavailable:
            out["unavailable"] = unavailable
        return out

    def _handler(self, action: str, layer: str | None = None) -> Callable[[Request], str | None]:
        """`layer`: the layer of the panel the action is declared on (freeze_filter, unfreeze_filter)."""
        from deeproom.models.engine.service import DEFERRED, Refused

        def handle(req: Request) -> str | None:
            if self.run.stopped:
                raise Refused(f"the run has {self.run.status}; it takes no more steering")
            p = req.params
            cmd: dict[str, Any] = {"cmd": action}
            if action in ("freeze", "unfreeze", "embed_layer"):
                cmd["layer"] = p.get("layer")
                if action != "embed_layer" and p.get("filters") is not None:
                    cmd["filters"] = p.get("filters")  # optional: only these filters (output channels)
            elif action in ("freeze_filter", "unfreeze_filter"):
                index = p.get("filter")
                if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                    raise Refused("filter must be the index of a filter (click a filter tile)")
                cmd = {"cmd": action.removesuffix("_filter"), "layer": layer, "filters": [index]}
            elif action == "set_lr":
                cmd["lr"] = p.get("lr")
            elif action == "save_checkpoint":
                cmd["name"] = p.get("name") or f"step-{self.run.step}"
            elif action == "restore_checkpoint":
                cmd["name"] = p.get("name")
            elif action == "compare_checkpoints":
                cmd["a"], cmd["b"] = p.get("a"), p.get("b")
            elif action == "retrain":
                cmd.update(select="ids", ids=p.get("ids"), steps=p.get("steps", 30))
            elif action in ("retrain_misclassified", "retrain_low_confidence"):
                cmd = {"cmd": "retrain", "select": action.removeprefix("retrain_")}
            from deeproom.models.training.errors import SteerError
            from deeproom.models.training.steering import parse_steer

            try:
                parse_steer(cmd)  # what is wrong with the params is refused at once, not at the next step
            except SteerError as exc:
                raise Refused(str(exc)) from None
            self.run.steer(cmd, req.sender, lambda ok, message: self.service.answer(
                req, "done" if ok else "failed", message))
            return DEFERRED

        return handle

    def close(self) -> None:
        self.link.route(None)
        self.service.close()


class LabelEngine:
    """The engine of a labeling loop: its cloud `<name>.latent` declares label and retrain on a selection."""

    def __init__(self, loop: LabelingLoop, link: RelayLink) -> None:
        from deeproom.models.engine.service import EngineService

        self.loop = loop
        self.link = link
        self.service = EngineService(EngineLinkOver(link), seed=0)
        self.panel = f"{loop.name}.latent"
        classes = loop.session.classes
        ids = {"name": "ids", "type": "selection"}
        for decl in (_action("label", "Label the selection", "Selection",
                             [ids, {"name": "label", "type": "class"}], on="selection"),
                     _action("retrain", "Retrain on the selection's labels", "Selection", [ids], on="selection")):
            self.service.add_action(self.panel, decl, self._handler(decl["name"], len(classes)))
        link.route(_route_to(self.service))

    def declare(self) -> dict[str, Any]:
        return {"engine": self.service.engine_id,
                "actions": [copy.deepcopy(a.declaration) for a in self.service.extra.get(self.panel, {}).values()],
                "classes": list(self.loop.session.classes)[:64]}

    def _handler(self, action: str, n_classes: int) -> Callable[[Request], str | None]:
        from deeproom.models.engine.service import DEFERRED, Refused

        def handle(req: Request) -> str | None:
            ids = req.params.get("ids")
            if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise Refused("select some points first: ids must be a non-empty list of point ids")
            if action == "label":
                label = req.params.get("label")
                if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < n_classes:
                    raise Refused(f"label must be a class index in [-1, {n_classes - 1}] (-1 removes labels)")
                cmd: dict[str, Any] = {"cmd": "label_ids", "ids": ids, "label": label}
            else:
                cmd = {"cmd": "retrain_ids", "ids": ids}
            self.loop.submit(cmd, req.sender, lambda ok, message: self.service.answer(
                req, "done" if ok else "failed", message))
            return DEFERRED

        return handle

    def close(self) -> None:
        self.link.route(None)
        self.service.close()


def _run_service(base: type) -> type:
    """The engine service of a run: a filters result panel's source also declares the run's own
    freeze_filter / unfreeze_filter actions (`filter_actions(panel_id, layer)`, set by RunEngine)."""

    class RunService(base):  # type: ignore[valid-type, misc]
        filter_actions: Callable[[str, str], list[dict[str, Any]]] | None = None

        def _result_source(self, req: Request) -> dict[str, Any]:
            source: dict[str, Any] = super()._result_source(req)
            layer = source.get("layer")
            if req.action == "filters" and req.result_panel and isinstance(layer, str) and self.filter_actions:
                source["actions"] = [*source.get("actions", []), *self.filter_actions(req.result_panel, layer)]
            return source

    return RunService


def _data(run: Run) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The inputs analyses are computed on: the validation data, else the probe points."""
    if run.val_data is not None:
        return run.val_data[0][:2000], run.val_data[1][:2000]
    if run.probe is not None:
        return run.probe.x, run.probe.y
    if run.train_data is not None:
        return run.train_data[0][:2000], run.train_data[1][:2000]
    return None, None


def _dataset(x: torch.Tensor, y: torch.Tensor | None, classes: list[str] | None, name: str) -> Any:
    from deeproom.models.datasets import ImageDataset

    yy = y if y is not None else torch.full((len(x),), -1, dtype=torch.long)
    n = int(yy.max()) + 1 if len(yy) and int(yy.max()) >= 0 else 0
    names = tuple(classes) if classes else tuple(str(i) for i in range(n))
    return ImageDataset(x.float().contiguous(), yy.long(), names, f"run {name}")
