"""Colour maps and palettes for what panels show, in numpy only.

Panels turn numbers into colours here (never in the engine): a perceptually even
sequential map for magnitudes (confusion counts, activations, Grad-CAM), a diverging
map for signed weights, and a categorical palette for class labels. Everything maps
arrays to uint8 RGB so tests can compute the colour a value must have.
"""

from __future__ import annotations

import numpy as np

# Anchor colours of viridis at evenly spaced positions (sampled from the published map);
# the 256-entry table is interpolated between them, close enough for display.
_VIRIDIS_ANCHORS = np.array(
    [
        (68, 1, 84),
        (72, 40, 120),
        (62, 74, 137),
        (49, 104, 142),
        (38, 130, 142),
        (31, 158, 137),
        (53, 183, 121),
        (109, 205, 89),
        (180, 222, 44),
        (253, 231, 37),
    ],
    dtype=np.float64,
)

_DIVERGING_ANCHORS = np.array(
    [(33, 102, 172), (103, 169, 207), (209, 229, 240), (247, 247, 247), (253, 219, 199), (239, 138, 98), (178, 24, 43)],
    dtype=np.float64,
)

# A categorical palette (ten well separated hues, then repeats lighter); index by class.
LABEL_PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (188, 189, 34),
        (23, 190, 207),
        (250, 250, 250),
    ],
    dtype=np.uint8,
)
UNLABELLED = np.array((120, 120, 120), dtype=np.uint8)


def _table(anchors: np.ndarray) -> np.ndarray:
    xs = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, xs, anchors[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


VIRIDIS = _table(_VIRIDIS_ANCHORS)
"""256 x 3 uint8: sequential map, dark purple (0) to yellow (1)."""
DIVERGING = _table(_DIVERGING_ANCHORS)
"""256 x 3 uint8: blue (-1) through white (0) to red (+1)."""


def normalise(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Scale to [0, 1] (float32) between lo and hi (default: the data's finite min and max)."""
    v = np.asarray(values, dtype=np.float32)
    finite = v[np.isfinite(v)]
    if lo is None:
        lo = float(finite.min()) if finite.size else 0.0
    if hi is None:
        hi = float(finite.max()) if finite.size else 1.0
    span = hi - lo if hi > lo else 1.0
    out = (v - lo) / span
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def lut_index(unit: np.ndarray) -> np.ndarray:
    """Table index (0..255) of values already in [0, 1]."""
    return np.clip(np.rint(np.asarray(unit, dtype=np.float64) * 255.0), 0, 255).astype(np.intp)


def sequential(unit: np.ndarray) -> np.ndarray:
    """uint8 RGB (shape + (3,)) of values in [0, 1] on the sequential map."""
    return VIRIDIS[lut_index(unit)]


def diverging(values: np.ndarray) -> np.ndarray:
    """uint8 RGB of signed values, symmetric around zero (scaled by the largest magnitude)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32))
    m = float(np.abs(v).max()) if v.size else 1.0
    unit = 0.5 + 0.5 * v / (m if m > 0 else 1.0)
    return DIVERGING[lut_index(unit)]


def label_colours(labels: np.ndarray) -> np.ndarray:
    """uint8 RGB per label; negative labels (unlabelled) are grey."""
    lab = np.asarray(labels, dtype=np.int64)
    out = LABEL_PALETTE[np.mod(lab, len(LABEL_PALETTE))].copy()
    out[lab < 0] = UNLABELLED
    return out


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """'#rrggbb' as a tuple of ints (grey for anything malformed: colours come from the network)."""
    try:
        s = colour.lstrip("#")
        return int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16)
    except (ValueError, IndexError, AttributeError):
        return (136, 136, 136)
