"""Labeling in the 3-D latent cloud: spheres label points, fine-tuning moves the cloud, accuracy rises with labels."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from deeproom.models.training import SteerError
from deeproom.models.training.latent import (
    LabelingLoop,
    LabelingSession,
    parse_sphere,
    simulate_labeller,
)
from deeproom.models.training.stream_embed import knn_agreement

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    d = load_digits()
    return torch.from_numpy(d.images.reshape(-1, 64).astype(np.float32) / 16.0), torch.from_numpy(d.target)


@pytest.fixture(scope="module")
def pretrained(xy) -> LabelingSession:
    s = LabelingSession(*xy, seed=0)
    s.pretrain(5)
    return s


@pytest.mark.slow
def test_accuracy_rises_as_labels_are_added(xy) -> None:
    s = LabelingSession(*xy, seed=1)
    s.pretrain(30)
    assert s.positions().shape == (len(s.x), 3)
    assert knn_agreement(s.positions(), s.y_true.numpy()) > 0.55  # the unsupervised latent already groups digits
    results = simulate_labeller(s, [10, 50, 100], seed=1)
    assert [n for n, _ in results] == [10, 50, 100]
    acc = [a for _, a in results]
    assert acc[2] > acc[0] + 0.15 and acc[2] >= 0.6, acc
    # Same-label points gathered: the latent groups classes better than before labelling.
    assert knn_agreement(s.positions(), s.y_true.numpy()) > 0.7


def test_a_sphere_labels_exactly_the_points_inside(pretrained) -> None:
    s = pretrained
    pos = s.refresh_positions()
    centre = pos[7]
    radius = float(np.sort(np.linalg.norm(pos - centre, axis=1))[5])  # the 6 nearest, centre included
    ev = s.label_sphere(centre.tolist(), radius, 4)
    inside = np.flatnonzero(np.linalg.norm(pos - centre, axis=1) <= radius)
    assert sorted(ev.ids.tolist()) == sorted(inside.tolist()) and len(inside) >= 6
    assert (s.labels.numpy()[inside] == 4).all() and s.n_labelled == len(inside)
    s.label_sphere(centre.tolist(), radius, -1)  # -1 takes the labels away again
    assert s.n_labelled == 0
    with pytest.raises(SteerError, match="holds no points"):
        s.label_sphere([1e5, 1e5, 1e5], 0.1, 3)


def test_sphere_payloads_are_checked() -> None:
    assert parse_sphere({"center": [0, 1, 2], "radius": 0.5, "label": 3}, 10) == ((0.0, 1.0, 2.0), 0.5, 3)
    for bad, msg in [
        ({"center": [0, 1], "radius": 1, "label": 1}, "center"),
        ({"center": [0, 1, float("nan")], "radius": 1, "label": 1}, "center"),
        ({"center": [0, 1, 2], "radius": 0, "label": 1}, "radius"),
        ({"center": [0, 1, 2], "radius": 1, "label": 10}, "label"),
        ({"center": [0, 1, 2], "radius": 1, "label": True}, "label"),
    ]:
        with pytest.raises(SteerError, match=msg):
            parse_sphere(bad, 10)


def test_the_loop_moves_the_cloud_after_a_label_and_reports_bad_commands(xy) -> None:
    s = LabelingSession(*xy, seed=2)
    s.pretrain(5)
    frames: list[tuple[int, np.ndarray, float]] = []
    loop = LabelingLoop(s, rounds=5, on_frame=lambda f, p: frames.append((f, p, time.perf_counter()))).start()
    try:
        before = s.refresh_positions().copy()
        c = before[0]
        loop.submit({"cmd": "label_sphere", "center": c.tolist(), "radius": 0.3, "label": int(s.y_true[0])})
        loop.submit({"cmd": "label_sphere", "center": [900.0, 900.0, 900.0], "radius": 0.1, "label": 1})
        loop.submit({"cmd": "paint", "colour": "red"})
        assert loop.wait_idle(60)
        assert len(frames) == 5 and [f for f, _, _ in frames] == [1, 2, 3, 4, 5]
        assert np.linalg.norm(frames[0][1] - before, axis=1).mean() > 0  # the cloud moved
        errors = [e["message"] for e in loop.events if e["type"] == "error"]
        assert "holds no points" in errors[0] and "label_sphere, label_ids" in errors[1]
        assert any(e["type"] == "label_accuracy" for e in loop.events)
    finally:
        loop.close()
