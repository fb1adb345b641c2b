"""Reads an ONNX file without trusting it: parse, check, and fetch external weights safely.

`onnx.load` would follow an external-data `location` wherever it points, and
`numpy_helper.to_array` reads external data relative to the current directory. Here
the file is parsed without external data; each external reference must name a
regular file inside the model's own folder (no absolute paths, `..`, or links out of
it) with its offset and length inside that file and matching the tensor's declared
size; only then is it read. Tensors whose declared size exceeds what the file (or its
external data) actually holds are refused before anything is allocated. Checker and
parser failures become one-line `ModelLoadError`s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deeproom.models.errors import ModelLoadError

MAX_TENSOR_ELEMENTS = 1 << 31
"""Elements one declared tensor may have."""
MAX_EXTERNAL_BYTES = 4 << 30
"""External data read for one model, all tensors together (the loader's cap on model files)."""

_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}
"""TensorProto.DataType → bytes per element (strings, 8-/4-bit floats omitted: not sized here)."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:240]


def _graphs(graph: Any) -> Iterator[Any]:
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def all_tensors(proto: Any) -> Iterator[Any]:
    """Every TensorProto in the model: initializers, sparse parts, node attributes, in subgraphs
    and in local functions too."""
    graphs = list(_graphs(proto.graph))
    for f in proto.functions:
        for node in f.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.extend(_graphs(attr.g))
                for g in attr.graphs:
                    graphs.extend(_graphs(g))
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
    for g in graphs:
        yield from g.initializer
        for s in g.sparse_initializer:
            yield s.values
            yield s.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices


def _declared_bytes(t: Any, where: str) -> int | None:
    numel = 1
    for d in t.dims:
        if d < 0:
            raise ModelLoadError(f"{where}: tensor {t.name!r} has a negative dimension {list(t.dims)}")
        numel *= int(d)
    if numel > MAX_TENSOR_ELEMENTS:
        raise ModelLoadError(f"{where}: tensor {t.name!r} declares {numel} elements {list(t.dims)}; "
                             f"at most {MAX_TENSOR_ELEMENTS} are allowed")
    item = _ITEM_BYTES.get(t.data_type)
    return None if item is None else numel * item


def _inline_bytes(t: Any) -> int:
    """Bytes of data a tensor carries in the file itself (an upper bound on its elements × 8)."""
    if t.raw_data:
        return len(t.raw_data)
    counted = (len(t.float_data) * 4 + len(t.int32_data) * 4 + len(t.int64_data) * 8 + len(t.double_data) * 8
               + len(t.uint64_data) * 8 + sum(len(s) for s in t.string_data))
    return counted


def _external_file(base: Path, location: str, where: str, name: str) -> Path:
    p = Path(location)
    if (not location or location != location.strip() or "\x00" in location or p.is_absolute()
            or ".." in p.parts or "\\" in location or ":" in location):
        raise ModelLoadError(f"{where}: tensor {name!r} keeps its data at {location!r}; external data must be a "
                             "file beside the model (no absolute paths, no '..'); refused")
    target = base / p
    try:
        resolved = target.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ModelLoadError(f"{where}: tensor {name!r}: external data file {location!r} not found beside the model") from None
    if not resolved.is_relative_to(base.resolve()):
        raise ModelLoadError(f"{where}: tensor {name!r}: external data {location!r} links outside the model's "
                             "folder; refused")
    if not resolved.is_file():
        raise ModelLoadError(f"{where}: tensor {name!r}: external data {location!r} is not a regular file; refused")
    return resolved


def _load_external(t: Any, base: Path | None, where: str, budget: int) -> int:
    from onnx import TensorProto

    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if base is None:
        raise ModelLoadError(f"{where}: tensor {t.name!r} keeps its data in an external file {location!r}; "
                             "open the model from its file so the data beside it can be found")
    path = _external_file(base, location, where, t.name)
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelLoadError(f"{where}: tensor {t.name!r}: external data offset/length are not integers") from None
    size = path.stat().st_size
    declared = _declared_bytes(t, where)
    if length is None:
        length = size - offset if declared is None else declared
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelLoadError(f"{where}: tensor {t.name!r}: external data {location!r} offset {offset} + length "
                             f"{length} exceeds the file's {size} bytes")
    if declared is not None and declared != length:
        raise ModelLoadError(f"{where}: tensor {t.name!r} declares {declared} bytes but its external data holds "
                             f"{length}")
    if length > budget:
        raise ModelLoadError(f"{where}: tensor {t.name!r}: external data beyond {MAX_EXTERNAL_BYTES} bytes in all; "
                             "refused")
    with open(path, "rb") as f:
        f.seek(offset)
        t.raw_data = f.read(length)
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT
    return length


def read_onnx(data: bytes, where: str, base_dir: Path | None) -> Any:
    """Parse, size-check, fetch external data for and check an ONNX model.

    Raises ModelLoadError with "not a readable ONNX model" when the bytes do not parse
    (the caller words that for files that might be of another kind).
    """
    import onnx
    from onnx import TensorProto

    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # DecodeError, RecursionError for absurd nesting, ...
        raise ModelLoadError(f"not a readable ONNX model ({type(exc).__name__}: {_one_line(exc)})") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError("not a readable ONNX model (parsed, but holds no graph: truncated, or another format)")
    try:
        tensors = list(all_tensors(proto))
    except RecursionError:
        raise ModelLoadError(f"{where}: ONNX subgraphs nested too deep; refused") from None
    external = 0
    for t in tensors:
        declared = _declared_bytes(t, where)
        if t.data_location == TensorProto.EXTERNAL:
            external += _load_external(t, base_dir, where, MAX_EXTERNAL_BYTES - external)
            continue
        have = _inline_bytes(t)
        # the data a tensor declares must be present: a short one would fail only after a
        # large allocation
        if declared is not None and declared > have:
            raise ModelLoadError(f"{where}: tensor {t.name!r} declares {list(t.dims)} "
                                 f"({declared} bytes) but the file holds {have} bytes of it; refused")
    # after the external data is in: the checker would otherwise look for it itself, relative
    # to the current directory. Protobuf cannot serialize past 2 GB, so larger models go unchecked.
    if proto.ByteSize() < (2 << 30) - 1:
        try:
            onnx.checker.check_model(proto, full_check=False)
        except Exception as exc:
            raise ModelLoadError(f"{where}: invalid ONNX model: {_one_line(exc)}") from None
    return proto
