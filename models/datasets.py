"""Datasets the engine reads: scikit-learn's digits (built in) and the user's own data —
ImageFolder-style directories (one sub-folder per class), `.npz` files with `x` and `y`,
and MNIST IDX files.

Everything becomes one `ImageDataset`: float32 images [N, C, H, W] as the model takes them
(in [0, 1], or after the mean/std of a `Preprocess`), int64 labels (−1 where unlabelled),
class names, and uint8 thumbnails for the scenes. `load_user_data` reads the user's data
under `DataLimits`: in a folder, corrupt, unreadable, odd-sized or oversized images are
skipped and counted by reason (`ds.skipped`); hostile input as a whole (symlinks out of the
folder, pickled `.npz` objects, IDX headers claiming absurd sizes, too many files or bytes)
is refused with a `DatasetError` naming the file. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deeproom.models.errors import DatasetError
from deeproom.models.preprocess import (
    SIDECAR_SUFFIX,
    Preprocess,
    Sidecar,
    adapt_channels,
    preprocess_for_input_shape,
    read_sidecar,
    resize_batch,
    resolve_preprocess,
    sidecar_path,
)

__all__ = [
    "SIDECAR_SUFFIX", "DataLimits", "ImageDataset", "Preprocess", "Sidecar", "load_dataset", "load_digits",
    "load_idx", "load_image_folder", "load_npz", "load_user_data", "preprocess_for_input_shape", "read_sidecar",
    "resolve_preprocess", "sidecar_path", "thumbnails",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_IDX_BYTES = 1 << 31
SKIP_REASONS = ("corrupt", "unreadable", "odd size", "wrong mode", "too large", "outside the folder")
"""Why an image of a folder was skipped (keys of `ImageDataset.skipped`)."""
MAX_SKIPPED_EXAMPLES = 10
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "P", "PA", "LAB", "HSV"}
"""Modes PIL converts to RGB; anything else (e.g. signed 16-bit TIFF) is skipped as "wrong mode"."""
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass(frozen=True)
class DataLimits:
    """Caps on what a user's dataset may make us read or allocate."""

    max_files: int = 200_000
    """Entries scanned in a folder (class folders included)."""
    max_image_pixels: int = 40_000_000
    """Width × height of one image, read from its header before decoding (decompression bombs)."""
    max_total_bytes: int = 4 << 30
    """Bytes of the files read (a folder's images, an .npz's uncompressed arrays, an IDX body)."""
    max_samples: int = 500_000
    """Images in the dataset."""
    max_tensor_bytes: int = 4 << 30
    """Bytes of the float32 images once preprocessed, checked before allocating."""


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels, ready for a model."""

    x: torch.Tensor
    """float32 [N, C, H, W], what the model takes: values in [0, 1], or (v − mean) / std."""
    y: torch.Tensor
    """int64 [N]; −1 marks an unlabelled sample."""
    classes: tuple[str, ...]
    """Name of each class index."""
    name: str = "dataset"
    """Where it came from, for titles and cache keys."""
    files: tuple[str, ...] = field(default=())
    """Source file of each image, where there is one."""
    skipped: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Images left out while reading, by reason (see SKIP_REASONS); empty when none were."""
    skipped_examples: tuple[str, ...] = ()
    """Up to ten "file: reason" lines for the skipped images."""
    builtin: bool = False
    """True only for the built-in digits (shown when the user gave no data)."""
    mean: tuple[float, ...] | None = None
    """Per-channel mean subtracted from x (undone for display), if any."""
    std: tuple[float, ...] | None = None
    """Per-channel std x was divided by (undone for display), if any."""

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise DatasetError(f"{self.name}: images must be [N, C, H, W]; got shape {tuple(self.x.shape)}")
        if self.y.ndim != 1 or self.y.shape[0] != self.x.shape[0]:
            raise DatasetError(
                f"{self.name}: {self.x.shape[0]} images but labels of shape {tuple(self.y.shape)}"
            )
        if self.y.numel() and int(self.y.max()) >= len(self.classes):
            raise DatasetError(
                f"{self.name}: label {int(self.y.max())} but only {len(self.classes)} classes"
            )
        for v in (self.mean, self.std):
            if v is not None and len(v) != self.x.shape[1]:
                raise DatasetError(f"{self.name}: mean/std need {self.x.shape[1]} values; got {len(v)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def class_name(self, label: int) -> str:
        """The name of class `label` ("" for −1 or an index without a name)."""
        return self.classes[label] if 0 <= label < len(self.classes) else ""

    def images01(self, index: Sequence[int] | torch.Tensor | slice | int) -> torch.Tensor:
        """Display copies in [0, 1] of the chosen samples (mean/std undone)."""
        x = self.x[index]
        if self.std is not None:
            x = x * torch.tensor(self.std, dtype=x.dtype).reshape(-1, 1, 1)
        if self.mean is not None:
            x = x + torch.tensor(self.mean, dtype=x.dtype).reshape(-1, 1, 1)
        return x.clamp(0, 1)

    def thumbnails(self, size: int | None = None) -> np.ndarray:
        """uint8 thumbnails of every sample: [N, h, w] for one channel, [N, h, w, 3] for colour;
        images larger than `size` are shrunk to fit size×size (aspect kept), smaller ones kept."""
        if size is None or max(self.x.shape[-2:]) <= size:
            return _to_uint8(self.images01(slice(None)))
        return thumbnails(self, None, size)

    def subset(self, index: Sequence[int] | torch.Tensor) -> ImageDataset:
        idx = torch.as_tensor(index, dtype=torch.long)
        files = tuple(self.files[i] for i in idx.tolist()) if self.files else ()
        return replace(self, x=self.x[idx], y=self.y[idx], files=files)

    def split(self, test_fraction: float = 0.25, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
        """A seeded (train, test) split."""
        if not 0.0 < test_fraction < 1.0:
            raise DatasetError(f"test_fraction must be in (0, 1); got {test_fraction}")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        n_test = max(1, round(len(self) * test_fraction))
        return self.subset(perm[n_test:]), self.subset(perm[:n_test])


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    t = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    if t.shape[1] == 1:
        return t[:, 0].numpy()
    return t[:, :3].permute(0, 2, 3, 1).contiguous().numpy()


def thumbnails(ds: ImageDataset, n: int | None = None, size: int = 32, *, start: int = 0,
               indices: Sequence[int] | np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """uint8 thumbnails for an input strip or a cloud: [n, size, size] (one channel) or
    [n, size, size, 3]; aspect kept (black bars), mean/std undone, small images scaled up
    with crisp pixels. `indices` picks samples; otherwise `n` samples from `start`
    (all when n is None). Works in batches, so 70,000 samples never hold more than one
    batch of full-size floats."""
    if not 1 <= size <= 1024:
        raise DatasetError(f"thumbnail size must be in [1, 1024]; got {size}")
    if indices is None:
        stop = len(ds) if n is None else min(len(ds), start + max(0, n))
        idx = torch.arange(max(0, start), stop)
    else:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(ds)):
            raise DatasetError(f"thumbnail indices must be in [0, {len(ds)}); got {int(idx.min())}…{int(idx.max())}")
    c, h, w = ds.image_shape
    out = np.zeros((len(idx), size, size, 3) if c >= 3 else (len(idx), size, size), np.uint8)
    s = min(size / h, size / w)
    hh, ww = max(1, min(size, round(h * s))), max(1, min(size, round(w * s)))
    top, left = (size - hh) // 2, (size - ww) // 2
    for b in range(0, len(idx), 1024):
        x = ds.images01(idx[b : b + 1024])
        if (hh, ww) != (h, w):
            mode = "area" if hh < h else "nearest"
            x = F.interpolate(x, size=(hh, ww), mode=mode)
        out[b : b + len(x), top : top + hh, left : left + ww] = _to_uint8(x)
    return out


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits, 8×8, one channel (ships with scikit-learn)."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    return ImageDataset(x, y, tuple(str(i) for i in range(10)), "digits", builtin=True)


def load_dataset(path: str | Path, *, image_size: int | None = None) -> ImageDataset:
    """Read a dataset by what the path is: "digits", a directory, `.npz`, or IDX."""
    if str(path) == "digits":
        return load_digits()
    pre = Preprocess(size=(image_size, image_size)) if image_size is not None else Preprocess()
    return load_user_data(path, pre)


def load_user_data(path: str | Path, preprocess: Preprocess | None = None, *,
                   classes: Sequence[str] | None = None, limits: DataLimits | None = None) -> ImageDataset:
    """The user's data, preprocessed for a model: an image folder (one sub-folder per class),
    a `.npz` (x, y[, classes]), an IDX images file (labels found beside it), or a folder of IDX
    files. `classes` names the classes where the data does not (e.g. a model sidecar's)."""
    pre = preprocess or Preprocess()
    lim = limits or DataLimits()
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory (allowed: an image folder, .npz, IDX)")
    if p.is_dir():
        idx_images = sorted([*p.glob("*images-idx3-ubyte*"), *p.glob("*images.idx3-ubyte*")])
        if idx_images and not any(c.is_dir() for c in p.iterdir()):
            ds = load_idx(idx_images[0], _idx_labels_beside(idx_images[0]), limits=lim)
        else:
            return _read_folder(p, pre, lim, classes)
    elif p.suffix == ".npz":
        ds = load_npz(p, limits=lim)
    elif "idx" in p.name or "ubyte" in p.name:
        ds = load_idx(p, _idx_labels_beside(p), limits=lim)
    else:
        raise DatasetError(f"{p}: unknown dataset kind; allowed: an image folder, .npz (x, y), MNIST IDX")
    return _preprocess_tensor_dataset(ds, pre, lim, classes)


def _idx_labels_beside(images: Path) -> Path | None:
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if a in images.name:
            cand = images.with_name(images.name.replace(a, b))
            for c in (cand, cand.with_name(cand.name.removesuffix(".gz")), cand.with_name(cand.name + ".gz")):
                if c.is_file():
                    return c
    return None


def _named(ds: ImageDataset, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The data's own class names if it has real ones, else the given ones if they cover the labels."""
    n = int(ds.y.max()) + 1 if len(ds) else 0
    own = ds.classes
    generic = own == tuple(str(i) for i in range(len(own)))
    if classes is not None and generic and len(classes) >= n:
        return tuple(classes)
    return own


def _preprocess_tensor_dataset(ds: ImageDataset, pre: Preprocess, lim: DataLimits,
                               classes: Sequence[str] | None) -> ImageDataset:
    n, c, h, w = ds.x.shape
    c_out = pre.channels or (c - 1 if c in (2, 4) else c)
    H, W = pre.size or (h, w)
    _check_tensor_bytes(n, c_out, H, W, lim, ds.name)
    pre.check_channels(c_out)
    parts = []
    for b in range(0, n, 4096):  # batches: resizing never holds two full copies
        xb = adapt_channels(ds.x[b : b + 4096], pre.channels)
        parts.append(resize_batch(xb, pre.size, pre.resize_mode).contiguous())
    x = torch.cat(parts) if parts else torch.empty(0, c_out, H, W)
    x = pre.normalize(x)
    mean, std = pre.stats(x.shape[1])
    return replace(ds, x=x, classes=_named(ds, classes), mean=mean, std=std)


def _check_tensor_bytes(n: int, c: int, h: int, w: int, lim: DataLimits, where: str) -> None:
    if n > lim.max_samples:
        raise DatasetError(f"{where}: {n} samples; at most {lim.max_samples} are allowed")
    need = n * c * h * w * 4
    if need > lim.max_tensor_bytes:
        raise DatasetError(f"{where}: {n}×{c}×{h}×{w} images would take {need / 2**30:.1f} GiB as float32; "
                           f"at most {lim.max_tensor_bytes / 2**30:.1f} GiB (use a smaller size)")


def _inside(root: Path, p: Path) -> bool:
    try:
        return p.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def load_image_folder(root: str | Path, *, image_size: int | None = None,
                      preprocess: Preprocess | None = None, limits: DataLimits | None = None) -> ImageDataset:
    """ImageFolder layout: one sub-folder per class, images inside. Without a size, images of
    another size than most are skipped ("odd size"); unreadable ones are skipped too; both counted."""
    pre = preprocess or (Preprocess(size=(image_size, image_size)) if image_size else Preprocess())
    return _read_folder(Path(root), pre, limits or DataLimits(), None)


@dataclass
class _Candidate:
    path: Path
    label: int
    size: tuple[int, int]
    grey: bool


def _read_folder(root: Path, pre: Preprocess, lim: DataLimits, names: Sequence[str] | None) -> ImageDataset:
    from PIL import Image

    real_root = root.resolve()
    skipped: Counter[str] = Counter()
    examples: list[str] = []

    def skip(f: Path, reason: str, detail: str = "") -> None:
        skipped[reason] += 1
        if len(examples) < MAX_SKIPPED_EXAMPLES:
            examples.append(f"{f.relative_to(root) if f.is_relative_to(root) else f}: {reason}"
                            + (f" ({detail[:120]})" if detail else ""))

    seen = 0
    class_dirs: list[Path] = []
    for d in sorted(root.iterdir()):
        seen += 1
        if d.name.startswith(".") or not d.is_dir():
            continue
        if not _inside(real_root, d):
            skip(d, "outside the folder", "a link that leaves the data folder")
            continue
        class_dirs.append(d)
    if not class_dirs:
        raise DatasetError(f"{root}: an image folder needs one sub-folder per class; found none")
    # pass 1: headers only — sizes, modes, bombs, links — before decoding anything
    cands: list[_Candidate] = []
    total_bytes = 0
    for label, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            seen += 1
            if seen > lim.max_files:
                raise DatasetError(f"{root}: more than {lim.max_files} files; refusing to read so many")
            if f.suffix.lower() not in IMAGE_SUFFIXES or f.name.startswith("."):
                continue
            if not _inside(real_root, f):
                skip(f, "outside the folder", "a link that leaves the data folder")
                continue
            if not f.is_file():
                continue
            try:
                total_bytes += f.stat().st_size
            except OSError as exc:
                skip(f, "unreadable", str(exc))
                continue
            if total_bytes > lim.max_total_bytes:
                raise DatasetError(f"{root}: images total more than {lim.max_total_bytes} bytes; refusing to read")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(f) as im:
                        size, mode = im.size, im.mode
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                skip(f, "too large", str(exc))
                continue
            except PermissionError as exc:
                skip(f, "unreadable", str(exc))
                continue
            except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
                skip(f, "corrupt", f"{type(exc).__name__}: {exc}")
                continue
            if size[0] * size[1] > lim.max_image_pixels:
                skip(f, "too large", f"{size[0]}×{size[1]} pixels; at most {lim.max_image_pixels}")
                continue
            if size[0] < 1 or size[1] < 1:
                skip(f, "odd size", f"{size[0]}×{size[1]}")
                continue
            if mode not in _GREY_MODES and mode not in _COLOUR_MODES:
                skip(f, "wrong mode", f"mode {mode}")
                continue
            cands.append(_Candidate(f, label, size, mode in _GREY_MODES))
    if not cands:
        raise DatasetError(f"{root}: no readable images (allowed suffixes: {', '.join(IMAGE_SUFFIXES)})"
                           + (f"; skipped {dict(skipped)}" if skipped else ""))
    if pre.size is None:  # no size given: the most common size wins, the others are odd
        (w0, h0), _ = Counter(c.size for c in cands).most_common(1)[0]
        for c in cands:
            if c.size != (w0, h0):
                skip(c.path, "odd size", f"{c.size[0]}×{c.size[1]}, most images are {w0}×{h0}")
        cands = [c for c in cands if c.size == (w0, h0)]
        H, W = h0, w0
    else:
        H, W = pre.size
    channels = pre.channels or (1 if all(c.grey for c in cands) else 3)
    pre.check_channels(channels)
    _check_tensor_bytes(len(cands), channels, H, W, lim, str(root))
    # pass 2: decode into one preallocated tensor
    x = torch.empty((len(cands), channels, H, W), dtype=torch.float32)
    labels: list[int] = []
    files: list[str] = []
    to_mode = "L" if channels == 1 else "RGB"
    for c in cands:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(c.path) as im:
                    im.draft(to_mode, (W, H))  # JPEG: decode at a reduced scale when shrinking a lot
                    im.seek(0)
                    img = _convert(im, to_mode)
        except ValueError as exc:
            skip(c.path, "wrong mode", str(exc))
            continue
        except (OSError, SyntaxError, struct.error, EOFError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            skip(c.path, "corrupt", f"{type(exc).__name__}: {exc}")
            continue
        a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        t = (a[None] if a.ndim == 2 else a.permute(2, 0, 1)).float().div_(255.0)
        x[len(labels)] = resize_batch(t[None], (H, W), pre.resize_mode)[0]
        labels.append(c.label)
        files.append(str(c.path))
    if not labels:
        raise DatasetError(f"{root}: no readable images; skipped {dict(skipped)}")
    x = pre.normalize(x[: len(labels)])
    mean, std = pre.stats(channels)
    own = tuple(d.name for d in class_dirs)
    return ImageDataset(
        x.contiguous(), torch.tensor(labels, dtype=torch.long), own, root.name, tuple(files),
        MappingProxyType(dict(skipped)), tuple(examples), False, mean, std,
    )


def _convert(im: Any, mode: str) -> Any:
    """PIL image → 'L' or 'RGB'; 16-bit and float grey scaled to 8 bits by its range."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min(initial=0)), float(a.max(initial=0))
        if not np.isfinite(a).all():
            raise ValueError("image has NaN or infinite pixels")
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        from PIL import Image

        im = Image.fromarray(((a - lo) * scale).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        from PIL import Image

        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert(mode)


def _images_from_array(x: np.ndarray, where: str) -> torch.Tensor:
    if x.dtype.kind not in "uif":
        raise DatasetError(f"{where}: images must be numbers; got dtype {x.dtype}")
    xf = x.astype(np.float32)
    if x.dtype.kind in "ui":
        xf = xf / 255.0 if x.max(initial=0) > 1 else xf
    elif xf.size and (not np.isfinite(xf).all()):
        raise DatasetError(f"{where}: images contain NaN or infinity")
    elif xf.size and xf.max() > 1.0:
        xf = xf / 255.0 if xf.max() <= 255.0 else (xf - xf.min()) / (xf.max() - xf.min())
    if xf.ndim == 2:  # flat vectors: square images if they can be
        side = round(xf.shape[1] ** 0.5)
        if side * side != xf.shape[1]:
            raise DatasetError(f"{where}: flat samples of length {xf.shape[1]} are not square images")
        xf = xf.reshape(-1, 1, side, side)
    elif xf.ndim == 3:
        xf = xf[:, None]
    elif xf.ndim == 4:
        if xf.shape[-1] in (1, 3, 4) and xf.shape[1] not in (1, 3, 4):
            xf = xf.transpose(0, 3, 1, 2)  # NHWC → NCHW
    else:
        raise DatasetError(f"{where}: images must have 2–4 dimensions; got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(xf))


def _labels(y: np.ndarray, n: int, where: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if y.shape[0] != n:
        raise DatasetError(f"{where}: {n} images but {y.shape[0]} labels")
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise DatasetError(f"{where}: labels must be integers; got dtype {y.dtype}")
    yi = y.astype(np.int64)
    if yi.size and yi.min() < -1:
        raise DatasetError(f"{where}: labels must be ≥ 0 (or −1 for unlabelled); got {yi.min()}")
    n_classes = int(yi.max()) + 1 if yi.size else 0
    return torch.from_numpy(yi), tuple(str(i) for i in range(n_classes))


def load_npz(path: str | Path, *, limits: DataLimits | None = None) -> ImageDataset:
    """A `.npz` with arrays `x` (images) and `y` (integer labels), optionally `classes`
    (names); pickled objects are refused, and array sizes are checked before reading."""
    lim = limits or DataLimits()
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise DatasetError(f"{p}: an .npz dataset needs arrays 'x' and 'y'; found {sorted(z.files)}")
            zf = getattr(z, "zip", None)
            if zf is not None:  # uncompressed sizes from the zip directory: no zip bombs
                total = sum(i.file_size for i in zf.infolist())
                if total > lim.max_total_bytes:
                    raise DatasetError(f"{p}: arrays total {total} bytes uncompressed; at most {lim.max_total_bytes}")
            x, y = z["x"], z["y"]
            classes = z["classes"] if "classes" in z.files else None
    except DatasetError:
        raise
    except ValueError as exc:
        raise DatasetError(f"{p}: refused ({exc}); arrays must be plain numbers, not objects") from None
    except (OSError, EOFError, KeyError) as exc:
        raise DatasetError(f"{p}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if x.ndim >= 1 and x.shape[0] > lim.max_samples:
        raise DatasetError(f"{p}: {x.shape[0]} samples; at most {lim.max_samples} are allowed")
    xt = _images_from_array(x, str(p))
    yt, names = _labels(y, xt.shape[0], str(p))
    if classes is not None:
        if classes.dtype.kind not in "US" or classes.ndim != 1:
            raise DatasetError(f"{p}: 'classes' must be a 1-D array of strings; got {classes.dtype} {classes.shape}")
        named = tuple(str(c)[:200] for c in classes)
        if len(named) < len(names):
            raise DatasetError(f"{p}: {len(named)} class names but labels go up to {len(names) - 1}")
        names = named
    return ImageDataset(xt, yt, names, p.stem)


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path, limits: DataLimits | None = None) -> np.ndarray:
    """An IDX array; the header's dimensions are checked against the limits (and the file)
    before the body is read, so a header claiming terabytes allocates nothing."""
    lim = limits or DataLimits()
    cap = min(MAX_IDX_BYTES, lim.max_total_bytes)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DatasetError(f"{path}: not an IDX file (bad magic)")
            code, ndim = head[2], head[3]
            if code not in _IDX_TYPES or not 1 <= ndim <= 4:
                raise DatasetError(f"{path}: IDX type 0x{code:02x} with {ndim} dimensions is not allowed")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DatasetError(f"{path}: IDX header truncated")
            dims = struct.unpack(">" + "I" * ndim, raw_dims)
            dt = np.dtype(_IDX_TYPES[code])
            need = dt.itemsize
            for d in dims:
                need *= d  # Python ints: no overflow
            if dims[0] > lim.max_samples:
                raise DatasetError(f"{path}: IDX header claims {dims[0]} samples; at most {lim.max_samples}")
            if need > cap:
                raise DatasetError(f"{path}: IDX header claims {dims} = {need} bytes; at most {cap} are allowed")
            if path.suffix != ".gz" and need > os.fstat(f.fileno()).st_size:
                raise DatasetError(f"{path}: IDX header says {dims} ({need} bytes) but the file is smaller")
            body = f.read(need + 1)
    except DatasetError:
        raise
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not readable ({exc})") from None
    if len(body) != need:
        raise DatasetError(f"{path}: IDX header says {dims} ({need} bytes) but {len(body)}"
                           f"{'+' if len(body) > need else ''} bytes follow")
    return np.frombuffer(body, dtype=dt).reshape(dims).astype(dt.newbyteorder("="))


def load_idx(images: str | Path, labels: str | Path | None = None, *,
             limits: DataLimits | None = None) -> ImageDataset:
    """MNIST-style IDX files (optionally gzipped). Without labels every sample is −1."""
    ip = Path(images)
    x = _read_idx(ip, limits)
    xt = _images_from_array(x, str(ip))
    if labels is None:
        return ImageDataset(xt, torch.full((xt.shape[0],), -1, dtype=torch.long), (), ip.name)
    lp = Path(labels)
    yt, names = _labels(_read_idx(lp, limits), xt.shape[0], str(lp))
    return ImageDataset(xt, yt, names, ip.name)
