"""Turning a panel's content blob into something the render thread can show quickly.

`prepare(kind, blob, size)` runs on the content worker thread (never in a frame): it
decodes the blob, validates it against the panel kind's schema and paints 2D kinds
into images or packs 3D kinds into arrays. Any problem becomes `ContentFailure`,
which the panel shows as an error card in place of its content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deeproom.content import decode_content
from deeproom.errors import DeepRoomError
from deeproom.scenes import painting

PIXELS_PER_METRE = 420
MAX_TEXTURE_SIDE = 720
WALL_THRESHOLD = 256
"""Feature maps with more channels than this are shown as a wall of tiles (one mesh)."""


@dataclass(frozen=True)
class PaintedContent:
    """A 2D panel face, painted (uint8 RGB, row 0 at the top)."""

    image: np.ndarray


@dataclass(frozen=True)
class GraphContent:
    meta: Mapping[str, Any]


@dataclass(frozen=True)
class CloudContent:
    positions: np.ndarray  # [N, 2|3] float32
    labels: np.ndarray  # [N] int16, -1 unlabelled
    predictions: np.ndarray  # [N] int16
    confidence: np.ndarray  # [N] float32
    classes: list[str]
    atlas: np.ndarray | None = None  # thumbnails packed into one image
    atlas_grid: tuple[int, int] = (1, 1)  # (cols, rows)
    thumbnails: np.ndarray | None = None  # the raw thumbnails (for "show images")
    trails: np.ndarray | None = None  # [T, N, D]
    thumbnail_index: np.ndarray | None = None  # [N] int64: the thumbnail point i shows, -1 = none


@dataclass(frozen=True)
class WallContent:
    atlas: np.ndarray
    atlas_grid: tuple[int, int]
    count: int
    layer: str


@dataclass(frozen=True)
class ContentFailure:
    """Why a panel's content cannot be shown (shown as an error card)."""

    message: str
    waiting: bool = False  # True: not an error, the content is still coming


Prepared = PaintedContent | GraphContent | CloudContent | WallContent | ContentFailure


@dataclass(frozen=True)
class ContentRequest:
    panel_id: str
    kind: str
    sha: str | None
    size: tuple[float, float]
    source: Mapping[str, Any] = field(default_factory=dict)


def texture_size(size: tuple[float, float]) -> tuple[int, int]:
    w, h = size
    px_w, px_h = w * PIXELS_PER_METRE, h * PIXELS_PER_METRE
    s = min(1.0, MAX_TEXTURE_SIDE / max(px_w, px_h, 1.0))
    return max(int(px_w * s), 32), max(int(px_h * s), 32)


def _need(arrays: Mapping[str, np.ndarray], name: str, kind: str) -> np.ndarray:
    if name not in arrays:
        raise ValueError(f"a {kind} blob needs an array {name!r}; it has {sorted(arrays) or 'none'}")
    return arrays[name]


def prepare_blob(kind: str, blob: bytes, size: tuple[float, float]) -> Prepared:
    """Decode and prepare one blob for a panel of `kind` with face `size` (metres)."""
    try:
        meta, arrays = decode_content(blob)
    except DeepRoomError as exc:
        return ContentFailure(f"content blob is corrupt: {exc}")
    try:
        return _prepare(kind, meta, arrays, size)
    except (ValueError, TypeError, KeyError, IndexError, DeepRoomError) as exc:
        return ContentFailure(f"{kind} content is not valid: {exc}")


def _prepare(kind: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], size: tuple[float, float]) -> Prepared:
    blob_kind = meta.get("kind")
    if blob_kind is not None and blob_kind != kind:
        raise ValueError(f"blob holds {blob_kind!r} content but the panel shows {kind!r}")
    w, h = texture_size(size)
    if kind == "model_graph":
        if not isinstance(meta.get("nodes"), list):
            raise ValueError("a model_graph blob needs meta.nodes (a list)")
        return GraphContent(meta)
    if kind == "latent_cloud":
        pos = np.asarray(_need(arrays, "positions", kind), dtype=np.float32)
        if pos.ndim != 2 or pos.shape[1] not in (2, 3):
            raise ValueError(f"positions must be [N, 2] or [N, 3]; got {list(pos.shape)}")
        n = len(pos)
        labels = np.asarray(arrays.get("labels", np.full(n, -1)), dtype=np.int16).ravel()
        preds = np.asarray(arrays.get("predictions", labels), dtype=np.int16).ravel()
        conf = np.asarray(arrays.get("confidence", np.ones(n)), dtype=np.float32).ravel()
        for name, a in (("labels", labels), ("predictions", preds), ("confidence", conf)):
            if len(a) != n:
                raise ValueError(f"{name} has {len(a)} entries for {n} points")
        thumbs = arrays.get("thumbnails")
        tindex: np.ndarray | None = None
        atlas, grid = None, (1, 1)
        if thumbs is not None:
            if thumbs.ndim not in (3, 4):
                raise ValueError(f"thumbnails must be [T, h, w] or [T, h, w, 3]; got {list(thumbs.shape)}")
            ti = arrays.get("thumbnail_index")
            if ti is None:  # the older form: one thumbnail per point
                if len(thumbs) != n:
                    raise ValueError(f"thumbnails must be one per point (N={n}) without thumbnail_index; "
                                     f"got {len(thumbs)}")
                tindex = np.arange(n, dtype=np.int64)
            else:
                if not np.issubdtype(ti.dtype, np.integer):
                    raise ValueError(f"thumbnail_index must be integers; got {ti.dtype}")
                tindex = np.asarray(ti, np.int64).ravel()
                if len(tindex) != n or (n and (int(tindex.min()) < -1 or int(tindex.max()) >= len(thumbs))):
                    raise ValueError(f"thumbnail_index must be {n} values in [-1, {len(thumbs)}); "
                                     f"got {len(tindex)} values"
                                     + (f" in [{int(tindex.min())}, {int(tindex.max())}]" if len(tindex) else ""))
            atlas, cols, rows = painting.thumbnail_atlas(thumbs)
            grid = (cols, rows)
        trails = arrays.get("trails")
        if trails is not None and (trails.ndim != 3 or trails.shape[1] != n or trails.shape[2] != pos.shape[1]):
            trails = None  # trails are decoration; a mismatched one is dropped, not fatal
        classes = [str(c) for c in meta.get("classes", [])]
        return CloudContent(np.nan_to_num(pos), labels, preds, conf, classes, atlas, grid,
                            thumbs, None if trails is None else np.asarray(trails, np.float32), tindex)
    if kind == "feature_maps":
        maps = np.asarray(_need(arrays, "maps", kind))
        if maps.ndim == 3 and maps.shape[0] > WALL_THRESHOLD:
            return wall_content(maps, str(meta.get("layer", "")))
        return PaintedContent(painting.paint_feature_maps(meta, arrays, w, h))
    if kind == "note":
        return PaintedContent(painting.paint_note(str(meta.get("text", "")), w, h))
    painter = painting.PAINTERS.get(kind)
    if painter is None:
        raise ValueError(f"no view for panel kind {kind!r}")
    for required in {"confusion_matrix": ["matrix"], "filters": ["filters"], "grad_cam": ["image", "cam"],
                     "attention": ["attention"], "image": ["image"], "metrics": []}.get(kind, []):
        _need(arrays, required, kind)
    return PaintedContent(painter(meta, arrays, w, h))


def wall_content(maps: np.ndarray, layer: str, tile: int = 8) -> WallContent:
    """Feature maps [C, H, W] colour-mapped (each on its own range) into one atlas of tiles."""
    from deeproom.scenes import colormap

    m = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    c, hh, ww = m.shape
    if hh != tile or ww != tile:  # nearest-neighbour resample to the tile size
        ys = (np.arange(tile) * hh // tile).clip(0, hh - 1)
        xs = (np.arange(tile) * ww // tile).clip(0, ww - 1)
        m = m[:, ys][:, :, xs]
    lo = m.reshape(c, -1).min(axis=1)[:, None, None]
    hi = m.reshape(c, -1).max(axis=1)[:, None, None]
    unit = (m - lo) / np.where(hi > lo, hi - lo, 1.0)
    rgb = colormap.sequential(unit)
    atlas, cols, rows = painting.thumbnail_atlas(rgb)
    return WallContent(atlas, (cols, rows), c, layer)


def prepare_source_only(kind: str, source: Mapping[str, Any], size: tuple[float, float]) -> Prepared:
    """Content for a panel without blobs: a note's text lives in its source; others wait."""
    w, h = texture_size(size)
    if kind == "note":
        return PaintedContent(painting.paint_note(str(source.get("text", "(empty note)")), w, h))
    return ContentFailure("waiting for content…", waiting=True)


def render_failure(failure: ContentFailure, size: tuple[float, float]) -> np.ndarray:
    w, h = texture_size(size)
    if failure.waiting:
        return painting.paint_message("…", failure.message, w, h, error=False)
    return painting.paint_message("Cannot show this panel", failure.message, w, h, error=True)
