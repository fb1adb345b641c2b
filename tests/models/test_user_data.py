"""The user's own data: image folders, .npz and IDX written here as real files, preprocessing
from options, a sidecar or the model's input shape, skipped files counted by reason, and
hostile inputs (decompression bombs, pickled arrays, absurd IDX headers, links out of the folder)."""

from __future__ import annotations

import gzip
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeproom.models.datasets import (
    DataLimits,
    Preprocess,
    load_dataset,
    load_digits,
    load_user_data,
    preprocess_for_input_shape,
    read_sidecar,
    resolve_preprocess,
    sidecar_path,
    thumbnails,
)
from deeproom.models.errors import DatasetError
from deeproom.models.preprocess import parse_sidecar


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _folder(root: Path, size: tuple[int, int] = (8, 8), per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(per_class):
            _save(root / cls / f"{i}.png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return root


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(path: Path, side: int = 100_000) -> Path:
    """A PNG whose header claims side×side pixels, with a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    return path


def _idx(dtype_code: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(">BBBB", 0, 0, dtype_code, len(dims)) + struct.pack(">" + "I" * len(dims), *dims) + body


def test_folder_skips_and_counts_corrupt_and_odd_sized_images(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pets")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _save(root / "cat" / "tall.png", np.zeros((9, 8, 3), np.uint8))
    (root / "cat" / "notes.txt").write_text("not an image, not counted")
    ds = load_user_data(root)
    assert ds.x.shape == (6, 3, 8, 8) and ds.classes == ("cat", "dog") and ds.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert dict(ds.skipped) == {"corrupt": 1, "odd size": 1} and ds.skipped_total == 2
    assert any("broken.png: corrupt" in e for e in ds.skipped_examples)
    assert any("tall.png: odd size" in e and "8×9" in e for e in ds.skipped_examples)
    assert not ds.builtin and load_digits().builtin
    assert all("broken" not in f and "tall" not in f for f in ds.files) and len(ds.files) == 6
    # pixel values survive exactly (no preprocessing asked for)
    first = np.asarray(Image.open(root / "cat" / "0.png"), dtype=np.float32) / 255
    assert torch.allclose(ds.x[0], torch.from_numpy(first).permute(2, 0, 1))
    # with a size, the odd one is resized, not skipped; the corrupt one still is
    sized = load_user_data(root, Preprocess(size=(8, 8)))
    assert sized.x.shape == (7, 3, 8, 8) and dict(sized.skipped) == {"corrupt": 1}
    # the old loader keeps its behaviour through the same road
    assert load_dataset(root, image_size=4).x.shape == (7, 3, 4, 4)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        load_user_data(tmp_path / "flat")
    only_bad = tmp_path / "bad"
    (only_bad / "a").mkdir(parents=True)
    (only_bad / "a" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"no readable images.*corrupt"):
        load_user_data(only_bad)


def test_preprocess_size_channels_mean_std_and_resize_modes(tmp_path: Path) -> None:
    root = tmp_path / "grey"
    _save(root / "a" / "wide.png", np.full((4, 8), 128, np.uint8))  # H=4, W=8
    _save(root / "b" / "wide2.png", np.full((4, 8), 255, np.uint8))
    pre = Preprocess(size=(8, 8), channels=3, mean=(0.5,), std=(0.25,), resize="pad")
    ds = load_user_data(root, pre)
    assert ds.x.shape == (2, 3, 8, 8) and ds.mean == (0.5,) * 3 and ds.std == (0.25,) * 3
    # pad: rows 2..5 hold the image, bars above and below are black (0 → (0 − 0.5)/0.25 = −2)
    assert torch.allclose(ds.x[0, :, 2:6], torch.full((3, 4, 8), (128 / 255 - 0.5) / 0.25), atol=1e-6)
    assert torch.allclose(ds.x[0, :, :2], torch.full((3, 2, 8), -2.0))
    # display copies undo mean/std
    assert torch.allclose(ds.images01(0)[:, 2:6], torch.full((3, 4, 8), 128 / 255), atol=1e-6)
    crop = load_user_data(root, Preprocess(size=(8, 8), resize="crop"))
    assert crop.x.shape == (2, 1, 8, 8) and torch.allclose(crop.x[1], torch.ones(1, 8, 8))
    stretch = load_user_data(root, Preprocess(size=(2, 2), channels=1))
    assert stretch.x.shape == (2, 1, 2, 2)
    # colour to grey uses luminance weights
    _save(tmp_path / "red" / "r" / "0.png", np.tile(np.array([255, 0, 0], np.uint8), (4, 4, 1)))
    red = load_user_data(tmp_path / "red", Preprocess(channels=1))
    assert red.x.shape == (1, 1, 4, 4) and abs(float(red.x.mean()) - 0.299) < 1 / 255  # PIL rounds to 8 bits
    with pytest.raises(DatasetError, match="mean has 2 values but the images have 3 channels"):
        load_user_data(root, Preprocess(channels=3, mean=(0.1, 0.2)))


def test_options_sidecar_and_input_shape(tmp_path: Path) -> None:
    assert Preprocess.from_options(size="224", channels="3", mean="0.485,0.456,0.406", std="0.229, 0.224, 0.225",
                                   resize="crop") == Preprocess((224, 224), 3, (0.485, 0.456, 0.406),
                                                                (0.229, 0.224, 0.225), "crop")
    assert Preprocess.from_options(size="32x48").size == (32, 48)
    for kw, msg in (({"size": "0"}, "size must be"), ({"size": "1x2x3"}, "N or HxW"), ({"channels": "2"}, "1 or 3"),
                    ({"mean": "nan"}, "finite"), ({"std": "0"}, "std values must be > 0"),
                    ({"resize": "zoom"}, "resize must be one of"), ({"size": "99999"}, "size must be")):
        with pytest.raises(DatasetError, match=msg):
            Preprocess.from_options(**kw)
    assert preprocess_for_input_shape((1, 3, 224, 224)) == Preprocess(size=(224, 224), channels=3)
    assert preprocess_for_input_shape(("N", 1, "H", "W")) == Preprocess(channels=1)
    assert preprocess_for_input_shape((1, 10)) == Preprocess() and preprocess_for_input_shape(None) == Preprocess()

    model = tmp_path / "net.onnx"
    model.write_bytes(b"not read here")
    assert sidecar_path(model) == tmp_path / "net.deeproom.json" and read_sidecar(model) is None
    sidecar_path(model).write_text(json.dumps({"size": [16, 16], "mean": [0.5], "std": [0.5],
                                               "classes": ["cat", "dog"]}))
    side = read_sidecar(model)
    assert side is not None and side.classes == ("cat", "dog") and side.preprocess.size == (16, 16)
    # precedence: options over sidecar over input shape
    pre, got = resolve_preprocess(model, (1, 3, 224, 224), Preprocess(size=(32, 32)))
    assert got == side and pre == Preprocess(size=(32, 32), channels=3, mean=(0.5,), std=(0.5,))
    pre, _ = resolve_preprocess(model, (1, 3, 224, 224))
    assert pre.size == (16, 16) and pre.channels == 3 and pre.resize_mode == "stretch"
    # the sidecar's class names name unnamed data
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 0, 1]))
    ds = load_user_data(tmp_path / "d.npz", pre, classes=side.classes)
    assert ds.classes == ("cat", "dog") and ds.x.shape == (4, 3, 16, 16)

    for text, msg in (("[1, 2]", "must be a JSON object"), ('{"size": NaN}', "NaN is not allowed"),
                      ('{"colour": 1}', "unknown key"), ('{"channels": true}', "must be a number"),
                      ('{"size": "big"}', "must be a number"), ('{"std": [1, -1]}', "> 0"),
                      ('{"classes": [1, 2]}', r"classes\[0\]"), ('{"mean": [1,2,3,4,5,6]}', "at most 4"),
                      ("{", "not valid JSON"), ('{"classes": ["a\\u0000b"]}', "printable")):
        with pytest.raises(DatasetError, match=msg):
            parse_sidecar(text, "net.deeproom.json")
    sidecar_path(model).write_bytes(b" " * (300 * 1024))
    with pytest.raises(DatasetError, match="larger than"):
        read_sidecar(model)


def test_npz_and_idx_preprocessed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (10, 28, 28), dtype=np.uint8)
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array(["zero", "one", "two"]))
    ds = load_user_data(tmp_path / "d.npz", Preprocess(size=(14, 14), channels=3))
    assert ds.x.shape == (10, 3, 14, 14) and ds.classes == ("zero", "one", "two")
    assert abs(float(ds.x[0].mean()) - x[0].mean() / 255) < 0.01  # antialiased shrink keeps the mean
    img = _idx(8, (10, 28, 28), x.tobytes())
    lab = _idx(8, (10,), y.astype(np.uint8).tobytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(img))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(lab)
    ds = load_user_data(tmp_path / "t10k-images-idx3-ubyte.gz")  # labels found beside it
    assert ds.x.shape == (10, 1, 28, 28) and ds.y.tolist() == y.tolist()
    assert torch.equal((ds.x[3, 0] * 255).round().to(torch.uint8), torch.from_numpy(x[3]))


def test_thumbnails_for_the_strip() -> None:
    ds = load_digits()
    t = thumbnails(ds, 5, 32)
    assert t.shape == (5, 32, 32) and t.dtype == np.uint8
    # 8×8 → 32×32 with crisp pixels: each source pixel a 4×4 block
    src = (ds.x[0, 0].numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(t[0], np.kron(src, np.ones((4, 4), np.uint8)))
    assert np.array_equal(thumbnails(ds, size=8, indices=[7, 3]), (ds.x[[7, 3], 0].numpy() * 255 + 0.5).astype(np.uint8))
    assert thumbnails(ds, 3, 16, start=len(ds) - 2).shape == (2, 16, 16)
    with pytest.raises(DatasetError, match="indices must be in"):
        thumbnails(ds, indices=[len(ds)])
    g = torch.Generator().manual_seed(0)
    wide = Preprocess(mean=(0.5,), std=(0.5,))
    from deeproom.models.datasets import ImageDataset

    raw = torch.rand(3, 3, 10, 20, generator=g)
    norm = ImageDataset(wide.normalize(raw.clone()), torch.zeros(3, dtype=torch.long), ("a",),
                        mean=(0.5,) * 3, std=(0.5,) * 3)
    th = thumbnails(norm, None, 10)
    assert th.shape == (3, 10, 10, 3)
    assert (th[:, :2] == 0).all() and (th[:, 8:] == 0).all()  # 20×10 fits as 10×5: bars top and bottom
    expect = torch.nn.functional.interpolate(raw, size=(5, 10), mode="area")
    got = torch.from_numpy(th[:, 2:7]).permute(0, 3, 1, 2).float() / 255
    assert (got - expect).abs().max() < 1 / 255 + 1e-6


def test_hostile_folder_bomb_and_links(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    _bomb_png(root / "cat" / "bomb.png")
    outside = _save(tmp_path / "secret" / "private.png", np.zeros((8, 8, 3), np.uint8))
    os.symlink(outside, root / "dog" / "link.png")
    os.symlink(outside.parent, root / "escape")
    t0 = time.perf_counter()
    ds = load_user_data(root)
    assert time.perf_counter() - t0 < 30  # the bomb's 10¹⁰ pixels were never decoded
    assert len(ds) == 6 and dict(ds.skipped) == {"too large": 1, "outside the folder": 2}
    assert ds.classes == ("cat", "dog") and all("secret" not in f for f in ds.files)
    with pytest.raises(DatasetError, match="more than 5 files"):
        load_user_data(root, limits=DataLimits(max_files=5))
    with pytest.raises(DatasetError, match="total more than"):
        load_user_data(root, limits=DataLimits(max_total_bytes=200))
    with pytest.raises(DatasetError, match="GiB as float32"):
        load_user_data(root, Preprocess(size=(4096, 4096)), limits=DataLimits(max_tensor_bytes=1 << 20))


def test_hostile_npz_and_idx(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 2), y=np.zeros(2))
    with pytest.raises(DatasetError, match="not objects"):
        load_user_data(tmp_path / "obj.npz")
    np.savez_compressed(tmp_path / "zip.npz", x=np.zeros((200, 100, 100), np.uint8), y=np.zeros(200, np.int64))
    assert (tmp_path / "zip.npz").stat().st_size < 100_000
    with pytest.raises(DatasetError, match="uncompressed"):
        load_user_data(tmp_path / "zip.npz", limits=DataLimits(max_total_bytes=1_000_000))
    # a header claiming 4 × 4,294,967,295² bytes, and a few bytes behind it: refused before allocating
    (tmp_path / "huge-images-idx3-ubyte").write_bytes(_idx(0x0D, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), b"\0" * 16))
    with pytest.raises(DatasetError, match="at most"):
        load_user_data(tmp_path / "huge-images-idx3-ubyte")
    (tmp_path / "wide-images-idx3-ubyte").write_bytes(_idx(8, (1, 30000, 30000), b"\0" * 16))
    with pytest.raises(DatasetError, match="the file is smaller"):
        load_user_data(tmp_path / "wide-images-idx3-ubyte")
    (tmp_path / "gz-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(8, (1, 30000, 30000), b"\0" * 16)))
    with pytest.raises(DatasetError, match="bytes follow"):
        load_user_data(tmp_path / "gz-images-idx3-ubyte.gz")
    (tmp_path / "bad-idx3-ubyte").write_bytes(b"\x00\x00\x07\x09" + b"\0" * 40)
    with pytest.raises(DatasetError, match="not allowed"):
        load_user_data(tmp_path / "bad-idx3-ubyte")
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        load_user_data(_save(tmp_path / "one.png", np.zeros((2, 2), np.uint8)))
