"""Datasets (and their bad inputs), embeddings judged by kNN label agreement, the job
runner (progress, cancel, seed, cache with nothing partial), blobs and the CLI."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeproom.content import decode_content
from deeproom.models.datasets import (
    load_dataset,
    load_digits,
    load_idx,
    load_image_folder,
    load_npz,
)
from deeproom.models.embeddings import (
    ActivationEmbedding,
    FilterEmbedding,
    embed,
    knn_label_agreement,
)
from deeproom.models.errors import AnalysisError, DatasetError, JobCancelled, LayerNotFoundError
from deeproom.models.jobs import JobRunner, ResultCache, cache_key
from deeproom.models.loading import load_model
from deeproom.models.tasks import run_analysis, submit_analysis
from deeproom.models.zoo import DigitsCNN, train_demo_model


def _folder(root: Path, size: tuple[int, int] = (8, 8)) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_image_folder_and_its_bad_inputs(tmp_path: Path) -> None:
    ds = load_image_folder(_folder(tmp_path / "ok"))
    assert ds.x.shape == (6, 3, 8, 8) and ds.classes == ("cat", "dog") and ds.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.thumbnails().shape == (6, 8, 8, 3) and ds.thumbnails().dtype == np.uint8
    bad = _folder(tmp_path / "bad")
    (bad / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(bad / "cat" / "tall.png")
    skipped = load_image_folder(bad)  # skipped and counted, not fatal (tests/models/test_user_data.py)
    assert len(skipped) == 6 and dict(skipped.skipped) == {"corrupt": 1, "odd size": 1}
    assert load_image_folder(bad, image_size=8).x.shape == (7, 3, 8, 8)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        load_image_folder(tmp_path / "flat")


def test_npz_and_idx(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 255, (10, 28, 28), dtype=np.uint8)
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_npz(tmp_path / "d.npz")
    assert ds.x.shape == (10, 1, 28, 28) and float(ds.x.max()) <= 1.0 and len(ds.classes) == 3
    np.savez(tmp_path / "short.npz", x=x, y=y[:5])
    with pytest.raises(DatasetError, match="10 images but 5 labels"):
        load_npz(tmp_path / "short.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 2), y=np.zeros(2))
    with pytest.raises(DatasetError):
        load_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "nox.npz", images=x)
    with pytest.raises(DatasetError, match="needs arrays 'x' and 'y'"):
        load_npz(tmp_path / "nox.npz")
    img = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", 10, 28, 28) + x.tobytes()
    lab = struct.pack(">BBBB", 0, 0, 8, 1) + struct.pack(">I", 10) + y.astype(np.uint8).tobytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(img))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(lab)
    ds = load_idx(tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte")
    assert ds.x.shape == (10, 1, 28, 28) and ds.y.tolist() == y.tolist()
    (tmp_path / "cut-idx3-ubyte").write_bytes(img[:500])
    with pytest.raises(DatasetError, match="IDX header says"):
        load_idx(tmp_path / "cut-idx3-ubyte")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nothing")
    assert len(load_dataset("digits")) == 1797


@pytest.mark.slow
def test_embeddings_preserve_neighbourhoods() -> None:
    ds = load_digits().subset(range(600))
    x, y = ds.x.reshape(600, -1).numpy(), ds.y.numpy()
    pca = embed(x, method="pca", dims=2)
    tsne2 = embed(x, method="tsne", dims=2, seed=1)
    tsne3 = embed(x, method="tsne", dims=3, seed=1, n_iter=300)
    assert pca.shape == (600, 2) and tsne2.shape == (600, 2) and tsne3.shape == (600, 3)
    assert knn_label_agreement(pca, y) > 0.5
    assert knn_label_agreement(tsne2, y) > 0.9
    assert knn_label_agreement(tsne3, y) > 0.85
    assert np.array_equal(tsne2, embed(x, method="tsne", dims=2, seed=1))  # seeded
    with pytest.raises(AnalysisError, match="unknown embedding method"):
        embed(x, method="mds")


@pytest.mark.slow
def test_umap_preserves_neighbourhoods() -> None:
    ds = load_digits().subset(range(400))
    pos = embed(ds.x.reshape(400, -1), method="umap", dims=2, seed=0)
    assert knn_label_agreement(pos, ds.y.numpy()) > 0.85


@pytest.mark.slow
def test_activation_and_filter_embeddings() -> None:
    trained = train_demo_model(0)
    assert trained.test_accuracy > 0.95
    test = trained.test.subset(range(300))
    emb = ActivationEmbedding(trained.model, "relu3", method="pca").compute(test.x, test.y)
    assert emb.positions.shape == (300, 2) and emb.labels.dtype == np.int16
    assert (emb.predictions == trained.model(test.x).argmax(1).numpy()).all()
    assert ((emb.confidence >= 0) & (emb.confidence <= 1)).all() and emb.thumbnail_index.tolist() == list(range(300))
    # the trained layer separates classes better than the raw pixels do
    raw = embed(test.x.reshape(300, -1), method="pca")
    assert knn_label_agreement(emb.positions, emb.labels) > knn_label_agreement(raw, emb.labels) + 0.05
    f = FilterEmbedding(trained.model, "conv2", method="pca", dims=3).compute()
    assert f.positions.shape == (32, 3) and (f.labels == -1).all()


def test_job_runner_progress_cancel_cache(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache")
    seen: list[float] = []
    gate = threading.Event()

    def work(ctx):  # type: ignore[no-untyped-def]
        for i in range(5):
            ctx.progress(i + 1, 5)
        assert threading.current_thread() is not threading.main_thread()
        return torch.randint(0, 1000, (4,), generator=torch.Generator().manual_seed(ctx.seed)).numpy().tobytes()

    def slow(ctx):  # type: ignore[no-untyped-def]
        gate.wait(5)
        for i in range(100):
            ctx.progress(i, 100)
        return b"never"

    def failing(ctx):  # type: ignore[no-untyped-def]
        ctx.progress(1, 2)
        raise LayerNotFoundError("no layer named 'x'")

    with JobRunner(cache=cache) as runner:
        k = cache_key("m", "work", {"a": 1})
        job = runner.submit(work, key=k, seed=7, on_progress=lambda f, m: seen.append(f))
        first = job.result(10)
        assert seen[-1] == 1.0 and job.progress == 1.0 and k in cache
        again = runner.submit(work, key=k, seed=7)
        assert again.cached and again.result() == first
        assert runner.submit(work, seed=7).result(10) == first  # same seed, same result
        k2 = cache_key("m", "slow", {})
        sj = runner.submit(slow, key=k2)
        sj.cancel()
        gate.set()
        with pytest.raises((JobCancelled, Exception)):
            sj.result(10)
        k3 = cache_key("m", "fail", {})
        with pytest.raises(LayerNotFoundError):
            runner.submit(failing, key=k3).result(10)
    runner.close()  # twice is safe
    assert k2 not in cache and k3 not in cache and cache.stray_files() == []
    assert cache.keys() == [k]


def test_named_analyses_make_schema_blobs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loaded = load_model(DigitsCNN())
    ds = load_digits().subset(range(200))
    meta, arrays = decode_content(run_analysis(loaded, "gradcam", {"layer": "conv2", "index": 3}, dataset=ds))
    assert meta["kind"] == "grad_cam" and meta["layer"] == "conv2" and meta["method"] == "gradcam"
    assert arrays["image"].dtype == np.uint8 and arrays["image"].shape == (8, 8)
    assert arrays["cam"].dtype == np.float16 and arrays["cam"].shape == (8, 8) and arrays["cam"].max() <= 1
    meta, arrays = decode_content(run_analysis(loaded, "confusion_matrix", dataset=ds))
    assert arrays["matrix"].dtype == np.int32 and arrays["matrix"].sum() == 200 and len(meta["f1"]) == 10
    meta, arrays = decode_content(run_analysis(loaded, "feature_maps", {"layer": "conv1"}, dataset=ds))
    assert arrays["maps"].shape == (16, 8, 8) and arrays["maps"].dtype == np.float16
    meta, arrays = decode_content(run_analysis(loaded, "filters", {"layer": "conv1"}))
    assert arrays["filters"].shape == (16, 3, 3)
    meta, arrays = decode_content(run_analysis(loaded, "latent_cloud", {"layer": "relu3", "method": "pca"}, dataset=ds))
    assert arrays["positions"].shape == (200, 2) and arrays["thumbnails"].shape == (200, 8, 8)
    assert arrays["labels"].dtype == np.int16 and arrays["confidence"].dtype == np.float16
    meta, _ = decode_content(run_analysis(loaded, "graph"))
    assert meta["kind"] == "model_graph" and len(meta["nodes"]) == 10
    with pytest.raises(AnalysisError, match="unknown analysis"):
        run_analysis(loaded, "astrology")
    cache = ResultCache(tmp_path / "c")
    with JobRunner(cache=cache) as runner:
        with pytest.raises(LayerNotFoundError):
            submit_analysis(runner, loaded, "gradcam", {"layer": "conv9"}, dataset=ds).result(30)
        from deeproom.models.errors import TargetError

        with pytest.raises(TargetError):
            submit_analysis(runner, loaded, "gradcam", {"layer": "conv2", "target": 10}, dataset=ds).result(30)
        ok = submit_analysis(runner, loaded, "gradcam", {"layer": "conv2"}, dataset=ds)
        ok.result(30)
    assert len(cache.keys()) == 1 and cache.stray_files() == []


def test_cli_inspect_and_light_import(tmp_path: Path) -> None:
    from deeproom.cli import main

    assert main(["inspect", "digits_cnn", "--graph"]) == 0
    code = ("import sys, deeproom.models, deeproom.models.commands; "
            "assert 'torch' not in sys.modules, 'torch imported at package import'; "
            "import deeproom.models.analysis, deeproom.models.graph, deeproom.models.tasks, deeproom.models.bench; "
            "bad = [m for m in ('ursina', 'panda3d', 'xr') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    out = subprocess.run([sys.executable, "-m", "deeproom.cli", "inspect", str(tmp_path / "none.onnx")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "no such model file" in out.stderr


@pytest.mark.slow
def test_bench_engine_quick_ends_with_json() -> None:
    import json

    out = subprocess.run([sys.executable, "-m", "deeproom.cli", "bench", "engine", "--quick"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("onnx_max_abs_err", "onnx_conformance", "graph_nodes", "graph_extract_s", "gradcam_ms",
                "gradcam_cost_ratio", "activations_cost_ratio", "tsne_s_quick", "tsne_baseline_s_quick", "peak_rss_mb"):
        assert key in result, key
    passed, total = (int(v) for v in result["onnx_conformance"].split("/"))
    assert total > 100 and passed / total > 0.97  # --quick runs every tenth claimed test
    assert result["onnx_max_abs_err"] < 1e-4 and result["graph_nodes"] == 2001
