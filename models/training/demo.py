"""The built-in live-training demo: a small CNN on scikit-learn's digits (no download).

Kept inside the training package so the demo and the benchmark do not depend on
which other models exist; the network has two convolutions first, as ReVACNN's
layer-skipping experiment needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class DemoCNN(nn.Module):
    """conv1 → conv2 → pool → fc1 (the embedded layer) → fc2, for 8×8 one-channel images."""

    def __init__(self, width: int = 16, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(2 * width * 16, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


@dataclass(frozen=True)
class Split:
    """Images float32 [N, 1, 8, 8] in [0, 1] and labels int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor


def digits(seed: int = 0, val_fraction: float = 0.25) -> tuple[Split, Split]:
    """A seeded train/validation split of scikit-learn's 1,797 digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(y) * val_fraction)
    va, tr = perm[:n_val], perm[n_val:]
    return Split(x[tr], y[tr]), Split(x[va], y[va])


def jittered(split: Split, n: int, seed: int = 0) -> Split:
    """`split` grown to `n` points with copies shifted by one pixel (for 2,000-point probes)."""
    if n <= len(split.y):
        return Split(split.x[:n], split.y[:n])
    g = torch.Generator().manual_seed(seed)
    extra = n - len(split.y)
    idx = torch.randint(0, len(split.y), (extra,), generator=g)
    shifts = torch.randint(-1, 2, (extra, 2), generator=g)
    xs = torch.stack([torch.roll(split.x[i], (int(s[0]), int(s[1])), (1, 2)) for i, s in zip(idx, shifts, strict=True)])
    return Split(torch.cat([split.x, xs]), torch.cat([split.y, split.y[idx]]))
