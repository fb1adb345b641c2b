"""Embeddings at scale, measured: our t-SNE against scikit-learn's on the same points in the
same process (2,000 and 10,000 points), both judged by 10-NN agreement, and one 70,000-point
embedding run as a job with progress. `embedding_bench()` returns the figures;
`python -m deeproom.models.embedding_bench [--quick]` prints them, the last line one JSON object.

The points are scikit-learn's digits (64 features), resampled with Gaussian noise (σ = 1 on
0–16 pixel values), so every size has the same ten-class structure and nothing downloads.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def bench_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n noisy digits: features float32 [n, 64] and labels [n]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d.data), n)
    return (d.data[idx] + rng.normal(0.0, 1.0, (n, d.data.shape[1]))).astype(np.float32), d.target[idx]


def _label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def embedding_bench(*, quick: bool = False, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Figures: tsne_s_2k, tsne_baseline_s_2k, tsne_knn_2k, tsne_baseline_knn_2k, the same for 10k,
    embed_70k_s (+ its 10-NN agreement on 5,000 sampled points and its progress updates), peak_rss_mb.
    `quick` runs 500/2,000 points and a 10,000-point big embedding (keys named by those sizes)."""
    from sklearn.manifold import TSNE

    from deeproom.models.embeddings import (
        embed,
        knn_label_agreement,
        knn_preservation,
        tsne_gradient,
        tsne_neighbours,
        tsne_threads,
    )
    from deeproom.models.jobs import JobContext

    sizes, big = ((500, 2000), 10_000) if quick else ((2000, 10_000), 70_000)
    out: dict[str, Any] = {"bench": "embeddings", "points": "digits resampled + N(0, 1) noise, 64-d",
                           "metric": "10-NN agreement (knn_preservation)", "load_avg_start": os.getloadavg()[0],
                           "tsne_threads": tsne_threads()}

    for n in sizes:
        x, y = bench_points(n, seed)
        lab = _label(n)
        runs: dict[str, list[float]] = {"ours": [], "base": []}
        pos: dict[str, np.ndarray] = {}

        def ours(x: np.ndarray = x) -> np.ndarray:
            return embed(x, method="tsne", dims=2, seed=seed)

        def base(x: np.ndarray = x) -> np.ndarray:
            tsne = TSNE(n_components=2, init="pca", random_state=seed, max_iter=750, perplexity=30.0)
            return np.asarray(tsne.fit_transform(x), dtype=np.float32)

        # small sizes twice, interleaved (ours, base, base, ours), the best of each kept;
        # the large size once each, scikit-learn first
        order = [("ours", ours), ("base", base), ("base", base), ("ours", ours)] if n <= 2000 else [
            ("base", base), ("ours", ours)]
        for name, fn in order:
            log(f"t-SNE of {n:,} points: {'ours (openTSNE)' if name == 'ours' else 'scikit-learn'} ...")
            t0 = time.perf_counter()
            pos[name] = fn()
            runs[name].append(time.perf_counter() - t0)
            log(f"  {runs[name][-1]:.2f} s")
        out[f"tsne_s_{lab}"] = min(runs["ours"])
        out[f"tsne_baseline_s_{lab}"] = min(runs["base"])
        out[f"tsne_knn_{lab}"] = knn_preservation(x, pos["ours"])
        out[f"tsne_baseline_knn_{lab}"] = knn_preservation(x, pos["base"])
        out[f"tsne_label_knn_{lab}"] = knn_label_agreement(pos["ours"], y)
        out[f"tsne_baseline_label_knn_{lab}"] = knn_label_agreement(pos["base"], y)
        out[f"tsne_speedup_{lab}"] = out[f"tsne_baseline_s_{lab}"] / out[f"tsne_s_{lab}"]

    x, y = bench_points(big, seed)
    lab = _label(big)
    updates: list[float] = []
    ctx = JobContext(seed, on_progress=lambda f, m: updates.append(f))
    log(f"t-SNE of {big:,} points as a job with progress ...")
    t0 = time.perf_counter()
    pos_big = embed(x, method="tsne", dims=2, seed=seed, ctx=ctx)
    out[f"embed_{lab}_s"] = time.perf_counter() - t0
    out[f"embed_{lab}_method"] = (f"tsne (openTSNE, {tsne_gradient(big, 2, 'early')}/{tsne_gradient(big, 2, 'late')} gradients, "
                                      f"{tsne_neighbours(big)} neighbours)")
    out[f"embed_{lab}_progress_updates"] = len(updates)
    out[f"embed_{lab}_progress_final"] = updates[-1] if updates else 0.0
    out[f"embed_{lab}_knn"] = knn_preservation(x, pos_big, sample=5000, seed=seed)
    out[f"embed_{lab}_label_knn"] = knn_label_agreement(pos_big[:20_000], y[:20_000])
    out["load_avg_end"] = os.getloadavg()[0]
    out["peak_rss_mb"] = _peak_rss_mb()
    return {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    result = embedding_bench(quick="--quick" in args, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
