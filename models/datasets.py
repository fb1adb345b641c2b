"""Datasets the engine reads: scikit-learn's digits (built in), ImageFolder-style
directories, `.npz` files with `x` and `y`, and MNIST IDX files.

Everything becomes one `ImageDataset`: float32 images [N, C, H, W] in [0, 1], int64
labels (−1 where unlabelled), class names, and uint8 thumbnails for the scenes.
Nothing is downloaded; anything malformed is refused with a `DatasetError` that
names the file and what was expected.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deeproom.models.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_IDX_BYTES = 1 << 31


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels, ready for a model."""

    x: torch.Tensor
    """float32 [N, C, H, W], values in [0, 1]."""
    y: torch.Tensor
    """int64 [N]; −1 marks an unlabelled sample."""
    classes: tuple[str, ...]
    """Name of each class index."""
    name: str = "dataset"
    """Where it came from, for titles and cache keys."""
    files: tuple[str, ...] = field(default=())
    """Source file of each image, where there is one."""

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

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def thumbnails(self, size: int | None = None) -> np.ndarray:
        """uint8 thumbnails: [N, h, w] for one channel, [N, h, w, 3] for colour."""
        x = self.x
        if size is not None and (x.shape[-1] > size or x.shape[-2] > size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
        t = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        if t.shape[1] == 1:
            return t[:, 0].numpy()
        return t[:, :3].permute(0, 2, 3, 1).contiguous().numpy()

    def subset(self, index: Sequence[int] | torch.Tensor) -> ImageDataset:
        idx = torch.as_tensor(index, dtype=torch.long)
        files = tuple(self.files[i] for i in idx.tolist()) if self.files else ()
        return ImageDataset(self.x[idx], self.y[idx], self.classes, self.name, files)

    def split(self, test_fraction: float = 0.25, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
        """A seeded (train, test) split."""
        if not 0.0 < test_fraction < 1.0:
            raise DatasetError(f"test_fraction must be in (0, 1); got {test_fraction}")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        n_test = max(1, round(len(self) * test_fraction))
        return self.subset(perm[n_test:]), self.subset(perm[:n_test])


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits, 8×8, one channel (ships with scikit-learn)."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    return ImageDataset(x, y, tuple(str(i) for i in range(10)), "digits")


def load_dataset(path: str | Path, *, image_size: int | None = None) -> ImageDataset:
    """Read a dataset by what the path is: "digits", a directory, `.npz`, or IDX."""
    if str(path) == "digits":
        return load_digits()
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory (allowed: 'digits', a folder, .npz, IDX)")
    if p.is_dir():
        idx_images = sorted([*p.glob("*images-idx3-ubyte*"), *p.glob("*images.idx3-ubyte*")])
        if idx_images and not any(c.is_dir() for c in p.iterdir()):
            labels = sorted([*p.glob("*labels-idx1-ubyte*"), *p.glob("*labels.idx1-ubyte*")])
            return load_idx(idx_images[0], labels[0] if labels else None)
        return load_image_folder(p, image_size=image_size)
    if p.suffix == ".npz":
        return load_npz(p)
    if "idx" in p.name or "ubyte" in p.name:
        return load_idx(p)
    raise DatasetError(f"{p}: unknown dataset kind; allowed: 'digits', an image folder, .npz (x, y), MNIST IDX")


def load_image_folder(root: str | Path, *, image_size: int | None = None) -> ImageDataset:
    """ImageFolder layout: one sub-folder per class, images inside. Every image must
    have the same size (or give `image_size` to resize all to a square)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: an image folder needs one sub-folder per class; found none")
    images: list[np.ndarray] = []
    labels: list[int] = []
    files: list[str] = []
    mode: str | None = None
    shape: tuple[int, ...] | None = None
    for label, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                continue
            try:
                with Image.open(f) as im:
                    im.load()
                    if mode is None:
                        mode = "L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"
                    im2 = im.convert(mode)
                    if image_size is not None:
                        im2 = im2.resize((image_size, image_size), Image.Resampling.BILINEAR)
                    arr = np.asarray(im2, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise DatasetError(f"{f}: not a readable image ({type(exc).__name__}: {exc})") from None
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise DatasetError(
                    f"{f}: image is {arr.shape[1]}×{arr.shape[0]} but the first image was "
                    f"{shape[1]}×{shape[0]}; all images must match (or pass image_size)"
                )
            images.append(arr)
            labels.append(label)
            files.append(str(f))
    if not images:
        raise DatasetError(f"{root}: no images found (allowed suffixes: {', '.join(IMAGE_SUFFIXES)})")
    x = np.stack(images).astype(np.float32) / 255.0
    xt = torch.from_numpy(x).unsqueeze(1) if x.ndim == 3 else torch.from_numpy(x).permute(0, 3, 1, 2)
    return ImageDataset(
        xt.contiguous(), torch.tensor(labels, dtype=torch.long),
        tuple(d.name for d in class_dirs), root.name, tuple(files),
    )


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


def load_npz(path: str | Path) -> ImageDataset:
    """A `.npz` with arrays `x` (images) and `y` (integer labels); pickled objects are refused."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise DatasetError(f"{p}: an .npz dataset needs arrays 'x' and 'y'; found {sorted(z.files)}")
            x, y = z["x"], z["y"]
            classes = tuple(str(c) for c in z["classes"]) if "classes" in z.files else None
    except DatasetError:
        raise
    except ValueError as exc:
        raise DatasetError(f"{p}: refused ({exc}); arrays must be plain numbers, not objects") from None
    except (OSError, EOFError, KeyError) as exc:
        raise DatasetError(f"{p}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    xt = _images_from_array(x, str(p))
    yt, names = _labels(y, xt.shape[0], str(p))
    if classes is not None:
        if len(classes) < len(names):
            raise DatasetError(f"{p}: {len(classes)} class names but labels go up to {len(names) - 1}")
        names = classes
    return ImageDataset(xt, yt, names, p.stem)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not readable ({exc})") from None
    if len(data) > MAX_IDX_BYTES:
        raise DatasetError(f"{path}: larger than {MAX_IDX_BYTES} bytes")
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic)")
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in types or not 1 <= ndim <= 4:
        raise DatasetError(f"{path}: IDX type 0x{code:02x} with {ndim} dimensions is not allowed")
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: IDX header truncated")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    dt = np.dtype(types[code])
    need = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != need:
        raise DatasetError(f"{path}: IDX header says {dims} ({need} bytes) but {len(body)} bytes follow")
    return np.frombuffer(body, dtype=dt).reshape(dims).astype(dt.newbyteorder("="))


def load_idx(images: str | Path, labels: str | Path | None = None) -> ImageDataset:
    """MNIST-style IDX files (optionally gzipped). Without labels every sample is −1."""
    ip = Path(images)
    x = _read_idx(ip)
    xt = _images_from_array(x, str(ip))
    if labels is None:
        return ImageDataset(xt, torch.full((xt.shape[0],), -1, dtype=torch.long), (), ip.name)
    lp = Path(labels)
    yt, names = _labels(_read_idx(lp), xt.shape[0], str(lp))
    return ImageDataset(xt, yt, names, ip.name)
