"""Embeddings of a layer's activations (or of its filters) in 2-D or 3-D.

PCA (torch SVD), t-SNE (openTSNE, Barnes–Hut in 2-D and 3-D) and UMAP (umap-learn). Each result carries, per point, the label,
the model's prediction and confidence, and the index of the thumbnail to show.
t-SNE runs in chunks of iterations that report progress and stop a cancelled run; `seed` is passed
all the way down, so the same seed gives the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from deeproom.models.errors import AnalysisError
from deeproom.models.jobs import JobContext, context

METHODS = ("pca", "tsne", "umap")


@dataclass(frozen=True)
class Embedding:
    """Positions plus what each point is."""

    positions: np.ndarray
    """float32 [N, 2|3]."""
    labels: np.ndarray
    """int16 [N]; −1 for unlabelled."""
    predictions: np.ndarray
    """int16 [N]; −1 where there is no prediction (filters)."""
    confidence: np.ndarray
    """float32 [N] in [0, 1]."""
    thumbnail_index: np.ndarray
    """int32 [N]: which thumbnail (sample index) each point shows."""
    method: str
    layer: str


def embed(features: np.ndarray | torch.Tensor, *, method: str = "tsne", dims: int = 2, seed: int = 0,
          ctx: JobContext | None = None, perplexity: float = 30.0, n_iter: int = 500) -> np.ndarray:
    """Coordinates [N, dims] (float32) of the rows of `features`."""
    ctx = context(ctx)
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    x = x.reshape(x.shape[0], -1).astype(np.float32)
    if method not in METHODS:
        raise AnalysisError(f"unknown embedding method {method!r}; allowed: {', '.join(METHODS)}")
    if dims not in (2, 3):
        raise AnalysisError(f"embeddings are 2-D or 3-D; got dims={dims}")
    n = x.shape[0]
    if n < dims + 2:
        raise AnalysisError(f"need at least {dims + 2} points to embed; got {n}")
    if not np.isfinite(x).all():
        raise AnalysisError("features contain NaN or infinity")
    if method == "pca":
        xt = torch.from_numpy(x)
        xt = xt - xt.mean(0)
        _, _, v = torch.linalg.svd(xt, full_matrices=False)
        out = (xt @ v[:dims].T).numpy()
        if out.shape[1] < dims:
            out = np.pad(out, ((0, 0), (0, dims - out.shape[1])))
        ctx.progress(1, 1, "pca")
        return np.ascontiguousarray(out, dtype=np.float32)
    # both neighbour methods work better on a PCA-reduced copy of wide features
    if x.shape[1] > 50:
        xt = torch.from_numpy(x - x.mean(0))
        _, _, v = torch.linalg.svd(xt, full_matrices=False)
        x = (xt @ v[:50].T).numpy()
    if method == "tsne":
        return _tsne(x, dims, seed, ctx, min(perplexity, (n - 1) / 3), n_iter)
    return _umap(x, dims, seed, ctx)


def _tsne(x: np.ndarray, dims: int, seed: int, ctx: JobContext, perplexity: float, n_iter: int) -> np.ndarray:
    """openTSNE, optimized in chunks so progress and cancellation cost nothing (its own
    callbacks compute the KL divergence each time, which triples the run time)."""
    from openTSNE import TSNEEmbedding, affinity, initialization

    chunk = 50
    early = min(250, n_iter // 2)
    total = early + n_iter
    ctx.progress(0, total, "t-SNE neighbours")
    aff = affinity.PerplexityBasedNN(x, perplexity=perplexity, n_jobs=2, random_state=seed, verbose=False)
    init = initialization.pca(x, n_components=dims, random_state=seed)
    # Barnes–Hut in 2-D and 3-D: FFT refuses 3-D and was slower here at a few thousand points
    emb = TSNEEmbedding(init, aff, negative_gradient_method="bh", n_jobs=2, random_state=seed, verbose=False)
    done = 0
    while done < total:
        ctx.check()
        exaggerate = done < early
        steps = min(chunk, (early if exaggerate else total) - done)
        emb = emb.optimize(n_iter=steps, exaggeration=12.0 if exaggerate else 1.0,
                           momentum=0.5 if exaggerate else 0.8, learning_rate="auto")
        done += steps
        ctx.progress(done, total, "t-SNE")
    return np.ascontiguousarray(np.asarray(emb), dtype=np.float32)


def _umap(x: np.ndarray, dims: int, seed: int, ctx: JobContext) -> np.ndarray:
    import umap

    ctx.progress(0, 1, "UMAP")
    out = umap.UMAP(n_components=dims, random_state=seed, n_neighbors=min(15, x.shape[0] - 1)).fit_transform(x)
    ctx.progress(1, 1, "UMAP")
    return np.ascontiguousarray(out, dtype=np.float32)


class ActivationEmbedding:
    """Embed a layer's activations over a dataset: `compute(inputs, labels)` → Embedding."""

    def __init__(self, model: nn.Module, layer: str, *, method: str = "tsne", dims: int = 2,
                 batch_size: int = 512) -> None:
        self.model, self.layer, self.method, self.dims, self.batch_size = model, layer, method, dims, batch_size

    @torch.no_grad()
    def compute(self, inputs: torch.Tensor, target: torch.Tensor | None = None,
                ctx: JobContext | None = None) -> Embedding:
        from deeproom.models.analysis import _logits, capture

        ctx = context(ctx)
        feats, probs = [], []
        with capture(self.model, [self.layer]) as got:
            for s in range(0, inputs.shape[0], self.batch_size):
                out = self.model(inputs[s : s + self.batch_size])
                feats.append(got[self.layer].reshape(out.shape[0], -1).clone())
                try:
                    probs.append(torch.softmax(_logits(out), 1))
                except AnalysisError:
                    probs.append(torch.ones(out.shape[0], 1))
        f = torch.cat(feats)
        p = torch.cat(probs)
        pos = embed(f, method=self.method, dims=self.dims, seed=ctx.seed, ctx=ctx)
        conf, pred = p.max(1)
        labels = target.numpy() if target is not None else np.full(len(pos), -1)
        return Embedding(pos, labels.astype(np.int16), pred.numpy().astype(np.int16), conf.numpy().astype(np.float32),
                         np.arange(len(pos), dtype=np.int32), self.method, self.layer)


class FilterEmbedding:
    """Embed a layer's filters (one point per output filter, flattened weights)."""

    def __init__(self, model: nn.Module, layer: str, *, method: str = "pca", dims: int = 2) -> None:
        self.model, self.layer, self.method, self.dims = model, layer, method, dims

    def compute(self, inputs: Any = None, target: Any = None, ctx: JobContext | None = None) -> Embedding:
        from deeproom.models.analysis import _layer_weight

        ctx = context(ctx)
        w = _layer_weight(self.model, self.layer)
        f = w.reshape(w.shape[0], -1)
        pos = embed(f, method=self.method, dims=self.dims, seed=ctx.seed, ctx=ctx)
        n = len(pos)
        return Embedding(pos, np.full(n, -1, np.int16), np.full(n, -1, np.int16), np.ones(n, np.float32),
                         np.arange(n, dtype=np.int32), self.method, self.layer)


def knn_label_agreement(positions: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Fraction of each point's k nearest neighbours that share its label (what an embedding preserves)."""
    from sklearn.neighbors import NearestNeighbors

    nn_ = NearestNeighbors(n_neighbors=k + 1).fit(positions)
    idx = nn_.kneighbors(positions, return_distance=False)[:, 1:]
    return float((labels[idx] == labels[:, None]).mean())
