"""Live training you can steer: `deeproom.watch(model, ...)` streams a run into a room.

    run = deeproom.watch(model, optimizer=opt, room="lab", train_data=(x, y), val_data=(xv, yv))
    for epoch in range(10):
        for xb, yb in batches:           # the user's own loop, unchanged
            ...; opt.step(); run.log(loss=loss)
        run.epoch_end()
    run.close()

Also here: the VAE labeling loop of Kath et al. (`deeproom.models.training.latent`),
checkpoint comparison and run comparison (`.compare`). Importing this package loads
torch but not the relay, openTSNE or scikit-learn.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deeproom.models.training.errors import CheckpointError, SteerError, TrainingError
from deeproom.models.training.link import RelayLink, RoomLink
from deeproom.models.training.run import (
    EmbeddingFrame,
    LossFn,
    Probe,
    Run,
    WatchOptions,
    decode_positions,
)

__all__ = [
    "CheckpointError",
    "EmbeddingFrame",
    "Probe",
    "RelayLink",
    "RoomLink",
    "Run",
    "SteerError",
    "TrainingError",
    "WatchOptions",
    "decode_positions",
    "watch",
]


def _thumbnails(x: torch.Tensor) -> np.ndarray | None:
    if x.dim() != 4 or x.shape[-1] > 32 or x.shape[-2] > 32 or x.shape[1] not in (1, 3):
        return None
    lo, hi = float(x.min()), float(x.max())
    t = ((x - lo) / max(hi - lo, 1e-8) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return t[:, 0].numpy() if t.shape[1] == 1 else t.permute(0, 2, 3, 1).contiguous().numpy()


def watch(
    model: nn.Module,
    room: str = "training",
    server: str | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    name: str = "run",
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    probe: Probe | tuple[torch.Tensor, torch.Tensor] | None = None,
    classes: list[str] | None = None,
    embed_layer: str | None = None,
    loss_fn: LossFn | None = None,
    password: str | None = None,
    invite: str | None = None,
    participant_name: str | None = None,
    data_dir: str | Path | None = None,
    offline: bool = False,
    link: RoomLink | None = None,
    options: WatchOptions | None = None,
    host: bool = True,
    **option_overrides: Any,
) -> Run:
    """Watch a training run in a room; returns the `Run` (call `run.log(...)`, `run.epoch_end()`, `run.close()`).

    `server` is the relay's URL; with none, an embedded relay starts on 127.0.0.1 (its
    URL is `run.url`). `offline=True` keeps everything local (no room). `optimizer`
    enables steering (freezing filters, learning rate, retraining); `train_data` and
    `val_data` are (x, y) tensors for retraining, validation accuracy and the confusion
    matrix; `probe` (default: up to 2,000 training points) is what gets embedded. With
    `host` (default) and a relay, the run hosts its panels in an engine service
    (`deeproom.models.training.hosting.RunEngine`): a graph panel whose layers can be analysed,
    and the steering commands as actions on its panels.
    """
    opts = options or WatchOptions(name=name)
    if option_overrides:
        from dataclasses import replace

        opts = replace(opts, **option_overrides)
    if isinstance(probe, tuple):
        probe = Probe(probe[0], probe[1], _thumbnails(probe[0]))
    if probe is None and train_data is not None:
        x, y = train_data[0][: opts.probe_size], train_data[1][: opts.probe_size]
        probe = Probe(x, y, _thumbnails(x))
    base = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="deeproom-run-"))
    url = server
    if link is None and not offline:
        relay_link = RelayLink(server, room, participant_name or f"run {opts.name}", password=password,
                               invite=invite, data_dir=base / "relay")
        url = relay_link.url
        link = relay_link
    run = Run(
        model, optimizer, link=link, train_data=train_data, val_data=val_data, probe=probe,
        loss_fn=loss_fn, classes=classes, embed_layer=embed_layer,
        checkpoint_dir=base / "checkpoints" / opts.name, options=opts,
    )
    run.url = url  # type: ignore[attr-defined]
    if host and isinstance(link, RelayLink):
        from deeproom.models.training.hosting import RunEngine

        run.engine = RunEngine(run, link)
    return run
