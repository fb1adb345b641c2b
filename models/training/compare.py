"""Epoch differences and run comparisons, as data the scenes can show.

`CheckpointDiff(model, layer).compute(inputs, a, b)` says how a layer's activations
and filters and the embedding positions changed between two checkpoints.
`weight_difference(a, b)` compares two state dicts of one architecture layer by layer
(change norm, relative change, per-filter change, the filters that changed most) and
`prediction_difference(model_a, model_b, x, y)` what the two predict on the same inputs;
`deeproom.models.blobs.checkpoint_diff_blob` makes them one panel.
`overlay_runs` lays two or more runs' metric series on one x axis (one metrics blob
with series "<run>/<name>"); `confusion_side_by_side` gives each run's confusion
matrix with its own precision/recall/F1, ready for panels next to each other.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from deeproom.models.training.checkpoints import Checkpoint
from deeproom.models.training.errors import TrainingError
from deeproom.models.training.link import RoomLink


@dataclass
class CheckpointDifference:
    """How one layer and the embedding changed from checkpoint a to checkpoint b."""

    layer: str
    activation_change: torch.Tensor
    """Per filter (output channel): mean |act_b − act_a| over the inputs, divided by mean |act_a|."""
    filter_change: torch.Tensor
    """Per filter: ‖w_b − w_a‖ / ‖w_a‖."""
    weight_change: dict[str, float]
    """Per parameter tensor of the whole model: ‖b − a‖ / ‖a‖."""
    position_change: torch.Tensor | None
    """Per embedded point: distance moved, when both checkpoints hold positions of the same points."""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer,
            "activation_change": [round(float(v), 5) for v in self.activation_change[:512]],
            "filter_change": [round(float(v), 5) for v in self.filter_change[:512]],
            "weight_change": {k: round(v, 5) for k, v in list(self.weight_change.items())[:200]},
        }
        if self.position_change is not None:
            out["mean_position_change"] = float(self.position_change.mean())
        return out


class CheckpointDiff:
    """Compare two checkpoints of one model at one layer."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        modules = dict(model.named_modules())
        if layer not in modules or not layer:
            raise TrainingError(f"no layer named {layer!r}; layers: {', '.join(n for n in modules if n)[:400]}")
        self.model = model
        self.layer = layer

    @torch.no_grad()
    def _activations(self, model: nn.Module, state: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        model.load_state_dict(dict(state))
        model.eval()
        got: list[torch.Tensor] = []
        handle = dict(model.named_modules())[self.layer].register_forward_hook(lambda m, i, o: got.append(o.detach()))
        try:
            model(inputs)
        finally:
            handle.remove()
        return got[0]

    def compute(self, inputs: torch.Tensor, a: Checkpoint, b: Checkpoint) -> CheckpointDifference:
        work = copy.deepcopy(self.model)  # the live model keeps its weights
        for m in work.modules():
            m._forward_hooks.clear()
        act_a = self._activations(work, a.model, inputs)
        act_b = self._activations(work, b.model, inputs)
        dims = [0, *range(2, act_a.dim())]
        act_change = (act_b - act_a).abs().mean(dim=dims) / act_a.abs().mean(dim=dims).clamp_min(1e-8)
        wkey = f"{self.layer}.weight"
        if wkey in a.model and wkey in b.model:
            wa, wb = a.model[wkey].flatten(1), b.model[wkey].flatten(1)
            filt = (wb - wa).norm(dim=1) / wa.norm(dim=1).clamp_min(1e-8)
        else:
            filt = torch.zeros(0)
        weights = {
            k: float((b.model[k].float() - v.float()).norm() / v.float().norm().clamp_min(1e-8))
            for k, v in a.model.items() if k in b.model and v.is_floating_point() and v.shape == b.model[k].shape
        }
        pa, pb = a.arrays.get("positions"), b.arrays.get("positions")
        moved = (pb - pa).norm(dim=1) if pa is not None and pb is not None and pa.shape == pb.shape else None
        return CheckpointDifference(self.layer, act_change, filt, weights, moved)


PARAMETER_SUFFIXES = ("weight", "bias")
SKIPPED_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def layer_of(name: str) -> str:
    """The layer a state-dict entry belongs to: "conv1.weight" -> "conv1"; ONNX initializers
    ("weights.conv1_weight") -> "conv1"; anything else is its own layer."""
    head, _, tail = name.rpartition(".")
    if tail in PARAMETER_SUFFIXES and head:
        return head
    for suffix in PARAMETER_SUFFIXES:
        if tail.endswith("_" + suffix) and len(tail) > len(suffix) + 1:
            return tail[: -len(suffix) - 1] if head == "weights" else f"{head}.{tail[: -len(suffix) - 1]}".lstrip(".")
    return name


def matching_parameters(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> str | None:
    """None when two state dicts have the same floating-point entries (names and shapes), else why not."""
    fa = {k: tuple(v.shape) for k, v in a.items() if v.is_floating_point()}
    fb = {k: tuple(v.shape) for k, v in b.items() if v.is_floating_point()}
    if not fa:
        return "the model has no floating-point parameters"
    if set(fa) != set(fb):
        only = sorted(set(fa) ^ set(fb))
        return f"the parameter names differ ({len(only)} not in both, e.g. {only[0]!r})"
    bad = [k for k in fa if fa[k] != fb[k]]
    if bad:
        return f"parameter {bad[0]!r} has shape {list(fa[bad[0]])} in one and {list(fb[bad[0]])} in the other"
    return None


@dataclass
class WeightDifference:
    """Layer by layer, how the weights changed from state a to state b."""

    layers: list[str]
    """Layer names in state-dict order."""
    change_norm: np.ndarray
    """Per layer: ‖b − a‖ over all its parameters (float64 [L])."""
    base_norm: np.ndarray
    """Per layer: ‖a‖ (float64 [L])."""
    relative_change: np.ndarray
    """Per layer: ‖b − a‖ / ‖a‖ (0 for an untouched layer)."""
    filter_change: dict[str, np.ndarray]
    """Per layer with a weight of 2+ dimensions: ‖w_b[i] − w_a[i]‖ / ‖w_a[i]‖ per filter (output channel)."""
    top_filters: list[tuple[str, int, float]]
    """The filters that changed most (relatively): (layer, filter, change), largest first."""


def weight_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *, top: int = 16) -> WeightDifference:
    """Compare two state dicts of one architecture (refused with the reason when they do not match)."""
    reason = matching_parameters(a, b)
    if reason is not None:
        raise TrainingError(f"the checkpoints do not match: {reason}")
    sq_change: dict[str, float] = {}
    sq_base: dict[str, float] = {}
    filters: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for k, va in a.items():
            if not va.is_floating_point() or k.rpartition(".")[2] in SKIPPED_BUFFERS:
                continue
            fa, fb = va.detach().double(), b[k].detach().double()
            d = fb - fa
            layer = layer_of(k)
            sq_change[layer] = sq_change.get(layer, 0.0) + float((d * d).sum())
            sq_base[layer] = sq_base.get(layer, 0.0) + float((fa * fa).sum())
            if fa.dim() >= 2 and layer not in filters:
                per = d.reshape(d.shape[0], -1).norm(dim=1) / fa.reshape(fa.shape[0], -1).norm(dim=1).clamp_min(1e-12)
                filters[layer] = per.numpy()
    layers = list(sq_change)
    change = np.sqrt(np.asarray([sq_change[n] for n in layers], np.float64))
    base = np.sqrt(np.asarray([sq_base[n] for n in layers], np.float64))
    relative = np.where(base > 0, change / np.maximum(base, 1e-12), change)
    ranked = sorted(((layer, i, float(v)) for layer, per in filters.items() for i, v in enumerate(per)),
                    key=lambda t: -t[2])
    return WeightDifference(layers, change, base, relative, filters, [t for t in ranked[:top] if t[2] > 0])


@dataclass
class PredictionDifference:
    """What two models predict on the same inputs."""

    predictions_a: np.ndarray
    predictions_b: np.ndarray
    changed: float
    """Fraction of inputs whose predicted class differs."""
    accuracy_a: float | None
    """Accuracy against the labels (None without labels)."""
    accuracy_b: float | None


@torch.no_grad()
def prediction_difference(model_a: nn.Module, model_b: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                          batch: int = 256) -> PredictionDifference:
    """Predicted classes of both models on `x` (eval mode), how many differ, and each one's accuracy on `y`
    (labels below 0 do not count)."""
    preds = []
    for m in (model_a, model_b):
        was = m.training
        m.eval()
        try:
            preds.append(torch.cat([m(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy())
        finally:
            m.train(was)
    pa, pb = preds
    changed = float((pa != pb).mean()) if len(pa) else 0.0
    acc_a = acc_b = None
    if y is not None:
        yy = np.asarray(y)
        known = yy >= 0
        if known.any():
            acc_a, acc_b = float((pa[known] == yy[known]).mean()), float((pb[known] == yy[known]).mean())
    return PredictionDifference(pa, pb, changed, acc_a, acc_b)


def confusion_meta(matrix: np.ndarray, classes: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """The confusion_matrix blob's meta: labels and per-class precision, recall, F1 (rows true, cols predicted)."""
    m = np.asarray(matrix, np.float64)
    n = m.shape[0]
    tp = np.diag(m) if n else np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(m.sum(0) > 0, tp / np.maximum(m.sum(0), 1), 0.0)
        recall = np.where(m.sum(1) > 0, tp / np.maximum(m.sum(1), 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    labels = list(classes)[:n] if classes else [str(i) for i in range(n)]
    labels += [str(i) for i in range(len(labels), n)]
    return {"kind": "confusion_matrix", "labels": labels, "precision": [round(float(v), 4) for v in precision],
            "recall": [round(float(v), 4) for v in recall], "f1": [round(float(v), 4) for v in f1], **extra}


def overlay_runs(runs: Mapping[str, Mapping[str, np.ndarray]], series: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One metrics blob with each run's series on a common step axis ("<run>/<series>", NaN where absent).

    Each value in `runs` is a metrics table (as `Run.metrics_table()` gives): "step" plus series.
    """
    if not runs:
        raise TrainingError("overlay_runs needs at least one run")
    steps = np.unique(np.concatenate([np.asarray(t["step"], np.float64) for t in runs.values()]))
    arrays: dict[str, np.ndarray] = {"step": steps.astype(np.float32)}
    names: list[str] = []
    for run, table in runs.items():
        if "step" not in table:
            raise TrainingError(f"run {run!r}: a metrics table needs a 'step' series")
        pos = np.searchsorted(steps, np.asarray(table["step"], np.float64))
        for key, values in table.items():
            if key == "step" or (series is not None and key not in series):
                continue
            col = np.full(len(steps), np.nan, np.float32)
            col[pos] = np.asarray(values, np.float32)
            arrays[f"{run}/{key}"] = col
            names.append(f"{run}/{key}")
    if len(arrays) > 64:
        raise TrainingError(f"{len(arrays)} series do not fit one blob (at most 64); pass series= to choose")
    return {"kind": "metrics", "series": names, "x": "step", "runs": list(runs)}, arrays


def confusion_side_by_side(matrices: Mapping[str, np.ndarray], classes: Sequence[str] | None = None) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """One confusion_matrix blob per run (same labels, same class order), in the given order."""
    shapes = {np.asarray(m).shape for m in matrices.values()}
    if len(shapes) > 1:
        raise TrainingError(f"confusion matrices to compare must have one shape; got {sorted(shapes)}")
    return [
        (confusion_meta(np.asarray(m), classes, run=name, title=f"{name}: confusion matrix"), {"matrix": np.asarray(m, np.int32)})
        for name, m in matrices.items()
    ]


def publish_comparison(link: RoomLink, tables: Mapping[str, Mapping[str, np.ndarray]],
                       matrices: Mapping[str, np.ndarray] | None = None, *, name: str = "compare",
                       classes: Sequence[str] | None = None, series: Sequence[str] | None = ("loss", "val_acc")) -> list[str]:
    """Put two or more runs side by side in a room: one panel of overlaid curves, one confusion matrix per run.

    `tables` are metrics tables (`Run.metrics_table()`), `matrices` confusion matrices
    (a run's last validation one, for instance). Returns the panel ids.
    """
    meta, arrays = overlay_runs(tables, series)
    source = {"kind": "run_comparison", "runs": list(tables)}
    ids = [f"{name}.curves"]
    link.publish(ids[0], "metrics", f"{name}: {' vs '.join(tables)}", source, lambda: (meta, arrays))
    for (cm_meta, cm_arrays), run in zip(confusion_side_by_side(matrices or {}, classes), list(matrices or {}), strict=True):
        pid = f"{name}.confusion.{run}"
        ids.append(pid)
        link.publish(pid, "confusion_matrix", f"{name}: {run}", {**source, "run": run},
                     lambda m=cm_meta, a=cm_arrays: (m, a))
    return ids
