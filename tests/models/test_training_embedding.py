"""The streamed embedding keeps neighbours and moves points less than a restarted one; it runs while training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deeproom.models.training import EmbeddingFrame, watch
from deeproom.models.training.demo import DemoCNN, digits
from deeproom.models.training.stream_embed import (
    StreamedEmbedding,
    filter_features,
    knn_agreement,
    neighbour_preservation,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pixels() -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    train, _ = digits()
    return train.x.reshape(len(train.y), -1).numpy(), train.y.numpy()


def drift(x: np.ndarray, k: int) -> np.ndarray:
    # Features that change a little from update to update, as a training layer's do.
    rng = np.random.default_rng(k)
    return (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)


def spread(p: np.ndarray) -> float:
    return float(np.linalg.norm(p - p.mean(0), axis=1).mean())


def test_streamed_updates_keep_neighbours_and_move_less_than_restarts(pixels) -> None:
    x, y = pixels
    se = StreamedEmbedding(2, seed=0)
    prev = se.update(drift(x, 0))
    assert knn_agreement(prev, y) > 0.9
    streamed, restarted = [], []
    before_last = prev
    for k in range(1, 6):
        feats = drift(x, k)
        before_last = prev
        pos = se.update(feats)
        streamed.append(np.linalg.norm(pos - prev, axis=1).mean() / spread(prev))
        fresh = StreamedEmbedding(2, seed=100 + k).update(feats)
        restarted.append(np.linalg.norm(fresh - prev, axis=1).mean() / spread(prev))
        assert knn_agreement(pos, y) > 0.9
        prev = pos
    assert neighbour_preservation(x, prev) > 0.3
    assert max(streamed) < 0.15
    assert np.mean(streamed) < 0.3 * np.mean(restarted), (streamed, restarted)
    trails = se.trail_array()
    assert trails.shape == (5, len(x), 2) and np.allclose(trails[-1], before_last)  # last five positions, oldest first


def test_three_dimensional_and_filter_embeddings() -> None:
    torch.manual_seed(0)
    model = DemoCNN()
    feats = filter_features(model, "conv2")
    assert feats.shape == (32, 16 * 9)
    se = StreamedEmbedding(3, k=5, seed=0)
    a = se.update(feats)
    b = se.update(feats * 1.01)
    assert a.shape == b.shape == (32, 3) and np.isfinite(b).all()
    with pytest.raises(ValueError, match="no weight"):
        filter_features(model, "pool")


@pytest.mark.slow
def test_embedding_streams_while_training_and_separates_classes(tmp_path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, val = digits()
    model = DemoCNN()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    run = watch(model, optimizer=opt, offline=True, train_data=(train.x, train.y), val_data=(val.x, val.y),
                data_dir=tmp_path, embed_layer="fc1")
    frames: list[EmbeddingFrame] = []
    run.frame_listeners.append(frames.append)
    epochs = 0
    # Train until a few frames came (a busy machine makes frames slower, not fewer per unit of work).
    while epochs < 4 or (len(frames) < 4 and epochs < 40):
        epochs += 1
        for i in range(0, len(train.y), 64):
            loss = torch.nn.functional.cross_entropy(model(train.x[i : i + 64]), train.y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log(loss=loss)
        run.epoch_end()
    run.close()
    assert len(frames) >= 4
    assert [f.frame for f in frames] == list(range(1, len(frames) + 1))
    last = frames[-1]
    assert last.positions.shape == (len(train.y), 2)
    assert knn_agreement(last.positions, train.y.numpy()) > 0.85
    assert float((torch.from_numpy(last.predictions) == train.y).float().mean()) > 0.8
