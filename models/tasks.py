"""The one analysis registry: named analyses that end in a content blob.

`run_analysis(model, "gradcam", {"layer": "conv2", "index": 0}, dataset=ds)` returns the
blob bytes; `submit_analysis(runner, model, ...)` does the same on a worker thread,
cached by (model digest, analysis, parameters, dataset). Parameters are plain JSON
so they can be part of the cache key and travel in panel sources.

Each analysis also has a `Spec` (SPECS): its menu label and group, the panel kind it
produces, its typed parameters (docs/engine.md, "Actions"), and what it needs of a model,
a layer and a dataset. `applies(name, model, layer, dataset)` is None when it can run,
else the reason it cannot ("the model has no image input (input shape (1, 20))");
`applicable_analyses(model, dataset)` lists those that apply, `declared_actions(...)`
writes the actions and the unavailable ones, with reasons, for a panel's source.
`deeproom analyze`, the room's engines (`deeproom.models.engine`) and the benchmarks all
run analyses through here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from deeproom.models.errors import AnalysisError
from deeproom.models.jobs import Job, JobContext, JobRunner, cache_key, context
from deeproom.models.loading import LoadedModel

Analysis = Callable[[LoadedModel, Mapping[str, Any], Any, JobContext], bytes]
ANALYSES: dict[str, Analysis] = {}


def _register(name: str) -> Callable[[Analysis], Analysis]:
    def deco(fn: Analysis) -> Analysis:
        ANALYSES[name] = fn
        return fn

    return deco


def _need(params: Mapping[str, Any], key: str) -> Any:
    if key not in params:
        raise AnalysisError(f"this analysis needs parameter {key!r}")
    return params[key]


def _sample(dataset: Any, params: Mapping[str, Any]) -> torch.Tensor:
    if dataset is None:
        raise AnalysisError("this analysis needs a dataset (inputs)")
    i = int(params.get("index", 0))
    if not 0 <= i < len(dataset):
        raise AnalysisError(f"sample index {i} is out of range; the dataset has {len(dataset)} samples")
    return dataset.x[i : i + 1]  # type: ignore[no-any-return]


def _shown(dataset: Any, params: Mapping[str, Any]) -> torch.Tensor:
    """The chosen input as a person sees it: [C, H, W] in [0, 1], mean/std undone (`ds.x` is what
    the model takes, which may be normalised)."""
    i = int(params.get("index", 0))
    if hasattr(dataset, "images01"):
        return dataset.images01(i)  # type: ignore[no-any-return]
    return dataset.x[i].clamp(0, 1)  # type: ignore[no-any-return]


@_register("graph")
def _graph(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
    from deeproom.models.graph import extract_graph, graph_blob

    return graph_blob(extract_graph(model))


@_register("feature_maps")
def _feature_maps(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
    from deeproom.models.analysis import Activations
    from deeproom.models.blobs import feature_maps_blob

    layer = _need(params, "layer")
    return feature_maps_blob(Activations(model.module, layer).compute(_sample(dataset, params)), layer)


@_register("filters")
def _filters(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
    from deeproom.models.analysis import Filters
    from deeproom.models.blobs import filters_blob

    layer = _need(params, "layer")
    return filters_blob(Filters(model.module, layer).compute(), layer)


def _cam(method: str) -> Analysis:
    def run(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
        from deeproom.models.analysis import CAM_METHODS, upsample_cam
        from deeproom.models.blobs import grad_cam_blob

        layer = _need(params, "layer")
        x = _sample(dataset, params)
        cam_obj = CAM_METHODS[method](model.module, layer)
        target = params.get("target")
        if target is None:
            with torch.no_grad():
                target = int(model.module(x).argmax(1)[0])
        cam = cam_obj.compute(x, target, ctx) if method == "scorecam" else cam_obj.compute(x, target)
        if params.get("upsample", True):
            cam = upsample_cam(cam, tuple(x.shape[-2:]))
        return grad_cam_blob(_shown(dataset, params), cam[0], layer=layer, target=int(target), method=method)

    return run


for _m in ("gradcam", "gradcam++", "scorecam", "layercam"):
    ANALYSES[_m] = _cam(_m)
ANALYSES["gradcam_pp"] = ANALYSES["gradcam++"]


def _attribution(method: str) -> Analysis:
    def run(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
        from deeproom.models.analysis import (
            IntegratedGradients,
            Occlusion,
            Saliency,
            attribution_map,
        )
        from deeproom.models.blobs import grad_cam_blob

        x = _sample(dataset, params)
        target = params.get("target")
        if target is None:
            with torch.no_grad():
                target = int(model.module(x).argmax(1)[0])
        ctx.progress(0.1, 1.0, method)
        cls = {"saliency": Saliency, "integrated_gradients": IntegratedGradients, "occlusion": Occlusion}[method]
        kw: dict[str, Any] = {}
        if method == "occlusion":
            kw["window"] = max(1, min(x.shape[-2:]) // 8)
            kw["stride"] = max(1, kw["window"] // 2)
        attr = cls(model.module, **kw).compute(x, int(target))
        ctx.progress(1.0, 1.0, method)
        return grad_cam_blob(_shown(dataset, params), attribution_map(attr)[0], layer="input", target=int(target),
                             method=method)

    return run


for _m in ("saliency", "integrated_gradients", "occlusion"):
    ANALYSES[_m] = _attribution(_m)


@_register("attention")
def _attention(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
    from deeproom.models.analysis import AttentionMaps
    from deeproom.models.blobs import attention_blob

    layer = _need(params, "layer")
    return attention_blob(AttentionMaps(model.module, layer).compute(_sample(dataset, params)), layer)


@_register("confusion_matrix")
def _confusion(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
    from deeproom.models.analysis import ConfusionMatrix
    from deeproom.models.blobs import confusion_blob

    if dataset is None:
        raise AnalysisError("a confusion matrix needs a labelled dataset")
    ev = ConfusionMatrix(model.module).compute(dataset.x, dataset.y, ctx)
    labels = list(dataset.classes) or [str(i) for i in range(ev.matrix.shape[0])]
    return confusion_blob(ev, labels)


EMBED_LIMIT = 70_000
"""An activation embedding takes at most this many samples (the first ones; param "limit" lowers it)."""
CLOUD_THUMBNAILS = 4096
"""A cloud carries at most this many thumbnails (`embeddings.thumbnail_plan`), each at most 32×32."""


@_register("latent_cloud")
def _latent(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
    from deeproom.models.blobs import latent_cloud_blob
    from deeproom.models.datasets import thumbnails
    from deeproom.models.embeddings import ActivationEmbedding, FilterEmbedding, thumbnail_plan

    layer = _need(params, "layer")
    method, dims = params.get("method", "tsne"), int(params.get("dims", 2))
    if params.get("of") == "filters":
        emb = FilterEmbedding(model.module, layer, method=method, dims=dims).compute(ctx=ctx)
        return latent_cloud_blob(emb, [], color_by="label")
    if dataset is None:
        raise AnalysisError("an activation embedding needs a dataset")
    n = min(int(params.get("limit", EMBED_LIMIT)), EMBED_LIMIT, len(dataset))
    ds = dataset if n == len(dataset) else dataset.subset(range(n))
    emb = ActivationEmbedding(model.module, layer, method=method, dims=dims).compute(ds.x, ds.y, ctx)
    rows, index = thumbnail_plan(n, CLOUD_THUMBNAILS, ctx.seed)
    size = min(32, max(ds.x.shape[-2:]))  # small images stay small
    return latent_cloud_blob(emb, list(ds.classes), thumbnails(ds, size=size, indices=rows), thumbnail_index=index,
                             color_by=str(params.get("color", "label")))


ANALYSES["embedding"] = _latent


@_register("filter_embedding")
def _filter_embedding(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
    return _latent(model, {**params, "of": "filters"}, dataset, ctx)


@_register("feature_visualization")
def _featvis(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
    from deeproom.models.analysis import FeatureVisualization
    from deeproom.models.blobs import image_blob

    layer = _need(params, "layer")
    channel = int(params.get("channel", 0))
    shape = model.input_shape or (dataset is not None and (1, *dataset.image_shape)) or None
    if not shape:
        raise AnalysisError("feature visualization needs the model's input shape")
    img = FeatureVisualization(model.module, layer, steps=int(params.get("steps", 96))).compute(shape, channel, ctx)
    return image_blob(img[0], f"{layer} channel {channel}")


def run_analysis(model: LoadedModel, name: str, params: Mapping[str, Any] | None = None, *, dataset: Any = None,
                 ctx: JobContext | None = None) -> bytes:
    """Compute one named analysis and return its content blob."""
    if name not in ANALYSES:
        raise AnalysisError(f"unknown analysis {name!r}; allowed: {', '.join(sorted(ANALYSES))}")
    return ANALYSES[name](model, dict(params or {}), dataset, context(ctx))


def submit_analysis(runner: JobRunner, model: LoadedModel, name: str, params: Mapping[str, Any] | None = None, *,
                    dataset: Any = None, seed: int = 0,
                    on_progress: Callable[[float, str], None] | None = None) -> Job[bytes]:
    """`run_analysis` on the runner's thread; cached by (model digest, analysis, params, dataset, seed)."""
    p = dict(params or {})
    key = analysis_key(model, name, p, dataset, seed)
    return runner.submit(lambda ctx: run_analysis(model, name, p, dataset=dataset, ctx=ctx), key=key, seed=seed,
                         on_progress=on_progress)


def analysis_key(model: LoadedModel, name: str, params: Mapping[str, Any], dataset: Any, seed: int) -> str:
    """The cache key: (model digest, analysis, parameters incl. the input index, dataset, seed)."""
    key_params = {**params, "seed": seed, "dataset": getattr(dataset, "name", None),
                  "dataset_size": len(dataset) if dataset is not None else 0}
    return cache_key(model.digest, name, key_params)


# --- what each analysis is, and what it needs -----------------------------------------------

IMAGE, LAYER, SPATIAL, WEIGHTS, LABELS, DATA, ATTENTION = "image", "layer", "spatial", "weights", "labels", "data", "attention"

_TARGET = {"name": "target", "type": "class", "label": "class", "optional": True}
_LAYER = {"name": "layer", "type": "layer"}
_EMBED_PARAMS = (
    _LAYER,
    {"name": "method", "type": "choice", "choices": ["pca", "tsne", "umap"], "default": "pca"},
    {"name": "dims", "type": "choice", "choices": [2, 3], "default": 3},
)


@dataclass(frozen=True)
class Spec:
    """One analysis as the room offers it."""

    name: str
    label: str
    group: str
    kind: str
    """The panel kind its result is drawn in."""
    needs: frozenset[str]
    params: tuple[dict[str, Any], ...] = ()
    on: str | None = "layer"
    role: str = "member"

    def action(self) -> dict[str, Any]:
        """The action declaration (docs/engine.md, "Actions") for a panel's source."""
        a: dict[str, Any] = {"name": self.name, "label": self.label, "group": self.group, "role": self.role,
                             "params": [dict(p) for p in self.params], "kind": self.kind}
        if self.on:
            a["on"] = self.on
        return a


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("feature_maps", "Feature maps", "Activations", "feature_maps", frozenset({IMAGE, LAYER}), (_LAYER,)),
    Spec("filters", "Filters", "Weights", "filters", frozenset({LAYER, WEIGHTS}), (_LAYER,)),
    Spec("gradcam", "Grad-CAM", "Attribution", "grad_cam", frozenset({IMAGE, LAYER, SPATIAL}), (_LAYER, _TARGET)),
    Spec("gradcam_pp", "Grad-CAM++", "Attribution", "grad_cam", frozenset({IMAGE, LAYER, SPATIAL}), (_LAYER, _TARGET)),
    Spec("scorecam", "Score-CAM", "Attribution", "grad_cam", frozenset({IMAGE, LAYER, SPATIAL}), (_LAYER, _TARGET)),
    Spec("layercam", "Layer-CAM", "Attribution", "grad_cam", frozenset({IMAGE, LAYER, SPATIAL}), (_LAYER, _TARGET)),
    Spec("saliency", "Saliency", "Attribution", "grad_cam", frozenset({IMAGE}), (_TARGET,), on=None),
    Spec("integrated_gradients", "Integrated gradients", "Attribution", "grad_cam", frozenset({IMAGE}), (_TARGET,),
         on=None),
    Spec("occlusion", "Occlusion", "Attribution", "grad_cam", frozenset({IMAGE}), (_TARGET,), on=None),
    Spec("feature_visualization", "Feature visualization", "Activations", "image", frozenset({IMAGE, LAYER}),
         (_LAYER, {"name": "channel", "type": "int", "min": 0, "max": 4095, "default": 0},
          {"name": "steps", "type": "int", "min": 8, "max": 512, "default": 96})),
    Spec("attention", "Attention per head", "Attention", "attention", frozenset({IMAGE, ATTENTION}),
         ({"name": "layer", "type": "layer", "optional": True},), on=None),
    Spec("confusion_matrix", "Confusion matrix", "Evaluation", "confusion_matrix", frozenset({IMAGE, LABELS}),
         on=None),
    Spec("embedding", "Embedding of this layer", "Embeddings", "latent_cloud", frozenset({IMAGE, LAYER, DATA}),
         (*_EMBED_PARAMS, {"name": "color", "type": "choice", "choices": ["label", "prediction", "confidence"],
                           "default": "label"})),
    Spec("filter_embedding", "Filter embedding", "Embeddings", "latent_cloud", frozenset({LAYER, WEIGHTS}),
         _EMBED_PARAMS),
)}
"""Analyses the room offers, by action name ("gradcam++" is "gradcam_pp" here: action names are [a-z0-9_])."""


@dataclass
class ModelFacts:
    """What the registry needs to know about a model (computed once per model)."""

    input_shape: tuple[int, ...] | None
    layers: dict[str, tuple[str, tuple[int, ...] | None]]
    """layer name -> (type / ONNX op, output shape or None when unknown)."""
    attention_layers: list[str]


_FACTS: dict[str, ModelFacts] = {}
_WEIGHT_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "Linear", "Conv", "ConvTranspose", "Gemm", "MatMul")


def model_facts(model: LoadedModel) -> ModelFacts:
    """Layer types and output shapes (one forward pass on a zero input) and the attention layers."""
    facts = _FACTS.get(model.digest)
    if facts is not None:
        return facts
    from deeproom.models.loading import describe_layers

    layers: dict[str, tuple[str, tuple[int, ...] | None]] = {}
    for info in describe_layers(model):
        layers[info.name] = (info.type, info.output_shape)
    attention = []
    for name, (typ, shape) in layers.items():
        if typ == "MultiheadAttention" or (typ == "Softmax" and shape is not None and len(shape) == 4
                                           and shape[-1] == shape[-2]):
            attention.append(name)
    facts = ModelFacts(model.input_shape, layers, attention)
    _FACTS[model.digest] = facts
    return facts


def _is_image_shape(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[1:])


def _spatial(shape: tuple[int, ...] | None) -> bool:
    if shape is None:
        return True  # unknown (TorchScript): let it try; a failure shows on its panel
    if len(shape) == 4:
        return True
    if len(shape) == 3:
        t = shape[1]
        return any(t - d > 0 and math.isqrt(t - d) ** 2 == t - d for d in (0, 1, 2))
    return False


def has_labels(dataset: Any) -> bool:
    # Labelled built-in digits (the demo's test set) are real labels; the stand-in input of a
    # model opened without --data carries the label -1 and so has none.
    return dataset is not None and len(dataset) > 0 and bool((dataset.y >= 0).any())


MIN_EMBED_POINTS = 5
"""Fewest points (samples or filters) an embedding is computed for."""


def applies(name: str, model: LoadedModel, layer: str | None = None, dataset: Any = None) -> str | None:
    """None when analysis `name` can run on `model` (at `layer`, with `dataset`), else why not.
    `dataset` is the user's data (None or the built-in digit: no labels, no embeddings)."""
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown analysis {name!r}"
    facts = model_facts(model)
    if IMAGE in spec.needs and not _is_image_shape(facts.input_shape):
        shape = tuple(facts.input_shape) if facts.input_shape else "unknown"
        return f"the model has no image input (input shape {shape})"
    if ATTENTION in spec.needs and not facts.attention_layers:
        return "the model has no attention layers"
    if LABELS in spec.needs and not has_labels(dataset):
        return "no dataset with labels: give --data"
    if DATA in spec.needs and (dataset is None or len(dataset) < MIN_EMBED_POINTS):
        return "no dataset: give --data"
    if layer is None or LAYER not in spec.needs:
        return None
    if layer not in facts.layers:
        return f"the model has no layer {layer!r}"
    typ, out_shape = facts.layers[layer]
    if WEIGHTS in spec.needs and typ not in _WEIGHT_TYPES:
        return f"{spec.label} needs a layer with weights (Conv or Linear); {layer} is a {typ}"
    if SPATIAL in spec.needs and not _spatial(out_shape):
        return f"{spec.label} needs a spatial layer; {layer} outputs {list(out_shape) if out_shape else '?'}"
    if name == "filter_embedding" and out_shape and len(out_shape) > 1 and out_shape[1] < MIN_EMBED_POINTS:
        return f"{spec.label} needs at least {MIN_EMBED_POINTS} filters; {layer} has {out_shape[1]}"
    return None


def applicable_analyses(model: LoadedModel, dataset: Any = None) -> list[str]:
    """The registry names that apply to `model` (with `dataset`) on at least one of its layers."""
    facts = model_facts(model)
    out = []
    for name, spec in SPECS.items():
        if applies(name, model, None, dataset) is not None:
            continue
        if LAYER in spec.needs and not any(applies(name, model, layer, dataset) is None for layer in facts.layers):
            continue
        out.append(name)
    return out


def declared_actions(model: LoadedModel, dataset: Any = None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(actions, unavailable) for a panel of `model`: what applies, and what does not with its reason."""
    facts = model_facts(model)
    actions: list[dict[str, Any]] = []
    unavailable: list[dict[str, str]] = []
    ok = set(applicable_analyses(model, dataset))
    for name, spec in SPECS.items():
        if name in ok:
            a = spec.action()
            if name == "attention":
                a["params"] = [{"name": "layer", "type": "choice", "choices": facts.attention_layers[:32],
                                "default": facts.attention_layers[0]}]
            actions.append(a)
            continue
        reason = applies(name, model, None, dataset)
        if reason is None:
            reason = {SPATIAL: f"{spec.label} needs a spatial layer; this model has none",
                      WEIGHTS: "no layer with weights"}.get(next((n for n in (SPATIAL, WEIGHTS) if n in spec.needs), ""),
                                                          "no layer it applies to")
        unavailable.append({"name": name, "label": spec.label, "reason": reason})
    return actions, unavailable


def time_analysis(model: LoadedModel, name: str, params: Mapping[str, Any] | None = None, *, dataset: Any = None,
                  seed: int = 0) -> tuple[float, bytes]:
    """Seconds to compute one analysis alone (no job runner, no cache; seeded), and its blob."""
    import time

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    blob = run_analysis(model, name, params, dataset=dataset, ctx=JobContext(seed))
    return time.perf_counter() - t0, blob


# --- differences between two states of one architecture ----------------------------------------

DIFF_LIMIT = 2000
"""At most this many inputs are predicted by both states."""


def comparable(a: Any, b: Any) -> str | None:
    """None when two models (LoadedModel or nn.Module) have the same parameters (names and shapes),
    so their weight difference means something; else the reason."""
    from deeproom.models.training.compare import matching_parameters

    ma, mb = getattr(a, "module", a), getattr(b, "module", b)
    return matching_parameters(ma.state_dict(), mb.state_dict())


def _module_with(template: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    import copy

    m = copy.deepcopy(template)
    for sub in m.modules():  # a watched model's hooks are not ours to fire
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
    m.load_state_dict(dict(state))
    return m.eval()


def checkpoint_difference(a: Any, b: Any, *, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                          names: tuple[str, str] = ("a", "b"), template: torch.nn.Module | None = None,
                          ctx: JobContext | None = None) -> bytes:
    """The checkpoint-difference blob (`blobs.checkpoint_diff_blob`, a metrics panel) of two states of one
    architecture: `a` and `b` are models (LoadedModel / nn.Module) or state dicts (then `template` is
    the architecture). With inputs `x` (and labels `y`), also what each predicts and its accuracy."""
    from deeproom.models.blobs import checkpoint_diff_blob
    from deeproom.models.training.compare import (
        TrainingError,
        prediction_difference,
        weight_difference,
    )

    ctx = context(ctx)

    def as_module(m: Any) -> torch.nn.Module | None:
        if isinstance(m, Mapping):
            return _module_with(template, m) if template is not None and x is not None else None
        return getattr(m, "module", m)  # type: ignore[no-any-return]

    def as_state(m: Any) -> Mapping[str, torch.Tensor]:
        return m if isinstance(m, Mapping) else getattr(m, "module", m).state_dict()  # type: ignore[no-any-return]

    try:
        wd = weight_difference(as_state(a), as_state(b))
    except TrainingError as exc:
        raise AnalysisError(str(exc)) from None
    ctx.progress(0.3, 1.0, "weights compared")
    preds = None
    if x is not None and len(x):
        ma, mb = as_module(a), as_module(b)
        if ma is not None and mb is not None:
            xs = x[:DIFF_LIMIT]
            ys = y[:DIFF_LIMIT] if y is not None else None
            with torch.no_grad():
                out = ma(xs[:1])
            if isinstance(out, torch.Tensor) and out.dim() == 2:  # class scores: predictions compare
                preds = prediction_difference(ma, mb, xs, ys)
    ctx.progress(1.0, 1.0, "predictions compared")
    return checkpoint_diff_blob(wd, preds, a=names[0], b=names[1])
