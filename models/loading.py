"""Load any model the engine understands into one shape: a torch module plus facts.

Accepted: ONNX files (run by our torch executor), torch modules passed in from
Python, TorchScript archives, `torch.export` programs (`.pt2`), and checkpoints
(state dicts, also nested under "state_dict"/"model") read with
`torch.load(..., weights_only=True)` and put into a named architecture. The kind is
decided from the bytes, not the file name. Opening a file never runs code from it:
before torch or onnx reads anything, `safe_archive` checks zip archives (member count,
declared and total sizes against decompression bombs, path tricks, duplicate names),
every pickle torch would unpickle (weights-only opcodes and globals, else refused),
the program of a `.pt2` (no guard code, symbolic expressions that are only
arithmetic, graph targets that are torch operators) and TorchScript source (no
operators that touch files); `safe_onnx` keeps external weights inside the model's
folder and refuses tensors that declare more data than they hold. Anything else —
truncated or random bytes, a pickle that would run code to load — is refused with a
`ModelLoadError` (`UnsafeModelError` for code) that says what the file looked like
and what is allowed.
"""
from __future__ import annotations

import hashlib
import io
import math
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeproom.models.errors import EngineError, LayerNotFoundError, ModelLoadError, UnsafeModelError

MAX_MODEL_BYTES = 4 << 30
MAX_EXAMPLE_ELEMENTS = 1 << 26
"""Elements of an example input built from a shape the file declares (256 MB of float32)."""
KINDS = ("onnx", "torch", "torchscript", "export", "checkpoint")


@dataclass
class LoadedModel:
    """A model ready for the analyses."""

    module: nn.Module
    """The runnable torch module (an `OnnxModel` for ONNX files)."""
    kind: str
    """One of KINDS: where it came from."""
    name: str
    """A short name for titles (the file stem or the class name)."""
    digest: str
    """sha256 identifying the weights and structure; the cache key's model part."""
    input_shape: tuple[int, ...] | None = None
    """An example input shape with batch 1, when it is known."""
    source: str | None = None
    """The file it was read from, if any."""
    onnx_proto: Any = None
    """The parsed ONNX model, for graph extraction."""
    extra: dict[str, Any] = field(default_factory=dict)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        if self.input_shape is None:
            raise ModelLoadError(f"model {self.name!r}: input shape unknown; pass input_shape=(1, C, H, W)")
        numel = batch * math.prod(self.input_shape[1:])
        if numel > MAX_EXAMPLE_ELEMENTS:
            # the shape may come from the file: it must not decide how much memory we take
            raise ModelLoadError(f"model {self.name!r}: an example input of shape {[batch, *self.input_shape[1:]]} "
                                 f"has {numel} elements; at most {MAX_EXAMPLE_ELEMENTS} (pass a smaller input_shape)")
        return torch.zeros((batch, *self.input_shape[1:]))


def module_digest(module: nn.Module) -> str:
    """sha256 over the class name, every parameter and buffer (name, shape, dtype, bytes)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in module.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        tt = t.detach().cpu().contiguous()
        if tt.dtype == torch.bfloat16:
            tt = tt.to(torch.float32)
        h.update(tt.numpy().tobytes() if tt.numel() else b"")
    return h.hexdigest()


def _guess_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    from deeproom.models.zoo import DigitsCNN, TinyResNet, TinyViT

    if isinstance(module, DigitsCNN | TinyResNet):
        first = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
        return (1, first.in_channels, 8, 8)
    if isinstance(module, TinyViT):
        return (1, module.patch_embed.in_channels, module.grid * module.patch_embed.stride[0],
                module.grid * module.patch_embed.stride[0])
    return None


def load_model(
    source: str | Path | bytes | nn.Module,
    *,
    architecture: str | type[nn.Module] | Callable[[], nn.Module] | None = None,
    input_shape: tuple[int, ...] | None = None,
    name: str | None = None,
) -> LoadedModel:
    """Load `source` (a path, raw bytes, or a torch module) into a `LoadedModel`.

    `architecture` is needed only for checkpoints that hold weights alone: a name from
    `deeproom.models.zoo.ZOO`, a module class, or a factory; without it the built-in
    architectures are tried in turn.
    """
    if isinstance(source, nn.Module):
        source.eval()
        return LoadedModel(
            source, "torch", name or type(source).__name__, module_digest(source),
            input_shape or _guess_input_shape(source),
        )
    data, where = _read(source)
    stem = name or (Path(where).stem if not isinstance(source, bytes) else "model")
    try:
        if data[:4] == b"PK\x03\x04":
            return _load_zip(data, where, stem, architecture, input_shape)
        if data[:1] == b"\x80" and len(data) > 2 and data[1] in range(2, 6):
            # a legacy (non-zip) torch.save file: still read with weights_only
            return _from_checkpoint(_torch_load(data, where), where, stem, architecture, input_shape)
        return _load_onnx(data, where, stem, input_shape)
    except EngineError:
        raise
    except Exception as exc:
        # whatever a damaged file makes a reader raise is a refusal with a reason, never a traceback
        raise ModelLoadError(f"{where}: could not be read as a model ({type(exc).__name__}: {_one_line(exc)})") from None


def _read(source: str | Path | bytes) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, "<bytes>"
    p = Path(source)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such model file")
    size = p.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise ModelLoadError(f"{p}: {size} bytes; models larger than {MAX_MODEL_BYTES} bytes are refused")
    if size == 0:
        raise ModelLoadError(f"{p}: the file is empty (allowed: ONNX, TorchScript, torch.export .pt2, state dict)")
    return p.read_bytes(), str(p)


def _load_onnx(data: bytes, where: str, stem: str, input_shape: tuple[int, ...] | None) -> LoadedModel:
    from deeproom.models.onnx_exec import OnnxModel
    from deeproom.models.safe_onnx import read_onnx

    # external weights (.onnx.data) are looked for beside the file, and only there
    base = None if where == "<bytes>" else Path(where).resolve().parent
    try:
        proto = read_onnx(data, where, base)
    except ModelLoadError as exc:
        if "not a readable ONNX model" not in str(exc):
            raise
        raise ModelLoadError(
            f"{where}: not a model file DeepRoom can read — not a zip archive (TorchScript, .pt2, "
            f"torch.save) and not ONNX ({exc})"
        ) from None
    try:
        module = OnnxModel(proto)
    except ModelLoadError as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except Exception as exc:  # a malformed graph must not surface as a traceback
        raise ModelLoadError(f"{where}: the ONNX graph cannot be built ({type(exc).__name__}: "
                             f"{_one_line(exc)})") from None
    module.eval()
    shape = input_shape or _onnx_input_shape(proto)
    return LoadedModel(module, "onnx", stem, hashlib.sha256(data).hexdigest(), shape, where, proto)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _onnx_input_shape(proto: Any) -> tuple[int, ...] | None:
    inits = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            return None
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
        return tuple(dims)
    return None


def _torch_load(data: bytes, where: str) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "Unsupported global" in ln or "GLOBAL" in ln), first[0] if first else "")
        raise UnsafeModelError(
            f"{where}: refused — this checkpoint is a pickle that would run code to load "
            f"({detail.strip()[:200]}). Allowed: a state dict saved with torch.save(model.state_dict()), "
            "TorchScript, torch.export (.pt2) or ONNX"
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{where}: unreadable torch file ({type(exc).__name__}: {str(exc)[:200]})") from None


def _load_zip(data: bytes, where: str, stem: str, architecture: Any, input_shape: tuple[int, ...] | None) -> LoadedModel:
    from deeproom.models import safe_archive

    # every reader below trusts its archive; the checks come first and decompress nothing
    index = safe_archive.index_zip(data, where)
    names = set(index.members)
    digest = hashlib.sha256(data).hexdigest()
    is_script = "constants.pkl" in names and any(n.startswith("code/") for n in names)
    if not is_script and names & {"serialized_exported_program.json", "serialized_state_dict.pt"}:
        raise UnsafeModelError(f"{where}: a torch.export archive in the pre-2.5 format, whose parts are read as "
                               "pickles that may run code; refused — re-save it with torch.export.save")
    if not is_script and names & {"archive_format", "archive_version", "models/model.json"}:
        if not index.prefix:
            raise ModelLoadError(f"{where}: a torch.export archive without its top-level folder; refused")
        safe_archive.check_pt2(index, where)
        try:
            ep = torch.export.load(io.BytesIO(data))
        except Exception as exc:
            raise ModelLoadError(f"{where}: unreadable torch.export program ({type(exc).__name__}: "
                                 f"{_one_line(exc)})") from None
        safe_archive.check_export_graph(ep, where)
        try:
            module = ep.module()
        except Exception as exc:
            raise ModelLoadError(f"{where}: the torch.export program cannot be run ({type(exc).__name__}: "
                                 f"{_one_line(exc)})") from None
        shape = input_shape
        if shape is None:
            user_inputs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
            for node in ep.graph.nodes:
                if node.op == "placeholder" and user_inputs and node.name == user_inputs[0].arg.name:
                    val = node.meta.get("val")
                    if isinstance(val, torch.Tensor):
                        try:
                            shape = (1, *(int(d) for d in val.shape[1:]))
                        except (TypeError, ValueError, RuntimeError):  # a symbolic dimension
                            shape = None
        return LoadedModel(module, "export", stem, digest, shape, where, extra={"exported_program": ep})
    if is_script:
        if not index.prefix:
            raise ModelLoadError(f"{where}: a TorchScript archive without its top-level folder; refused")
        safe_archive.check_script_pickles(index, where)
        safe_archive.check_script_code(index, where)
        try:
            jm = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(f"{where}: unreadable TorchScript archive ({type(exc).__name__}: "
                                 f"{_one_line(exc)})") from None
        safe_archive.check_script_graphs(jm, where)
        jm.eval()
        return LoadedModel(jm, "torchscript", stem, digest, input_shape, where)
    if "data.pkl" in names:
        return _from_checkpoint(_torch_load(data, where), where, stem, architecture, input_shape, digest)
    raise ModelLoadError(f"{where}: a zip archive but not a torch file (found {sorted(names)[:5]})")


def state_dict_of(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: the dict itself, or its "state_dict"/"model"/"model_state_dict"."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return {str(k): v for k, v in inner.items()}
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ModelLoadError(f"{where}: holds no tensors (a {type(obj).__name__}); expected a state dict")


def _from_checkpoint(obj: Any, where: str, stem: str, architecture: Any, input_shape: tuple[int, ...] | None,
                     digest: str | None = None) -> LoadedModel:
    from deeproom.models.zoo import ZOO

    sd = state_dict_of(obj, where)
    candidates: list[tuple[str, Callable[[], nn.Module]]]
    if architecture is None:
        candidates = list(ZOO.items())
    elif isinstance(architecture, str):
        if architecture not in ZOO:
            raise ModelLoadError(f"unknown architecture {architecture!r}; built in: {', '.join(ZOO)}")
        candidates = [(architecture, ZOO[architecture])]
    else:
        candidates = [(getattr(architecture, "__name__", "architecture"), architecture)]
    errors = []
    for arch_name, factory in candidates:
        module = factory()
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            errors.append(f"{arch_name}: {str(exc).splitlines()[0][:160]}")
            continue
        module.eval()
        return LoadedModel(module, "checkpoint", stem, module_digest(module),
                           input_shape or _guess_input_shape(module), where, extra={"architecture": arch_name})
    hint = "; ".join(errors[:3])
    raise ModelLoadError(
        f"{where}: a checkpoint of {len(sd)} tensors that fits no "
        + ("built-in architecture" if architecture is None else f"architecture {candidates[0][0]}")
        + f" ({hint}). Pass architecture= (a zoo name: {', '.join(ZOO)}, or your module class)"
    )


# --- layers ---------------------------------------------------------------------------------


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The submodule called `layer` (a module path like "layer1.0.conv2", or an ONNX node name)."""
    if isinstance(layer, nn.Module):
        return layer
    from deeproom.models.onnx_exec import OnnxModel

    if isinstance(model, OnnxModel):
        return model.node(layer)
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = [n for n in names if layer.lower() in n.lower() or n.lower() in layer.lower()][:5]
        hint = f"similar: {close}" if close else f"layers: {names[:8]}{' …' if len(names) > 8 else ''}"
        raise LayerNotFoundError(f"model has no layer named {layer!r}; {hint}") from None


def layer_names(model: nn.Module, *, leaves_only: bool = True) -> list[str]:
    """Every layer name an analysis accepts, in definition (or execution) order."""
    from deeproom.models.onnx_exec import OnnxModel

    if isinstance(model, OnnxModel):
        return model.layer_names()
    out = []
    for name, m in model.named_modules():
        if not name:
            continue
        if leaves_only and any(True for _ in m.children()):
            continue
        out.append(name)
    return out


@dataclass(frozen=True)
class LayerInfo:
    """One row of `deeproom inspect`."""

    name: str
    type: str
    params: int
    output_shape: tuple[int, ...] | None


def describe_layers(loaded: LoadedModel) -> list[LayerInfo]:
    """Each leaf layer (or ONNX node) with its type, own parameter count and output shape."""
    from deeproom.models.onnx_exec import OnnxModel

    model = loaded.module
    rows: list[tuple[str, nn.Module, str, int]] = []
    if isinstance(model, OnnxModel):
        for name in model.layer_names():
            node = model.node(name)
            params = sum(model.weight_size(i) for i in node.input_names if i)
            rows.append((name, node, node.op_type, params))
    else:
        # by name from one walk: get_submodule is not supported on TorchScript modules
        modules = dict(model.named_modules())
        for name in layer_names(model):
            m = modules[name]
            kind = m.original_name if isinstance(m, torch.jit.ScriptModule) else type(m).__name__
            rows.append((name, m, kind, sum(p.numel() for p in m.parameters(recurse=False))))
    shapes: dict[str, tuple[int, ...]] = {}
    if loaded.input_shape is not None and not isinstance(model, torch.jit.ScriptModule):
        handles = []
        for name, m, _, _ in rows:
            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                t = out[0] if isinstance(out, tuple | list) else out
                if isinstance(t, torch.Tensor):
                    shapes[name] = tuple(int(d) for d in t.shape)
            handles.append(m.register_forward_hook(hook))
        try:
            with torch.no_grad():
                model(loaded.example_input())
        except Exception as exc:
            loaded.extra["shape_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            for h in handles:
                h.remove()
    return [LayerInfo(n, t, p, shapes.get(n)) for n, _, t, p in rows]


def describe_export_layers(loaded: LoadedModel) -> list[LayerInfo]:
    """The layers of a torch.export program as its graph records them (for `deeproom inspect`):
    the module torch rebuilds calls operators, not its submodules, so `describe_layers` sees
    only the parameter holders. Shapes are those recorded at export."""
    modules = dict(loaded.module.named_modules())
    order: list[str] = []
    kinds: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for node in loaded.extra["exported_program"].graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op != "call_function" or not stack:
            continue
        path, type_name = list(stack.values())[-1]
        if not path:
            continue
        if path not in kinds:
            order.append(path)
            kinds[path] = str(type_name).rsplit(".", 1)[-1]
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            try:
                shapes[path] = tuple(int(d) for d in val.shape)
            except (TypeError, ValueError, RuntimeError):  # a symbolic dimension
                shapes.pop(path, None)
    return [LayerInfo(p, kinds[p], sum(t.numel() for t in modules[p].parameters(recurse=False)) if p in modules
                      else 0, shapes.get(p)) for p in order]
