"""Analyses: what a model does with an input, as tensors (no colours, no textures).

Every analysis has one shape: `Thing(model, layer).compute(inputs, target) -> tensor`.
Hooks are registered for the one call and removed in `finally`. Layers are named as
`deeproom.models.loading.resolve_layer` accepts (module paths, ONNX node names).
Token outputs of transformer layers ([N, T, D]) are reshaped to a grid
([N, D, g, g], the class token dropped) wherever a spatial map is needed, so the
CAM family works on ViTs as on CNNs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deeproom.models.errors import AnalysisError, TargetError
from deeproom.models.jobs import JobContext, context
from deeproom.models.loading import layer_names, resolve_layer

Tensor = torch.Tensor


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    raise AnalysisError(f"layer output is a {type(out).__name__}, not a tensor")


def _logits(out: Any) -> Tensor:
    t = _first_tensor(out)
    if t.ndim != 2:
        raise AnalysisError(f"the model's output must be class scores [N, classes]; got shape {tuple(t.shape)}")
    return t


def check_targets(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    """Targets as a long tensor [N]; None picks the predicted class. Out of range → TargetError."""
    n, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long).reshape(-1).to(logits.device)
    if t.numel() == 1 and n > 1:
        t = t.expand(n)
    if t.numel() != n:
        raise TargetError(f"{t.numel()} targets for {n} inputs; give one target, or one per input")
    if bool(((t < 0) | (t >= classes)).any()):
        bad = int(t[(t < 0) | (t >= classes)][0])
        raise TargetError(f"target class {bad} is out of range; the model has {classes} classes (0–{classes - 1})")
    return t


@contextmanager
def capture(model: nn.Module, layers: Sequence[str | nn.Module], *, detach: bool = True) -> Iterator[dict[str, Tensor]]:
    """Record each layer's output during the forward passes run inside the block."""
    got: dict[str, Tensor] = {}
    handles = []
    mods = [(layer if isinstance(layer, str) else str(id(layer)), resolve_layer(model, layer)) for layer in layers]
    try:
        for name, mod in mods:
            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                t = out if isinstance(out, Tensor) else (out[0] if isinstance(out, tuple | list) and out else None)
                if isinstance(t, Tensor):
                    got[name] = t.detach() if detach else t
            handles.append(mod.register_forward_hook(hook))
        yield got
    finally:
        for h in handles:
            h.remove()


def tokens_to_grid(a: Tensor) -> Tensor:
    """[N, T, D] tokens → [N, D, g, g], dropping leading class tokens so T is a square."""
    n, t, d = a.shape
    for drop in (0, 1, 2):
        g = math.isqrt(t - drop) if t - drop > 0 else 0
        if g * g == t - drop and g > 0:
            return a[:, drop:, :].transpose(1, 2).reshape(n, d, g, g)
    raise AnalysisError(f"{t} tokens do not form a square grid (with up to 2 class tokens); cannot map to space")


def as_spatial(a: Tensor) -> Tensor:
    """A layer output as [N, C, h, w]: conv maps as they are, token sequences as grids."""
    if a.ndim == 4:
        return a
    if a.ndim == 3:
        return tokens_to_grid(a)
    raise AnalysisError(f"layer output of shape {tuple(a.shape)} has no spatial layout (need [N,C,H,W] or [N,T,D])")


def _normalize_maps(cam: Tensor) -> Tensor:
    flat = cam.reshape(cam.shape[0], -1)
    lo = flat.min(1).values.reshape(-1, 1, 1)
    hi = flat.max(1).values.reshape(-1, 1, 1)
    span = hi - lo
    return torch.where(span > 0, (cam - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(cam))


# --- activations and filters ----------------------------------------------------------------


class Activations:
    """One layer's output (feature maps for conv layers) for a batch."""

    def __init__(self, model: nn.Module, layer: str | nn.Module) -> None:
        self.model = model
        self.layer = layer
        resolve_layer(model, layer)

    def compute(self, inputs: Tensor, target: Any = None) -> Tensor:
        with capture(self.model, [self.layer]) as got, torch.no_grad():
            self.model(inputs)
        key = self.layer if isinstance(self.layer, str) else str(id(self.layer))
        if key not in got:
            raise AnalysisError(f"layer {self.layer!r} did not run for this input")
        return got[key]


class AllActivations:
    """Every leaf layer's output in one forward pass: {layer name: tensor}.

    With `reuse_buffers=True` the outputs are copied into tensors kept from the previous
    call (same shapes), which avoids fresh allocations on every step of a live view;
    the returned tensors are then overwritten by the next call. `dtype` (e.g. float16)
    stores the captures at lower precision: half the memory traffic, and what the
    feature-map blobs carry anyway."""

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None, *, reuse_buffers: bool = False,
                 dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.dtype = dtype
        self.layers = list(layers) if layers is not None else layer_names(model)
        self.modules = [resolve_layer(model, name) for name in self.layers]
        self.reuse_buffers = reuse_buffers
        self._buffers: dict[str, Tensor] = {}

    def compute(self, inputs: Tensor, target: Any = None) -> dict[str, Tensor]:
        got: dict[str, Tensor] = {}
        bufs = self._buffers
        reuse = self.reuse_buffers
        dtype = self.dtype
        handles = []
        try:
            for name, mod in zip(self.layers, self.modules, strict=True):
                def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                    t = out if isinstance(out, Tensor) else (out[0] if isinstance(out, tuple | list) and out else None)
                    if not isinstance(t, Tensor):
                        return
                    want = dtype if dtype is not None and t.is_floating_point() else t.dtype
                    if reuse:
                        b = bufs.get(name)
                        if b is None or b.shape != t.shape or b.dtype != want:
                            b = bufs[name] = torch.empty(t.shape, dtype=want, device=t.device)
                        got[name] = b.copy_(t)
                    else:
                        got[name] = t.detach().to(want)
                handles.append(mod.register_forward_hook(hook))
            with torch.no_grad():
                self.model(inputs)
        finally:
            for h in handles:
                h.remove()
        return got


def _layer_weight(model: nn.Module, layer: str | nn.Module) -> Tensor:
    from deeproom.models.onnx_exec import OnnxModel, OnnxNode

    mod = resolve_layer(model, layer)
    if isinstance(mod, OnnxNode):
        assert isinstance(model, OnnxModel)
        if mod.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(mod.input_names) < 2:
            raise AnalysisError(f"ONNX node {layer!r} is a {mod.op_type}; filters exist for Conv and Gemm nodes")
        w_name = mod.input_names[1]
        if not model.has_tensor(w_name):
            raise AnalysisError(f"ONNX node {layer!r} takes its weight from another node, not an initializer")
        w = model.tensor(w_name)
        if mod.op_type == "MatMul" or (mod.op_type == "Gemm" and not mod.info.get("transB", 0)):
            w = w.t()
        return w.detach()
    w = getattr(mod, "weight", None)
    if not isinstance(w, Tensor):
        raise AnalysisError(f"layer {layer!r} ({type(mod).__name__}) has no weight; pick a Conv or Linear layer")
    return w.detach()


class Filters:
    """A layer's filters: [out, kh, kw, 3] RGB tiles when a conv reads 3 channels,
    otherwise [out·in, kh, kw], one tile per (filter, input channel); Linear weights
    become [out, 1, in]. Raw weight values."""

    def __init__(self, model: nn.Module, layer: str | nn.Module) -> None:
        self.model = model
        self.layer = layer
        self.weight = _layer_weight(model, layer)

    def compute(self, inputs: Any = None, target: Any = None) -> Tensor:
        w = self.weight
        if w.ndim == 4:
            if w.shape[1] == 3:
                return w.permute(0, 2, 3, 1).contiguous()
            return w.reshape(-1, w.shape[2], w.shape[3])
        if w.ndim == 3:
            return w.reshape(-1, 1, w.shape[2])
        if w.ndim == 2:
            return w.reshape(w.shape[0], 1, w.shape[1])
        raise AnalysisError(f"layer {self.layer!r}: weight of shape {tuple(w.shape)} is not a filter bank")


# --- class activation maps ------------------------------------------------------------------


class GradCAM:
    """Grad-CAM: ReLU(Σ_k α_k A_k), α_k = mean over positions of ∂score/∂A_k.

    Returns [N, h, w] at the layer's resolution, each map scaled to [0, 1] when
    `normalize` (the default). Only the gradient down to the layer is computed."""

    method = "gradcam"

    def __init__(self, model: nn.Module, layer: str | nn.Module, *, normalize: bool = True) -> None:
        self.model = model
        self.layer = layer
        self.normalize = normalize
        self.module = resolve_layer(model, layer)
        self.last_logits: Tensor | None = None
        self.last_targets: Tensor | None = None

    def _forward_with_grad(self, inputs: Tensor, target: Any) -> tuple[Tensor, Tensor, Tensor]:
        store: dict[str, Tensor] = {}

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            store["a"] = _first_tensor(out)

        h = self.module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                x = inputs
                if not any(p.requires_grad for p in self.model.parameters()):
                    x = inputs.detach().requires_grad_(True)  # something must carry a graph to the layer
                logits = _logits(self.model(x))
                t = check_targets(target, logits)
                if "a" not in store:
                    raise AnalysisError(f"layer {self.layer!r} did not run for this input")
                a = store["a"]
                score = logits.gather(1, t[:, None]).sum()
                (g,) = torch.autograd.grad(score, a)
        finally:
            h.remove()
        self.last_logits, self.last_targets = logits.detach(), t
        return a.detach(), g.detach(), t

    def _weights(self, a: Tensor, g: Tensor) -> Tensor:
        return g.mean(dim=(2, 3), keepdim=True)

    def compute(self, inputs: Tensor, target: int | Sequence[int] | Tensor | None = None) -> Tensor:
        a, g, _ = self._forward_with_grad(inputs, target)
        a, g = as_spatial(a), as_spatial(g)
        cam = torch.relu((self._weights(a, g) * a).sum(1))
        return _normalize_maps(cam) if self.normalize else cam


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++: positive gradients weighted by α = g² / (2g² + Σ_ij A · g³)."""

    method = "gradcam++"

    def _weights(self, a: Tensor, g: Tensor) -> Tensor:
        g2, g3 = g * g, g * g * g
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g))
        return (alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True)


class ScoreCAM:
    """Score-CAM (gradient-free): each channel, upsampled and scaled to [0, 1], masks
    the input; the target's score increase over a blank input, softmaxed over
    channels, weights the channels."""

    method = "scorecam"

    def __init__(self, model: nn.Module, layer: str | nn.Module, *, normalize: bool = True, batch_size: int = 64) -> None:
        self.model = model
        self.layer = layer
        self.normalize = normalize
        self.batch_size = batch_size
        resolve_layer(model, layer)

    @torch.no_grad()
    def compute(self, inputs: Tensor, target: int | Sequence[int] | Tensor | None = None,
                ctx: JobContext | None = None) -> Tensor:
        ctx = context(ctx)
        with capture(self.model, [self.layer]) as got:
            logits = _logits(self.model(inputs))
        t = check_targets(target, logits)
        key = self.layer if isinstance(self.layer, str) else str(id(self.layer))
        a = as_spatial(got[key])
        n, c = a.shape[:2]
        base = _logits(self.model(torch.zeros_like(inputs[:1])))[0]
        cams = []
        for i in range(n):
            masks = F.interpolate(a[i : i + 1].transpose(0, 1), size=inputs.shape[-2:], mode="bilinear",
                                  align_corners=False)  # [C, 1, H, W]
            masks = _normalize_maps(masks[:, 0])[:, None]
            scores = []
            for s in range(0, c, self.batch_size):
                m = masks[s : s + self.batch_size]
                out = _logits(self.model(inputs[i : i + 1] * m))
                scores.append(out[:, t[i]] - base[t[i]])
                ctx.progress(i * c + s + m.shape[0], n * c, "score-cam")
            w = torch.softmax(torch.cat(scores), 0)
            cams.append(torch.relu((w[:, None, None] * a[i]).sum(0)))
        cam = torch.stack(cams)
        return _normalize_maps(cam) if self.normalize else cam


def upsample_cam(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of [N, h, w] maps to the input size (values stay in [0, 1])."""
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


CAM_METHODS: dict[str, Callable[..., Any]] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}


# --- pixel attributions (captum) ------------------------------------------------------------


class _CaptumAttribution:
    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None) -> None:
        self.model = model
        self.layer = layer
        if layer is not None:
            raise AnalysisError(f"{type(self).__name__} attributes to input pixels; pass layer=None")

    def _targets(self, inputs: Tensor, target: Any) -> Tensor:
        with torch.no_grad():
            logits = _logits(self.model(inputs))
        return check_targets(target, logits)


class Saliency(_CaptumAttribution):
    """|∂score/∂pixel| (Simonyan et al.), via captum. Returns [N, C, H, W]."""

    def compute(self, inputs: Tensor, target: Any = None) -> Tensor:
        from captum.attr import Saliency as _S

        t = self._targets(inputs, target)
        return _S(self.model).attribute(inputs.clone().requires_grad_(True), target=t).detach()


class IntegratedGradients(_CaptumAttribution):
    """Integrated gradients from a black baseline, via captum. Returns [N, C, H, W]."""

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, *, steps: int = 32) -> None:
        super().__init__(model, layer)
        self.steps = steps

    def compute(self, inputs: Tensor, target: Any = None) -> Tensor:
        from captum.attr import IntegratedGradients as _IG

        t = self._targets(inputs, target)
        return _IG(self.model).attribute(inputs, target=t, n_steps=self.steps).detach()  # type: ignore[no-any-return]


class Occlusion(_CaptumAttribution):
    """Score drop when a window is blanked, via captum. Returns [N, C, H, W]."""

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, *, window: int = 2, stride: int = 1) -> None:
        super().__init__(model, layer)
        self.window, self.stride = window, stride

    def compute(self, inputs: Tensor, target: Any = None) -> Tensor:
        from captum.attr import Occlusion as _O

        t = self._targets(inputs, target)
        c = inputs.shape[1]
        return _O(self.model).attribute(  # type: ignore[no-any-return]
            inputs, target=t, sliding_window_shapes=(c, self.window, self.window), strides=(c, self.stride, self.stride)
        ).detach()


# --- attention ------------------------------------------------------------------------------


class AttentionMaps:
    """Per-head attention [N, heads, T, T] of a transformer layer: a module whose output
    is the attention probabilities (a Softmax), or an nn.MultiheadAttention."""

    def __init__(self, model: nn.Module, layer: str | nn.Module) -> None:
        self.model = model
        self.layer = layer
        self.module = resolve_layer(model, layer)

    @torch.no_grad()
    def compute(self, inputs: Tensor, target: Any = None) -> Tensor:
        store: dict[str, Tensor] = {}
        handles = []
        try:
            if isinstance(self.module, nn.MultiheadAttention):
                def pre(_m: nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
                    kwargs = dict(kwargs)
                    kwargs["need_weights"] = True
                    kwargs["average_attn_weights"] = False
                    return args, kwargs

                def post(_m: nn.Module, _a: Any, _k: Any, out: Any) -> None:
                    if isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], Tensor):
                        store["w"] = out[1]

                handles.append(self.module.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(self.module.register_forward_hook(post, with_kwargs=True))
            else:
                def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                    store["w"] = _first_tensor(out)

                handles.append(self.module.register_forward_hook(hook))
            self.model(inputs)
        finally:
            for h in handles:
                h.remove()
        w = store.get("w")
        if w is None:
            raise AnalysisError(f"layer {self.layer!r} produced no attention weights for this input")
        if w.ndim == 3:
            w = w[:, None]
        if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
            raise AnalysisError(
                f"layer {self.layer!r} outputs shape {tuple(w.shape)}; attention maps need [N, heads, T, T] "
                "(the Softmax over attention scores, or an nn.MultiheadAttention)"
            )
        return w


# --- feature visualization ------------------------------------------------------------------


@dataclass(frozen=True)
class RobustnessTransforms:
    """Random transforms applied every step so the image works under small changes."""

    jitter: int = 1
    """Roll by up to this many pixels."""
    scales: tuple[float, float] = (0.9, 1.1)
    rotate_degrees: float = 10.0


class FeatureVisualization:
    """Activation maximization: an input optimized (from noise, with jitter, scale and
    rotation each step, as in DeepVisionVR) to excite one channel of a layer.
    `compute(inputs, target)`: `inputs` gives the shape (a tensor, or a shape tuple),
    `target` the channel; returns the image [N, C, H, W] in [0, 1]."""

    def __init__(self, model: nn.Module, layer: str | nn.Module, *, steps: int = 96, lr: float = 0.08,
                 transforms: RobustnessTransforms | None = None, decay: float = 1e-3) -> None:
        self.model = model
        self.layer = layer
        self.module = resolve_layer(model, layer)
        self.steps, self.lr, self.decay = steps, lr, decay
        self.transforms = transforms or RobustnessTransforms()

    def _transform(self, img: Tensor, g: torch.Generator) -> Tensor:
        tr = self.transforms
        n = img.shape[0]
        if tr.jitter:
            dx, dy = (int(v) for v in torch.randint(-tr.jitter, tr.jitter + 1, (2,), generator=g))
            img = torch.roll(img, shifts=(dy, dx), dims=(-2, -1))
        s = tr.scales[0] + (tr.scales[1] - tr.scales[0]) * float(torch.rand((), generator=g))
        ang = math.radians(tr.rotate_degrees) * (2 * float(torch.rand((), generator=g)) - 1)
        cos, sin = math.cos(ang) / s, math.sin(ang) / s
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=img.dtype, device=img.device).expand(n, 2, 3)
        grid = F.affine_grid(theta, list(img.shape), align_corners=False)
        return F.grid_sample(img, grid, padding_mode="reflection", align_corners=False)

    def compute(self, inputs: Tensor | Sequence[int], target: int = 0, ctx: JobContext | None = None) -> Tensor:
        ctx = context(ctx)
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else tuple(inputs)
        g = torch.Generator().manual_seed(ctx.seed)
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        param = (torch.randn(shape, generator=g) * 0.1).to(device).requires_grad_(True)
        opt = torch.optim.Adam([param], lr=self.lr)
        store: dict[str, Tensor] = {}

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            store["a"] = _first_tensor(out)

        h = self.module.register_forward_hook(hook)
        was_training = self.model.training
        self.model.eval()
        try:
            for step in range(self.steps):
                opt.zero_grad(set_to_none=True)
                img = torch.sigmoid(param)
                self.model(self._transform(img, g))
                a = store["a"]
                channels = a.shape[1] if a.ndim == 4 or a.ndim == 2 else a.shape[-1]
                if not 0 <= target < channels:
                    raise TargetError(f"channel {target} is out of range; layer {self.layer!r} has {channels} channels")
                act = a[:, target] if a.ndim in (2, 4) else a[..., target]
                loss = -act.mean() + self.decay * (param**2).mean()
                loss.backward()
                opt.step()
                ctx.progress(step + 1, self.steps, "feature visualization")
        finally:
            h.remove()
            self.model.train(was_training)
        return torch.sigmoid(param).detach()


# --- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """A confusion matrix with per-class scores, plus the samples worth a look."""

    matrix: Tensor
    """int64 [C, C]; rows = true class, columns = predicted."""
    precision: Tensor
    recall: Tensor
    f1: Tensor
    accuracy: float
    predictions: Tensor
    confidence: Tensor
    """Softmax probability of the predicted class, per sample."""
    misclassified: Tensor
    """Indices of wrong predictions, most confident first."""
    low_confidence: Tensor
    """Indices with confidence below the threshold, least confident first."""


def confusion_from_predictions(y: Tensor, pred: Tensor, classes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(matrix, precision, recall, f1); a class never predicted / never present scores 0."""
    idx = y.long() * classes + pred.long()
    m = torch.bincount(idx, minlength=classes * classes).reshape(classes, classes)
    tp = m.diag().double()
    col = m.sum(0).double()
    row = m.sum(1).double()
    precision = torch.where(col > 0, tp / col.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(row > 0, tp / row.clamp(min=1), torch.zeros_like(tp))
    s = precision + recall
    f1 = torch.where(s > 0, 2 * precision * recall / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
    return m, precision, recall, f1


class ConfusionMatrix:
    """Evaluate a classifier on labelled inputs. `compute(inputs, targets)` → Evaluation."""

    def __init__(self, model: nn.Module, layer: Any = None, *, classes: int | None = None, batch_size: int = 512,
                 low_confidence: float = 0.6) -> None:
        self.model = model
        self.classes = classes
        self.batch_size = batch_size
        self.threshold = low_confidence

    @torch.no_grad()
    def compute(self, inputs: Tensor, target: Tensor, ctx: JobContext | None = None) -> Evaluation:
        ctx = context(ctx)
        y = torch.as_tensor(target).long().reshape(-1)
        if y.shape[0] != inputs.shape[0]:
            raise TargetError(f"{inputs.shape[0]} inputs but {y.shape[0]} labels")
        probs = []
        for s in range(0, inputs.shape[0], self.batch_size):
            probs.append(torch.softmax(_logits(self.model(inputs[s : s + self.batch_size])), 1))
            ctx.progress(min(s + self.batch_size, inputs.shape[0]), inputs.shape[0], "evaluate")
        p = torch.cat(probs) if probs else torch.zeros(0, self.classes or 1)
        classes = self.classes or p.shape[1]
        if y.numel() and (int(y.max()) >= classes or int(y.min()) < 0):
            raise TargetError(f"labels must be in 0–{classes - 1}; got {int(y.min())}…{int(y.max())}")
        conf, pred = p.max(1)
        m, prec, rec, f1 = confusion_from_predictions(y, pred, classes)
        wrong = (pred != y).nonzero().reshape(-1)
        wrong = wrong[torch.argsort(conf[wrong], descending=True, stable=True)]
        low = (conf < self.threshold).nonzero().reshape(-1)
        low = low[torch.argsort(conf[low], stable=True)]
        acc = float((pred == y).double().mean()) if y.numel() else 0.0
        return Evaluation(m, prec, rec, f1, acc, pred, conf, wrong, low)


class LayerCAM(GradCAM):
    """Layer-CAM (Jiang et al. 2021): ReLU(Σ_k ReLU(∂score/∂A_k) ⊙ A_k), a weight per position,
    so shallow layers give fine-grained maps."""

    method = "layercam"

    def compute(self, inputs: Tensor, target: int | Sequence[int] | Tensor | None = None) -> Tensor:
        a, g, _ = self._forward_with_grad(inputs, target)
        a, g = as_spatial(a), as_spatial(g)
        cam = torch.relu((torch.relu(g) * a).sum(1))
        return _normalize_maps(cam) if self.normalize else cam


CAM_METHODS["layercam"] = LayerCAM


def attribution_map(attribution: Tensor) -> Tensor:
    """Pixel attributions [N, C, H, W] as one map per input [N, H, W] in [0, 1]: |a| summed over channels."""
    return _normalize_maps(attribution.abs().sum(1))
