"""Run an ONNX model as a torch module: weights become parameters, every node a submodule.

`OnnxModel(model_proto)` reads the graph with `onnx`, checks that every operator is
one `deeproom.models.onnx_ops` implements (naming any that is not), turns each
floating-point initializer into an `nn.Parameter` (so gradients reach the weights,
and Grad-CAM and feature visualization work on ONNX files), and wraps each node in
an `OnnxNode` submodule. A node's forward hooks see its inputs and outputs, so any
intermediate tensor is reachable by the node's name: `model.layer("/conv1/Conv")`.

`OnnxBackend` exposes the same executor as an `onnx.backend.base.Backend`, which is
what the ONNX project's own backend conformance tests drive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deeproom.models.errors import LayerNotFoundError, ModelLoadError, UnsupportedOperatorError
from deeproom.models.onnx_ops import OPS, NodeInfo, torch_dtype

DEFAULT_DOMAINS = ("", "ai.onnx")


def _key(name: str, taken: set[str]) -> str:
    """A ModuleDict key for a node name: no dots, not empty, unique."""
    k = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or "node"
    if k[0].isdigit():
        k = "n_" + k
    base, i = k, 1
    while k in taken:
        i += 1
        k = f"{base}_{i}"
    taken.add(k)
    return k


def _attr_value(attr: Any) -> Any:
    import onnx
    from onnx import numpy_helper

    v = onnx.helper.get_attribute_value(attr)
    if isinstance(v, onnx.TensorProto):
        return _tensor_from_proto(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode("utf-8", "replace") for s in v]
    if isinstance(v, onnx.GraphProto):
        raise UnsupportedOperatorError(
            f"attribute {attr.name!r} holds a subgraph; control flow (If/Loop/Scan) is not supported"
        )
    del numpy_helper
    return v


def _tensor_from_proto(t: Any) -> torch.Tensor:
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t)
    if arr.dtype.kind in "OSU":
        raise UnsupportedOperatorError(f"tensor {t.name!r} holds strings; only numeric tensors are supported")
    if arr.dtype.kind == "V" or arr.dtype.name not in _NUMPY_OK:
        raise UnsupportedOperatorError(f"tensor {t.name!r} has type {arr.dtype}; only numeric and bool tensors are supported")
    return torch.from_numpy(np.array(arr, copy=True))


_NUMPY_OK = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
             "uint32", "uint64", "bool"}


class OnnxNode(nn.Module):
    """One ONNX node; forward hooks on it see the node's inputs and outputs."""

    needs_env = False

    def __init__(self, info: NodeInfo, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        super().__init__()
        self.info = info
        self.input_names = list(inputs)
        self.output_names = list(outputs)

    @property
    def op_type(self) -> str:
        return self.info.op_type

    def forward(self, *inputs: torch.Tensor | None) -> Any:
        fn = OPS[self.info.op_type]
        # trailing missing optional inputs are dropped so defaults apply
        args = list(inputs)
        while args and args[-1] is None:
            args.pop()
        return fn(self.info, *args)

    def extra_repr(self) -> str:
        return f"{self.info.op_type}, name={self.info.name!r}"


class OnnxIf(OnnxNode):
    """ONNX If: runs the then- or else-subgraph, which may read any tensor of the outer graph."""

    needs_env = True

    def __init__(self, info: NodeInfo, inputs: Sequence[str], outputs: Sequence[str],
                 then_branch: OnnxModel, else_branch: OnnxModel) -> None:
        super().__init__(info, inputs, outputs)
        self.then_branch = then_branch
        self.else_branch = else_branch

    def outer_reads(self) -> set[str]:
        """Names the branches read but do not make: tensors of the enclosing graph."""
        names: set[str] = set()
        for branch in (self.then_branch, self.else_branch):
            made = {o for m in branch._seq for o in m.output_names}
            for m in branch._seq:
                reads = [*m.input_names, *(m.outer_reads() if isinstance(m, OnnxIf) else ())]
                names |= {i for i in reads if i and i not in made and not branch.has_tensor(i)}
            names |= {o for o in branch.output_names if o not in made and not branch.has_tensor(o)}
        return names

    def forward(self, cond: torch.Tensor, env: dict[str, Any] | None = None) -> Any:  # type: ignore[override]
        branch = self.then_branch if bool(cond.reshape(-1)[0]) else self.else_branch
        outs = branch.run_all({}, outer=env or {})
        return outs[0] if len(outs) == 1 else tuple(outs)


class OnnxModel(nn.Module):
    """An ONNX graph executed with torch operators; float initializers are parameters."""

    def __init__(self, proto: Any, *, check_ops: bool = True, subgraph: bool = False) -> None:
        super().__init__()
        import onnx

        graph = proto.graph
        opset = None
        for imp in proto.opset_import:
            if imp.domain in DEFAULT_DOMAINS:
                opset = imp.version
        if opset is None:
            opset = 1 if not proto.opset_import else 21
        self.opset = int(opset)
        self.graph_name = graph.name
        if check_ops:
            problems = unsupported_ops(proto)
            if problems:
                raise UnsupportedOperatorError(
                    "ONNX model uses operators the executor does not support: " + ", ".join(problems)
                    + f" (supported: {len(OPS)} operators of the default domain; see deeproom.models.onnx_ops)"
                )
        self.weights = nn.ParameterDict()
        self._constants: dict[str, str] = {}  # tensor name → buffer name
        self._params: dict[str, str] = {}  # tensor name → ParameterDict key
        taken: set[str] = set()
        init_names = set()
        for t in graph.initializer:
            init_names.add(t.name)
            try:
                value = _tensor_from_proto(t)
            except UnsupportedOperatorError:
                raise
            except Exception as exc:
                raise ModelLoadError(f"ONNX initializer {t.name!r} is unreadable: {exc}") from None
            k = _key(t.name, taken)
            if value.dtype.is_floating_point:
                self.weights[k] = nn.Parameter(value)
                self._params[t.name] = k
            else:
                self.register_buffer("c_" + k, value, persistent=True)
                self._constants[t.name] = "c_" + k
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]
        self.nodes = nn.ModuleDict()
        self._order: list[str] = []
        self._seq: list[OnnxNode] = []  # the same modules, typed, in execution order
        self._device: torch.device | None = None
        self.node_keys: dict[str, str] = {}  # ONNX node name → ModuleDict key
        node_taken: set[str] = set()
        for i, n in enumerate(graph.node):
            name = n.name or f"{n.op_type}_{i}"
            k = _key(name, node_taken)
            if n.op_type == "If" and n.domain in DEFAULT_DOMAINS:
                branches = {a.name: a.g for a in n.attribute if a.name in ("then_branch", "else_branch")}
                subs = [OnnxModel(onnx.helper.make_model(branches[b], opset_imports=list(proto.opset_import)),
                                  check_ops=False, subgraph=True) for b in ("then_branch", "else_branch")]
                info = NodeInfo(n.op_type, name, {}, self.opset, len(n.output))
                mod: OnnxNode = OnnxIf(info, list(n.input), list(n.output), subs[0], subs[1])
                self.nodes[k] = mod
                self._order.append(k)
                self._seq.append(mod)
                self.node_keys[name] = k
                continue
            try:
                attrs = {a.name: _attr_value(a) for a in n.attribute}
            except UnsupportedOperatorError as exc:
                raise UnsupportedOperatorError(f"ONNX node {name!r} ({n.op_type}): {exc}") from None
            info = NodeInfo(n.op_type, name, attrs, self.opset, len(n.output))
            mod = OnnxNode(info, list(n.input), list(n.output))
            self.nodes[k] = mod
            self._order.append(k)
            self._seq.append(mod)
            self.node_keys[name] = k
        # free each intermediate after its last reader, so deep graphs keep memory flat
        last_use: dict[str, int] = {}
        for idx, mod in enumerate(self._seq):
            for name in [*mod.input_names, *(mod.outer_reads() if isinstance(mod, OnnxIf) else ())]:
                last_use[name] = idx
        keep = set(self.output_names)
        if subgraph:  # a branch reads the outer scope; never free what it did not make
            keep |= set(last_use)
        self._free_after: list[list[str]] = [[] for _ in self._order]
        for name, idx in last_use.items():
            if name not in keep and name not in self._params and name not in self._constants:
                self._free_after[idx].append(name)
        self.producer: dict[str, str] = {}
        for k, mod in zip(self._order, self._seq, strict=True):
            for o in mod.output_names:
                if o:
                    self.producer[o] = k
        del onnx

    # --- names ------------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        """ONNX node names, in execution order."""
        return [m.info.name for m in self._seq]

    def node(self, name: str) -> OnnxNode:
        """The submodule of a node, by ONNX node name, module key, or an output tensor name."""
        k = self.node_keys.get(name) or (name if name in self.nodes else None) or self.producer.get(name)
        if k is None and name.startswith("nodes."):
            k = name[len("nodes."):] if name[len("nodes."):] in self.nodes else None
        if k is None:
            close = [n for n in self.node_keys if name.lower() in n.lower()][:5]
            hint = f"; similar: {close}" if close else f"; {len(self.node_keys)} nodes, e.g. {list(self.node_keys)[:5]}"
            raise LayerNotFoundError(f"ONNX model has no node or tensor named {name!r}{hint}")
        return self.nodes[k]  # type: ignore[return-value]

    def tensor(self, name: str) -> torch.Tensor:
        """An initializer (parameter or constant) by its ONNX tensor name."""
        if name in self._params:
            return self.weights[self._params[name]]
        if name in self._constants:
            return getattr(self, self._constants[name])  # type: ignore[no-any-return]
        raise LayerNotFoundError(f"ONNX model has no initializer named {name!r}")

    def has_tensor(self, name: str) -> bool:
        return name in self._params or name in self._constants

    def weight_size(self, name: str) -> int:
        """Elements of the initializer behind `name`, looking through Identity nodes (shared weights)."""
        seen = 0
        while not self.has_tensor(name) and seen < 8:
            k = self.producer.get(name)
            node = self.nodes[k] if k is not None else None
            if not isinstance(node, OnnxNode) or node.op_type != "Identity" or not node.input_names:
                return 0
            name = node.input_names[0]
            seen += 1
        return int(self.tensor(name).numel()) if self.has_tensor(name) else 0

    # --- running ------------------------------------------------------------------------------

    def forward(self, *inputs: torch.Tensor) -> Any:
        outs = self.run_all(inputs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run_all(self, inputs: Sequence[torch.Tensor] | dict[str, torch.Tensor],
                outer: dict[str, Any] | None = None) -> list[torch.Tensor]:
        env: dict[str, Any] = dict(outer) if outer else {}
        if isinstance(inputs, dict):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise ModelLoadError(f"ONNX model needs inputs {missing}; got {sorted(inputs)}")
            env.update(inputs)
        else:
            if len(inputs) != len(self.input_names):
                raise ModelLoadError(
                    f"ONNX model takes {len(self.input_names)} inputs {self.input_names}; got {len(inputs)}"
                )
            env.update(zip(self.input_names, inputs, strict=True))
        first = next((v for v in env.values() if isinstance(v, torch.Tensor)), None)
        device = first.device if first is not None else None
        if device != self._device:  # constants and ranges are made where the inputs live
            self._device = device
            for mod in self._seq:
                mod.info.device = device
        for tname, k in self._params.items():
            env.setdefault(tname, self.weights[k])
        for tname, b in self._constants.items():
            env.setdefault(tname, getattr(self, b))
        for idx, mod in enumerate(self._seq):
            args = [env[name] if name else None for name in mod.input_names]
            out = mod(*args, env=env) if mod.needs_env else mod(*args)
            names = mod.output_names
            if isinstance(out, tuple):
                for name, v in zip(names, out, strict=False):
                    if name:
                        env[name] = v
            else:
                env[names[0]] = out
            for name in self._free_after[idx]:
                env.pop(name, None)
        return [env[n] for n in self.output_names]


def unsupported_ops(proto: Any) -> list[str]:
    """Operators (with domain and opset) the executor cannot run, each named once."""
    bad: dict[str, None] = {}
    opsets = {imp.domain: imp.version for imp in proto.opset_import}
    for n in _all_nodes(proto.graph):
        if n.domain not in DEFAULT_DOMAINS:
            bad[f"{n.domain}.{n.op_type} (domain {n.domain!r}, version {opsets.get(n.domain, '?')})"] = None
        elif n.op_type not in OPS:
            bad[f"{n.op_type} (opset {opsets.get('', opsets.get('ai.onnx', '?'))})"] = None
    return list(bad)


def _all_nodes(graph: Any) -> Iterable[Any]:
    for n in graph.node:
        yield n
        if n.op_type == "If":
            for a in n.attribute:
                if a.type == 5:  # GRAPH
                    yield from _all_nodes(a.g)


def load_onnx_proto(source: str | Path | bytes) -> Any:
    """Read an ONNX model (file or bytes) and check it; ModelLoadError on anything unreadable."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        if isinstance(source, bytes):
            proto = onnx.load_model_from_string(source)
        else:
            proto = onnx.load(str(source))
    except (DecodeError, RuntimeError, ValueError, OSError, UnicodeDecodeError) as exc:
        where = "ONNX bytes" if isinstance(source, bytes) else str(source)
        raise ModelLoadError(f"{where}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not proto.graph.node and not proto.graph.output:
        where = "ONNX bytes" if isinstance(source, bytes) else str(source)
        raise ModelLoadError(f"{where}: parsed as ONNX but holds no graph (truncated, or not an ONNX file)")
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"invalid ONNX model: {msg}") from None
    return proto


# --- the onnx backend interface -------------------------------------------------------------

try:
    from onnx.backend.base import Backend as _Backend
    from onnx.backend.base import BackendRep as _BackendRep
except ImportError:  # pragma: no cover - onnx is a dependency
    _Backend = object  # type: ignore[assignment,misc]
    _BackendRep = object  # type: ignore[assignment,misc]


class OnnxTorchRep(_BackendRep):  # type: ignore[misc]
    """A prepared model: `run(inputs)` returns numpy outputs, as the backend API wants."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feed: Any = {k: _to_torch(v) for k, v in inputs.items()}
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feed = [_to_torch(v) for v in inputs]
        with torch.no_grad():
            outs = self.model.run_all(feed)
        from onnx.backend.base import namedtupledict

        return namedtupledict("Outputs", self.model.output_names)(*[_to_numpy(o) for o in outs])  # type: ignore[no-any-return]


def _to_torch(v: Any) -> torch.Tensor:
    a = np.asarray(v)
    if a.dtype.kind in "OSU":
        raise UnsupportedOperatorError("string tensors are not supported")
    return torch.from_numpy(np.array(a, copy=True))


def _to_numpy(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


class OnnxBackend(_Backend):  # type: ignore[misc]
    """`onnx.backend.base.Backend` over the torch executor (CPU, and CUDA where present)."""

    @classmethod
    def is_compatible(cls, model: Any, device: str = "CPU", **kwargs: Any) -> bool:
        return not unsupported_ops(model)

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> OnnxTorchRep:
        return OnnxTorchRep(OnnxModel(model))

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any) -> Any:
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device in ("CPU", "CUDA") and (device == "CPU" or torch.cuda.is_available())


__all__ = ["OnnxBackend", "OnnxModel", "OnnxNode", "load_onnx_proto", "torch_dtype", "unsupported_ops"]
