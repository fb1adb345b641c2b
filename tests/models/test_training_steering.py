"""Steering a watched run (offline: the same entry point "steer" events reach): freezing, retraining, faults."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import torch

from deeproom.models.training import Run, SteerError, watch
from deeproom.models.training.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from deeproom.models.training.demo import DemoCNN, digits
from deeproom.models.training.errors import CheckpointError
from deeproom.models.training.steering import parse_steer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(1)
    train, val = digits()
    return train.x, train.y, val.x, val.y


def make_run(data: tuple[torch.Tensor, ...], tmp_path: Path, *, weight_decay: float = 0.0, embed: bool = False,
             lr: float = 3e-3) -> tuple[Run, DemoCNN, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = DemoCNN()
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=weight_decay)
    run = watch(model, optimizer=opt, offline=True, train_data=(data[0], data[1]), val_data=(data[2], data[3]),
                data_dir=tmp_path, embed=embed)
    return run, model, opt


def steps(run: Run, model: DemoCNN, opt: torch.optim.Optimizer, data: tuple[torch.Tensor, ...], n: int, start: int = 0) -> None:
    x, y = data[0], data[1]
    for i in range(start, start + n):
        j = (i * 64) % (len(y) - 64)
        loss = torch.nn.functional.cross_entropy(model(x[j : j + 64]), y[j : j + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(loss=loss)
        if run.stopped:
            return


def test_freezing_a_layer_stops_its_parameters_and_unfreezing_resumes(data, tmp_path) -> None:
    run, model, opt = make_run(data, tmp_path, weight_decay=0.01)
    steps(run, model, opt, data, 10)  # momentum is built up: a zero gradient alone would still move weights
    run.steer({"cmd": "freeze", "layer": "conv1"})
    steps(run, model, opt, data, 1, 10)  # the command runs at this step's end
    frozen = {k: v.clone() for k, v in model.conv1.state_dict().items()}
    other = model.conv2.weight.detach().clone()
    steps(run, model, opt, data, 15, 11)
    for k, v in model.conv1.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert not torch.equal(model.conv2.weight, other)
    assert model.conv1.weight.grad is None and not model.conv1.weight.requires_grad  # backward skips it
    run.steer({"cmd": "unfreeze", "layer": "conv1"})
    steps(run, model, opt, data, 5, 26)
    assert not torch.equal(model.conv1.weight, frozen["weight"])
    run.close()


def test_freezing_single_filters_keeps_exactly_those_filters(data, tmp_path) -> None:
    run, model, opt = make_run(data, tmp_path, weight_decay=0.05)
    steps(run, model, opt, data, 5)
    run.steer({"cmd": "freeze", "layer": "conv2", "filters": [0, 3, 31]})
    steps(run, model, opt, data, 1, 5)
    w0, b0 = model.conv2.weight.detach().clone(), model.conv2.bias.detach().clone()
    steps(run, model, opt, data, 15, 6)
    kept = [0, 3, 31]
    assert torch.equal(model.conv2.weight[kept], w0[kept]) and torch.equal(model.conv2.bias[kept], b0[kept])
    moved = [i for i in range(32) if i not in kept]
    assert (model.conv2.weight[moved] - w0[moved]).flatten(1).norm(dim=1).min() > 0
    run.steer({"cmd": "unfreeze", "layer": "conv2", "filters": [3]})
    steps(run, model, opt, data, 5, 21)
    assert not torch.equal(model.conv2.weight[3], w0[3]) and torch.equal(model.conv2.weight[0], w0[0])
    run.close()


def test_bad_freeze_requests_are_reported_and_training_goes_on(data, tmp_path) -> None:
    run, model, opt = make_run(data, tmp_path)
    run.steer({"cmd": "freeze", "layer": "no_such_layer"})
    run.steer({"cmd": "freeze", "layer": "conv1", "filters": [99]})
    run.steer({"cmd": "freeze"})
    run.steer({"cmd": "rm -rf"})
    steps(run, model, opt, data, 3)
    errors = [e for e in run.events if e["type"] == "error"]
    assert len(errors) == 4
    assert "no_such_layer" in errors[0]["message"] and "conv1, conv2, fc1, fc2" in errors[0]["message"]
    assert "0..15" in errors[1]["message"]
    assert "allowed" in errors[3]["message"]
    assert not run.freezer.frozen_layers and not run.freezer.frozen_filters
    assert run.step == 3
    run.close()


def test_retraining_on_misclassified_points_fixes_most_of_them(data, tmp_path) -> None:
    run, model, opt = make_run(data, tmp_path, lr=1e-3)
    steps(run, model, opt, data, 25)  # an undertrained model: many points wrong
    pred, _ = run.predict(data[0])
    wrong_before = int((pred != data[1]).sum())
    assert wrong_before > 50
    run.steer({"cmd": "retrain", "select": "misclassified", "steps": 40})
    run.service()
    done = next(e for e in run.events if e["type"] == "steered" and e["cmd"] == "retrain")
    assert done["points"] == wrong_before and done["wrong_before"] == wrong_before
    assert done["wrong_after"] <= 0.3 * wrong_before, done
    run.close()


def test_selections_of_zero_points_are_refused(data, tmp_path) -> None:
    run, _model, _opt = make_run(data, tmp_path)
    with pytest.raises(SteerError, match="zero points"):
        parse_steer({"cmd": "retrain", "select": "ids", "ids": []})
    run.steer({"cmd": "retrain", "select": "low_confidence", "threshold": 1e-9})
    run.steer({"cmd": "retrain", "select": "ids", "ids": [10**6]})
    run.service()
    errors = [e["message"] for e in run.events if e["type"] == "error"]
    assert "zero points" in errors[0] and "0.." in errors[1]
    run.close()


def test_pause_resume_stop_and_learning_rate(data, tmp_path) -> None:
    run, model, opt = make_run(data, tmp_path)
    done = threading.Event()

    def loop() -> None:
        steps(run, model, opt, data, 100_000)
        done.set()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    run.steer({"cmd": "set_lr", "lr": 0.0123})
    run.steer({"cmd": "pause"})
    time.sleep(0.5)
    held = run.step
    time.sleep(0.5)
    assert run.paused and run.step == held  # held at a safe point
    assert opt.param_groups[0]["lr"] == 0.0123
    run.steer({"cmd": "resume"})
    time.sleep(0.5)
    assert run.step > held
    run.steer({"cmd": "stop"})
    assert done.wait(30) and run.stopped
    run.steer({"cmd": "set_lr", "lr": -1})
    run.service()
    assert "(0, 10]" in run.events[-1]["message"]
    run.close()


def test_nan_loss_is_reported_and_the_last_good_weights_are_kept(data, tmp_path) -> None:
    run, model, opt = make_run(data, tmp_path)
    steps(run, model, opt, data, 50)  # a good state is kept every 50 steps
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.fc2.weight.fill_(float("nan"))
    run.log(loss=float("nan"))
    err = [e for e in run.events if e["type"] == "error"][-1]
    assert "non-finite loss" in err["message"] and "restored" in err["message"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, good[k]), k
    assert all(math.isfinite(v) for v in run.metrics_table()["loss"] if not math.isnan(v))
    run.close()


def test_a_script_raising_mid_epoch_is_reported_and_checkpoints_stay_whole(data, tmp_path) -> None:
    run, model, opt = make_run(data, tmp_path)
    with pytest.raises(RuntimeError, match="user bug"), run:
        steps(run, model, opt, data, 5)
        run.steer({"cmd": "save_checkpoint", "name": "e0"})
        steps(run, model, opt, data, 1, 5)
        raise RuntimeError("user bug")
    assert run.status == "failed"
    assert any(e["type"] == "error" and "user bug" in e["message"] for e in run.events)
    assert run.checkpoint_dir is not None
    ckpt = load_checkpoint(run.checkpoint_dir / "e0.pt")
    assert ckpt.scalars["step"] == 6
    assert [p.name for p in run.checkpoint_dir.iterdir()] == ["e0.pt"]  # no temp files left


def test_checkpoint_save_and_restore_through_steering(data, tmp_path) -> None:
    run, model, opt = make_run(data, tmp_path)
    steps(run, model, opt, data, 5)
    run.steer({"cmd": "save_checkpoint", "name": "early"})
    run.service()
    early = {k: v.clone() for k, v in model.state_dict().items()}
    steps(run, model, opt, data, 10, 5)
    assert not torch.equal(model.fc1.weight, early["fc1.weight"])
    run.steer({"cmd": "restore_checkpoint", "name": "early"})
    run.steer({"cmd": "restore_checkpoint", "name": "never_saved"})
    run.steer({"cmd": "save_checkpoint", "name": "../escape"})
    run.service()
    for k, v in model.state_dict().items():
        assert torch.equal(v, early[k])
    errors = [e["message"] for e in run.events if e["type"] == "error"]
    assert "never_saved" in errors[0] and "checkpoint name" in errors[1]
    run.close()


def test_a_failed_checkpoint_write_leaves_the_old_file_whole(tmp_path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, Checkpoint(model={"w": torch.ones(3)}, scalars={"step": 1}))
    before = path.read_bytes()
    # A lambda cannot be pickled: torch.save fails half-way through writing.
    with pytest.raises(CheckpointError):
        save_checkpoint(path, Checkpoint(model={"w": torch.zeros(3)}, optimizer={"bad": lambda: 0}))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert torch.equal(load_checkpoint(path).model["w"], torch.ones(3))


def test_checkpoints_are_read_without_running_pickled_code(tmp_path) -> None:
    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "deeproom-checkpoint-1", "model": {}, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)
