"""Checkpoints of a run: written atomically, read without pickle.

A checkpoint is one `torch.save` file holding plain tensors and numbers (model
state, optimizer state, a few scalars, optional extra arrays such as embedding
positions). It is written to a temporary file in the same folder, flushed and
fsynced, then renamed over the target, so a crash leaves either the old file or the
new one, never half of one. Reading uses `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deeproom.models.training.errors import CheckpointError

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_checkpoint_name(name: Any) -> str:
    """A checkpoint name is 1-64 letters, digits, `_`, `.` or `-` (it becomes a file name)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith("."):
        raise CheckpointError(
            f"checkpoint name must be 1-64 characters of letters, digits, _ . - (not starting with .); got {name!r:.80}"
        )
    return name


@dataclass
class Checkpoint:
    """What one checkpoint holds."""

    model: dict[str, torch.Tensor]
    """The model's state_dict."""
    optimizer: dict[str, Any] | None = None
    """The optimizer's state_dict, if one was saved."""
    scalars: dict[str, float] = field(default_factory=dict)
    """Step, epoch, learning rate and the like."""
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    """Extra tensors: embedding positions and the ids they belong to, for instance."""


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write `ckpt` to `path` atomically (temp file + fsync + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "deeproom-checkpoint-1",
        "model": {k: v.detach().cpu().clone() for k, v in ckpt.model.items()},
        "optimizer": ckpt.optimizer,
        "scalars": {k: float(v) for k, v in ckpt.scalars.items()},
        "arrays": {k: v.detach().cpu().clone() for k, v in ckpt.arrays.items()},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, Exception):
            raise CheckpointError(f"could not write checkpoint {path}: {exc}") from exc
        raise
    # The rename is durable only once the folder's entry is on disk too.
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (weights only: no code is run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    from deeproom.models.errors import ModelLoadError
    from deeproom.models.safe_archive import check_torch_save

    try:
        data = path.read_bytes()
        # The archive's structure and pickle are checked before torch reads it (size caps, bombs,
        # globals outside the weights-only set), as for every model file.
        check_torch_save(data, str(path))
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except ModelLoadError as exc:
        raise CheckpointError(f"checkpoint {path} is not weights-only, refused: {exc}") from None
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or not weights-only: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != "deeproom-checkpoint-1":
        raise CheckpointError(f"{path} is not a DeepRoom checkpoint (format deeproom-checkpoint-1)")
    model = payload.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"checkpoint {path}: 'model' must map names to tensors")
    scalars = payload.get("scalars") or {}
    arrays = payload.get("arrays") or {}
    if not isinstance(scalars, dict) or not isinstance(arrays, dict):
        raise CheckpointError(f"checkpoint {path}: 'scalars' and 'arrays' must be mappings")
    return Checkpoint(model=model, optimizer=payload.get("optimizer"), scalars=dict(scalars), arrays=dict(arrays))
