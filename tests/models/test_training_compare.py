"""Epoch differences between checkpoints and run comparisons, with hand-set weights and exact answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deeproom.content import decode_content, encode_content
from deeproom.models.training.checkpoints import Checkpoint
from deeproom.models.training.compare import (
    CheckpointDiff,
    confusion_meta,
    confusion_side_by_side,
    overlay_runs,
)
from deeproom.models.training.errors import TrainingError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)
        self.out = nn.Linear(2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lin(x))


def ckpt(lin: list[list[float]], positions: list[list[float]] | None = None) -> Checkpoint:
    arrays = {"positions": torch.tensor(positions)} if positions is not None else {}
    return Checkpoint(model={"lin.weight": torch.tensor(lin), "out.weight": torch.tensor([[1.0, 1.0]])}, arrays=arrays)


def test_checkpoint_difference_is_exact_for_known_weights() -> None:
    model = Tiny()
    live = {k: v.clone() for k, v in model.state_dict().items()}
    a = ckpt([[1.0, 0.0], [0.0, 2.0]], [[0.0, 0.0], [1.0, 1.0]])
    b = ckpt([[2.0, 0.0], [0.0, 2.0]], [[3.0, 4.0], [1.0, 1.0]])
    diff = CheckpointDiff(model, "lin").compute(torch.tensor([[1.0, 1.0], [2.0, 1.0]]), a, b)
    # filter 0 doubled (‖Δ‖/‖w‖ = 1), filter 1 unchanged
    assert diff.filter_change.tolist() == [1.0, 0.0]
    # activations of filter 0: a gives x0 = [1, 2], b gives [2, 4] -> mean |Δ| / mean |a| = 1.5 / 1.5
    assert diff.activation_change.tolist() == [1.0, 0.0]
    assert diff.weight_change["out.weight"] == 0.0
    assert diff.weight_change["lin.weight"] == pytest.approx(1.0 / np.sqrt(5.0))
    assert diff.position_change is not None and diff.position_change.tolist() == [5.0, 0.0]
    assert diff.summary()["mean_position_change"] == 2.5
    for k, v in model.state_dict().items():  # the live model is untouched
        assert torch.equal(v, live[k])
    with pytest.raises(TrainingError, match="no layer"):
        CheckpointDiff(model, "nope")


def test_overlaid_curves_share_one_step_axis() -> None:
    a = {"step": np.array([0, 10, 20], np.float32), "loss": np.array([3, 2, 1], np.float32)}
    b = {"step": np.array([0, 5, 10], np.float32), "loss": np.array([4, 3, 2], np.float32),
         "val_acc": np.array([np.nan, np.nan, 0.5], np.float32)}
    meta, arrays = overlay_runs({"adam": a, "sgd": b})
    assert arrays["step"].tolist() == [0, 5, 10, 20]
    assert np.array_equal(arrays["adam/loss"], [3, np.nan, 2, 1], equal_nan=True)
    assert np.array_equal(arrays["sgd/loss"], [4, 3, 2, np.nan], equal_nan=True)
    assert meta["series"] == ["adam/loss", "sgd/loss", "sgd/val_acc"] and meta["x"] == "step"
    meta2, arrays2 = decode_content(encode_content(meta, arrays))  # it is a valid metrics blob
    assert meta2["kind"] == "metrics" and np.array_equal(arrays2["sgd/loss"], arrays["sgd/loss"], equal_nan=True)
    _, only = overlay_runs({"adam": a, "sgd": b}, series=["loss"])
    assert set(only) == {"step", "adam/loss", "sgd/loss"}


def test_confusion_matrices_side_by_side_with_exact_scores() -> None:
    m1 = np.array([[3, 1], [0, 4]])
    m2 = np.array([[4, 0], [2, 2]])
    (meta1, arr1), (meta2, _) = confusion_side_by_side({"a": m1, "b": m2}, ["cat", "dog"])
    assert meta1["labels"] == ["cat", "dog"] and meta1["run"] == "a" and meta2["run"] == "b"
    assert meta1["precision"] == [1.0, 0.8] and meta1["recall"] == [0.75, 1.0]
    assert meta1["f1"] == [round(2 * 0.75 / 1.75, 4), round(1.6 / 1.8, 4)]
    assert arr1["matrix"].dtype == np.int32
    assert confusion_meta(np.zeros((2, 2), np.int32))["precision"] == [0.0, 0.0]
    with pytest.raises(TrainingError, match="one shape"):
        confusion_side_by_side({"a": m1, "b": np.zeros((3, 3))})


def test_a_run_compares_two_of_its_checkpoints_on_request(tmp_path) -> None:
    from deeproom.models.training import watch
    from deeproom.models.training.demo import DemoCNN, digits

    torch.manual_seed(0)
    train, _ = digits()
    model = DemoCNN()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    run = watch(model, optimizer=opt, offline=True, train_data=(train.x, train.y), data_dir=tmp_path, embed=False)
    run.steer({"cmd": "save_checkpoint", "name": "a"})
    run.service()
    for i in range(0, 640, 64):
        loss = nn.functional.cross_entropy(model(train.x[i : i + 64]), train.y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(loss=loss)
    run.steer({"cmd": "freeze", "layer": "conv1"})
    run.steer({"cmd": "save_checkpoint", "name": "b"})
    run.steer({"cmd": "compare_checkpoints", "a": "a", "b": "b"})
    run.service()
    diff = next(e for e in run.events if e["type"] == "checkpoint_diff")
    assert diff["layer"] == "fc1" and len(diff["filter_change"]) == 64 and len(diff["activation_change"]) == 64
    assert sum(v > 0 for v in diff["filter_change"]) > 32 and diff["weight_change"]["conv1.weight"] > 0
    run.close()
