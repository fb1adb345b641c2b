"""Analysis results as content blobs (`deeproom.content`): float16/uint8 arrays plus JSON
metadata, one schema per panel kind (see the brief's table). numpy only on the way out;
scenes decode them without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from deeproom.content import encode_content

MAX_FEATURE_MAPS = 1024


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def image_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[C, H, W] or [H, W] floats in [0, 1] → uint8 [H, W] or [H, W, 3]."""
    a = _np(image).astype(np.float32)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def _unit(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    lo = a.min(axis=axes, keepdims=True)
    hi = a.max(axis=axes, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (a - lo) / span


def feature_maps_blob(maps: torch.Tensor, layer: str, *, normalize: bool = True) -> bytes:
    """One sample's maps [C, H, W] (a batch's first sample is taken); each map scaled to [0, 1]."""
    a = _np(maps).astype(np.float32)
    if a.ndim == 4:
        a = a[0]
    if a.ndim == 2:
        a = a[:, None, :]
    a = a[:MAX_FEATURE_MAPS]
    meta: dict[str, Any] = {"kind": "feature_maps", "layer": layer, "min": float(a.min(initial=0)),
                            "max": float(a.max(initial=0)), "normalized": normalize}
    if normalize:
        a = _unit(a, (1, 2))
    return encode_content(meta, {"maps": a.astype(np.float16)})


def filters_blob(filters: torch.Tensor, layer: str) -> bytes:
    """[N, H, W] or [N, H, W, 3] filter tiles, each scaled to [0, 1] (raw range in meta)."""
    a = _np(filters).astype(np.float32)
    meta = {"kind": "filters", "layer": layer, "min": float(a.min(initial=0)), "max": float(a.max(initial=0))}
    axes = (1, 2, 3) if a.ndim == 4 else (1, 2)
    return encode_content(meta, {"filters": _unit(a, axes).astype(np.float16)})


def grad_cam_blob(image: torch.Tensor | np.ndarray, cam: torch.Tensor, *, layer: str, target: int, method: str) -> bytes:
    c = _np(cam).astype(np.float32)
    if c.ndim == 3:
        c = c[0]
    img = _np(image)
    if img.ndim == 4:
        img = img[0]
    return encode_content({"kind": "grad_cam", "layer": layer, "target": int(target), "method": method},
                          {"image": image_uint8(img), "cam": np.clip(c, 0, 1).astype(np.float16)})


def attention_blob(attention: torch.Tensor, layer: str) -> bytes:
    a = _np(attention).astype(np.float32)
    if a.ndim == 4:
        a = a[0]
    return encode_content({"kind": "attention", "layer": layer}, {"attention": a.astype(np.float16)})


def confusion_blob(evaluation: Any, labels: Sequence[str]) -> bytes:
    """The matrix (rows true, columns predicted) and per-class precision, recall and F1, both as
    arrays ("precision", "recall", "f1", float32 [C]) and in the meta (with "classes" = labels)."""
    ev = evaluation
    return encode_content(
        {"kind": "confusion_matrix", "labels": list(labels), "classes": list(labels),
         "precision": [float(v) for v in ev.precision],
         "recall": [float(v) for v in ev.recall], "f1": [float(v) for v in ev.f1], "accuracy": float(ev.accuracy),
         "misclassified": [int(i) for i in ev.misclassified[:200]],
         "low_confidence": [int(i) for i in ev.low_confidence[:200]]},
        {"matrix": _np(ev.matrix).astype(np.int32), "precision": _np(ev.precision).astype(np.float32),
         "recall": _np(ev.recall).astype(np.float32), "f1": _np(ev.f1).astype(np.float32)},
    )


def latent_cloud_blob(embedding: Any, classes: Sequence[str], thumbnails: np.ndarray | None = None, *,
                      thumbnail_index: np.ndarray | None = None, color_by: str = "label") -> bytes:
    """Points with labels, predictions and confidence; `color_by` ("label", "prediction" or
    "confidence") says which colours the points (meta "color_by").

    Thumbnails: with `thumbnail_index` (int [N], −1 = none; `embeddings.thumbnail_plan`),
    `thumbnails` holds only the rendered images ([T, h, w] or [T, h, w, 3], T ≤ N) and the blob
    carries both arrays, "thumbnails" and "thumbnail_index" — a 70,000-point cloud carries 4,096
    images. Without it, `thumbnails` is one image per sample and each point gets
    `thumbnails[embedding.thumbnail_index]` (and "thumbnail_index" is 0…N−1)."""
    e = embedding
    n = len(e.positions)
    arrays: dict[str, np.ndarray] = {
        "positions": e.positions.astype(np.float32), "labels": e.labels.astype(np.int16),
        "predictions": e.predictions.astype(np.int16), "confidence": e.confidence.astype(np.float16),
    }
    if thumbnails is not None:
        t = np.asarray(thumbnails)
        if thumbnail_index is None:
            arrays["thumbnails"] = np.ascontiguousarray(t[e.thumbnail_index]).astype(np.uint8)
            arrays["thumbnail_index"] = np.arange(n, dtype=np.int32)
        else:
            index = np.asarray(thumbnail_index, dtype=np.int32).reshape(-1)
            if len(index) != n or (len(index) and (index.min() < -1 or index.max() >= len(t))):
                raise ValueError(f"thumbnail_index must be {n} values in [-1, {len(t)}); got {len(index)}")
            arrays["thumbnails"] = np.ascontiguousarray(t).astype(np.uint8)
            arrays["thumbnail_index"] = index
    return encode_content({"kind": "latent_cloud", "classes": list(classes), "method": e.method, "layer": e.layer,
                           "dims": int(e.positions.shape[1]), "color_by": color_by}, arrays)


def image_blob(image: torch.Tensor | np.ndarray, text: str = "") -> bytes:
    return encode_content({"kind": "image", "text": text}, {"image": image_uint8(image)})


def strip_blob(thumbs: np.ndarray, labels: Sequence[str], *, cols: int = 8, skipped: dict[str, int] | None = None,
               text: str = "", pad: int = 2) -> bytes:
    """An input strip: thumbnails [n, h, w] or [n, h, w, 3] uint8 tiled in rows of `cols` into one
    image, with meta "tiles" {rows, cols, count, labels, skipped, tile: [h, w], pad} (the app maps a
    click to a tile index)."""
    t = np.asarray(thumbs)
    if t.ndim == 3:
        t = np.repeat(t[..., None], 3, axis=-1)
    n, h, w = t.shape[:3]
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    img = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), np.uint8)
    img[...] = 24
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        img[y : y + h, x : x + w] = t[i, ..., :3]
    tiles = {"rows": rows, "cols": cols, "count": int(n), "labels": [str(v) for v in labels][:n],
             "skipped": dict(skipped or {}), "tile": [int(h), int(w)], "pad": pad}
    return encode_content({"kind": "image", "text": text, "tiles": tiles}, {"image": img})


MAX_DIFF_FILTER_ARRAYS = 48
"""A blob holds at most 64 arrays: the per-layer series first, per-filter arrays as room allows."""


def checkpoint_diff_blob(weights: Any, predictions: Any = None, *, a: str = "a", b: str = "b") -> bytes:
    """A checkpoint difference as a `metrics` panel: x is the layer index (meta "layers" names them),
    series "relative_change" (‖b − a‖ / ‖a‖ per layer) and, with predictions, "acc_a" / "acc_b"
    (each checkpoint's accuracy, constant across layers, so the curves panel shows both). Also
    "change_norm" and "base_norm" per layer, per-filter arrays "filter_change:<layer>" (listed in
    meta "filter_change"), meta "top_filters" and "predictions" {changed, accuracy_a, accuracy_b, n}."""
    w = weights
    n = len(w.layers)
    arrays: dict[str, np.ndarray] = {
        "layer": np.arange(n, dtype=np.float32),
        "relative_change": np.asarray(w.relative_change, np.float32),
        "change_norm": np.asarray(w.change_norm, np.float32),
        "base_norm": np.asarray(w.base_norm, np.float32),
    }
    series = ["relative_change"]
    meta: dict[str, Any] = {"kind": "metrics", "x": "layer", "what": "checkpoint_difference", "a": a, "b": b,
                            "layers": list(w.layers)[:4000],
                            "top_filters": [{"layer": layer, "filter": int(i), "change": round(float(v), 6)}
                                            for layer, i, v in w.top_filters]}
    if predictions is not None:
        p = predictions
        meta["predictions"] = {"changed": round(float(p.changed), 6), "n": len(p.predictions_a),
                               "accuracy_a": p.accuracy_a, "accuracy_b": p.accuracy_b}
        if p.accuracy_a is not None and p.accuracy_b is not None:
            arrays["acc_a"] = np.full(n, p.accuracy_a, np.float32)
            arrays["acc_b"] = np.full(n, p.accuracy_b, np.float32)
            series += ["acc_a", "acc_b"]
    filt = [(f"filter_change:{k}", np.asarray(v, np.float32)) for k, v in w.filter_change.items()]
    filt = filt[: min(MAX_DIFF_FILTER_ARRAYS, 60 - len(arrays))]
    arrays.update(filt)
    meta["series"] = series
    meta["filter_change"] = [k for k, _ in filt]
    return encode_content(meta, arrays)
