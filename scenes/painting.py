"""Panel faces drawn as images: curves, matrices, map grids, overlays, notes, error cards.

Each 2D panel kind is painted once per content change into one RGB image (numpy +
Pillow), which becomes one texture on one quad: a panel costs one draw call however
many cells or maps it shows, and the colours are exactly the colour maps' (tests
compute the colour a cell must have with `colormap`). Nothing here imports Ursina.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deeproom.scenes import colormap

BACKGROUND = (24, 28, 40)
FOREGROUND = (230, 234, 242)
MUTED = (140, 148, 166)
GRID = (52, 58, 76)
ERROR_BG = (92, 24, 30)
SERIES_COLOURS = [(94, 176, 255), (255, 160, 64), (120, 220, 120), (240, 90, 110), (200, 140, 255), (250, 220, 90)]

FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=16)
def font(size: int) -> FontT:
    """Ursina's bundled Open Sans at `size` pixels (Pillow's own font if it is missing)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("ursina")
        if spec and spec.origin:
            path = Path(spec.origin).parent / "fonts" / "OpenSans-Regular.ttf"
            if path.exists():
                return ImageFont.truetype(str(path), size)
    except (OSError, ImportError):
        pass
    return ImageFont.load_default(size=size)


def canvas(width: int, height: int, colour: tuple[int, int, int] = BACKGROUND) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (max(int(width), 8), max(int(height), 8)), colour)
    return img, ImageDraw.Draw(img)


def to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8).copy()


def _text_width(draw: ImageDraw.ImageDraw, text: str, f: FontT) -> float:
    return float(draw.textlength(text, font=f))


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "nan"
    a = abs(v)
    if a >= 1000 or (0 < a < 0.01):
        return f"{v:.2e}"
    return f"{v:.3f}" if a < 10 else f"{v:.1f}"


# --- metrics ------------------------------------------------------------------------------


LAYER_STAT_PREFIXES = ("act:", "grad:", "filter_act:", "filter_grad:")
"""Series and arrays of a run's metrics blob that are per-layer statistics (drawn as rows, not curves)."""
MAX_LAYER_ROWS = 12
FROZEN_TINT = (40, 78, 110)
"""Background of a frozen layer's row (ice blue; the graph tints frozen layers the same way)."""


def run_layers(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The layers a run's metrics blob has per-layer statistics for, in the order they appear
    (at most MAX_LAYER_ROWS): the rows of its per-layer section."""
    out: list[str] = []
    for k in [*arrays, *(str(n) for n in meta.get("series", []))]:
        for prefix in LAYER_STAT_PREFIXES:
            if k.startswith(prefix):
                name = k[len(prefix):]
                if name and name not in out:
                    out.append(name)
    return out[:MAX_LAYER_ROWS]


def frozen_layers(meta: Mapping[str, Any]) -> tuple[set[str], dict[str, list[int]]]:
    """A run's `frozen` ({"layers": [...], "filters": {layer: [i, ...]}}) as plain values; anything
    malformed counts as nothing frozen."""
    frozen = meta.get("frozen")
    if not isinstance(frozen, Mapping):
        return set(), {}
    layers = {str(n) for n in frozen.get("layers", []) if isinstance(n, str)} if isinstance(frozen.get("layers"), list) else set()
    filters: dict[str, list[int]] = {}
    if isinstance(frozen.get("filters"), Mapping):
        for k, v in frozen["filters"].items():
            if isinstance(v, list):
                filters[str(k)] = [int(i) for i in v if isinstance(i, int)]
    return layers, filters


def is_frozen(layer: str, frozen: set[str]) -> bool:
    """A layer is frozen when it or a module containing it is ("block1" freezes "block1.conv")."""
    return any(layer == f or layer.startswith(f + ".") for f in frozen)


@dataclass(frozen=True, slots=True)
class RowsLayout:
    """Where a run's metrics face puts its curves and its per-layer rows (pixels, top-left origin)."""

    curves_bottom: int
    """The curves are drawn above this line."""
    top: int
    """Top of the first layer row."""
    row_h: float
    rows: int

    def row_at(self, y: float) -> int | None:
        """The layer row at pixel height y, or None."""
        if self.rows == 0 or y < self.top:
            return None
        i = int((y - self.top) // self.row_h)
        return i if i < self.rows else None


def rows_layout(n_layers: int, width: int, height: int) -> RowsLayout:
    """Curves on the top part, one row per layer below (at most MAX_LAYER_ROWS, 45% of the face)."""
    n = min(n_layers, MAX_LAYER_ROWS)
    if n == 0:
        return RowsLayout(height, height, 0.0, 0)
    part = int(height * 0.45)
    row_h = min(part / (n + 1), height / 12)
    top = int(height - row_h * n - 4)
    return RowsLayout(int(top - row_h), top, row_h, n)


def _strip(values: np.ndarray, frozen_filters: Sequence[int]) -> np.ndarray:
    """Per-filter values as a row of colour-mapped cells (frozen filters in the frozen tint)."""
    v = np.nan_to_num(np.abs(np.asarray(values, np.float64).ravel()))
    hi = float(v.max()) if v.size else 0.0
    rgb = colormap.sequential((v / hi) if hi > 0 else v)
    for i in frozen_filters:
        if 0 <= i < len(rgb):
            rgb[i] = (150, 225, 255)
    return np.asarray(rgb, np.uint8).reshape(1, -1, 3)


def _filter_count(arrays: Mapping[str, np.ndarray], layer: str) -> int | None:
    """How many filters a run's layer has (its per-filter series), if the blob says."""
    for prefix in ("filter_act:", "filter_grad:"):
        a = arrays.get(prefix + layer)
        if a is not None and np.asarray(a).size:
            return int(np.asarray(a).size)
    return None


def frozen_filters_label(layer: str, frozen: Sequence[int], total: int | None) -> str:
    """A layer row's label when some of its filters are frozen: "conv1 · 1 of 16 filters frozen"
    ("conv1 · frozen" when all are; without a known total, "conv1 · 1 filter frozen")."""
    k = len(set(frozen))
    if total is not None and total > 0 and k >= total:
        return f"{layer} · frozen"
    if total is not None and total > 0:
        return f"{layer} · {k} of {total} filters frozen"
    return f"{layer} · {k} filter{'s' if k != 1 else ''} frozen"


def _paint_layer_rows(img: Image.Image, d: ImageDraw.ImageDraw, meta: Mapping[str, Any],
                      arrays: Mapping[str, np.ndarray], layers: list[str], lay: RowsLayout, width: int) -> None:
    frozen, frozen_filters = frozen_layers(meta)
    f = font(max(9, int(lay.row_h * 0.55)))
    hf = font(max(9, int(lay.row_h * 0.5)))
    name_w = int(width * 0.3)
    half = (width - name_w - 20) // 2
    d.text((10, lay.curves_bottom + 2), "layer", fill=MUTED, font=hf)
    d.text((name_w + 6, lay.curves_bottom + 2), "activation per filter", fill=MUTED, font=hf)
    d.text((name_w + 12 + half, lay.curves_bottom + 2), "gradient per filter", fill=MUTED, font=hf)
    for i, layer in enumerate(layers[: lay.rows]):
        y0 = int(lay.top + i * lay.row_h)
        y1 = int(lay.top + (i + 1) * lay.row_h) - 2
        some = frozen_filters.get(layer, [])
        label = f"{layer} · frozen" if is_frozen(layer, frozen) else layer
        if some and label == layer:
            label = frozen_filters_label(layer, some, _filter_count(arrays, layer))
        whole = label.endswith(" · frozen")  # the layer, or every one of its filters
        if whole:
            d.rectangle((2, y0, width - 3, y1 + 1), fill=FROZEN_TINT)
        lf = f
        for size in range(int(getattr(f, "size", 9)), 7, -1):  # the label fits the name column
            lf = font(size)
            if d.textlength(label, font=lf) <= name_w - 12:
                break
        d.text((10, y0 + 1), label[:48], fill=(200, 235, 255) if whole or some else FOREGROUND, font=lf)
        for j, prefix in enumerate(("filter_act:", "filter_grad:")):
            values = arrays.get(prefix + layer)
            if values is None:
                mean = arrays.get(("act:", "grad:")[j] + layer)
                values = None if mean is None else np.asarray(mean, np.float64).ravel()[-1:]
            if values is None or not np.asarray(values).size:
                continue
            x0 = name_w + 6 + j * (half + 6)
            strip = Image.fromarray(_strip(np.asarray(values), some)).resize((max(half, 1), max(y1 - y0, 1)), Image.Resampling.NEAREST)
            img.paste(strip, (x0, y0))


def paint_metrics(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], width: int, height: int) -> np.ndarray:
    """Training curves: loss-like series on top, accuracies (0-1) below, others as a footer; a run's
    per-layer activation/gradient statistics as one row per layer below the curves (frozen layers tinted)."""
    img, d = canvas(width, height)
    xname = str(meta.get("x", "step"))
    names = [str(n) for n in meta.get("series", [k for k in arrays if k != xname]) if str(n) in arrays and str(n) != xname]
    layers = run_layers(meta, arrays) if xname == "step" else []
    lay = rows_layout(len(layers), width, height)
    if layers:
        names = [n for n in names if not n.startswith(LAYER_STAT_PREFIXES)]
        _paint_layer_rows(img, d, meta, arrays, layers, lay, width)
        height = lay.curves_bottom  # the curves and their footer fit above the rows
    x = arrays.get(xname)
    acc = [n for n in names if "acc" in n]
    rest = [n for n in names if n not in acc and n not in ("lr", "epoch_time")]
    extra = [n for n in names if n in ("lr", "epoch_time")]
    f = font(max(10, height // 24))
    plots = [p for p in (rest, acc) if p]
    most_changed = xname == "layer" and isinstance(meta.get("top_filters"), list) and bool(meta.get("top_filters"))
    footer = max(14, height // 14) if extra or most_changed else 0
    if not plots:
        d.text((10, 10), "no series yet", fill=MUTED, font=f)
        return to_array(img)
    ph = (height - footer) // len(plots)
    colour_i = 0
    for pi, group in enumerate(plots):
        top = pi * ph
        box = (int(width * 0.1), top + ph // 8, width - 10, top + ph - ph // 8)
        d.rectangle(box, outline=GRID)
        last_box = box
        series = [np.asarray(arrays[n], dtype=np.float64).ravel() for n in group]
        finite = np.concatenate([s[np.isfinite(s)] for s in series]) if series else np.zeros(0)
        lo, hi = (0.0, 1.0) if group is acc else ((float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0))
        if hi <= lo:
            hi = lo + 1.0
        for k in range(1, 4):
            yy = box[1] + (box[3] - box[1]) * k / 4
            d.line([(box[0], yy), (box[2], yy)], fill=GRID)
        d.text((4, box[1] - 2), _fmt(hi), fill=MUTED, font=f)
        d.text((4, box[3] - f.size if hasattr(f, "size") else box[3] - 10), _fmt(lo), fill=MUTED, font=f)
        legend_x = float(box[0] + 6)
        for name, s in zip(group, series, strict=True):
            colour = SERIES_COLOURS[colour_i % len(SERIES_COLOURS)]
            colour_i += 1
            n = len(s)
            if n:
                xs = np.asarray(x, dtype=np.float64).ravel()[:n] if x is not None and len(x) >= n else np.arange(n, dtype=np.float64)
                x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
                x1 = x1 if x1 > x0 else x0 + 1
                px = box[0] + (xs - x0) / (x1 - x0) * (box[2] - box[0])
                py = box[3] - (np.clip(s, lo, hi) - lo) / (hi - lo) * (box[3] - box[1])
                ok = np.isfinite(s)
                pts = [(float(a), float(b)) for a, b, k in zip(px, py, ok, strict=True) if k]
                if len(pts) > 1:
                    d.line(pts, fill=colour, width=max(1, height // 160))
                elif pts:
                    d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
                last = _fmt(float(s[ok][-1])) if ok.any() else "nan"
            else:
                last = "-"
            label = f"{name} {last}"
            d.text((legend_x, box[1] + 2), label, fill=colour, font=f)
            legend_x += _text_width(d, label, f) + 12
    if extra:
        parts = []
        for series_name in extra:
            vals = np.asarray(arrays[series_name], dtype=np.float64).ravel()
            parts.append(f"{series_name} {_fmt(float(vals[-1])) if vals.size else '-'}")
        steps = f"{xname} {int(np.asarray(x).ravel()[-1])}" if x is not None and np.asarray(x).size else ""
        d.text((10, height - footer + 1), "   ".join([steps, *parts]), fill=MUTED, font=f)
    layer_names = meta.get("layers")
    if xname == "layer" and isinstance(layer_names, list) and layer_names:  # a checkpoint difference
        _layer_ticks(d, [str(n) for n in layer_names], last_box, f)
        changed = meta.get("top_filters")
        if isinstance(changed, list) and changed and not extra:
            most = [f"{t.get('layer')} #{t.get('filter')} {_fmt(float(t.get('change', 0.0)))}"
                    for t in changed[:4] if isinstance(t, Mapping)]
            d.text((10, height - footer + 1), "most changed: " + ", ".join(most),
                   fill=MUTED, font=f)
    status = meta.get("status")
    if isinstance(status, str) and status:
        chip = f" {status[:16]} "
        tw = _text_width(d, chip, f)
        colour = STATUS_COLOURS.get(status, MUTED)
        d.rectangle((width - tw - 14, 4, width - 6, 6 + f.size if hasattr(f, "size") else 18), fill=colour)
        d.text((width - tw - 10, 4), chip, fill=(10, 12, 18), font=f)
    return to_array(img)


def _layer_ticks(d: ImageDraw.ImageDraw, names: list[str], box: tuple[int, int, int, int], f: FontT) -> None:
    """Layer names under a plot whose x is the layer index (as many as fit, evenly spaced)."""
    n = len(names)
    x0, x1 = box[0], box[2]
    step = max(1, math.ceil(n / max(1, (x1 - x0) // 60)))
    for i in range(0, n, step):
        x = x0 + (i / max(n - 1, 1)) * (x1 - x0)
        label = names[i][-10:]
        w = _text_width(d, label, f)
        left = x0 if i == 0 else (x1 - w if i == n - 1 else x - w / 2)  # the ends stay inside the plot
        d.text((left, box[3] + 1), label, fill=MUTED, font=f)


STATUS_COLOURS = {"running": (120, 220, 120), "paused": (250, 200, 80), "stopped": (240, 90, 110),
                  "finished": (140, 148, 166), "failed": (240, 90, 110)}
"""The chip colour of a run's status on its metrics panel."""


# --- confusion matrix ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatrixLayout:
    """Where the cells of a C x C matrix are on a width x height image (pixels, top-left origin)."""

    left: float
    top: float
    cell_w: float
    cell_h: float

    def cell(self, row: int, col: int) -> tuple[float, float, float, float]:
        x0 = self.left + col * self.cell_w
        y0 = self.top + row * self.cell_h
        return x0, y0, x0 + self.cell_w, y0 + self.cell_h


SCORES = ("precision", "recall", "f1")
"""Per-class arrays a confusion blob may carry, drawn as three columns right of the matrix."""
SCORES_SHARE = 0.3
"""Of a confusion face's width, what the score columns take when the blob has them."""


def matrix_layout(classes: int, width: int, height: int, *, scores: bool = False) -> MatrixLayout:
    left, top = width * 0.16, height * 0.16
    right, bottom = width * (0.98 - SCORES_SHARE if scores else 0.98), height * 0.98
    return MatrixLayout(left, top, (right - left) / max(classes, 1), (bottom - top) / max(classes, 1))


def score_cell(lay: MatrixLayout, classes: int, width: int, row: int, col: int) -> tuple[float, float, float, float]:
    """Where row `row` (a class) of score column `col` (precision, recall, F1) is painted."""
    x_start = lay.left + lay.cell_w * classes + width * 0.02
    w = (width * 0.98 - x_start) / len(SCORES)
    y0 = lay.top + row * lay.cell_h
    return x_start + col * w, y0, x_start + (col + 1) * w, y0 + lay.cell_h


def class_scores(arrays: Mapping[str, np.ndarray], classes: int) -> np.ndarray | None:
    """[C, 3] precision, recall, F1 from the blob, or None if it does not carry all three for C classes."""
    cols = []
    for name in SCORES:
        a = arrays.get(name)
        if a is None or np.asarray(a).ravel().shape != (classes,):
            return None
        cols.append(np.nan_to_num(np.asarray(a, dtype=np.float64).ravel()).clip(0.0, 1.0))
    return np.stack(cols, axis=1)


def confusion_colours(matrix: np.ndarray) -> np.ndarray:
    """[C, C, 3] uint8: the colour each cell is painted (counts over the largest count)."""
    m = np.asarray(matrix, dtype=np.float64)
    top = float(m.max()) if m.size else 1.0
    return colormap.sequential(m / (top if top > 0 else 1.0))


def paint_confusion(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], width: int, height: int) -> np.ndarray:
    m = np.asarray(arrays["matrix"])
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C]; got shape {list(m.shape)}")
    c = m.shape[0]
    names = meta.get("labels") or meta.get("classes") or []
    labels = [str(s)[:16] for s in names][:c] if isinstance(names, list) else []
    labels += [str(i) for i in range(len(labels), c)]
    img, d = canvas(width, height)
    scores = class_scores(arrays, c)
    lay = matrix_layout(c, width, height, scores=scores is not None)
    colours = confusion_colours(m)
    f = font(max(8, int(min(lay.cell_w, lay.cell_h) * 0.36)))
    fl = font(max(8, int(min(lay.cell_h, height * 0.06) * 0.6)))
    for r in range(c):
        for k in range(c):
            x0, y0, x1, y1 = lay.cell(r, k)
            col = tuple(int(v) for v in colours[r, k])
            d.rectangle([x0, y0, x1 - 1, y1 - 1], fill=col)
            if c <= 30:
                text = str(int(m[r, k]))
                lum = 0.3 * col[0] + 0.59 * col[1] + 0.11 * col[2]
                tw = _text_width(d, text, f)
                d.text(((x0 + x1) / 2 - tw / 2, (y0 + y1) / 2 - f.size / 1.6 if hasattr(f, "size") else y0),
                       text, fill=(20, 20, 20) if lum > 140 else (240, 240, 240), font=f)
    if c <= 40:
        for i, lab in enumerate(labels):
            x0, y0, x1, y1 = lay.cell(i, i)
            tw = _text_width(d, lab, fl)
            d.text(((x0 + x1) / 2 - tw / 2, lay.top - fl.size * 1.3 if hasattr(fl, "size") else 2), lab, fill=FOREGROUND, font=fl)
            d.text((lay.left - tw - 6, (y0 + y1) / 2 - (fl.size if hasattr(fl, "size") else 8) / 1.6), lab, fill=FOREGROUND, font=fl)
    if scores is not None:  # per-class precision, recall, F1: a coloured cell each, the value on it
        fs = font(max(8, int(min(lay.cell_h * 0.5, height * 0.05))))
        score_colours = colormap.sequential(scores)
        for k, head in enumerate(("P", "R", "F1")):
            x0, _, x1, _ = score_cell(lay, c, width, 0, k)
            d.text(((x0 + x1) / 2 - _text_width(d, head, fl) / 2, lay.top - (fl.size if hasattr(fl, "size") else 10) * 1.3),
                   head, fill=FOREGROUND, font=fl)
            for r in range(c):
                x0, y0, x1, y1 = score_cell(lay, c, width, r, k)
                col = tuple(int(v) for v in score_colours[r, k])
                d.rectangle([x0 + 1, y0, x1 - 2, y1 - 1], fill=col)
                if c <= 30:
                    text = f"{scores[r, k]:.2f}"
                    lum = 0.3 * col[0] + 0.59 * col[1] + 0.11 * col[2]
                    d.text(((x0 + x1) / 2 - _text_width(d, text, fs) / 2, (y0 + y1) / 2 - (fs.size if hasattr(fs, "size") else 8) / 1.6),
                           text, fill=(20, 20, 20) if lum > 140 else (240, 240, 240), font=fs)
    d.text((4, 2), "rows: true · columns: predicted", fill=MUTED, font=fl)
    acc = float(np.trace(m)) / max(float(m.sum()), 1.0)
    d.text((4, 2 + (fl.size if hasattr(fl, "size") else 10) * 1.3), f"acc {acc:.3f}", fill=MUTED, font=fl)
    return to_array(img)


# --- grids of maps -------------------------------------------------------------------------


def grid_shape(n: int, aspect: float) -> tuple[int, int]:
    """(rows, cols) for n tiles on an area of the given width/height ratio."""
    cols = max(1, math.ceil(math.sqrt(n * aspect)))
    rows = max(1, math.ceil(n / cols))
    return rows, cols


@dataclass(frozen=True, slots=True)
class TileGrid:
    """Where `tile_maps` paints n tiles on a width x height image (a title header on top): the one
    geometry both the painting and a click's hit test use (filters, feature maps, attention)."""

    count: int
    header: int
    rows: int
    cols: int
    cell_w: float
    cell_h: float
    pad: float

    def rect(self, i: int) -> tuple[int, int, int, int]:
        """(x0, y0, w, h) pixels of tile i as painted."""
        r, c = divmod(i, self.cols)
        x0, y0 = int(c * self.cell_w + self.pad), int(self.header + r * self.cell_h + self.pad)
        return x0, y0, max(1, int(self.cell_w - 2 * self.pad)), max(1, int(self.cell_h - 2 * self.pad))

    def centre(self, i: int) -> tuple[float, float]:
        x0, y0, w, h = self.rect(i)
        return x0 + w / 2, y0 + h / 2

    def at(self, x: float, y: float) -> int | None:
        """The tile whose cell holds image pixel (x, y) (from the top-left), or None."""
        if self.count < 1 or x < 0 or y < self.header:
            return None
        c, r = int(x // self.cell_w), int((y - self.header) // self.cell_h)
        if c >= self.cols or r >= self.rows:
            return None
        i = r * self.cols + c
        return i if i < self.count else None


def tile_grid(n: int, width: int, height: int, *, titled: bool = True) -> TileGrid:
    """The grid `tile_maps` paints n tiles in (a header when there is a title)."""
    header = max(14, height // 14) if titled else 0
    rows, cols = grid_shape(max(n, 1), width / max(height - header, 1))
    tw, th = width / cols, (height - header) / rows
    return TileGrid(max(n, 0), header, rows, cols, tw, th, max(1.0, min(tw, th) * 0.06))


def tile_maps(maps: np.ndarray, width: int, height: int, *, signed: bool = False, title: str = "") -> np.ndarray:
    """Maps [N, H, W] (each normalised on its own) or RGB [N, H, W, 3] tiled onto one image
    (where: `tile_grid`)."""
    arr = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    img, d = canvas(width, height)
    n = int(arr.shape[0])
    grid = tile_grid(n, width, height, titled=bool(title))
    if title:
        d.text((6, 1), title, fill=FOREGROUND, font=font(max(10, grid.header - 4)))
    if n == 0:
        return to_array(img)
    for i in range(n):
        m = arr[i]
        if m.ndim == 3:
            rgb = (colormap.normalise(m) * 255).astype(np.uint8)
        elif signed:
            rgb = colormap.diverging(m)
        else:
            rgb = colormap.sequential(colormap.normalise(m))
        x0, y0, w, h = grid.rect(i)
        tile = Image.fromarray(np.ascontiguousarray(rgb), "RGB").resize((w, h), Image.Resampling.NEAREST)
        img.paste(tile, (x0, y0))
    return to_array(img)


def paint_feature_maps(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], width: int, height: int) -> np.ndarray:
    maps = np.asarray(arrays["maps"])
    if maps.ndim != 3:
        raise ValueError(f"feature maps must be [C, H, W]; got shape {list(maps.shape)}")
    return tile_maps(maps, width, height, title=f"{meta.get('layer', '')}  ({maps.shape[0]} maps)")


def paint_filters(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], width: int, height: int) -> np.ndarray:
    f = np.asarray(arrays["filters"], dtype=np.float32)
    if f.ndim not in (3, 4):
        raise ValueError(f"filters must be [N, H, W] or [N, H, W, 3]; got shape {list(f.shape)}")
    lo, hi = meta.get("min"), meta.get("max")
    if f.ndim == 3 and isinstance(lo, int | float) and isinstance(hi, int | float):
        f = f * (hi - lo) + lo  # the engine ships tiles scaled to [0, 1]; signs matter for weights
    return tile_maps(f, width, height, signed=f.ndim == 3, title=f"{meta.get('layer', '')}  ({f.shape[0]} filters)")


def paint_attention(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], width: int, height: int) -> np.ndarray:
    a = np.asarray(arrays["attention"])
    if a.ndim != 3:
        raise ValueError(f"attention must be [heads, T, T]; got shape {list(a.shape)}")
    return tile_maps(a, width, height, title=f"{meta.get('layer', '')}  ({a.shape[0]} heads)")


def _rgb(image: np.ndarray) -> np.ndarray:
    im = np.asarray(image)
    if im.ndim == 2:
        im = np.repeat(im[:, :, None], 3, axis=2)
    if im.ndim != 3 or im.shape[2] not in (3, 4):
        raise ValueError(f"image must be [H, W] or [H, W, 3]; got shape {list(np.asarray(image).shape)}")
    if im.dtype != np.uint8:
        im = (colormap.normalise(im) * 255).astype(np.uint8)
    return np.ascontiguousarray(im[:, :, :3])


def _fit(img: Image.Image, box: tuple[int, int, int, int], resample: Image.Resampling) -> tuple[Image.Image, tuple[int, int]]:
    x0, y0, x1, y1 = box
    s = min((x1 - x0) / img.width, (y1 - y0) / img.height)
    w, h = max(1, int(img.width * s)), max(1, int(img.height * s))
    return img.resize((w, h), resample), (x0 + (x1 - x0 - w) // 2, y0 + (y1 - y0 - h) // 2)


def paint_image(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], width: int, height: int) -> np.ndarray:
    img, _ = canvas(width, height)
    src = Image.fromarray(_rgb(arrays["image"]), "RGB")
    tile, at = _fit(src, (4, 4, width - 4, height - 4), Image.Resampling.NEAREST)
    img.paste(tile, at)
    return to_array(img)


def grad_cam_overlay(image: np.ndarray, cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The input (grey or RGB) with the CAM, upsampled and colour-mapped, blended by its value."""
    base = Image.fromarray(_rgb(image), "RGB").resize(size, Image.Resampling.BILINEAR)
    c = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    cam_img = Image.fromarray((c * 255).astype(np.uint8), "L").resize(size, Image.Resampling.BILINEAR)
    cu = np.asarray(cam_img, dtype=np.float32) / 255.0
    heat = colormap.sequential(cu).astype(np.float32)
    alpha = (0.25 + 0.55 * cu)[:, :, None]
    out = np.asarray(base, dtype=np.float32) * (1 - alpha) + heat * alpha
    return out.clip(0, 255).astype(np.uint8)


def paint_grad_cam(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], width: int, height: int) -> np.ndarray:
    img, d = canvas(width, height)
    header = max(14, height // 12)
    target = meta.get("target", "")
    names = meta.get("classes")
    if isinstance(target, int) and isinstance(names, list) and 0 <= target < len(names):
        target = f"{target} {str(names[target])[:24]}"  # the class's name where the blob has them
    d.text((6, 1), f"{meta.get('method', 'Grad-CAM')} · {meta.get('layer', '')} · target {target}",
           fill=FOREGROUND, font=font(max(10, header - 4)))
    half = (width - 12) // 2
    side = min(half, height - header - 8)
    src = Image.fromarray(_rgb(arrays["image"]), "RGB").resize((side, side), Image.Resampling.NEAREST)
    img.paste(src, (4 + (half - side) // 2, header + 4))
    over = Image.fromarray(grad_cam_overlay(arrays["image"], arrays["cam"], (side, side)), "RGB")
    img.paste(over, (8 + half + (half - side) // 2, header + 4))
    return to_array(img)


def paint_note(text: str, width: int, height: int) -> np.ndarray:
    img, d = canvas(width, height, (40, 38, 30))
    size = max(12, height // 14)
    f = font(size)
    chars = max(8, int(width / (size * 0.52)))
    y = 8.0
    for para in str(text).splitlines() or [""]:
        for line in textwrap.wrap(para, chars) or [""]:
            if y > height - size:
                return to_array(img)
            d.text((10, y), line, fill=(250, 240, 200), font=f)
            y += size * 1.3
    return to_array(img)


def paint_message(title: str, message: str, width: int, height: int, *, error: bool = True) -> np.ndarray:
    """A card in place of content: an error (red) or a waiting notice (grey)."""
    img, d = canvas(width, height, ERROR_BG if error else (36, 40, 54))
    size = max(12, height // 12)
    d.text((12, 10), title, fill=(255, 210, 210) if error else FOREGROUND, font=font(size))
    f = font(max(10, int(size * 0.7)))
    y = 14 + size * 1.5
    for line in textwrap.wrap(message, max(10, int(width / (f.size * 0.55 if hasattr(f, "size") else 6))))[:8]:
        d.text((12, y), line, fill=FOREGROUND, font=f)
        y += (f.size if hasattr(f, "size") else 10) * 1.3
    return to_array(img)


def thumbnail_atlas(thumbs: np.ndarray, max_side: int = 4096) -> tuple[np.ndarray, int, int]:
    """Thumbnails [N, h, w] or [N, h, w, 3] packed into one RGB atlas; returns (atlas, cols, rows)."""
    t = np.asarray(thumbs)
    if t.ndim == 3:
        t = np.repeat(t[:, :, :, None], 3, axis=3)
    if t.dtype != np.uint8:
        t = (colormap.normalise(t) * 255).astype(np.uint8)
    n, h, w = t.shape[:3]
    cols = max(1, min(math.ceil(math.sqrt(n)), max_side // max(w, 1)))
    rows = math.ceil(n / cols)
    pad = cols * rows - n
    if pad:
        t = np.concatenate([t, np.zeros((pad, h, w, 3), np.uint8)])
    atlas = t.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    return np.ascontiguousarray(atlas), cols, rows


def atlas_uv(indices: Sequence[int] | np.ndarray, cols: int, rows: int) -> np.ndarray:
    """[N, 4] (u0, v0, u1, v1) of atlas entries, v measured from the bottom (texture space)."""
    idx = np.asarray(indices, dtype=np.int64)
    r, c = np.divmod(idx, cols)
    u0, u1 = c / cols, (c + 1) / cols
    v1 = 1.0 - r / rows
    v0 = 1.0 - (r + 1) / rows
    return np.stack([u0, v0, u1, v1], axis=1).astype(np.float32)


PAINTERS = {
    "metrics": paint_metrics,
    "confusion_matrix": paint_confusion,
    "feature_maps": paint_feature_maps,
    "filters": paint_filters,
    "grad_cam": paint_grad_cam,
    "attention": paint_attention,
    "image": paint_image,
}
