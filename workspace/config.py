"""The one settings object, built at the entry point and passed down.

No module reads the environment at import time: `Config.from_env()` is called by the
command line (or a user's script) and the result handed to whatever needs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

MiB = 1024 * 1024


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("deeproom", appauthor=False))


@dataclass(frozen=True, slots=True)
class Config:
    """Where DeepRoom keeps things and how big they may get."""

    data_dir: Path = field(default_factory=default_data_dir)
    """Rooms, layouts, update logs and blobs live here (DEEPROOM_DATA_DIR overrides)."""
    blob_max_bytes: int = 64 * MiB
    """Largest single content blob accepted (DEEPROOM_BLOB_MAX_MB overrides)."""
    store_max_bytes: int = 4096 * MiB
    """Total size of the blob store before new blobs are refused."""
    server: str | None = None
    """Relay URL to join; None runs an embedded relay on 127.0.0.1."""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "deeproom.sqlite3"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Config:
        env = os.environ if env is None else env
        cfg = cls()
        if env.get("DEEPROOM_DATA_DIR"):
            cfg = replace(cfg, data_dir=Path(env["DEEPROOM_DATA_DIR"]).expanduser())
        if env.get("DEEPROOM_BLOB_MAX_MB"):
            cfg = replace(cfg, blob_max_bytes=int(float(env["DEEPROOM_BLOB_MAX_MB"]) * MiB))
        if env.get("DEEPROOM_SERVER"):
            cfg = replace(cfg, server=env["DEEPROOM_SERVER"])
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in clean:
            clean["data_dir"] = Path(str(clean["data_dir"])).expanduser()
        return replace(cfg, **clean)  # type: ignore[arg-type]
