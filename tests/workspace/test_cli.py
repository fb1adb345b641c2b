"""The command line, run as a user runs it: in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def deeproom(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEEPROOM_DATA_DIR": str(data)}
    proc = subprocess.run(
        [sys.executable, "-m", "deeproom.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"deeproom {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_help_lists_core_commands(data: Path) -> None:
    out = deeproom(data, "--help").stdout
    for command in ("layout", "room", "doctor"):
        assert command in out


def _demo_room(data: Path) -> None:
    """The text demo room, stored through the core (as the text-only demo does)."""
    code = (
        "from deeproom.storage import Store; from deeproom.demo_room import build_demo_room; "
        "from deeproom.config import Config; s = Store(Config.from_env().db_path); "
        "s.save_room(build_demo_room()); s.close()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "DEEPROOM_DATA_DIR": str(data)})


def test_layout_lifecycle(data: Path, tmp_path: Path) -> None:
    _demo_room(data)
    assert "demo" in deeproom(data, "room", "list").stdout
    assert "saved layout 'mine' v1" in deeproom(data, "layout", "save", "demo", "mine").stdout
    assert "v2" in deeproom(data, "layout", "save", "demo", "mine").stdout
    listing = deeproom(data, "layout", "list").stdout
    assert "mine" in listing and "v1" in listing and "v2" in listing
    out_file = tmp_path / "exported.json"
    deeproom(data, "layout", "export", "demo", str(out_file), "--name", "mine")
    exported = json.loads(out_file.read_text())
    assert exported["format"] == "deeproom-layout" and len(exported["panels"]) == 10

    # Edit the file by hand (drop a panel, move one) and import + apply it.
    exported["panels"] = [p for p in exported["panels"] if p["id"] != "note"]
    exported["panels"][0]["transform"]["position"] = [0.0, 2.0, 4.0]
    out_file.write_text(json.dumps(exported))
    deeproom(data, "layout", "import", str(out_file), "demo", "edited", "--apply")
    shown = deeproom(data, "room", "show", "demo").stdout
    assert "Notes" not in shown and "(0.00, 2.00, 4.00)" in shown

    # Load the earlier layout back: the note returns.
    deeproom(data, "layout", "load", "demo", "mine", "--version", "1")
    assert "Notes" in deeproom(data, "room", "show", "demo").stdout
    assert "deleted 2 versions" in deeproom(data, "layout", "delete", "demo", "mine").stdout


def test_bad_layout_file_is_refused_and_store_untouched(data: Path, tmp_path: Path) -> None:
    _demo_room(data)
    deeproom(data, "layout", "save", "demo", "mine")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "deeproom-layout", "version": 99, "panels": []}')
    proc = deeproom(data, "layout", "import", str(bad), "demo", "mine", "--apply", check=False)
    assert proc.returncode == 1
    assert "schema version 99" in proc.stderr and "Traceback" not in proc.stderr
    listing = deeproom(data, "layout", "list").stdout
    assert "v2" not in listing
    assert "Notes" in deeproom(data, "room", "show", "demo").stdout


def test_unknown_room_is_a_clear_error(data: Path) -> None:
    proc = deeproom(data, "room", "show", "nowhere", check=False)
    assert proc.returncode == 1 and "no room 'nowhere'" in proc.stderr


def test_doctor_reports_the_machine(data: Path) -> None:
    out = deeproom(data, "doctor").stdout
    for label in ("Python", "torch:", "rendering:", "openxr:", "audio:", "pycrdt"):
        assert label in out
