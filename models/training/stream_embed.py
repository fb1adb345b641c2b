"""Streamed embedding: a neighbour embedding that continues from its previous positions.

ReVACNN's streamed t-SNE re-embeds a layer's activations while the network trains
without starting again from random positions, so points move a little per update
and can carry trails. Here each update rebuilds the k-nearest-neighbour graph of the
new features (exact, brute force: a few thousand points) and runs a few epochs of a
neighbour-embedding objective by stochastic gradient descent, starting from the last
positions: attraction along kNN edges with the Cauchy kernel 1/(1+d²) of t-SNE and
repulsion from negative samples (the UMAP/LargeVis way of approximating t-SNE's
normalisation). Openers' full t-SNE is too slow to run several times a second on two
busy cores (see notes/engine-measurements.md); this runs at tens of milliseconds per
update for 2,000 points. The first call lays points out from a PCA start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import torch

ProgressFn = Callable[[int, int], bool]


def knn_indices(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Exact k nearest neighbours (excluding the point itself) by squared Euclidean distance."""
    n = x.shape[0]
    k = min(k, n - 1)
    sq = (x * x).sum(1)
    out = torch.empty((n, k), dtype=torch.long)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        # One fused multiply-add and one in-place add: on a busy CPU the elementwise passes over
        # the n×n block cost more than the matrix product itself.
        d = torch.addmm(sq[s:e, None], x[s:e], x.T, alpha=-2.0)
        d += sq[None, :]
        d[torch.arange(e - s), torch.arange(s, e)] = float("inf")
        out[s:e] = torch.topk(d, k, largest=False, sorted=False).indices
    return out


def knn_agreement(positions: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, k: int = 10) -> float:
    """Fraction of each point's k nearest neighbours (in `positions`) that share its label."""
    pos = torch.as_tensor(np.asarray(positions, dtype=np.float32))
    lab = torch.as_tensor(np.asarray(labels))
    idx = knn_indices(pos, k)
    return float((lab[idx] == lab[:, None]).float().mean())


def neighbour_preservation(features: np.ndarray | torch.Tensor, positions: np.ndarray | torch.Tensor, k: int = 10) -> float:
    """Mean fraction of each point's k nearest neighbours in feature space that stay among its k nearest in the layout."""
    a = knn_indices(torch.as_tensor(np.asarray(features, dtype=np.float32)), k)
    b = knn_indices(torch.as_tensor(np.asarray(positions, dtype=np.float32)), k)
    hits = (a[:, :, None] == b[:, None, :]).any(2).float().mean()
    return float(hits)


class StreamedEmbedding:
    """Embeds successive feature matrices of the same points, each starting from the last layout."""

    def __init__(
        self,
        dims: int = 2,
        *,
        k: int = 15,
        negatives: int = 5,
        init_epochs: int = 200,
        update_epochs: int = 8,
        learning_rate: float = 1.0,
        trail_length: int = 5,
        seed: int = 0,
    ) -> None:
        if dims not in (2, 3):
            raise ValueError(f"an embedding has 2 or 3 dimensions; got {dims}")
        self.dims = dims
        self.k = k
        self.negatives = negatives
        self.init_epochs = init_epochs
        self.update_epochs = update_epochs
        self.learning_rate = learning_rate
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.positions: torch.Tensor | None = None
        self.trails: deque[np.ndarray] = deque(maxlen=trail_length)
        self.updates = 0

    def reset(self) -> None:
        self.positions = None
        self.trails.clear()
        self.updates = 0

    def update(self, features: np.ndarray | torch.Tensor, *, progress: ProgressFn | None = None) -> np.ndarray:
        """Embed `features` [N, F] (same N points as before), continuing from the last positions."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32)).reshape(len(features), -1)
        n = x.shape[0]
        if n < 3:
            raise ValueError(f"an embedding needs at least 3 points; got {n}")
        # Scale-free features: the layer's activations grow while training; the graph should not care.
        x = x - x.mean(0)
        x = x / x.norm(dim=1).mean().clamp_min(1e-8)
        idx = knn_indices(x, self.k)
        restart = self.positions is None or self.positions.shape[0] != n
        if restart:
            y = self._pca_start(x)
            epochs = self.init_epochs
        else:
            assert self.positions is not None
            y = self.positions.clone()
            epochs = self.update_epochs
        y = self._optimize(y, idx, epochs, progress)
        if not restart and self.positions is not None:
            self.trails.append(self.positions.numpy().copy())
        else:
            self.trails.clear()
        self.positions = y
        self.updates += 1
        return y.numpy().copy()

    def trail_array(self) -> np.ndarray:
        """The last positions, oldest first, as float32 [T, N, D] (T ≤ trail length)."""
        if not self.trails:
            n = 0 if self.positions is None else self.positions.shape[0]
            return np.zeros((0, n, self.dims), np.float32)
        return np.stack(list(self.trails)).astype(np.float32)

    def _pca_start(self, x: torch.Tensor) -> torch.Tensor:
        q = min(self.dims, x.shape[1])
        _, _, v = torch.pca_lowrank(x, q=q, center=True, niter=4)
        y = (x - x.mean(0)) @ v[:, :q]
        if q < self.dims:
            y = torch.cat([y, 0.01 * torch.randn(x.shape[0], self.dims - q, generator=self.generator)], 1)
        return 10.0 * y / y.std().clamp_min(1e-8)

    def _optimize(self, y: torch.Tensor, idx: torch.Tensor, epochs: int, progress: ProgressFn | None) -> torch.Tensor:
        n, k = idx.shape
        src = torch.arange(n).repeat_interleave(k)
        dst = idx.reshape(-1)
        neg_src = torch.arange(n).repeat_interleave(self.negatives)
        rep_weight = k / self.negatives
        for epoch in range(epochs):
            # Learning rate decays within a run so each update settles rather than jitters.
            lr = self.learning_rate * (1.0 - epoch / max(epochs, 1)) + 0.05
            diff = y[src] - y[dst]
            d2 = (diff * diff).sum(1, keepdim=True)
            pull = (-2.0 * diff / (1.0 + d2)).clamp_(-4.0, 4.0)
            neg = torch.randint(0, n, (n * self.negatives,), generator=self.generator)
            dn = y[neg_src] - y[neg]
            d2n = (dn * dn).sum(1, keepdim=True)
            push = (2.0 * dn / ((0.001 + d2n) * (1.0 + d2n))).clamp_(-4.0, 4.0)
            grad = torch.zeros_like(y)
            grad.index_add_(0, src, pull)
            grad.index_add_(0, dst, -pull)
            grad.index_add_(0, neg_src, push * rep_weight)
            y = y + (lr / k) * grad
            if progress is not None and progress(epoch + 1, epochs) is False:
                break
        return y


def filter_features(model: torch.nn.Module, layer: str) -> np.ndarray:
    """One row per filter (output channel) of `layer`'s weight, flattened: what a filter embedding embeds."""
    module = dict(model.named_modules()).get(layer) if layer else None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError(f"layer {layer!r} has no weight with filters to embed")
    return weight.detach().reshape(weight.shape[0], -1).numpy().astype(np.float32).copy()
