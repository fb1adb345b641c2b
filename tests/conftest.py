"""Shared fixtures: every test gets its own data directory; nothing touches the user's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "deeproom-data"
    monkeypatch.setenv("DEEPROOM_DATA_DIR", str(data))
    return data
