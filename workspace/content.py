"""The content blob format: JSON metadata plus named numpy arrays, in one compact byte string.

What a panel shows travels as one of these blobs, addressed by the sha256 of its
bytes. The engine (torch) writes them; scenes read them with numpy alone. Layout:

    b"DRB1" | u32 little-endian header length | header (UTF-8 JSON) | array bytes

The header is {"meta": {...}, "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}]}.
Only a few plain dtypes are allowed, and every size is checked before anything is
read, so a hostile blob can at worst be refused.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from deeproom.errors import ValidationError
from deeproom.state import brief, check_json, check_text

MAGIC = b"DRB1"
MAX_HEADER = 8 * 1024 * 1024
MAX_ARRAYS = 64
MAX_DIMS = 6
MAX_META_NODES = 4_000_000
"""Most values in a blob's meta (about what the 8 MiB header cap allows)."""
MAX_ARRAY_NAME = 128
_MAX_DIM = 2**48  # bounds every shape entry, offset and size before any arithmetic
DTYPES = ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "bool")


def encode_content(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """Pack metadata and arrays into a content blob. Arrays keep dtype and shape."""
    arrays = arrays or {}
    check_json(meta, "content meta", max_nodes=MAX_META_NODES)  # what decode_content would refuse
    if len(arrays) > MAX_ARRAYS:
        raise ValidationError(f"a content blob holds at most {MAX_ARRAYS} arrays; got {len(arrays)}")
    descr = []
    chunks = []
    offset = 0
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.name not in DTYPES:
            raise ValidationError(f"array {name!r}: dtype {a.dtype.name} not allowed; allowed: {', '.join(DTYPES)}")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        descr.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape), "offset": offset, "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    try:
        header = json.dumps({"meta": dict(meta), "arrays": descr}, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"content metadata must be plain JSON without NaN: {exc}") from None
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"NaN and Infinity are not allowed (found {name})")


def decode_content(blob: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Unpack a content blob into (meta, arrays); raises ValidationError on anything malformed."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise ValidationError("not a DeepRoom content blob (bad magic)")
    (hlen,) = struct.unpack("<I", blob[4:8])
    if hlen > MAX_HEADER or 8 + hlen > len(blob):
        raise ValidationError(f"content blob header of {hlen} bytes does not fit a blob of {len(blob)} bytes")
    try:
        header = json.loads(blob[8 : 8 + hlen], parse_constant=_no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"content blob header is not JSON: {exc}") from None
    except RecursionError:
        raise ValidationError("content blob header is nested too deep") from None
    except ValueError as exc:  # NaN, Infinity, a number of more than 4300 digits
        raise ValidationError(f"content blob header: {str(exc)[:200]}") from None
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict) or not isinstance(header.get("arrays"), list):
        raise ValidationError("content blob header must hold 'meta' (object) and 'arrays' (list)")
    check_json(header["meta"], "content blob meta", max_nodes=MAX_META_NODES)
    body = memoryview(blob)[8 + hlen :]
    arrays: dict[str, np.ndarray] = {}
    if len(header["arrays"]) > MAX_ARRAYS:
        raise ValidationError(f"content blob lists more than {MAX_ARRAYS} arrays")
    for d in header["arrays"]:
        try:
            name, dtype, shape, off, nbytes = d["name"], d["dtype"], d["shape"], d["offset"], d["nbytes"]
        except (KeyError, TypeError):
            raise ValidationError("content blob array entries need name, dtype, shape, offset, nbytes") from None
        if not isinstance(name, str) or not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValidationError(f"content blob array {brief(name, 40)}: dtype {brief(dtype, 20)} not allowed")
        check_text(name, "content blob array name", MAX_ARRAY_NAME)
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= _MAX_DIM for s in shape)
        ):
            raise ValidationError(f"content blob array {name!r}: bad shape {brief(shape, 60)}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_DIM for v in (off, nbytes)):
            raise ValidationError(f"content blob array {name!r}: bad offset or size")
        dt = np.dtype(dtype).newbyteorder("<")
        if math.prod(shape) * dt.itemsize != nbytes or off + nbytes > len(body):
            raise ValidationError(f"content blob array {name!r}: shape {shape} does not match its {nbytes} bytes")
        arrays[name] = np.frombuffer(body[off : off + nbytes], dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
    return header["meta"], arrays
