"""Named analyses that end in a content blob, for panels and the job runner.

`run_analysis(model, "gradcam", {"layer": "conv2", "index": 0}, dataset=ds)` returns the
blob bytes; `submit_analysis(runner, model, ...)` does the same on a worker thread,
cached by (model digest, analysis, parameters, dataset). Parameters are plain JSON
so they can be part of the cache key and travel in panel sources.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
        return grad_cam_blob(x[0], cam[0], layer=layer, target=int(target), method=method)

    return run


for _m in ("gradcam", "gradcam++", "scorecam"):
    ANALYSES[_m] = _cam(_m)


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


@_register("latent_cloud")
def _latent(model: LoadedModel, params: Mapping[str, Any], dataset: Any, ctx: JobContext) -> bytes:
    from deeproom.models.blobs import latent_cloud_blob
    from deeproom.models.embeddings import ActivationEmbedding, FilterEmbedding

    layer = _need(params, "layer")
    method, dims = params.get("method", "tsne"), int(params.get("dims", 2))
    if params.get("of") == "filters":
        emb = FilterEmbedding(model.module, layer, method=method, dims=dims).compute(ctx=ctx)
        return latent_cloud_blob(emb, [])
    if dataset is None:
        raise AnalysisError("an activation embedding needs a dataset")
    limit = int(params.get("limit", 2000))
    ds = dataset.subset(range(min(limit, len(dataset))))
    emb = ActivationEmbedding(model.module, layer, method=method, dims=dims).compute(ds.x, ds.y, ctx)
    return latent_cloud_blob(emb, list(ds.classes), ds.thumbnails(size=32))


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
    key_params = {**p, "seed": seed, "dataset": getattr(dataset, "name", None),
                  "dataset_size": len(dataset) if dataset is not None else 0}
    key = cache_key(model.digest, name, key_params)
    return runner.submit(lambda ctx: run_analysis(model, name, p, dataset=dataset, ctx=ctx), key=key, seed=seed,
                         on_progress=on_progress)
