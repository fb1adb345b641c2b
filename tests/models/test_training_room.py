"""A user's script using the watch API feeds a room on a real relay that other real clients read and steer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deeproom.content import decode_content
from deeproom.models.training import decode_positions, watch
from deeproom.models.training.demo import DemoCNN, digits

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def _events(client: Any, seen: list[tuple[str, str, dict[str, Any]]]) -> None:
    for item in client.drain():
        if item.kind == "event":
            seen.append(item.data)


def _wait(cond: Any, client: Any, seen: list[Any], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _events(client, seen)
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_user_script_feeds_a_room_that_a_second_client_reads_and_steers(tmp_path: Path) -> None:
    from deeproom.net import BackgroundClient

    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, val = digits()
    model = DemoCNN()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    # The user's two lines: watch, then log in their own loop.
    run = watch(model, room="lab", optimizer=opt, train_data=(train.x, train.y), val_data=(val.x, val.y),
                data_dir=tmp_path, publish_every_s=0.5, embed_filters="conv2")
    assert run.url and run.url.startswith("http://127.0.0.1:")
    viewer = BackgroundClient(run.url, room="lab", name="viewer").wait_ready(30)
    seen: list[tuple[str, str, dict[str, Any]]] = []
    owner = run.link.participant_id if run.link is not None else None
    try:
        def one_epoch() -> None:
            for i in range(0, len(train.y), 64):
                loss = torch.nn.functional.cross_entropy(model(train.x[i : i + 64]), train.y[i : i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.log(loss=loss)
            run.epoch_end()

        one_epoch()
        # Steering from the room: a good command and one naming no layer.
        viewer.send_event("steer", {"cmd": "freeze", "layer": "conv1"}, to=owner).result(10)
        viewer.send_event("steer", {"cmd": "freeze", "layer": "no_such_layer"}, to=owner).result(10)
        one_epoch()
        one_epoch()
        assert "conv1" in run.freezer.frozen_layers
        assert run.link is not None and run.link.flush(30)

        streams = lambda: [p for k, _, p in seen if k == "stream"]  # noqa: E731
        _wait(lambda: any(p.get("type") == "filter_embedding" for p in streams())
              and any(p.get("type") == "steered" for p in streams())
              and any(p.get("type") == "error" and "no_such_layer" in p.get("message", "") for p in streams()), viewer, seen)
        kinds = {p.get("type") for p in streams()}
        assert {"metrics", "layer_stats", "embedding", "steered", "error"} <= kinds
        rows = [r for p in streams() if p.get("type") == "metrics" for r in p["rows"]]
        assert any("loss" in r for r in rows) and any("val_acc" in r for r in rows)
        stats = next(p for p in streams() if p.get("type") == "layer_stats")
        assert len(stats["layers"]["conv1"]["act"]) == 16
        emb = next(p for p in streams() if p.get("type") == "embedding")
        assert decode_positions(emb).shape == (len(train.y), 2)
        filt = next(p for p in streams() if p.get("type") == "filter_embedding")
        assert filt["layer"] == "conv2" and decode_positions(filt).shape == (32, 2)

        # The steering client disconnects mid-run: the run trains on and keeps publishing.
        viewer.close()
        one_epoch()
        assert run.link.flush(30) and run.status == "running"

        # A late joiner gets the full contents from the room (panels + blobs), not from the run.
        late = BackgroundClient(run.url, room="lab", name="late").wait_ready(30)
        try:
            _wait(lambda: late.room is not None and {"run.metrics", "run.confusion", "run.embedding", "run.filters"} <= set(late.room.panels), late, [], timeout=5)
            room = late.room
            assert room is not None
            meta, arrays = decode_content(late.get_blob(room.panels["run.metrics"].content.refs[0]).result(30))
            assert meta["kind"] == "metrics" and "loss" in meta["series"]
            assert len(arrays["loss"]) == len(arrays["step"]) > 10
            assert arrays["step"].max() == run.step and np.isfinite(arrays["epoch_time"]).sum() == 4
            assert room.panels["run.metrics"].content.source["owner"] == owner
            meta, arrays = decode_content(late.get_blob(room.panels["run.confusion"].content.refs[0]).result(30))
            assert arrays["matrix"].shape == (10, 10) and int(arrays["matrix"].sum()) == len(val.y)
            meta, arrays = decode_content(late.get_blob(room.panels["run.embedding"].content.refs[0]).result(30))
            assert arrays["positions"].shape == (len(train.y), 2)
            assert arrays["labels"].dtype.name == "int16" and arrays["thumbnails"].shape == (len(train.y), 8, 8)
        finally:
            late.close()
    finally:
        viewer.close()
        run.close()


def test_the_run_trains_on_when_its_relay_goes_away(tmp_path: Path) -> None:
    from deeproom.models.training.bench import relay_process

    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, val = digits()
    model = DemoCNN()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    with relay_process(tmp_path / "relay") as url:  # a real `deeproom serve` process, stopped by PID
        run = watch(model, room="lab", server=url, optimizer=opt, train_data=(train.x, train.y),
                    val_data=(val.x, val.y), data_dir=tmp_path, embed=False, publish_every_s=0.2)
        for i in range(0, 640, 64):
            loss = torch.nn.functional.cross_entropy(model(train.x[i : i + 64]), train.y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log(loss=loss)
    # The relay process is gone now: training, steering and checkpoints go on locally.
    before = run.step
    run.steer({"cmd": "save_checkpoint", "name": "offline"})
    for i in range(0, 640, 64):
        loss = torch.nn.functional.cross_entropy(model(train.x[i : i + 64]), train.y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(loss=loss)
    run.epoch_end()
    assert run.step == before + 10 and "offline" in run.checkpoint_names()
    t0 = time.monotonic()
    run.close()
    assert time.monotonic() - t0 < 10  # ~1.5 s here; it no longer waits out 10+5 s of timeouts on a relay that is gone
    assert run.status == "finished"


def test_two_runs_compared_side_by_side_in_a_room(tmp_path: Path) -> None:
    from deeproom.models.training.compare import publish_comparison
    from deeproom.models.training.link import RelayLink
    from deeproom.net import BackgroundClient

    torch.set_num_threads(1)
    train, val = digits()
    tables, matrices = {}, {}
    for name, lr in (("adam", 3e-3), ("slow", 1e-4)):
        torch.manual_seed(0)
        model = DemoCNN()
        opt = torch.optim.Adam(model.parameters(), lr)
        run = watch(model, optimizer=opt, offline=True, train_data=(train.x, train.y), val_data=(val.x, val.y),
                    data_dir=tmp_path / name, embed=False, name=name)
        for i in range(0, 640, 64):
            loss = torch.nn.functional.cross_entropy(model(train.x[i : i + 64]), train.y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log(loss=loss)
        run.epoch_end()
        tables[name] = run.metrics_table()
        matrices[name] = run.evaluate(val.x, val.y)[1]
        run.close()
    link = RelayLink(None, "compare-room", "comparer", data_dir=tmp_path / "relay")
    reader = BackgroundClient(link.url, room="compare-room", name="reader").wait_ready(30)
    try:
        ids = publish_comparison(link, tables, matrices, classes=[str(i) for i in range(10)])
        assert link.flush(30)
        _wait(lambda: reader.room is not None and set(ids) <= set(reader.room.panels), reader, [])
        room = reader.room
        assert room is not None and ids == ["compare.curves", "compare.confusion.adam", "compare.confusion.slow"]
        meta, arrays = decode_content(reader.get_blob(room.panels["compare.curves"].content.refs[0]).result(30))
        assert meta["series"] == ["adam/loss", "adam/val_acc", "slow/loss", "slow/val_acc"]
        acc_adam = np.nanmax(arrays["adam/val_acc"])
        acc_slow = np.nanmax(arrays["slow/val_acc"])
        assert acc_adam > acc_slow  # the curves are the runs' own
        _, cm = decode_content(reader.get_blob(room.panels["compare.confusion.slow"].content.refs[0]).result(30))
        assert np.array_equal(cm["matrix"], matrices["slow"])
    finally:
        reader.close()
        link.close()
