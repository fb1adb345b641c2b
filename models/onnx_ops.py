"""ONNX operators written with torch, so an ONNX graph runs with autograd.

Each operator is a function `op(node, *inputs)`: `node` carries the decoded
attributes, the model's opset version and how many outputs are asked for; missing
optional inputs arrive as None. The semantics follow the ONNX operator
specification for every version from opset 9 to the newest `onnx` ships; where an
operator changed (attributes that became inputs, Softmax's axis), the opset picks
the rule. `OPS` maps each operator name to its function; an operator absent from
`OPS` is refused by name when a model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deeproom.models.errors import UnsupportedOperatorError

Tensor = torch.Tensor
Opt = Tensor | None


@dataclass
class NodeInfo:
    """What an operator needs to know about its node besides the input tensors."""

    op_type: str
    name: str
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 21
    n_outputs: int = 1
    device: torch.device | None = None
    """Where tensors made from nothing (constants, ranges) go: the model's input device."""

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def unsupported(self, what: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(
            f"ONNX node {self.name!r}: {self.op_type} (opset {self.opset}) with {what} is not supported"
        )


OpFn = Callable[..., Any]
OPS: dict[str, OpFn] = {}


def op(*names: str) -> Callable[[OpFn], OpFn]:
    def deco(fn: OpFn) -> OpFn:
        for n in names:
            OPS[n] = fn
        return fn

    return deco


# --- dtypes -------------------------------------------------------------------------------

ONNX_TO_TORCH: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16,
    6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
    12: torch.uint32, 13: torch.uint64, 16: torch.bfloat16,
}


def torch_dtype(onnx_type: int, node: NodeInfo | None = None) -> torch.dtype:
    if onnx_type not in ONNX_TO_TORCH:
        import onnx

        name = onnx.TensorProto.DataType.Name(onnx_type) if onnx_type in onnx.TensorProto.DataType.values() else str(onnx_type)
        where = f"ONNX node {node.name!r}: " if node else ""
        raise UnsupportedOperatorError(f"{where}tensor type {name} is not supported (allowed: numeric and bool types)")
    return ONNX_TO_TORCH[onnx_type]


def ints(t: Opt) -> list[int]:
    """A 1-D int64 tensor (a shape, axes, pads...) as Python ints."""
    if t is None:
        return []
    return [int(v) for v in t.reshape(-1).tolist()]


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _is_float(x: Tensor) -> bool:
    return x.dtype.is_floating_point


# --- elementwise --------------------------------------------------------------------------

_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
    "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round, "Sign": torch.sign,
    "Erf": torch.erf, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin,
    "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh,
    "Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh, "Not": torch.logical_not,
    "IsNaN": torch.isnan, "Softsign": F.softsign, "Mish": F.mish, "BitwiseNot": torch.bitwise_not,
}


def _unary(name: str) -> OpFn:
    fn = _UNARY[name]

    def run(node: NodeInfo, x: Tensor) -> Tensor:
        return fn(x)

    return run


for _n in _UNARY:
    OPS[_n] = _unary(_n)


@op("Reciprocal")
def reciprocal(node: NodeInfo, x: Tensor) -> Tensor:
    return torch.reciprocal(x)


@op("Softplus")
def softplus(node: NodeInfo, x: Tensor) -> Tensor:
    return torch.log1p(torch.exp(-x.abs())) + torch.relu(x)


@op("Identity")
def identity(node: NodeInfo, x: Tensor) -> Tensor:
    return x


@op("IsInf")
def isinf(node: NodeInfo, x: Tensor) -> Tensor:
    pos, neg = node.get("detect_positive", 1), node.get("detect_negative", 1)
    return (torch.isposinf(x) & bool(pos)) | (torch.isneginf(x) & bool(neg))


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def run(node: NodeInfo, a: Tensor, b: Tensor) -> Tensor:
        return fn(a, b)

    return run


for _n, _f in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Equal": torch.eq, "Less": torch.lt,
    "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor,
}.items():
    OPS[_n] = _binary(_f)  # type: ignore[arg-type]


@op("Div")
def div(node: NodeInfo, a: Tensor, b: Tensor) -> Tensor:
    if _is_float(a):
        return a / b
    return torch.div(a, b, rounding_mode="trunc").to(a.dtype)


@op("Pow")
def pow_(node: NodeInfo, a: Tensor, b: Tensor) -> Tensor:
    if _is_float(a):
        return torch.pow(a, b.to(a.dtype) if _is_float(b) else b)
    return torch.pow(a.to(torch.float64), b.to(torch.float64)).to(a.dtype)


@op("Mod")
def mod(node: NodeInfo, a: Tensor, b: Tensor) -> Tensor:
    if node.get("fmod", 0):
        return torch.fmod(a, b)
    return torch.remainder(a, b)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def run(node: NodeInfo, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return run


OPS["Sum"] = _variadic(torch.add)
OPS["Max"] = _variadic(torch.maximum)
OPS["Min"] = _variadic(torch.minimum)


@op("Mean")
def mean(node: NodeInfo, *xs: Tensor) -> Tensor:
    return _variadic(torch.add)(node, *xs) / len(xs)


@op("Where")
def where(node: NodeInfo, c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(c, a, b)


# --- activations --------------------------------------------------------------------------


@op("LeakyRelu")
def leaky_relu(node: NodeInfo, x: Tensor) -> Tensor:
    return F.leaky_relu(x, node.get("alpha", 0.01))


@op("Elu")
def elu(node: NodeInfo, x: Tensor) -> Tensor:
    return F.elu(x, node.get("alpha", 1.0))


@op("Celu")
def celu(node: NodeInfo, x: Tensor) -> Tensor:
    return F.celu(x, node.get("alpha", 1.0))


@op("Selu")
def selu(node: NodeInfo, x: Tensor) -> Tensor:
    alpha = node.get("alpha", 1.67326319217681884765625)
    gamma = node.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("HardSigmoid")
def hard_sigmoid(node: NodeInfo, x: Tensor) -> Tensor:
    return torch.clamp(node.get("alpha", 0.2) * x + node.get("beta", 0.5), 0, 1)


@op("HardSwish")
def hard_swish(node: NodeInfo, x: Tensor) -> Tensor:
    return x * torch.clamp(x / 6 + 0.5, 0, 1)


@op("ThresholdedRelu")
def thresholded_relu(node: NodeInfo, x: Tensor) -> Tensor:
    return torch.where(x > node.get("alpha", 1.0), x, torch.zeros_like(x))


@op("PRelu")
def prelu(node: NodeInfo, x: Tensor, slope: Tensor) -> Tensor:
    return torch.where(x < 0, x * slope, x)


@op("Gelu")
def gelu(node: NodeInfo, x: Tensor) -> Tensor:
    approx = node.get("approximate", "none")
    return F.gelu(x, approximate="tanh" if approx == "tanh" else "none")


@op("Swish")
def swish(node: NodeInfo, x: Tensor) -> Tensor:
    return x * torch.sigmoid(node.get("alpha", 1.0) * x)


@op("Shrink")
def shrink(node: NodeInfo, x: Tensor) -> Tensor:
    lambd, bias = node.get("lambd", 0.5), node.get("bias", 0.0)
    out = torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))
    return out.to(x.dtype)


@op("Clip")
def clip(node: NodeInfo, x: Tensor, lo: Opt = None, hi: Opt = None) -> Tensor:
    if node.opset < 11:
        lo_v = node.get("min", -3.402823e38)
        hi_v = node.get("max", 3.402823e38)
        return torch.clamp(x, lo_v, hi_v)
    out = x
    if lo is not None:
        out = torch.maximum(out, lo.to(x.dtype))
    if hi is not None:
        out = torch.minimum(out, hi.to(x.dtype))
    return out


def _softmax_like(fn: Callable[..., Tensor]) -> OpFn:
    def run(node: NodeInfo, x: Tensor) -> Tensor:
        if node.opset < 13:  # older opsets flatten to 2-D at `axis`
            axis = norm_axis(node.get("axis", 1), x.ndim)
            shape = x.shape
            flat = x.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
            return fn(flat, 1).reshape(shape)
        return fn(x, node.get("axis", -1))

    return run


def _hardmax(x: Tensor, dim: int) -> Tensor:
    idx = x.argmax(dim=dim, keepdim=True)
    return torch.zeros_like(x).scatter_(dim, idx, 1.0)


OPS["Softmax"] = _softmax_like(lambda x, d: torch.softmax(x, d))
OPS["LogSoftmax"] = _softmax_like(lambda x, d: torch.log_softmax(x, d))
OPS["Hardmax"] = _softmax_like(_hardmax)


# --- convolution and pooling --------------------------------------------------------------


def _pads_for(node: NodeInfo, in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> list[tuple[int, int]]:
    """Per spatial axis (begin, end) padding, from `pads` or `auto_pad`."""
    n = len(kernel)
    auto = node.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(n):
            o = -(-in_sizes[i] // strides[i])
            total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sizes[i])
            small = total // 2
            out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return out
    if auto == "VALID":
        return [(0, 0)] * n
    pads = list(node.get("pads", [0] * (2 * n)))
    return [(pads[i], pads[i + n]) for i in range(n)]


def _torch_pad(pads: list[tuple[int, int]]) -> list[int]:
    flat: list[int] = []
    for b, e in reversed(pads):
        flat += [b, e]
    return flat


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def conv(node: NodeInfo, x: Tensor, w: Tensor, b: Opt = None) -> Tensor:
    nd = x.ndim - 2
    if nd not in _CONV:
        raise node.unsupported(f"{nd} spatial dimensions (allowed: 1–3)")
    kernel = node.get("kernel_shape") or list(w.shape[2:])
    strides = node.get("strides") or [1] * nd
    dil = node.get("dilations") or [1] * nd
    pads = _pads_for(node, list(x.shape[2:]), kernel, strides, dil)
    padding: Any = 0
    if all(p0 == p1 for p0, p1 in pads):
        padding = [p0 for p0, _ in pads]
    else:
        x = F.pad(x, _torch_pad(pads))
    return _CONV[nd](x, w, b, stride=strides, padding=padding, dilation=dil, groups=node.get("group", 1))


@op("ConvTranspose")
def conv_transpose(node: NodeInfo, x: Tensor, w: Tensor, b: Opt = None) -> Tensor:
    nd = x.ndim - 2
    if nd not in _CONVT:
        raise node.unsupported(f"{nd} spatial dimensions (allowed: 1–3)")
    group = node.get("group", 1)
    kernel = node.get("kernel_shape") or list(w.shape[2:])
    strides = node.get("strides") or [1] * nd
    dil = node.get("dilations") or [1] * nd
    out_pad = node.get("output_padding") or [0] * nd
    in_sizes = list(x.shape[2:])
    full = [(in_sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 + out_pad[i] for i in range(nd)]
    auto = node.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    output_shape = node.get("output_shape")
    if output_shape:
        output_shape = list(output_shape)[-nd:]
        pads = []
        for i in range(nd):
            total = full[i] - output_shape[i]
            small = int(total / 2)  # toward zero: a negative total appends zeros at the end
            pads.append((small, total - small) if auto != "SAME_LOWER" else (total - small, small))
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i in range(nd):
            total = full[i] - in_sizes[i] * strides[i]
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
    else:
        p = list(node.get("pads", [0] * 2 * nd))
        pads = [(p[i], p[i + nd]) for i in range(nd)]
    y = _CONVT[nd](x, w, None, stride=strides, padding=0, dilation=dil, groups=group)
    if any(out_pad):
        y = F.pad(y, _torch_pad([(0, o) for o in out_pad]))
    y = F.pad(y, _torch_pad([(-p0, -p1) for p0, p1 in pads]))
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * nd))
    return y


def _pool_geometry(node: NodeInfo, x: Tensor) -> tuple[list[int], list[int], list[int], list[tuple[int, int]]]:
    nd = x.ndim - 2
    kernel = list(node.get("kernel_shape"))
    strides = list(node.get("strides") or [1] * nd)
    dil = list(node.get("dilations") or [1] * nd)
    pads = _pads_for(node, list(x.shape[2:]), kernel, strides, dil)
    return kernel, strides, dil, pads


def _ceil_extra(in_size: int, k: int, s: int, d: int, p0: int, p1: int) -> int:
    """Extra end padding that makes floor division give ONNX's ceil-mode output size."""
    eff = (k - 1) * d + 1
    span = in_size + p0 + p1 - eff
    out = -(-span // s) + 1
    if (out - 1) * s >= in_size + p0:  # the last window must start inside the input or left pad
        out -= 1
    return max(0, (out - 1) * s + eff - (in_size + p0 + p1))


_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@op("MaxPool")
def max_pool(node: NodeInfo, x: Tensor) -> Any:
    nd = x.ndim - 2
    if nd not in _MAXPOOL:
        raise node.unsupported(f"{nd} spatial dimensions")
    kernel, strides, dil, pads = _pool_geometry(node, x)
    if node.get("ceil_mode", 0):
        pads = [(p0, p1 + _ceil_extra(x.shape[2 + i], kernel[i], strides[i], dil[i], p0, p1))
                for i, (p0, p1) in enumerate(pads)]
    fill = float("-inf") if _is_float(x) else int(torch.iinfo(x.dtype).min)
    xp = F.pad(x.to(torch.float64) if not _is_float(x) else x, _torch_pad(pads), value=fill)
    if node.n_outputs > 1:
        y, idx = _MAXPOOL[nd](xp, kernel, strides, 0, dil, return_indices=True)
        # torch indexes the padded plane; ONNX wants the flat index into the unpadded input
        padded = list(xp.shape[2:])
        coords = []
        rem = idx
        for size in reversed(padded):
            coords.append(rem % size)
            rem = rem // size
        coords.reverse()
        sizes = list(x.shape[2:])
        flat = torch.zeros_like(idx)
        for i in reversed(range(nd)) if node.get("storage_order", 0) else range(nd):  # column- or row-major
            flat = flat * sizes[i] + (coords[i] - pads[i][0])
        plane = int(np.prod(sizes))
        base = torch.arange(x.shape[0] * x.shape[1], device=idx.device).reshape(x.shape[0], x.shape[1], *([1] * nd)) * plane
        return y.to(x.dtype), (flat + base).to(torch.int64)
    y = _MAXPOOL[nd](xp, kernel, strides, 0, dil)
    return y.to(x.dtype)


@op("AveragePool")
def avg_pool(node: NodeInfo, x: Tensor) -> Tensor:
    nd = x.ndim - 2
    if nd not in _AVGPOOL:
        raise node.unsupported(f"{nd} spatial dimensions")
    kernel, strides, dil, pads = _pool_geometry(node, x)
    if any(d != 1 for d in dil):
        # dilated average pooling: unfold-free route through a depthwise conv of ones
        return _dilated_avg_pool(node, x, kernel, strides, dil, pads)
    ceil_pads = pads
    if node.get("ceil_mode", 0):
        ceil_pads = [(p0, p1 + _ceil_extra(x.shape[2 + i], kernel[i], strides[i], 1, p0, p1))
                     for i, (p0, p1) in enumerate(pads)]
    include = node.get("count_include_pad", 0)
    xp = F.pad(x, _torch_pad(ceil_pads))
    s = _AVGPOOL[nd](xp, kernel, strides, 0) * float(np.prod(kernel))
    # the divisor counts real pixels, plus explicit pads when count_include_pad (never ceil padding)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    if include:
        ones = F.pad(ones, _torch_pad(pads), value=1.0)
        ones = F.pad(ones, _torch_pad([(0, c1 - p1) for (_, p1), (_, c1) in zip(pads, ceil_pads, strict=True)]))
    else:
        ones = F.pad(ones, _torch_pad(ceil_pads))
    cnt = _AVGPOOL[nd](ones, kernel, strides, 0) * float(np.prod(kernel))
    return s / cnt


def _dilated_avg_pool(node: NodeInfo, x: Tensor, kernel: list[int], strides: list[int], dil: list[int],
                      pads: list[tuple[int, int]]) -> Tensor:
    nd = x.ndim - 2
    if node.get("ceil_mode", 0):
        pads = [(p0, p1 + _ceil_extra(x.shape[2 + i], kernel[i], strides[i], dil[i], p0, p1))
                for i, (p0, p1) in enumerate(pads)]
    c = x.shape[1]
    w = torch.ones((c, 1, *kernel), dtype=x.dtype, device=x.device)
    s = _CONV[nd](F.pad(x, _torch_pad(pads)), w, None, stride=strides, dilation=dil, groups=c)
    ones = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device), _torch_pad(pads),
                 value=1.0 if node.get("count_include_pad", 0) else 0.0)
    cnt = _CONV[nd](ones, torch.ones((1, 1, *kernel), dtype=x.dtype, device=x.device), None, stride=strides, dilation=dil)
    return s / cnt


@op("GlobalAveragePool")
def global_avg_pool(node: NodeInfo, x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(node: NodeInfo, x: Tensor) -> Tensor:
    return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


@op("LpPool")
def lp_pool(node: NodeInfo, x: Tensor) -> Tensor:
    p = node.get("p", 2)
    kernel, strides, dil, pads = _pool_geometry(node, x)
    nd = x.ndim - 2
    if node.get("ceil_mode", 0):
        pads = [(p0, p1 + _ceil_extra(x.shape[2 + i], kernel[i], strides[i], dil[i], p0, p1))
                for i, (p0, p1) in enumerate(pads)]
    c = x.shape[1]
    w = torch.ones((c, 1, *kernel), dtype=x.dtype, device=x.device)
    s = _CONV[nd](F.pad(x.abs() ** p, _torch_pad(pads)), w, None, stride=strides, dilation=dil, groups=c)
    return s ** (1.0 / p)


@op("GlobalLpPool")
def global_lp_pool(node: NodeInfo, x: Tensor) -> Tensor:
    p = node.get("p", 2)
    return (x.abs() ** p).sum(dim=tuple(range(2, x.ndim)), keepdim=True) ** (1.0 / p)


# --- normalization ------------------------------------------------------------------------


@op("BatchNormalization")
def batch_norm(node: NodeInfo, x: Tensor, scale: Tensor, bias: Tensor, mean_: Tensor, var: Tensor) -> Any:
    eps = node.get("epsilon", 1e-5)
    if node.get("training_mode", 0):
        dims = [0, *range(2, x.ndim)]
        cur_mean = x.mean(dim=dims)
        cur_var = x.var(dim=dims, unbiased=False)
        shape = (1, -1, *([1] * (x.ndim - 2)))
        y = (x - cur_mean.reshape(shape)) / torch.sqrt(cur_var.reshape(shape) + eps) * scale.reshape(shape) \
            + bias.reshape(shape)
        m = node.get("momentum", 0.9)
        outs = (y, mean_ * m + cur_mean * (1 - m), var * m + cur_var * (1 - m))
        return outs[: node.n_outputs] if node.n_outputs > 1 else y
    return F.batch_norm(x, mean_, var, scale, bias, training=False, eps=eps)


@op("InstanceNormalization")
def instance_norm(node: NodeInfo, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.get("epsilon", 1e-5))


@op("LayerNormalization")
def layer_norm(node: NodeInfo, x: Tensor, scale: Tensor, bias: Opt = None) -> Any:
    axis = norm_axis(node.get("axis", -1), x.ndim)
    eps = node.get("epsilon", 1e-5)
    dims = tuple(range(axis, x.ndim))
    stash = torch.float32 if node.get("stash_type", 1) == 1 and x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xs = x.to(stash)
    mu = xs.mean(dim=dims, keepdim=True)
    var = ((xs - mu) ** 2).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + eps)
    y = ((xs - mu) * inv).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    if node.n_outputs == 1:
        return y
    return (y, mu, inv)[: node.n_outputs]


@op("RMSNormalization")
def rms_norm(node: NodeInfo, x: Tensor, scale: Tensor) -> Tensor:
    axis = norm_axis(node.get("axis", -1), x.ndim)
    dims = tuple(range(axis, x.ndim))
    xs = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
    y = xs * torch.rsqrt((xs * xs).mean(dim=dims, keepdim=True) + node.get("epsilon", 1e-5))
    return y.to(x.dtype) * scale


@op("GroupNormalization")
def group_norm(node: NodeInfo, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    g = node.get("num_groups")
    c = x.shape[1]
    eps = node.get("epsilon", 1e-5)
    xs = x.reshape(x.shape[0], g, -1)
    mu = xs.mean(-1, keepdim=True)
    var = ((xs - mu) ** 2).mean(-1, keepdim=True)
    y = ((xs - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    if scale.numel() == g and g != c:  # opset 18: one scale per group
        scale = scale.repeat_interleave(c // g)
        bias = bias.repeat_interleave(c // g)
    shape = (1, c, *([1] * (x.ndim - 2)))
    return y * scale.reshape(shape) + bias.reshape(shape)


@op("LRN")
def lrn(node: NodeInfo, x: Tensor) -> Tensor:
    size = node.get("size")
    alpha, beta, bias = node.get("alpha", 1e-4), node.get("beta", 0.75), node.get("bias", 1.0)
    sq = (x * x).unsqueeze(1)  # [N, 1, C, ...]
    before, after = (size - 1) // 2, -(-(size - 1) // 2)
    pad = [0, 0] * (x.ndim - 2) + [before, after]
    sq = F.pad(sq, pad)
    summed = sq.unfold(2, size, 1).sum(-1).squeeze(1)
    return x / (bias + alpha / size * summed) ** beta


@op("LpNormalization")
def lp_normalization(node: NodeInfo, x: Tensor) -> Tensor:
    p = node.get("p", 2)
    norm = torch.linalg.vector_norm(x, ord=p, dim=node.get("axis", -1), keepdim=True)
    return torch.where(norm == 0, torch.zeros_like(x), x / norm)


@op("MeanVarianceNormalization")
def mvn(node: NodeInfo, x: Tensor) -> Tensor:
    axes = tuple(node.get("axes", [0, 2, 3]))
    mu = x.mean(dim=axes, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=axes, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-9)


# --- linear algebra -----------------------------------------------------------------------


@op("Gemm")
def gemm(node: NodeInfo, a: Tensor, b: Tensor, c: Opt = None) -> Tensor:
    if node.get("transA", 0):
        a = a.transpose(0, 1)
    if node.get("transB", 0):
        b = b.transpose(0, 1)
    y = node.get("alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + node.get("beta", 1.0) * c
    return y


@op("MatMul")
def matmul(node: NodeInfo, a: Tensor, b: Tensor) -> Tensor:
    return torch.matmul(a, b)


@op("Einsum")
def einsum(node: NodeInfo, *xs: Tensor) -> Tensor:
    eq = node.get("equation")
    if isinstance(eq, bytes):
        eq = eq.decode()
    return torch.einsum(eq.replace(" ", ""), *xs)


# --- shapes and indexing ------------------------------------------------------------------


@op("Shape")
def shape(node: NodeInfo, x: Tensor) -> Tensor:
    dims = list(x.shape)
    start, end = node.get("start", 0), node.get("end", len(dims))
    return torch.tensor(dims[slice(start, end)], dtype=torch.int64)


@op("Size")
def size(node: NodeInfo, x: Tensor) -> Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


@op("Flatten")
def flatten(node: NodeInfo, x: Tensor) -> Tensor:
    axis = norm_axis(node.get("axis", 1), x.ndim)
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(lead, -1) if x.numel() else x.reshape(lead, int(np.prod(x.shape[axis:], dtype=np.int64)))


@op("Reshape")
def reshape(node: NodeInfo, x: Tensor, shape_: Tensor) -> Tensor:
    target = ints(shape_)
    if not node.get("allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return torch.reshape(x, tuple(target))


@op("Transpose")
def transpose(node: NodeInfo, x: Tensor) -> Tensor:
    perm = node.get("perm") or list(reversed(range(x.ndim)))
    return x.permute(*perm)


def _axes(node: NodeInfo, given: Opt, attr_until: int) -> list[int] | None:
    if node.opset < attr_until:
        a = node.get("axes")
        return list(a) if a is not None else None
    return ints(given) if given is not None else None


@op("Squeeze")
def squeeze(node: NodeInfo, x: Tensor, axes_: Opt = None) -> Tensor:
    axes = _axes(node, axes_, 13)
    if axes is None:
        return x.squeeze()
    for a in sorted((norm_axis(a, x.ndim) for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


@op("Unsqueeze")
def unsqueeze(node: NodeInfo, x: Tensor, axes_: Opt = None) -> Tensor:
    axes = _axes(node, axes_, 13) or []
    out_rank = x.ndim + len(axes)
    for a in sorted(norm_axis(a, out_rank) for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Concat")
def concat(node: NodeInfo, *xs: Tensor) -> Tensor:
    return torch.cat([x for x in xs if x is not None], dim=node.get("axis", 0))


@op("Split")
def split(node: NodeInfo, x: Tensor, split_: Opt = None) -> tuple[Tensor, ...]:
    axis = norm_axis(node.get("axis", 0), x.ndim)
    sizes = list(node.get("split") or []) if node.opset < 13 else ints(split_)
    if not sizes:
        n = node.get("num_outputs", node.n_outputs)
        dim = x.shape[axis]
        chunk = -(-dim // n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    return tuple(torch.split(x, sizes, dim=axis))


@op("Slice")
def slice_(node: NodeInfo, x: Tensor, starts_: Opt = None, ends_: Opt = None, axes_: Opt = None,
           steps_: Opt = None) -> Tensor:
    if node.opset < 10:
        starts, ends = list(node.get("starts")), list(node.get("ends"))
        axes = list(node.get("axes") or range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = ints(starts_), ints(ends_)
        axes = ints(axes_) if axes_ is not None else list(range(len(starts)))
        steps = ints(steps_) if steps_ is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = norm_axis(a, x.ndim)
        lo, hi, step = slice(s, e, st).indices(x.shape[a])
        if st > 0:
            index[a] = slice(lo, hi, step)
        else:
            picks = list(range(lo, hi, step))
            x = torch.index_select(x, a, torch.tensor(picks, dtype=torch.long, device=x.device))
    return x[tuple(index)]


def _fix_negative(idx: Tensor, dim: int) -> Tensor:
    return torch.where(idx < 0, idx + dim, idx).long()


@op("Gather")
def gather(node: NodeInfo, x: Tensor, idx: Tensor) -> Tensor:
    axis = norm_axis(node.get("axis", 0), x.ndim)
    i = _fix_negative(idx, x.shape[axis])
    out = torch.index_select(x, axis, i.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


@op("GatherElements")
def gather_elements(node: NodeInfo, x: Tensor, idx: Tensor) -> Tensor:
    axis = norm_axis(node.get("axis", 0), x.ndim)
    return torch.gather(x, axis, _fix_negative(idx, x.shape[axis]))


@op("GatherND")
def gather_nd(node: NodeInfo, x: Tensor, idx: Tensor) -> Tensor:
    b = node.get("batch_dims", 0)
    batch = x.shape[:b]
    nb = int(np.prod(batch, dtype=np.int64))
    xb = x.reshape(nb, *x.shape[b:])
    ib = idx.reshape(nb, *idx.shape[b:]).long()
    k = ib.shape[-1]
    dims = torch.tensor(xb.shape[1 : 1 + k], device=ib.device)
    ib = torch.where(ib < 0, ib + dims, ib)
    rows = []
    for j in range(nb):
        flat_idx = ib[j].reshape(-1, k)
        rows.append(xb[j][tuple(flat_idx[:, t] for t in range(k))])
    out = torch.stack(rows)
    return out.reshape((*batch, *idx.shape[b:-1], *x.shape[b + k :]))


@op("ScatterElements", "Scatter")
def scatter_elements(node: NodeInfo, x: Tensor, idx: Tensor, upd: Tensor) -> Tensor:
    axis = norm_axis(node.get("axis", 0), x.ndim)
    i = _fix_negative(idx, x.shape[axis])
    red = node.get("reduction", "none")
    if isinstance(red, bytes):
        red = red.decode()
    if red == "none":
        return x.scatter(axis, i, upd)
    names = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
    if red not in names:
        raise node.unsupported(f"reduction {red!r}")
    return x.scatter_reduce(axis, i, upd, names[red], include_self=True)


@op("ScatterND")
def scatter_nd(node: NodeInfo, x: Tensor, idx: Tensor, upd: Tensor) -> Tensor:
    red = node.get("reduction", "none")
    if isinstance(red, bytes):
        red = red.decode()
    k = idx.shape[-1]
    out = x.clone()
    flat_idx = idx.reshape(-1, k).long()
    flat_upd = upd.reshape(flat_idx.shape[0], *x.shape[k:])
    for j in range(flat_idx.shape[0]):
        where = tuple(int(v) for v in flat_idx[j])
        if red == "none":
            out[where] = flat_upd[j]
        elif red == "add":
            out[where] = out[where] + flat_upd[j]
        elif red == "mul":
            out[where] = out[where] * flat_upd[j]
        elif red == "max":
            out[where] = torch.maximum(out[where], flat_upd[j])
        elif red == "min":
            out[where] = torch.minimum(out[where], flat_upd[j])
        else:
            raise node.unsupported(f"reduction {red!r}")
    return out


@op("Expand")
def expand(node: NodeInfo, x: Tensor, shape_: Tensor) -> Tensor:
    target = torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape_)))
    return x.expand(target)


@op("Tile")
def tile(node: NodeInfo, x: Tensor, repeats: Tensor) -> Tensor:
    return x.repeat(*ints(repeats))


@op("Range")
def range_(node: NodeInfo, start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    s, lim, d = start.item(), limit.item(), delta.item()
    n = max(math.ceil((lim - s) / d), 0)
    return (torch.arange(n, dtype=torch.float64, device=start.device) * d + s).to(start.dtype)


@op("Constant")
def constant(node: NodeInfo) -> Tensor:
    t = _constant(node)
    return t.to(node.device) if node.device is not None and node.device.type != "cpu" else t


def _constant(node: NodeInfo) -> Tensor:
    a = node.attrs
    if "value" in a:
        return a["value"].clone()
    if "value_float" in a:
        return torch.tensor(a["value_float"], dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor(list(a["value_floats"]), dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(a["value_int"], dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor(list(a["value_ints"]), dtype=torch.int64)
    raise node.unsupported(f"attributes {sorted(a)} (strings and sparse tensors are not supported)")


@op("ConstantOfShape")
def constant_of_shape(node: NodeInfo, shape_: Tensor) -> Tensor:
    value = node.get("value")
    dims = ints(shape_)
    if value is None:
        return torch.zeros(dims, dtype=torch.float32, device=node.device)
    return torch.full(dims, value.reshape(-1)[0].item(), dtype=value.dtype, device=node.device)


@op("Cast")
def cast(node: NodeInfo, x: Tensor) -> Tensor:
    to = torch_dtype(node.get("to"), node)
    if to == torch.bool:
        return x != 0
    if _is_float(x) and not to.is_floating_point:
        return torch.trunc(x).to(to) if to != torch.uint8 else x.to(to)
    return x.to(to)


@op("CastLike")
def cast_like(node: NodeInfo, x: Tensor, like: Tensor) -> Tensor:
    if like.dtype == torch.bool:
        return x != 0
    return x.to(like.dtype)


@op("Dropout")
def dropout(node: NodeInfo, x: Tensor, ratio: Opt = None, training: Opt = None) -> Any:
    if training is not None and bool(training.item()) and (ratio is None or float(ratio.item()) != 0.0):
        raise node.unsupported("training_mode=true and a ratio above 0 (only inference is supported)")
    if node.n_outputs > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


def _pad_indices(n: int, before: int, after: int, mode: str, device: torch.device | None = None) -> Tensor:
    idx = torch.arange(-before, n + after, device=device)
    if mode == "edge":
        return idx.clamp(0, n - 1)
    if mode == "wrap":
        return idx % n
    # reflect without repeating the edge: period 2(n−1)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    m = idx % period
    return torch.where(m < n, m, period - m)


@op("Pad")
def pad(node: NodeInfo, x: Tensor, pads_: Opt = None, value_: Opt = None, axes_: Opt = None) -> Tensor:
    mode = node.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if node.opset < 11:
        pads = list(node.get("pads"))
        value: Any = node.get("value", 0.0)
        axes = list(range(x.ndim))
    else:
        pads = ints(pads_)
        value = value_.reshape(-1)[0].item() if value_ is not None and value_.numel() else 0
        axes = [norm_axis(a, x.ndim) for a in ints(axes_)] if axes_ is not None else list(range(x.ndim))
    n = len(axes)
    per_axis = {a: (pads[i], pads[i + n]) for i, a in enumerate(axes)}
    if mode == "constant":
        full = [per_axis.get(a, (0, 0)) for a in range(x.ndim)]
        return F.pad(x, _torch_pad(full), value=value)
    if mode not in ("reflect", "edge", "wrap"):
        raise node.unsupported(f"mode {mode!r}")
    for a, (b, e) in per_axis.items():
        if b < 0 or e < 0:  # a negative pad crops first
            x = x.narrow(a, max(0, -b), x.shape[a] - max(0, -b) - max(0, -e))
            b, e = max(b, 0), max(e, 0)
        if b or e:
            x = torch.index_select(x, a, _pad_indices(x.shape[a], b, e, mode, x.device))
    return x


@op("DepthToSpace")
def depth_to_space(node: NodeInfo, x: Tensor) -> Tensor:
    bs = node.get("blocksize")
    n, c, h, w = x.shape
    mode = node.get("mode", "DCR")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode == "DCR":
        y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (bs * bs), h * bs, w * bs)


@op("SpaceToDepth")
def space_to_depth(node: NodeInfo, x: Tensor) -> Tensor:
    bs = node.get("blocksize")
    n, c, h, w = x.shape
    if node.get("mode", "DCR") == "CRD":
        y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(n, c * bs * bs, h // bs, w // bs)
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)


@op("Trilu")
def trilu(node: NodeInfo, x: Tensor, k: Opt = None) -> Tensor:
    kk = int(k.item()) if k is not None else 0
    return torch.triu(x, kk) if node.get("upper", 1) else torch.tril(x, kk)


@op("CumSum")
def cumsum(node: NodeInfo, x: Tensor, axis_: Tensor) -> Tensor:
    axis = norm_axis(int(axis_.item()), x.ndim)
    if node.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, axis).to(x.dtype)
    if node.get("exclusive", 0):
        y = y - x
    return y.flip(axis) if node.get("reverse", 0) else y


@op("OneHot")
def one_hot(node: NodeInfo, idx: Tensor, depth: Tensor, values: Tensor) -> Tensor:
    d = int(depth.reshape(-1)[0].item())
    axis = node.get("axis", -1)
    i = idx.long()
    i = torch.where(i < 0, i + d, i)
    valid = (i >= 0) & (i < d)
    oh = F.one_hot(i.clamp(0, d - 1), d) * valid.unsqueeze(-1)
    out = torch.where(oh.bool(), values[1], values[0])
    axis = norm_axis(axis, idx.ndim + 1)
    return out.movedim(-1, axis)


@op("NonZero")
def nonzero(node: NodeInfo, x: Tensor) -> Tensor:
    return torch.nonzero(x).transpose(0, 1).contiguous()


@op("EyeLike")
def eye_like(node: NodeInfo, x: Tensor) -> Tensor:
    dt = torch_dtype(node.get("dtype"), node) if node.get("dtype") is not None else x.dtype
    k = node.get("k", 0)
    rows, cols = torch.arange(x.shape[0], device=x.device), torch.arange(x.shape[1], device=x.device)
    return (cols[None, :] - rows[:, None] == k).to(dt)


# --- reductions ---------------------------------------------------------------------------

_REDUCE_AXES_INPUT = {"ReduceSum": 13}


def _reduce(fn: Callable[[Tensor, tuple[int, ...], bool], Tensor]) -> OpFn:
    def run(node: NodeInfo, x: Tensor, axes_: Opt = None) -> Tensor:
        until = _REDUCE_AXES_INPUT.get(node.op_type, 18)
        axes = _axes(node, axes_, until)
        keep = bool(node.get("keepdims", 1))
        if not axes:
            if node.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        dims = tuple(sorted(norm_axis(a, x.ndim) for a in axes))
        return fn(x, dims, keep)

    return run


def _empty_fill(x: Tensor, low: bool) -> Any:
    if x.dtype == torch.bool:
        return not low
    if _is_float(x):
        return float("-inf") if low else float("inf")
    return torch.iinfo(x.dtype).min if low else torch.iinfo(x.dtype).max


def _amax(x: Tensor, d: tuple[int, ...], k: bool) -> Tensor:
    if x.numel() == 0:
        shape = [1 if i in d else s for i, s in enumerate(x.shape)] if k else [s for i, s in enumerate(x.shape) if i not in d]
        return torch.full(shape, _empty_fill(x, True), dtype=x.dtype, device=x.device)
    return x.amax(dim=d, keepdim=k)


def _amin(x: Tensor, d: tuple[int, ...], k: bool) -> Tensor:
    if x.numel() == 0:
        shape = [1 if i in d else s for i, s in enumerate(x.shape)] if k else [s for i, s in enumerate(x.shape) if i not in d]
        return torch.full(shape, _empty_fill(x, False), dtype=x.dtype, device=x.device)
    return x.amin(dim=d, keepdim=k)


def _prod(x: Tensor, d: tuple[int, ...], k: bool) -> Tensor:
    for a in sorted(d, reverse=True):
        x = torch.prod(x, dim=a, keepdim=k)
    return x


def _typed_sum(x: Tensor, d: tuple[int, ...], k: bool) -> Tensor:
    return x.sum(dim=d, keepdim=k).to(x.dtype)


OPS["ReduceSum"] = _reduce(_typed_sum)
OPS["ReduceMean"] = _reduce(lambda x, d, k: x.mean(dim=d, keepdim=k) if _is_float(x) else
                            (x.sum(dim=d, keepdim=k) // int(np.prod([x.shape[i] for i in d]))).to(x.dtype))
OPS["ReduceMax"] = _reduce(_amax)
OPS["ReduceMin"] = _reduce(_amin)
OPS["ReduceProd"] = _reduce(_prod)
OPS["ReduceL1"] = _reduce(lambda x, d, k: x.abs().sum(dim=d, keepdim=k).to(x.dtype))
OPS["ReduceL2"] = _reduce(lambda x, d, k: torch.sqrt((x.to(torch.float64) ** 2).sum(dim=d, keepdim=k)).to(x.dtype))
OPS["ReduceSumSquare"] = _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k).to(x.dtype))
OPS["ReduceLogSum"] = _reduce(lambda x, d, k: torch.log(x.sum(dim=d, keepdim=k)))
OPS["ReduceLogSumExp"] = _reduce(lambda x, d, k: torch.logsumexp(x.to(torch.float64), dim=d, keepdim=k).to(x.dtype)
                                 if x.numel() else torch.log(x.exp().sum(dim=d, keepdim=k)))


def _arg(largest: bool) -> OpFn:
    def run(node: NodeInfo, x: Tensor) -> Tensor:
        axis = norm_axis(node.get("axis", 0), x.ndim)
        keep = bool(node.get("keepdims", 1))
        if node.get("select_last_index", 0):
            flipped = x.flip(axis)
            i = flipped.argmax(axis, keepdim=keep) if largest else flipped.argmin(axis, keepdim=keep)
            return (x.shape[axis] - 1 - i).long()
        return (x.argmax(axis, keepdim=keep) if largest else x.argmin(axis, keepdim=keep)).long()

    return run


OPS["ArgMax"] = _arg(True)
OPS["ArgMin"] = _arg(False)


@op("TopK")
def topk(node: NodeInfo, x: Tensor, k_: Opt = None) -> tuple[Tensor, Tensor]:
    k = int(k_.reshape(-1)[0].item()) if k_ is not None else node.get("k")
    axis = norm_axis(node.get("axis", -1), x.ndim)
    largest = bool(node.get("largest", 1))
    if largest:
        # ties keep the lower index first, like the reference: stable sort on the negation
        order = torch.sort(-x if x.dtype != torch.bool else ~x, dim=axis, stable=True).indices
    else:
        order = torch.sort(x, dim=axis, stable=True).indices
    idx = order.narrow(axis, 0, k)
    return torch.gather(x, axis, idx), idx


# --- resizing -----------------------------------------------------------------------------


def _source_coords(mode: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float] | None) -> Tensor:
    x = torch.arange(out_len, dtype=torch.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adj = out_len / (scale * in_len)
        center = in_len / 2
        offset = center * (1 - adj)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(x)
    if mode == "align_corners":  # the spec divides by the unrounded resized length
        return x * (in_len - 1) / (in_len * scale - 1) if out_len > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        assert roi is not None
        s, e = roi
        if out_len > 1:
            return s * (in_len - 1) + x * (e - s) * (in_len - 1) / (out_len - 1)
        return torch.full_like(x, 0.5 * (s + e) * (in_len - 1))
    raise ValueError(mode)


def _cubic_kernel(a: float) -> Callable[[Tensor], Tensor]:
    def kernel(d: Tensor) -> Tensor:
        d = d.abs()
        return torch.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                           torch.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, torch.zeros_like(d)))

    return kernel


def _linear_kernel(d: Tensor) -> Tensor:
    return (1 - d.abs()).clamp(min=0)


def _weighted_taps(x: Tensor, axis: int, src: Tensor, kernel: Callable[[Tensor], Tensor], offsets: range,
                   scale: float, node: NodeInfo) -> Tensor:
    """Each output sample as the normalised, kernel-weighted sum of the input samples at
    floor(src) + offsets; the kernel is stretched by 1/scale (scale < 1: antialiasing)."""
    in_len = x.shape[axis]
    lo = torch.floor(src)
    t = src - lo
    whole = t == 0  # as the reference: the pixel on the left, ratio in (0, 1]
    lo, t = torch.where(whole, lo - 1, lo), torch.where(whole, torch.ones_like(t), t)
    taps = []
    for off in offsets:
        w = kernel(scale * (off - t))
        pos = lo.long() + off
        if node.get("exclude_outside", 0):
            w = torch.where((pos < 0) | (pos >= in_len), torch.zeros_like(w), w)
        taps.append((pos.clamp(0, in_len - 1), w))
    total = sum(w for _, w in taps)
    shape = [1] * x.ndim
    shape[axis] = len(src)
    return sum(torch.index_select(x, axis, p) * (w / total).to(x.dtype).reshape(shape) for p, w in taps)  # type: ignore[return-value]


def _resize_axis_antialias(x: Tensor, axis: int, src: Tensor, scale: float, node: NodeInfo, mode: str) -> Tensor:
    """Downsampling with the interpolation kernel stretched by 1/scale (a low-pass filter
    first, as the ONNX reference and PIL do): more taps, weights renormalised."""
    reach = 1 if mode == "linear" else 2
    start = math.floor(-reach / scale) + 1
    kernel = _linear_kernel if mode == "linear" else _cubic_kernel(node.get("cubic_coeff_a", -0.75))
    return _weighted_taps(x, axis, src, kernel, range(start, 2 - start), scale, node)


def _resize_axis(x: Tensor, axis: int, out_len: int, scale: float, node: NodeInfo, mode: str,
                 coord_mode: str, roi: tuple[float, float] | None) -> Tensor:
    in_len = x.shape[axis]
    src = _source_coords(coord_mode, out_len, in_len, scale, roi).to(x.device)
    if node.get("antialias", 0) and mode in ("linear", "cubic") and scale < 1.0:
        out = _resize_axis_antialias(x, axis, src, scale, node, mode)
    elif mode == "nearest":
        nm = node.get("nearest_mode", "round_prefer_floor")
        if isinstance(nm, bytes):
            nm = nm.decode()
        if node.opset < 11:
            nm = "floor"
        if nm == "round_prefer_floor":
            i = torch.ceil(src - 0.5)
        elif nm == "round_prefer_ceil":
            i = torch.floor(src + 0.5)
        elif nm == "floor":
            i = torch.floor(src)
        else:
            i = torch.ceil(src)
        idx = i.long().clamp(0, in_len - 1)
        out = torch.index_select(x, axis, idx)
    elif mode == "linear":
        lo = torch.floor(src)
        frac = (src - lo).to(x.dtype)
        i0 = lo.long().clamp(0, in_len - 1)
        i1 = (lo.long() + 1).clamp(0, in_len - 1)
        shape = [1] * x.ndim
        shape[axis] = out_len
        w = frac.reshape(shape)
        out = torch.index_select(x, axis, i0) * (1 - w) + torch.index_select(x, axis, i1) * w
    else:  # cubic
        out = _weighted_taps(x, axis, src, _cubic_kernel(node.get("cubic_coeff_a", -0.75)), range(-1, 3), 1.0, node)
    if coord_mode == "tf_crop_and_resize":
        ev = node.get("extrapolation_value", 0.0)
        bad = (src < 0) | (src > in_len - 1)
        if bool(bad.any()):
            shape = [1] * x.ndim
            shape[axis] = out_len
            out = torch.where(bad.reshape(shape), torch.tensor(ev, dtype=out.dtype, device=out.device), out)
    return out


@op("Resize", "Upsample")
def resize(node: NodeInfo, x: Tensor, *rest: Opt) -> Tensor:
    mode = node.get("mode", "nearest")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in ("nearest", "linear", "bilinear", "cubic"):
        raise node.unsupported(f"mode {mode!r}")
    mode = "linear" if mode == "bilinear" else mode
    roi_t: Opt = None
    scales_t: Opt = None
    sizes_t: Opt = None
    if node.op_type == "Upsample" or node.opset < 11:
        coord = "asymmetric"
        if node.op_type == "Upsample" and node.opset < 9:
            scales_t = torch.tensor(node.get("scales"), dtype=torch.float32)
        else:
            scales_t = rest[0] if rest else None
    else:
        coord = node.get("coordinate_transformation_mode", "half_pixel")
        if isinstance(coord, bytes):
            coord = coord.decode()
        roi_t = rest[0] if len(rest) > 0 else None
        scales_t = rest[1] if len(rest) > 1 else None
        sizes_t = rest[2] if len(rest) > 2 else None
    axes = [norm_axis(a, x.ndim) for a in node.get("axes", [])] or list(range(x.ndim))
    in_shape = [x.shape[a] for a in axes]
    if sizes_t is not None and sizes_t.numel():
        sizes = ints(sizes_t)
        policy = node.get("keep_aspect_ratio_policy", "stretch")
        if isinstance(policy, bytes):
            policy = policy.decode()
        if policy == "stretch":
            scales = [s / i for s, i in zip(sizes, in_shape, strict=True)]
        else:
            ratios = [s / i for s, i in zip(sizes, in_shape, strict=True)]
            r = min(ratios) if policy == "not_larger" else max(ratios)
            scales = [r] * len(axes)
            sizes = [math.floor(r * i + 0.5) for i in in_shape]
    elif scales_t is not None and scales_t.numel():
        scales = [float(s) for s in scales_t.reshape(-1).tolist()]
        sizes = [math.floor(i * s) for i, s in zip(in_shape, scales, strict=True)]
    else:
        raise node.unsupported("neither scales nor sizes")
    rois: list[tuple[float, float] | None] = [None] * len(axes)
    if roi_t is not None and roi_t.numel():
        rv = [float(v) for v in roi_t.reshape(-1).tolist()]
        n = len(axes)
        rois = [(rv[i], rv[i + n]) for i in range(n)]
    out = x
    for k, a in enumerate(axes):
        if sizes[k] == in_shape[k] and scales[k] == 1.0 and coord != "tf_crop_and_resize":
            continue
        out = _resize_axis(out, a, sizes[k], scales[k], node, mode, coord, rois[k])
    return out


@op("If")
def if_(node: NodeInfo, cond: Tensor) -> Tensor:
    # executed by OnnxIf, which holds the branches; listed here so If counts as supported
    raise node.unsupported("an If outside an OnnxModel")


SUPPORTED_OPS: frozenset[str] = frozenset(OPS)
"""Every operator (default domain) the executor runs."""
