"""Layout files: export/import round trip, migration from schema 1, and every kind of bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deeproom.demo_room import build_demo_room
from deeproom.errors import LayoutFileError, PermissionDenied
from deeproom.layout import (
    SCHEMA_VERSION,
    apply_layout,
    dumps_layout,
    layout_of,
    loads_layout,
    read_layout_file,
    write_layout_file,
)


def test_export_import_round_trip(tmp_path: Path) -> None:
    layout = layout_of(build_demo_room().snapshot())
    write_layout_file(layout, tmp_path / "l.json")
    again = read_layout_file(tmp_path / "l.json")
    assert again == layout
    data = json.loads((tmp_path / "l.json").read_text())
    assert data["format"] == "deeproom-layout" and data["version"] == SCHEMA_VERSION
    assert "lock_holder" not in data["panels"][0]


def test_apply_layout_reproduces_panels_and_is_all_or_nothing() -> None:
    source = build_demo_room()
    source.apply({"op": "move_panel", "panel_id": "metrics", "transform": {"position": [9, 9, 9]}}, "demo-host")
    source.apply({"op": "remove_panel", "panel_id": "note"}, "demo-host")
    layout = layout_of(source.snapshot())
    target = build_demo_room()
    target.apply({"op": "add_panel", "panel_id": "extra", "kind": "image", "title": "extra"}, "demo-host")
    assert apply_layout(target, layout, "demo-host") >= 3
    assert {p: v.transform for p, v in target.snapshot().panels.items()} == {
        p: v.transform for p, v in source.snapshot().panels.items()
    }
    locked = build_demo_room()
    locked.apply({"op": "join", "participant_id": "m", "display_name": "M"}, "system")
    locked.apply({"op": "lock_panel", "panel_id": "metrics"}, "demo-host")
    before = locked.snapshot()
    with pytest.raises(PermissionDenied):
        apply_layout(locked, layout, "m")
    assert locked.snapshot() == before


V1 = {
    "format": "deeproom-layout",
    "version": 1,
    "room_name": "Old room",
    "panels": [
        {"id": "g", "kind": "model_graph", "title": "Graph",
         "transform": {"position": [0, 1.5, 2], "rotation": [0, 90, 0], "scale": 2.0}},
    ],
}


def test_schema_1_is_migrated() -> None:
    layout = loads_layout(json.dumps(V1))
    assert layout.name == "Old room"
    t = layout.panels[0].transform
    assert t.scale == (2.0, 2.0, 2.0)
    w, x, y, z = t.rotation
    assert abs(w - 0.7071) < 1e-3 and abs(y - 0.7071) < 1e-3 and abs(x) < 1e-9 and abs(z) < 1e-9


GOOD = dumps_layout(layout_of(build_demo_room().snapshot()))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD[: len(GOOD) // 2], "not valid JSON"),
        ("hello", "not valid JSON"),
        ("", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({"format": "something", "version": 2}), "not a DeepRoom layout"),
        (GOOD.replace('"version": 2', '"version": 3'), "schema version 3, newer than this DeepRoom reads"),
        (GOOD.replace('"version": 2', '"version": "2"'), "'version' must be a whole number"),
        (GOOD.replace('"kind": "metrics"', '"kind": "spreadsheet"'), "panel #1: panel kind must be one of"),
        (GOOD.replace('"title": "Training curves"', '"title": 42'), "panel title must be text"),
        (GOOD.replace('"id": "metrics"', '"id": "model-graph"'), "appears twice"),
        (GOOD.replace("1.5,", "NaN,", 1), "NaN and Infinity are not allowed"),
        (GOOD.replace('"panels": [', '"panels": [{"id": "x"},', 1), "panel #0: panel is missing 'kind'"),
        (GOOD.replace('"room": {', '"rooms": {', 1), "unknown fields"),
    ],
)
def test_bad_files_are_refused_with_a_reason(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(LayoutFileError, match=message) as info:
        read_layout_file(path)
    assert str(path) in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(LayoutFileError, match="no such layout file"):
        read_layout_file("/nonexistent/layout.json")


def test_layout_ignores_participants() -> None:
    doc = build_demo_room()
    before = layout_of(doc.snapshot())
    doc.apply({"op": "join", "participant_id": "m", "display_name": "M"}, "system")
    assert layout_of(doc.snapshot()) == before
    assert "participants" not in before.to_dict()


def test_fit_layout_moves_what_is_there_and_lists_what_no_longer_fits() -> None:
    from deeproom.layout import NotLoaded, fit_layout

    gone, kept = "a" * 64, "b" * 64
    doc = build_demo_room()
    doc.apply({"op": "set_content", "panel_id": "image", "content": {"source": {"x": 1}, "refs": [gone]}}, "demo-host")
    doc.apply({"op": "set_content", "panel_id": "note", "content": {"source": {"x": 2}, "refs": [kept]}}, "demo-host")
    layout = layout_of(doc.snapshot())
    doc.apply({"op": "move_panel", "panel_id": "metrics", "transform": {"position": [9, 9, 9]}}, "demo-host")
    doc.apply({"op": "set_content", "panel_id": "metrics", "content": {"source": {"live": 1}, "refs": []}}, "demo-host")
    for pid in ("image", "note", "filters"):
        doc.apply({"op": "remove_panel", "panel_id": pid}, "demo-host")
    doc.apply({"op": "add_panel", "panel_id": "filters", "kind": "note", "title": "now a note"}, "demo-host")
    doc.apply({"op": "add_panel", "panel_id": "extra", "kind": "image", "title": "added later"}, "demo-host")
    doc.apply({"op": "lock_layout", "locked": True}, "demo-host")

    fit = fit_layout(doc.snapshot(), layout, {kept}.__contains__)
    assert fit.not_loaded == (
        NotLoaded("filters", "the room's panel 'filters' is a note now; the layout has a filters"),
        NotLoaded("image", f"its content is gone: blob {gone[:12]} is not on the relay"),
    )
    assert [(o["op"], o["panel_id"]) for o in fit.operations] == [("move_panel", "metrics"), ("add_panel", "note")]
    # the live panel keeps the content its engine publishes; the lock is not the layout's to change
    for op in fit.operations:
        doc.apply(op, "demo-host")
    room = doc.snapshot()
    assert room.panels["metrics"].transform == layout.panels[[p.id for p in layout.panels].index("metrics")].transform
    assert room.panels["metrics"].content.source == {"live": 1}
    assert room.panels["note"].content.refs == (kept,) and room.settings.layout_locked
    assert "extra" in room.panels
    pruned = fit_layout(room, layout, {kept}.__contains__, prune=True)
    assert pruned.operations == [{"op": "remove_panel", "panel_id": "extra"}]
