"""Steering commands from the room, validated, and the freezing of layers and filters.

Commands arrive as "steer" event payloads from other participants (the relay has
already checked that the sender may steer); here each payload is checked field by
field and turned into a typed command, or refused with a `SteerError` that says what
was wrong and what is allowed. `Freezer` makes a frozen layer or filter really stop
changing: a frozen layer's parameters get `requires_grad=False` (so backward skips
them and the epoch gets cheaper), a frozen filter's gradient rows are zeroed before
each optimizer step and its values put back after it (momentum and weight decay in
Adam/SGD would otherwise still move it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deeproom.models.training.checkpoints import check_checkpoint_name
from deeproom.models.training.errors import SteerError

MAX_IDS = 100_000
MAX_FILTERS = 65_536
SELECTIONS = ("misclassified", "low_confidence", "ids")


@dataclass(frozen=True)
class Freeze:
    """Stop updating a layer (all its parameters) or some of its filters (output channels)."""

    layer: str
    filters: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Unfreeze:
    """Resume updating a layer or some of its filters."""

    layer: str
    filters: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Pause:
    """Hold the training loop at its next step until resumed or stopped."""


@dataclass(frozen=True)
class Resume:
    """Let a paused training loop go on."""


@dataclass(frozen=True)
class Stop:
    """End the run at its next step."""


@dataclass(frozen=True)
class SetLearningRate:
    """Set every parameter group's learning rate."""

    lr: float


@dataclass(frozen=True)
class Retrain:
    """Train some steps on selected points, each batch filled up with random samples."""

    select: str
    """"misclassified", "low_confidence" or "ids"."""
    ids: tuple[int, ...] = ()
    """Point ids (indices into the training data) when select is "ids"."""
    threshold: float = 0.6
    """Confidence below which a point counts as low-confidence."""
    steps: int = 30


@dataclass(frozen=True)
class SaveCheckpoint:
    name: str


@dataclass(frozen=True)
class RestoreCheckpoint:
    name: str


@dataclass(frozen=True)
class CompareCheckpoints:
    """Publish how activations, filters and embedding positions changed between two checkpoints."""

    a: str
    b: str


@dataclass(frozen=True)
class EmbedLayer:
    """Embed the activations of another layer from now on."""

    layer: str


SteerCommand = (
    Freeze | Unfreeze | Pause | Resume | Stop | SetLearningRate | Retrain | SaveCheckpoint
    | RestoreCheckpoint | CompareCheckpoints | EmbedLayer
)

COMMANDS = (
    "freeze", "unfreeze", "pause", "resume", "stop", "set_lr", "retrain", "save_checkpoint",
    "restore_checkpoint", "compare_checkpoints", "embed_layer",
)


def _layer(p: Mapping[str, Any]) -> str:
    layer = p.get("layer")
    if not isinstance(layer, str) or not 0 < len(layer) <= 200:
        raise SteerError(f"'layer' must be a module name of 1-200 characters (see the run's layer list); got {layer!r:.80}")
    return layer


def _int_list(value: Any, what: str, limit: int) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or len(value) > limit:
        raise SteerError(f"{what} must be a list of at most {limit} non-negative integers")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SteerError(f"{what} must hold non-negative integers; got {v!r:.40}")
        out.append(v)
    return tuple(out)


def _filters(p: Mapping[str, Any]) -> tuple[int, ...] | None:
    if p.get("filters") is None:
        return None
    f = _int_list(p["filters"], "'filters'", MAX_FILTERS)
    if not f:
        raise SteerError("'filters' names no filter; leave it out to mean the whole layer")
    return f


def parse_steer(payload: Any) -> SteerCommand:
    """Check a "steer" event payload and return its command; raises SteerError otherwise."""
    if not isinstance(payload, Mapping):
        raise SteerError(f"a steer payload must be an object with 'cmd'; got {type(payload).__name__}")
    cmd = payload.get("cmd")
    if cmd not in COMMANDS:
        raise SteerError(f"unknown steer command {cmd!r:.40}; allowed: {', '.join(COMMANDS)}")
    if cmd == "freeze":
        return Freeze(_layer(payload), _filters(payload))
    if cmd == "unfreeze":
        return Unfreeze(_layer(payload), _filters(payload))
    if cmd == "pause":
        return Pause()
    if cmd == "resume":
        return Resume()
    if cmd == "stop":
        return Stop()
    if cmd == "set_lr":
        lr = payload.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or not 0 < lr <= 10:
            raise SteerError(f"'lr' must be a number in (0, 10]; got {lr!r:.40}")
        return SetLearningRate(float(lr))
    if cmd == "retrain":
        select = payload.get("select")
        if select not in SELECTIONS:
            raise SteerError(f"'select' must be one of {', '.join(SELECTIONS)}; got {select!r:.40}")
        ids = _int_list(payload.get("ids", []), "'ids'", MAX_IDS)
        if select == "ids" and not ids:
            raise SteerError("retrain with select 'ids' needs a non-empty 'ids' list (the selection has zero points)")
        threshold = payload.get("threshold", 0.6)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
            raise SteerError(f"'threshold' must be a number in (0, 1]; got {threshold!r:.40}")
        steps = payload.get("steps", 30)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000:
            raise SteerError(f"'steps' must be an integer in [1, 10000]; got {steps!r:.40}")
        return Retrain(select, ids, float(threshold), steps)
    if cmd in ("save_checkpoint", "restore_checkpoint"):
        try:
            name = check_checkpoint_name(payload.get("name"))
        except Exception as exc:
            raise SteerError(str(exc)) from None
        return SaveCheckpoint(name) if cmd == "save_checkpoint" else RestoreCheckpoint(name)
    if cmd == "compare_checkpoints":
        try:
            return CompareCheckpoints(check_checkpoint_name(payload.get("a")), check_checkpoint_name(payload.get("b")))
        except Exception as exc:
            raise SteerError(str(exc)) from None
    return EmbedLayer(_layer(payload))


def trainable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that own parameters directly, by their dotted name: what can be frozen."""
    return {
        name: m for name, m in model.named_modules()
        if name and any(True for _ in m.parameters(recurse=False))
    }


class Freezer:
    """Freezes and unfreezes layers and filters of one model, and keeps frozen ones unchanged."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._modules = dict(model.named_modules())
        self.frozen_layers: set[str] = set()
        # layer name -> sorted frozen output-channel indices, and the values to keep
        self.frozen_filters: dict[str, list[int]] = {}
        self._kept: dict[str, dict[str, torch.Tensor]] = {}

    def module(self, name: str) -> nn.Module:
        m = self._modules.get(name) if name else None
        if m is None or not any(True for _ in m.parameters()):
            names = list(trainable_layers(self.model))
            shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
            raise SteerError(f"no layer named {name!r:.80} with parameters in this model; layers: {shown}")
        return m

    def _filter_params(self, name: str) -> dict[str, nn.Parameter]:
        m = self.module(name)
        weight = getattr(m, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() < 1:
            raise SteerError(f"layer {name!r} has no weight with output channels, so it has no single filters to freeze")
        params = {"weight": weight}
        bias = getattr(m, "bias", None)
        if isinstance(bias, nn.Parameter) and bias.shape[:1] == weight.shape[:1]:
            params["bias"] = bias
        return params

    def freeze(self, name: str, filters: tuple[int, ...] | None = None) -> None:
        if filters is None:
            m = self.module(name)
            for p in m.parameters():
                p.requires_grad_(False)
                p.grad = None  # an optimizer skips parameters without a gradient
            self.frozen_layers.add(name)
            return
        params = self._filter_params(name)
        n = params["weight"].shape[0]
        bad = [f for f in filters if f >= n]
        if bad:
            raise SteerError(f"layer {name!r} has filters 0..{n - 1}; got {bad[:10]}")
        now = sorted(set(self.frozen_filters.get(name, [])) | set(filters))
        self.frozen_filters[name] = now
        self._snapshot(name)

    def unfreeze(self, name: str, filters: tuple[int, ...] | None = None) -> None:
        m = self.module(name)
        if filters is None:
            for p in m.parameters():
                p.requires_grad_(True)
            self.frozen_layers.discard(name)
            # also unfreeze layers nested inside this one
            for other in [n for n in self.frozen_layers if n.startswith(name + ".")]:
                self.unfreeze(other)
            self.frozen_filters.pop(name, None)
            self._kept.pop(name, None)
            return
        left = sorted(set(self.frozen_filters.get(name, [])) - set(filters))
        if left:
            self.frozen_filters[name] = left
            self._snapshot(name)
        else:
            self.frozen_filters.pop(name, None)
            self._kept.pop(name, None)

    def _snapshot(self, name: str) -> None:
        idx = torch.tensor(self.frozen_filters[name], dtype=torch.long)
        self._kept[name] = {k: p.detach()[idx].clone() for k, p in self._filter_params(name).items()}

    def resnapshot(self) -> None:
        """Take the kept values anew (after weights were loaded from a checkpoint)."""
        for name in self.frozen_filters:
            self._snapshot(name)

    def before_step(self) -> None:
        """Zero frozen filters' gradient rows (so optimizer state does not build up for them)."""
        for name, filters in self.frozen_filters.items():
            idx = torch.tensor(filters, dtype=torch.long)
            for p in self._filter_params(name).values():
                if p.grad is not None:
                    p.grad[idx] = 0.0

    @torch.no_grad()
    def after_step(self) -> None:
        """Put frozen filters back exactly as they were."""
        for name, filters in self.frozen_filters.items():
            idx = torch.tensor(filters, dtype=torch.long)
            kept = self._kept[name]
            for k, p in self._filter_params(name).items():
                p[idx] = kept[k]

    def describe(self) -> dict[str, Any]:
        return {"layers": sorted(self.frozen_layers), "filters": {k: list(v) for k, v in self.frozen_filters.items()}}
