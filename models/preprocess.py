"""How a user's images become what a model takes: size, channels, mean/std, resize mode.

A `Preprocess` comes from three places, strongest first: the command line
(`Preprocess.from_options`), a sidecar file beside the model (`<model stem>.deeproom.json`,
read with `read_sidecar`), and the model's own input shape (`preprocess_for_input_shape`).
`resolve_preprocess` merges them. The sidecar is untrusted input: size-capped, every field
type-checked, numbers finite, unknown keys refused, each error naming the file and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from deeproom.models.errors import DatasetError

RESIZE_MODES = ("stretch", "crop", "pad")
"""stretch: to exactly H×W; crop: scale the short side, centre-crop; pad: fit inside, black bars."""
SIDECAR_SUFFIX = ".deeproom.json"
MAX_SIDE = 4096
MAX_SIDECAR_BYTES = 256 * 1024
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 200
SIDECAR_KEYS = ("size", "channels", "mean", "std", "resize", "classes")
_LUMA = (0.299, 0.587, 0.114)


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise DatasetError(f"{what} must be a number; got {v!r:.60}")
    try:
        f = float(v)
    except ValueError:
        raise DatasetError(f"{what} must be a number; got {v!r:.60}") from None
    if not math.isfinite(f) or abs(f) > 1e4:
        raise DatasetError(f"{what} must be a finite number within ±10000; got {v!r:.60}")
    return f


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    f = _number(v, what)
    if f != int(f) or not lo <= f <= hi:
        raise DatasetError(f"{what} must be a whole number in [{lo}, {hi}]; got {v!r:.60}")
    return int(f)


def _numbers(v: Any, what: str) -> list[Any]:
    if isinstance(v, str):
        parts = [p for p in v.replace("x", ",").replace("×", ",").replace(" ", ",").split(",") if p]
        return parts
    if isinstance(v, int | float) and not isinstance(v, bool):
        return [v]
    if isinstance(v, list | tuple):
        return list(v)
    raise DatasetError(f"{what} must be a number or a list of numbers; got {v!r:.60}")


@dataclass(frozen=True)
class Preprocess:
    """What to do to each image before the model sees it; None leaves that aspect as the data has it."""

    size: tuple[int, int] | None = None
    """(H, W) the model takes."""
    channels: int | None = None
    """1 (grey: colour images become luminance) or 3 (grey images are repeated)."""
    mean: tuple[float, ...] | None = None
    """Subtracted per channel from values in [0, 1] (1 value, or one per channel)."""
    std: tuple[float, ...] | None = None
    """Divided per channel after the mean (each > 0)."""
    resize: str | None = None
    """One of RESIZE_MODES; None means "stretch"."""

    def __post_init__(self) -> None:
        if self.size is not None and (
                len(self.size) != 2 or not all(isinstance(s, int) and 1 <= s <= MAX_SIDE for s in self.size)):
            raise DatasetError(f"size must be (H, W) with each side in [1, {MAX_SIDE}]; got {self.size!r:.60}")
        if self.channels is not None and self.channels not in (1, 3):
            raise DatasetError(f"channels must be 1 or 3; got {self.channels!r:.20}")
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise DatasetError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {self.resize!r:.40}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is None:
                continue
            if not 1 <= len(v) <= 4 or not all(isinstance(a, float) and math.isfinite(a) for a in v):
                raise DatasetError(f"{name} must be 1 to 4 finite numbers; got {v!r:.60}")
        if self.std is not None and min(self.std) <= 0:
            raise DatasetError(f"std values must be > 0; got {self.std}")

    @classmethod
    def from_options(cls, *, size: Any = None, channels: Any = None, mean: Any = None, std: Any = None,
                     resize: Any = None, where: str = "option") -> Preprocess:
        """From command-line values (strings like "224", "224x224", "0.485,0.456,0.406") or numbers."""
        kw: dict[str, Any] = {}
        if size is not None:
            parts = _numbers(size, f"{where} size")
            if len(parts) not in (1, 2):
                raise DatasetError(f"{where} size must be N or HxW; got {size!r:.60}")
            sides = [_int(p, f"{where} size", 1, MAX_SIDE) for p in parts]
            kw["size"] = (sides[0], sides[-1])
        if channels is not None:
            kw["channels"] = _int(channels, f"{where} channels", 1, 3)
            if kw["channels"] == 2:
                raise DatasetError(f"{where} channels must be 1 or 3; got 2")
        for name, v in (("mean", mean), ("std", std)):
            if v is not None:
                vals = _numbers(v, f"{where} {name}")
                if not 1 <= len(vals) <= 4:
                    raise DatasetError(f"{where} {name} must have 1 to 4 values; got {len(vals)}")
                kw[name] = tuple(_number(a, f"{where} {name}") for a in vals)
        if resize is not None:
            if not isinstance(resize, str) or resize not in RESIZE_MODES:
                raise DatasetError(f"{where} resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r:.40}")
            kw["resize"] = resize
        return cls(**kw)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], where: str) -> Preprocess:
        """From a sidecar's JSON object (keys as the dataclass fields; `classes` is ignored here)."""
        return cls.from_options(size=m.get("size"), channels=m.get("channels"), mean=m.get("mean"),
                                std=m.get("std"), resize=m.get("resize"), where=where)

    def over(self, base: Preprocess) -> Preprocess:
        """These settings where they are set, `base`'s elsewhere."""
        kw = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(base, **kw)

    @property
    def resize_mode(self) -> str:
        return self.resize or "stretch"

    def to_json(self) -> dict[str, Any]:
        return {"size": list(self.size) if self.size else None, "channels": self.channels,
                "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
                "resize": self.resize_mode}

    # --- applying it --------------------------------------------------------------------

    def check_channels(self, channels: int) -> None:
        """Refuse mean/std whose length fits neither 1 nor the image's channels."""
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, channels):
                raise DatasetError(f"{name} has {len(v)} values but the images have {channels} channels")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x − mean) / std in place on [N, C, H, W] (nothing if neither is set)."""
        c = x.shape[1]
        self.check_channels(c)
        if self.mean is not None:
            x.sub_(torch.tensor(self.mean, dtype=x.dtype).reshape(1, -1, 1, 1).expand(1, c, 1, 1))
        if self.std is not None:
            x.div_(torch.tensor(self.std, dtype=x.dtype).reshape(1, -1, 1, 1).expand(1, c, 1, 1))
        return x

    def stats(self, channels: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """mean and std spelled out per channel (for undoing them on display)."""
        def full(v: tuple[float, ...] | None) -> tuple[float, ...] | None:
            return None if v is None else (v * channels if len(v) == 1 else v)
        return full(self.mean), full(self.std)


def adapt_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """[N, C, H, W] to 1 or 3 channels: grey repeated, colour to luminance, alpha dropped."""
    c = x.shape[1]
    if c == 4 or (c == 2):  # RGBA / grey+alpha: drop alpha
        x = x[:, : c - 1]
        c -= 1
    if channels is None or channels == c:
        return x
    if channels == 3 and c == 1:
        return x.expand(-1, 3, -1, -1)
    if channels == 1 and c == 3:
        w = torch.tensor(_LUMA, dtype=x.dtype).reshape(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise DatasetError(f"cannot turn {c}-channel images into {channels} channels")


def resize_batch(x: torch.Tensor, size: tuple[int, int] | None, mode: str = "stretch") -> torch.Tensor:
    """[N, C, h, w] floats to [N, C, H, W] by `mode` (antialiased when shrinking)."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    H, W = size
    h, w = x.shape[-2:]

    def scale(t: torch.Tensor, hh: int, ww: int) -> torch.Tensor:
        shrink = hh < t.shape[-2] or ww < t.shape[-1]
        return F.interpolate(t, size=(hh, ww), mode="bilinear", align_corners=False, antialias=shrink)

    if mode == "stretch":
        return scale(x, H, W)
    if mode == "crop":
        s = max(H / h, W / w)
        hh, ww = max(H, round(h * s)), max(W, round(w * s))
        t = scale(x, hh, ww)
        top, left = (hh - H) // 2, (ww - W) // 2
        return t[..., top : top + H, left : left + W]
    s = min(H / h, W / w)
    hh, ww = max(1, min(H, round(h * s))), max(1, min(W, round(w * s)))
    t = scale(x, hh, ww)
    out = torch.zeros((*x.shape[:-2], H, W), dtype=x.dtype)
    top, left = (H - hh) // 2, (W - ww) // 2
    out[..., top : top + hh, left : left + ww] = t
    return out


# --- the sidecar beside a model ---------------------------------------------------------

@dataclass(frozen=True)
class Sidecar:
    """What a model's sidecar file says."""

    path: Path
    """The file it was read from."""
    preprocess: Preprocess
    """Its preprocessing settings."""
    classes: tuple[str, ...] | None
    """Names of the model's output classes, if it gives them."""


def sidecar_path(model_path: str | Path) -> Path:
    """`models/net.onnx` → `models/net.deeproom.json`."""
    p = Path(model_path)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def _refuse_constant(name: str) -> Any:
    raise DatasetError(f"{name} is not allowed (numbers must be finite)")


def parse_sidecar(text: str | bytes, where: str) -> tuple[Preprocess, tuple[str, ...] | None]:
    """Validate a sidecar's JSON; a DatasetError names `where` and the bad field."""
    if len(text) > MAX_SIDECAR_BYTES:
        raise DatasetError(f"{where}: sidecar larger than {MAX_SIDECAR_BYTES} bytes")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: a sidecar must be a JSON object with keys {', '.join(SIDECAR_KEYS)}")
    unknown = sorted(k for k in data if k not in SIDECAR_KEYS)
    if unknown:
        raise DatasetError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))[:200]}; "
                           f"allowed: {', '.join(SIDECAR_KEYS)}")
    for key in ("size", "mean", "std"):
        v = data.get(key)
        if isinstance(v, list) and len(v) > 4:
            raise DatasetError(f"{where}: {key} has {len(v)} values; at most 4")
    pre = Preprocess.from_mapping(data, where)
    classes = data.get("classes")
    if classes is None:
        return pre, None
    if not isinstance(classes, list) or len(classes) > MAX_CLASSES:
        raise DatasetError(f"{where}: classes must be a list of at most {MAX_CLASSES} names")
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not 0 < len(c) <= MAX_CLASS_NAME or not c.isprintable():
            raise DatasetError(f"{where}: classes[{i}] must be a printable name of 1–{MAX_CLASS_NAME} "
                               f"characters; got {c!r:.60}")
    return pre, tuple(classes)


def read_sidecar(model_path: str | Path) -> Sidecar | None:
    """The sidecar beside `model_path`, or None when there is none."""
    p = sidecar_path(model_path)
    if not p.is_file():
        return None
    try:
        if p.stat().st_size > MAX_SIDECAR_BYTES:
            raise DatasetError(f"{p}: sidecar larger than {MAX_SIDECAR_BYTES} bytes")
        text = p.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{p}: not readable ({exc})") from None
    pre, classes = parse_sidecar(text, str(p))
    return Sidecar(p, pre, classes)


def preprocess_for_input_shape(shape: Sequence[Any] | None) -> Preprocess:
    """What a model's input shape asks for: (1, 3, 224, 224) → size (224, 224), 3 channels.
    Symbolic or unknown dimensions leave that aspect unset."""
    if shape is None or len(shape) != 4:
        return Preprocess()

    def known(d: Any) -> int | None:
        return d if isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_SIDE else None

    c, h, w = (known(d) for d in shape[1:])
    return Preprocess(size=(h, w) if h and w else None, channels=c if c in (1, 3) else None)


def resolve_preprocess(model_path: str | Path | None, input_shape: Sequence[Any] | None,
                       options: Preprocess | None = None) -> tuple[Preprocess, Sidecar | None]:
    """Options (command line) over the sidecar over what the input shape asks for."""
    pre = preprocess_for_input_shape(input_shape)
    side = read_sidecar(model_path) if model_path is not None else None
    if side is not None:
        pre = side.preprocess.over(pre)
    if options is not None:
        pre = options.over(pre)
    return pre, side
