"""The torch engine: load models (ONNX, torch, TorchScript, torch.export, checkpoints),
extract their graphs, compute analyses and embeddings, read datasets, run jobs.

Importing this package is light: names are imported from their modules (and torch
with them) only when first used, so `deeproom --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # errors
    "EngineError": "errors", "ModelLoadError": "errors", "UnsafeModelError": "errors",
    "UnsupportedOperatorError": "errors", "LayerNotFoundError": "errors", "TargetError": "errors",
    "DatasetError": "errors", "AnalysisError": "errors", "JobCancelled": "errors",
    # loading
    "LoadedModel": "loading", "load_model": "loading", "resolve_layer": "loading", "layer_names": "loading",
    "describe_layers": "loading", "module_digest": "loading", "state_dict_of": "loading",
    # onnx
    "OnnxModel": "onnx_exec", "OnnxBackend": "onnx_exec", "load_onnx_proto": "onnx_exec",
    "SUPPORTED_OPS": "onnx_ops",
    # graph
    "ModelGraph": "graph", "extract_graph": "graph", "extract_onnx_graph": "graph",
    "extract_torch_graph": "graph", "layered_layout": "graph", "graph_blob": "graph",
    # analyses
    "Activations": "analysis", "AllActivations": "analysis", "Filters": "analysis", "GradCAM": "analysis",
    "GradCAMPlusPlus": "analysis", "ScoreCAM": "analysis", "Saliency": "analysis",
    "IntegratedGradients": "analysis", "Occlusion": "analysis", "AttentionMaps": "analysis",
    "FeatureVisualization": "analysis", "RobustnessTransforms": "analysis", "ConfusionMatrix": "analysis",
    "Evaluation": "analysis", "capture": "analysis", "check_targets": "analysis", "upsample_cam": "analysis",
    "confusion_from_predictions": "analysis", "tokens_to_grid": "analysis",
    # embeddings
    "Embedding": "embeddings", "embed": "embeddings", "ActivationEmbedding": "embeddings",
    "FilterEmbedding": "embeddings", "knn_label_agreement": "embeddings",
    # datasets
    "ImageDataset": "datasets", "load_digits": "datasets", "load_dataset": "datasets",
    "load_image_folder": "datasets", "load_npz": "datasets", "load_idx": "datasets",
    # zoo
    "DigitsCNN": "zoo", "TinyResNet": "zoo", "TinyViT": "zoo", "train_demo_model": "zoo",
    "train_classifier": "zoo", "TrainedModel": "zoo", "ZOO": "zoo",
    # jobs
    "JobRunner": "jobs", "Job": "jobs", "JobContext": "jobs", "ResultCache": "jobs", "cache_key": "jobs",
    "progress_bar": "jobs",
    # blobs
    "feature_maps_blob": "blobs", "filters_blob": "blobs", "grad_cam_blob": "blobs", "attention_blob": "blobs",
    "confusion_blob": "blobs", "latent_cloud_blob": "blobs", "image_blob": "blobs",
    # runtime
    "keep_freed_memory": "runtime",
    # tasks
    "Analysis": "tasks", "run_analysis": "tasks", "submit_analysis": "tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'deeproom.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"deeproom.models.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
