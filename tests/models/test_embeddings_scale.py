"""Embeddings at scale: the 10-NN agreement metric against a plain re-implementation, PCA
against scikit-learn, thumbnails for 70,000 points, progress and cancellation of large
t-SNE runs (FFT path), and activations kept within a memory cap. Speed is the benchmark's
business (`python -m deeproom.models.embedding_bench`), not these tests'."""

from __future__ import annotations

import numpy as np
import pytest

from deeproom.models.datasets import ImageDataset, load_digits, thumbnails
from deeproom.models.embedding_bench import bench_points
from deeproom.models.embeddings import (
    FFT_ABOVE,
    MAX_POINTS,
    ActivationEmbedding,
    _pca,
    embed,
    knn_label_agreement,
    knn_preservation,
    thumbnail_plan,
    tsne_gradient,
)
from deeproom.models.errors import AnalysisError, JobCancelled
from deeproom.models.jobs import JobContext


def _plain_preservation(high: np.ndarray, low: np.ndarray, k: int) -> float:
    """Slow and obvious: full distance matrices, self excluded by setting it to infinity."""
    def nn(a: np.ndarray) -> list[set[int]]:
        d = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return [set(np.argsort(row, kind="stable")[:k].tolist()) for row in d]
    return float(np.mean([len(a & b) / k for a, b in zip(nn(high), nn(low), strict=True)]))


def test_knn_preservation_matches_a_plain_count() -> None:
    rng = np.random.default_rng(0)
    high = (rng.normal(size=(120, 7)) * [3, 3, 0.3, 0.3, 0.3, 0.3, 0.3]).astype(np.float32)
    assert knn_preservation(high, high, k=10) == 1.0
    low = (high[:, :2] + rng.normal(0, 0.3, (120, 2))).astype(np.float32)
    assert knn_preservation(high, low, k=10) == pytest.approx(_plain_preservation(high, low, 10), abs=1e-9)
    shuffled = low[rng.permutation(120)]
    chance = knn_preservation(high, shuffled, k=10)
    assert chance < 0.2 < 0.5 < knn_preservation(high, low, k=10)  # chance is 10/119
    # sampled: averages over fewer points, neighbours still searched among all
    assert abs(knn_preservation(high, low, k=10, sample=60) - knn_preservation(high, low, k=10)) < 0.1
    with pytest.raises(AnalysisError, match="same points"):
        knn_preservation(high, low[:50])


def test_pca_matches_scikit_learn_and_the_randomized_path() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(300, 20)) * np.linspace(5, 0.1, 20)).astype(np.float32)
    ours = _pca(x, 3, seed=0)
    ref = PCA(3).fit_transform(x)
    assert np.allclose(np.abs(ours), np.abs(ref), atol=1e-3)
    wide = (rng.normal(size=(400, 1500)) * np.linspace(4, 0.01, 1500)).astype(np.float32)
    fast = _pca(wide, 5, seed=0)
    exact = PCA(5).fit_transform(wide)
    assert np.allclose(fast.var(0), exact.var(0), rtol=0.05)
    assert np.array_equal(fast, _pca(wide, 5, seed=0))  # seeded


def test_thumbnails_for_70k_points_stay_small() -> None:
    rows, index = thumbnail_plan(100, 4096)
    assert rows.tolist() == list(range(100)) and index.tolist() == list(range(100))
    rows, index = thumbnail_plan(70_000, 4096, seed=3)
    assert rows.dtype == np.int64 and index.dtype == np.int32 and index.shape == (70_000,)
    assert len(rows) == 4096 and np.all(np.diff(rows) > 0) and (index >= 0).sum() == 4096
    assert np.array_equal(index[rows], np.arange(4096)) and (index[np.setdiff1d(np.arange(70_000), rows)] == -1).all()
    again, _ = thumbnail_plan(70_000, 4096, seed=3)
    assert np.array_equal(rows, again)
    d = load_digits()
    big = ImageDataset(d.x.repeat(39, 1, 1, 1)[:70_000], d.y.repeat(39)[:70_000], d.classes, "digits×39")
    th = thumbnails(big, size=16, indices=rows)
    assert th.shape == (4096, 16, 16) and th.nbytes == 4096 * 256


@pytest.mark.slow
def test_large_tsne_reports_progress_and_cancels() -> None:
    n = FFT_ABOVE + 1000
    assert tsne_gradient(n, 2, "early") == "fft" and tsne_gradient(n, 2, "late") == "bh"  # switches mid-run
    assert tsne_gradient(n, 3, "early") == "bh" and tsne_gradient(2000, 2, "early") == "bh"
    assert tsne_gradient(70_000, 2, "late") == "fft"
    x, y = bench_points(n, seed=0)
    seen: list[tuple[float, str]] = []
    ctx = JobContext(0, on_progress=lambda f, m: seen.append((f, m)))
    pos = embed(x, method="tsne", dims=2, seed=0, ctx=ctx, n_iter=300)
    assert pos.shape == (n, 2) and pos.dtype == np.float32
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions) and len(fractions) == 10  # 450 iterations, 50 a chunk
    assert "neighbours" in seen[0][1] and f"{n:,} points" in seen[-1][1]
    assert knn_label_agreement(pos, y) > 0.9 and knn_preservation(x, pos, sample=2000) > 0.4

    calls: list[float] = []
    jobs: list[JobContext] = []

    def cancel_at_fourth(f: float, m: str) -> None:
        calls.append(f)
        if len(calls) == 4:
            jobs[0].cancel()

    stop = JobContext(0, on_progress=cancel_at_fourth)
    jobs.append(stop)
    with pytest.raises(JobCancelled):
        embed(x, method="tsne", dims=2, seed=0, ctx=stop)
    assert len(calls) == 4  # stopped at the next chunk, not at the end
    with pytest.raises(AnalysisError, match="at most"):
        embed(np.zeros((MAX_POINTS + 1, 1), np.float32), method="pca")


@pytest.mark.slow
def test_activation_embedding_within_a_memory_cap() -> None:
    from deeproom.models.zoo import train_demo_model

    trained = train_demo_model(0)
    test = trained.test.subset(range(400))
    full = ActivationEmbedding(trained.model, "conv2", method="pca").compute(test.x, test.y)
    seen: list[float] = []
    ctx = JobContext(0, on_progress=lambda f, m: seen.append(f))
    capped = ActivationEmbedding(trained.model, "conv2", method="pca", batch_size=64,
                                 max_feature_bytes=400 * 64 * 4).compute(test.x, test.y, ctx)
    assert capped.positions.shape == (400, 2) and seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 5
    assert np.array_equal(capped.predictions, full.predictions)
    assert np.array_equal(capped.predictions, trained.model(test.x).argmax(1).numpy())
    assert not np.allclose(np.abs(capped.positions), np.abs(full.positions), atol=1e-3)  # projected
    # a 64-d random projection of 2,048 features keeps neighbourhoods: t-SNE still separates the classes
    t = ActivationEmbedding(trained.model, "conv2", method="tsne", max_feature_bytes=400 * 64 * 4).compute(
        test.x, test.y)
    t_full = ActivationEmbedding(trained.model, "conv2", method="tsne").compute(test.x, test.y)
    a, b = knn_label_agreement(t_full.positions, t_full.labels), knn_label_agreement(t.positions, t.labels)
    assert b > 0.85 and b > a - 0.05, (a, b)
