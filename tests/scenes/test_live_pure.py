"""Live runs without rendering: stream deltas appended to a metrics blob, the per-layer rows'
geometry and paint, the participants panel's row text."""

from __future__ import annotations

import math

import numpy as np

from deeproom.scenes import painting
from deeproom.scenes.live_runs import LiveTable, is_run_event, steer_text
from deeproom.scenes.participants import describe


def table() -> LiveTable:
    return LiveTable.of({"kind": "metrics", "series": ["loss"], "x": "step"},
                        {"step": np.array([0, 1, 2], np.float32), "loss": np.array([3, 2, 1], np.float32)})


def test_rows_newer_than_the_blob_are_appended_and_the_last_step_filled_in() -> None:
    t = table()
    taken = t.add_rows([{"step": 1, "loss": 9.0}, {"step": 2, "acc": 0.5}, {"step": 3, "loss": 0.5, "lr": 0.1},
                        {"step": 3, "acc": 0.7}, {"step": 4, "loss": 0.4}])
    assert taken == 4  # step 1 is older than the blob: skipped
    assert t.arrays["step"].tolist() == [0, 1, 2, 3, 4]
    assert t.arrays["loss"].tolist() == [3, 2, 1, 0.5, np.float32(0.4)]
    acc = t.arrays["acc"].tolist()
    assert math.isnan(acc[0]) and math.isnan(acc[1]) and acc[2] == 0.5 and abs(acc[3] - 0.7) < 1e-6 and math.isnan(acc[4])
    assert t.meta["series"] == ["loss", "acc", "lr"] and t.changed and t.last_step == 4


def test_bad_rows_change_nothing() -> None:
    t = table()
    assert t.add_rows(["x", {"loss": 1.0}, {"step": "3"}, {"step": float("nan")}, {"step": True}]) == 0
    assert t.arrays["step"].tolist() == [0, 1, 2] and not t.changed
    assert t.add_layer_stats({"conv1": {"act": ["a"]}, 3: {"act": [1.0]}, "fc": "no"}) == 0
    assert t.add_layer_stats("nope") == 0


def test_layer_stats_status_and_frozen_from_events() -> None:
    t = table()
    t.apply({"type": "layer_stats", "layers": {"conv1": {"act": [1.0, 2.0], "grad": [0.1, 0.2]}}})
    assert t.arrays["filter_act:conv1"].tolist() == [1.0, 2.0] and "filter_grad:conv1" in t.arrays
    t.apply({"type": "steered", "cmd": "freeze", "frozen": {"layers": ["conv1"], "filters": {}}})
    t.apply({"type": "status", "state": "paused"})
    assert t.meta["frozen"]["layers"] == ["conv1"] and t.meta["status"] == "paused"


def test_run_events_and_steer_text() -> None:
    assert is_run_event({"run": "r", "type": "metrics", "rows": []})
    assert not is_run_event({"run": "r", "type": "metrics", "channel": "action"})
    assert not is_run_event({"panel_id": "p", "channel": "action", "state": "done"})
    assert steer_text({"cmd": "set_lr", "lr": 0.01}) == "set_lr 0.01"
    assert steer_text({"cmd": "pause", "state": "paused"}) == "pause"


def test_layer_rows_geometry_and_the_frozen_tint() -> None:
    meta = {"kind": "metrics", "series": ["loss", "act:conv1", "act:conv2"], "x": "step",
            "frozen": {"layers": ["conv1"], "filters": {"conv2": [0]}}}
    arrays = {"step": np.arange(5, dtype=np.float32), "loss": np.linspace(2, 1, 5).astype(np.float32),
              "act:conv1": np.ones(5, np.float32), "act:conv2": np.ones(5, np.float32),
              "filter_act:conv1": np.array([1, 2, 3], np.float32), "filter_act:conv2": np.array([1, 2], np.float32)}
    layers = painting.run_layers(meta, arrays)
    assert layers == ["conv1", "conv2"]
    img = painting.paint_metrics(meta, arrays, 400, 300)
    lay = painting.rows_layout(2, 400, 300)
    assert lay.row_at(lay.top + 1) == 0 and lay.row_at(lay.top + lay.row_h * 1.5) == 1 and lay.row_at(lay.top - 2) is None
    y0 = int(lay.top + lay.row_h * 0.85)
    assert tuple(img[y0, 4]) == painting.FROZEN_TINT  # conv1's row
    assert tuple(img[int(lay.top + lay.row_h * 1.85), 4]) == painting.BACKGROUND  # conv2: only a filter frozen
    assert painting.is_frozen("block.conv", {"block"}) and not painting.is_frozen("blocks", {"block"})


def test_participant_rows() -> None:
    assert describe("Vic", "member", me=False, speaking=True, muted=False, hand=True) == \
        "Vic · member · speaking · hand raised"
    assert describe("Host", "host", me=True, speaking=False, muted=True, hand=False) == "Host · host · you · muted"


def test_cloud_frames_move_the_points_and_grow_the_trail() -> None:
    import base64

    import pytest

    from deeproom.scenes.live_runs import decode_frame, moved_cloud
    from deeproom.scenes.prepared import CloudContent

    pos = np.zeros((4, 2), np.float32)
    content = CloudContent(pos, np.zeros(4, np.int16), np.zeros(4, np.int16), np.ones(4, np.float32), [])
    new = np.arange(8, dtype=np.float32).reshape(4, 2)
    event = {"type": "embedding", "n": 4, "dims": 2, "positions": base64.b64encode(new.astype("<f2").tobytes()).decode(),
             "predictions": base64.b64encode(np.array([1, 2, 3, 0], "<i2").tobytes()).decode()}
    moved = moved_cloud(content, event)
    assert moved.positions.tolist() == new.tolist() and moved.predictions.tolist() == [1, 2, 3, 0]
    assert moved.trails is not None and moved.trails.shape == (2, 4, 2)
    for _ in range(6):
        moved = moved_cloud(moved, event)
    assert moved.trails.shape == (5, 4, 2)  # the last five frames
    other = dict(event, n=2, positions=base64.b64encode(new[:2].astype("<f2").tobytes()).decode())
    assert moved_cloud(moved, other) is moved  # another probe size: unchanged
    with pytest.raises(ValueError):
        decode_frame(dict(event, positions="AAAA"))
    with pytest.raises(ValueError):
        decode_frame(dict(event, dims=5))


def test_checkpoint_difference_names_its_layers_and_the_most_changed_filters() -> None:
    meta = {"kind": "metrics", "x": "layer", "series": ["relative_change"], "layers": ["conv1", "conv2", "fc"],
            "top_filters": [{"layer": "conv2", "filter": 3, "change": 0.41}]}
    arrays = {"layer": np.arange(3, dtype=np.float32), "relative_change": np.array([0, 0.2, 0.1], np.float32)}
    plain = painting.paint_metrics({k: v for k, v in meta.items() if k not in ("layers", "top_filters")}, arrays, 480, 360)
    named = painting.paint_metrics(meta, arrays, 480, 360)
    bottom = slice(360 - 40, 360)
    assert (named[bottom] != plain[bottom]).any()  # the layer names and "most changed" under the plot
    assert painting.run_layers(meta, arrays) == []  # a difference over layers has no per-layer rows
