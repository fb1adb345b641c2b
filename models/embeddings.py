"""Embeddings of a layer's activations (or of its filters) in 2-D or 3-D.

PCA (torch), t-SNE (openTSNE: Barnes–Hut, or FFT-interpolated gradients for large 2-D runs)
and UMAP (umap-learn). Each result carries, per point, the label,
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
          ctx: JobContext | None = None, perplexity: float = 30.0, n_iter: int = 500,
          threads: int | None = None) -> np.ndarray:
    """Coordinates [N, dims] (float32) of the rows of `features`; progress through `ctx`,
    which also cancels (between chunks of iterations). `threads`: default `tsne_threads()`."""
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
    if n > MAX_POINTS:
        raise AnalysisError(f"at most {MAX_POINTS:,} points can be embedded; got {n:,} (take a subset)")
    if not np.isfinite(x).all():
        raise AnalysisError("features contain NaN or infinity")
    if method == "pca":
        out = _pca(x, dims, seed)
        if out.shape[1] < dims:
            out = np.pad(out, ((0, 0), (0, dims - out.shape[1])))
        ctx.progress(1, 1, "pca")
        return np.ascontiguousarray(out, dtype=np.float32)
    # both neighbour methods work better on a PCA-reduced copy of wide features
    if x.shape[1] > 50:
        x = _pca(x, 50, seed)
    if method == "tsne":
        return _tsne(x, dims, seed, ctx, min(perplexity, (n - 1) / 3), n_iter, threads)
    return _umap(x, dims, seed, ctx)


def _pca(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The first k principal components' scores. Exact (a d×d covariance, never an N×d copy
    of singular vectors) up to 1,024 features; randomized (seeded) above."""
    xt = torch.from_numpy(x)
    xt = xt - xt.mean(0)
    n, d = xt.shape
    k = min(k, d, n)
    if d <= 1024:
        _, vecs = torch.linalg.eigh(xt.T @ xt)
        v = vecs[:, -k:].flip(1)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            _, _, v = torch.pca_lowrank(xt, q=min(k + 10, d, n), center=False, niter=4)
        v = v[:, :k]
    v = v * torch.where(v.sum(0) < 0, -1.0, 1.0)  # one sign per component, whatever the solver
    return (xt @ v).numpy()


FFT_ABOVE = 5000
"""2-D t-SNE above this many points computes the early-exaggeration phase with FFT-interpolated
gradients (the embedding is compact then, so the FFT grid is small); below, Barnes–Hut."""
BH_LATE_UP_TO = 30_000
"""...and the late phase with Barnes–Hut up to this many points, FFT above. The FFT grid grows
with the embedding's spread (one interval per unit). Measured in CPU seconds, one thread,
10,000 points: early phase FFT 4.2 / BH 13.2; late phase (500 iterations) FFT 71 / BH 31;
70,000 points, per late iteration: BH 770 ms / FFT 65 ms just after the early phase."""
EXACT_NEIGHBOURS_UP_TO = 20_000
"""Exact neighbour search (one BLAS distance pass) up to this many points: 10,000 points took
0.9 s CPU exact against 3.0 s with Annoy; its n² cost passes Annoy's somewhere past 50,000."""


def tsne_gradient(n: int, dims: int, phase: str = "late") -> str:
    """openTSNE's negative-gradient method for n points in a phase ("early" or "late"):
    "fft" (2-D only) or "bh"."""
    if dims != 2 or n <= FFT_ABOVE:
        return "bh"
    return "fft" if phase == "early" or n > BH_LATE_UP_TO else "bh"


def tsne_neighbours(n: int) -> str:
    """openTSNE's neighbour search for n points: "exact" or "annoy"."""
    return "exact" if n <= EXACT_NEIGHBOURS_UP_TO else "annoy"


MAX_POINTS = 300_000
"""More points than this are refused (the neighbour graph alone would pass a gigabyte)."""


def tsne_threads() -> int:
    """Worker threads for openTSNE: all cores (up to 4) on a quiet machine, one on a busy one.
    openTSNE's threads wait on each other every iteration, so on cores other processes
    keep busy two threads ran 2–4× slower than one (measured on 2 shared cores)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    free = int(cores - busy + 0.5)
    return max(1, min(4, cores, free))


def _tsne(x: np.ndarray, dims: int, seed: int, ctx: JobContext, perplexity: float, n_iter: int,
          threads: int | None = None) -> np.ndarray:
    """openTSNE, optimized in chunks so progress and cancellation cost nothing (its own
    callbacks compute the KL divergence each time, which triples the run time).

    Neighbours: exact up to EXACT_NEIGHBOURS_UP_TO points, Annoy (approximate, bundled with openTSNE) above.
    Gradients: Barnes–Hut, FFT-interpolated in 2-D where cheaper (see FFT_ABOVE, BH_LATE_UP_TO). Schedule: 250 iterations of early exaggeration
    (12, momentum 0.5) then `n_iter` at momentum 0.8; learning rate N / exaggeration (openTSNE's "auto")."""
    from openTSNE import TSNEEmbedding, affinity, initialization

    n = x.shape[0]
    jobs = threads or tsne_threads()
    chunk = 50 if n <= 20_000 else 10
    early = min(250, n_iter // 2)
    total = early + n_iter
    ctx.progress(0, total, f"t-SNE: neighbours of {n:,} points")
    aff = affinity.PerplexityBasedNN(x, perplexity=perplexity, n_jobs=jobs, random_state=seed, verbose=False,
                                     method=tsne_neighbours(n))
    ctx.check()
    init = initialization.pca(x, n_components=dims, random_state=seed)
    grad = tsne_gradient(n, dims, "early")
    emb = TSNEEmbedding(init, aff, negative_gradient_method=grad, n_jobs=jobs, random_state=seed, verbose=False)
    done = 0
    while done < total:
        ctx.check()
        exaggerate = done < early
        if not exaggerate and grad != tsne_gradient(n, dims, "late"):
            grad = tsne_gradient(n, dims, "late")  # same positions and optimizer state (gains, momentum)
            emb = TSNEEmbedding(np.asarray(emb).copy(), aff, negative_gradient_method=grad, n_jobs=jobs,
                                random_state=seed, verbose=False, optimizer=emb.optimizer)
        steps = min(chunk, (early if exaggerate else total) - done)
        emb.optimize(n_iter=steps, exaggeration=12.0 if exaggerate else 1.0,
                     momentum=0.5 if exaggerate else 0.8, learning_rate="auto", inplace=True)
        done += steps
        ctx.progress(done, total, f"t-SNE of {n:,} points")
    return np.ascontiguousarray(np.asarray(emb), dtype=np.float32)


def _umap(x: np.ndarray, dims: int, seed: int, ctx: JobContext) -> np.ndarray:
    import umap

    ctx.progress(0, 1, "UMAP")
    out = umap.UMAP(n_components=dims, random_state=seed, n_neighbors=min(15, x.shape[0] - 1)).fit_transform(x)
    ctx.progress(1, 1, "UMAP")
    return np.ascontiguousarray(out, dtype=np.float32)


class _Stage(JobContext):
    """Part [lo, hi] of a job's progress: lets `embed` report 0→1 inside a larger job."""

    def __init__(self, parent: JobContext, lo: float, hi: float) -> None:
        super().__init__(parent.seed)
        self.parent, self.lo, self.hi = parent, lo, hi

    def progress(self, done: float, total: float = 1.0, message: str = "") -> None:
        f = 0.0 if total <= 0 else max(0.0, min(1.0, done / total))
        self.parent.progress(self.lo + f * (self.hi - self.lo), 1.0, message)

    def check(self) -> None:
        self.parent.check()


MAX_FEATURE_BYTES = 1 << 30
"""Activations kept for an embedding; wider layers are randomly projected batch by batch."""


class ActivationEmbedding:
    """Embed a layer's activations over a dataset: `compute(inputs, labels)` → Embedding.

    Memory stays bounded at 70,000 samples: activations are kept as float32 up to
    MAX_FEATURE_BYTES; past that, each batch is projected at once onto a seeded random
    Gaussian basis (Johnson–Lindenstrauss: distances, hence neighbourhoods, are kept to
    within a few per cent) of as many dimensions as fit."""

    def __init__(self, model: nn.Module, layer: str, *, method: str = "tsne", dims: int = 2,
                 batch_size: int = 512, max_feature_bytes: int = MAX_FEATURE_BYTES) -> None:
        self.model, self.layer, self.method, self.dims, self.batch_size = model, layer, method, dims, batch_size
        self.max_feature_bytes = max_feature_bytes

    @torch.no_grad()
    def compute(self, inputs: torch.Tensor, target: torch.Tensor | None = None,
                ctx: JobContext | None = None) -> Embedding:
        from deeproom.models.analysis import _logits, capture

        ctx = context(ctx)
        n = inputs.shape[0]
        feats: list[torch.Tensor] = []
        preds, confs = torch.empty(n, dtype=torch.int16), torch.empty(n, dtype=torch.float32)
        proj: torch.Tensor | None = None
        forward_share = 0.2 if self.method != "pca" else 0.9
        with capture(self.model, [self.layer]) as got:
            for s in range(0, n, self.batch_size):
                ctx.progress(s / n * forward_share, 1.0, f"activations of {self.layer}")
                out = self.model(inputs[s : s + self.batch_size])
                f = got[self.layer].reshape(out.shape[0], -1).float()
                if s == 0:
                    width = max(self.dims + 1, self.max_feature_bytes // (4 * max(1, n)))
                    if f.shape[1] > width:
                        g = torch.Generator().manual_seed(ctx.seed)
                        proj = torch.randn(f.shape[1], width, generator=g) / width**0.5
                feats.append(f @ proj if proj is not None else f.clone())
                try:
                    p = torch.softmax(_logits(out), 1)
                    c, k = p.max(1)
                except AnalysisError:
                    c, k = torch.ones(out.shape[0]), torch.full((out.shape[0],), -1)
                preds[s : s + out.shape[0]] = k.to(torch.int16)
                confs[s : s + out.shape[0]] = c.float()
        x = torch.cat(feats)
        del feats
        pos = embed(x, method=self.method, dims=self.dims, seed=ctx.seed, ctx=_Stage(ctx, forward_share, 1.0))
        labels = target.numpy() if target is not None else np.full(len(pos), -1)
        return Embedding(pos, labels.astype(np.int16), preds.numpy(), confs.numpy(),
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


def knn_preservation(high: np.ndarray | torch.Tensor, low: np.ndarray, k: int = 10, *,
                     sample: int | None = None, seed: int = 0) -> float:
    """The "10-NN agreement" of an embedding: for each point, the fraction of its k nearest
    neighbours in the original space (`high`) that are also among its k nearest in the
    embedding (`low`), averaged. `sample` averages over that many random points (their
    neighbours still searched among all points) — enough for a stable figure at 70,000 points."""
    from sklearn.neighbors import NearestNeighbors

    h = high.detach().cpu().numpy() if isinstance(high, torch.Tensor) else np.asarray(high)
    h = h.reshape(h.shape[0], -1).astype(np.float32)
    lo = np.asarray(low, dtype=np.float32)
    n = h.shape[0]
    if lo.shape[0] != n or n <= k:
        raise AnalysisError(f"need the same points in both spaces and more than k={k}; got {n} and {lo.shape[0]}")
    rows = (np.arange(n) if sample is None or sample >= n
            else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False)))

    def neighbours(a: np.ndarray) -> np.ndarray:
        nb = NearestNeighbors(n_neighbors=k + 1).fit(a).kneighbors(a[rows], return_distance=False)
        is_self = nb == rows[:, None]
        keep = ~is_self
        keep[~is_self.any(1), -1] = False  # a duplicate may come before the point itself
        return nb[keep].reshape(len(rows), k)

    a, b = neighbours(h), neighbours(lo)
    return float((a[:, :, None] == b[:, None, :]).any(2).mean())


def thumbnail_plan(n_points: int, max_thumbnails: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Which points of a cloud get a thumbnail, so 70,000 points never mean 70,000 images.
    Returns (rows, index): `rows` (int64, sorted) are the samples to render thumbnails for —
    e.g. `datasets.thumbnails(ds, size=32, indices=rows)` — and `index` (int32 [n_points])
    says which of those each point shows, −1 for none. Seeded: the same points every time."""
    if n_points < 0 or max_thumbnails < 0:
        raise AnalysisError(f"n_points and max_thumbnails must be ≥ 0; got {n_points}, {max_thumbnails}")
    if n_points <= max_thumbnails:
        rows = np.arange(n_points, dtype=np.int64)
        return rows, rows.astype(np.int32)
    rows = np.sort(np.random.default_rng(seed).choice(n_points, max_thumbnails, replace=False)).astype(np.int64)
    index = np.full(n_points, -1, np.int32)
    index[rows] = np.arange(max_thumbnails, dtype=np.int32)
    return rows, index
