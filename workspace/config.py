"""The one settings object, built at the entry point and passed down.

No module reads the environment at import time: `Config.from_env()` is called by the
command line (or a user's script) and the result handed to whatever needs it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from deeproom.errors import ValidationError
from deeproom.state import brief

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
        """Settings from the environment (and keyword overrides, None meaning "not given").

        A malformed variable raises ValidationError naming it and what is allowed.
        """
        env = os.environ if env is None else env
        cfg = cls()
        if env.get("DEEPROOM_DATA_DIR"):
            cfg = replace(cfg, data_dir=_path_setting("DEEPROOM_DATA_DIR", env["DEEPROOM_DATA_DIR"]))
        if env.get("DEEPROOM_BLOB_MAX_MB"):
            mb = _number_setting("DEEPROOM_BLOB_MAX_MB", env["DEEPROOM_BLOB_MAX_MB"], BLOB_MAX_MB_RANGE)
            cfg = replace(cfg, blob_max_bytes=int(mb * MiB))
        if env.get("DEEPROOM_SERVER"):
            cfg = replace(cfg, server=_server_setting("DEEPROOM_SERVER", env["DEEPROOM_SERVER"]))
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in clean:
            clean["data_dir"] = _path_setting("data directory", str(clean["data_dir"]))
        return replace(cfg, **clean)  # type: ignore[arg-type]


BLOB_MAX_MB_RANGE = (0.001, 1024 * 1024.0)
"""DEEPROOM_BLOB_MAX_MB: from 1 KB to 1 TiB (fractions allowed)."""


def _number_setting(name: str, raw: str, allowed: tuple[float, float]) -> float:
    lo, hi = allowed
    text = raw.strip()
    try:
        value = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValidationError(f"{name} must be a number from {lo:g} to {hi:.0f}; got {brief(raw, 40)}")
    return value


def _path_setting(name: str, raw: str) -> Path:
    if "\x00" in raw or _has_surrogate(raw):
        raise ValidationError(f"{name} must be a folder path (no NUL or undecodable characters); got {brief(raw, 80)}")
    try:
        return Path(raw).expanduser()
    except RuntimeError as exc:  # "~nosuchuser"
        raise ValidationError(f"{name}: cannot expand {brief(raw, 80)}: {exc}") from None


def _server_setting(name: str, raw: str) -> str:
    url = raw.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("http", "https", "ws", "wss", "deeproom") or _has_surrogate(url) or any(c.isspace() for c in url):
        raise ValidationError(
            f"{name} must be a relay URL such as http://host:port (schemes http, https, ws, wss, deeproom); got {brief(raw, 80)}"
        )
    return url


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
