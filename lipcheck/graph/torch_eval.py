"""Run lipcheck's graph IR in torch, in float64 by default, with ONNX operator semantics.

The IR of an ONNX file evaluates itself here without onnxruntime: lower bounds and tight bounds
need the network's values at chosen inputs in a precision where rounding cannot move an
attained ratio. Constants (initializers, folded values) come from the IR; nothing from the file
is executed as code. An op this module does not implement raises :class:`Unsupported` naming
the node, so a caller can fall back or say why it has no number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lipcheck.graph.ir import Graph, Node

Op = Callable[["_Run", Node, list[Any]], Any]
_OPS: dict[str, Op] = {}
# ONNX TensorProto element types that are floating point, and the integer ones torch reads as int64.
_FLOAT_TYPES = {1, 10, 11, 16}
_INT_TYPES = {2, 3, 4, 5, 6, 7, 12, 13}


class Unsupported(Exception):
    """The graph holds an op (or an attribute value) this evaluator does not implement."""


def op(*names: str) -> Callable[[Op], Op]:
    """Register an implementation of one or more ONNX ops."""
    def register(fn: Op) -> Op:
        for name in names:
            _OPS[name] = fn
        return fn

    return register


def supported(graph: Graph) -> list[str]:
    """The labels of nodes (subgraphs included) whose op this evaluator does not implement."""
    missing = []
    for node in graph.nodes:
        if node.op not in _OPS:
            missing.append(f"{node.label} ({node.op})")
        for body in node.subgraphs.values():
            missing.extend(supported(body))
    return missing


def evaluate(graph: Graph, inputs: Sequence[torch.Tensor], dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """The graph's outputs for ``inputs`` (one per graph input, in order), computed in ``dtype``."""
    run = _Run(graph, dtype, {})
    for name, value in zip(graph.inputs, inputs):
        run.values[name] = value.to(dtype) if value.is_floating_point() else value
    return run.outputs()


class _Run:
    def __init__(self, graph: Graph, dtype: torch.dtype, outer: dict[str, Any]) -> None:
        self.graph, self.dtype = graph, dtype
        self.values: dict[str, Any] = dict(outer)

    def value(self, name: str) -> Any:
        if not name:
            return None
        if name not in self.values:
            if name not in self.graph.constants:
                raise Unsupported(f"value {name!r} is neither computed nor stored")
            self.values[name] = self.tensor(self.graph.constants[name]())
        return self.values[name]

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        array = np.asarray(array)
        if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
            return torch.from_numpy(array.astype(np.float64)).to(self.dtype)
        if array.dtype.kind == "b":
            return torch.from_numpy(array.copy())
        return torch.from_numpy(array.astype(np.int64))

    def outputs(self) -> list[torch.Tensor]:
        for node in self.graph.nodes:
            fn = _OPS.get(node.op)
            if fn is None:
                raise Unsupported(f"{node.label} ({node.op}): lipcheck cannot evaluate this op")
            result = fn(self, node, [self.value(name) for name in node.inputs])
            results = result if isinstance(result, tuple) else (result,)
            for name, out in zip(node.outputs, results):
                if name:
                    self.values[name] = out
        return [self.value(name) for name in self.graph.outputs]


def _ints(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# -- elementwise -----------------------------------------------------------------------------------
_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Abs": torch.abs, "Neg": torch.neg,
    "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Erf": torch.erf,
    "Softplus": F.softplus, "Softsign": F.softsign, "Floor": torch.floor, "Ceil": torch.ceil, "Sign": torch.sign,
    "Mish": F.mish, "HardSwish": F.hardswish, "Not": torch.logical_not, "Sin": torch.sin, "Cos": torch.cos,
}


@op(*_UNARY)
def _unary(run: _Run, node: Node, ins: list[Any]) -> Any:
    return _UNARY[node.op](ins[0])


@op("Identity", "Dropout")
def _identity(run: _Run, node: Node, ins: list[Any]) -> Any:
    return ins[0] if len(node.outputs) < 2 else (ins[0], torch.ones_like(ins[0], dtype=torch.bool))


@op("LeakyRelu")
def _leaky(run: _Run, node: Node, ins: list[Any]) -> Any:
    return F.leaky_relu(ins[0], float(node.attrs.get("alpha", 0.01)))


@op("Elu", "Celu")
def _elu(run: _Run, node: Node, ins: list[Any]) -> Any:
    alpha = float(node.attrs.get("alpha", 1.0))
    return F.elu(ins[0], alpha) if node.op == "Elu" else F.celu(ins[0], alpha)


@op("Selu")
def _selu(run: _Run, node: Node, ins: list[Any]) -> Any:
    alpha, gamma = float(node.attrs.get("alpha", 1.67326319217681884765625)), float(node.attrs.get("gamma", 1.05070102214813232421875))
    x = ins[0]
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("HardSigmoid")
def _hard_sigmoid(run: _Run, node: Node, ins: list[Any]) -> Any:
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    return torch.clamp(alpha * ins[0] + beta, 0.0, 1.0)


@op("Gelu")
def _gelu(run: _Run, node: Node, ins: list[Any]) -> Any:
    approximate = node.attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    return F.gelu(ins[0], approximate=approximate)


@op("Clip")
def _clip(run: _Run, node: Node, ins: list[Any]) -> Any:
    low = ins[1] if len(ins) > 1 and ins[1] is not None else node.attrs.get("min")
    high = ins[2] if len(ins) > 2 and ins[2] is not None else node.attrs.get("max")
    x = ins[0]
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return x


@op("PRelu")
def _prelu(run: _Run, node: Node, ins: list[Any]) -> Any:
    return torch.where(ins[0] >= 0, ins[0], ins[0] * ins[1])


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "Equal": torch.eq, "Less": torch.lt,
    "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge, "And": torch.logical_and,
    "Or": torch.logical_or,
}


@op(*_BINARY)
def _binary(run: _Run, node: Node, ins: list[Any]) -> Any:
    return _BINARY[node.op](ins[0], ins[1])


@op("Div")
def _div(run: _Run, node: Node, ins: list[Any]) -> Any:
    a, b = ins
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@op("Max", "Min", "Sum", "Mean")
def _variadic(run: _Run, node: Node, ins: list[Any]) -> Any:
    out = ins[0]
    for other in ins[1:]:
        out = {"Max": torch.maximum, "Min": torch.minimum}.get(node.op, torch.add)(out, other)
    return out / len(ins) if node.op == "Mean" else out


@op("Where")
def _where(run: _Run, node: Node, ins: list[Any]) -> Any:
    return torch.where(ins[0].bool(), ins[1], ins[2])


@op("Cast", "CastLike")
def _cast(run: _Run, node: Node, ins: list[Any]) -> Any:
    to = int(node.attrs.get("to", 1)) if node.op == "Cast" else None
    floating = ins[1].is_floating_point() if node.op == "CastLike" else to in _FLOAT_TYPES
    if floating:
        return ins[0].to(run.dtype)
    if to == 9 or (node.op == "CastLike" and ins[1].dtype == torch.bool):
        return ins[0].bool()
    if node.op == "CastLike" or to in _INT_TYPES:
        return ins[0].to(torch.int64) if not ins[0].is_floating_point() else torch.trunc(ins[0]).to(torch.int64)
    raise Unsupported(f"{node.label} (Cast): to type {to}")


# -- linear maps -----------------------------------------------------------------------------------
@op("MatMul")
def _matmul(run: _Run, node: Node, ins: list[Any]) -> Any:
    return torch.matmul(ins[0], ins[1])


@op("Gemm")
def _gemm(run: _Run, node: Node, ins: list[Any]) -> Any:
    a, b = ins[0], ins[1]
    if int(node.attrs.get("transA", 0)):
        a = a.T
    if int(node.attrs.get("transB", 0)):
        b = b.T
    out = float(node.attrs.get("alpha", 1.0)) * (a @ b)
    if len(ins) > 2 and ins[2] is not None:
        out = out + float(node.attrs.get("beta", 1.0)) * ins[2]
    return out


@op("Einsum")
def _einsum(run: _Run, node: Node, ins: list[Any]) -> Any:
    equation = node.attrs["equation"]
    return torch.einsum(equation.decode() if isinstance(equation, bytes) else equation, *ins)


def _pads(node: Node, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """Begin-then-end pads, ONNX order, with auto_pad resolved."""
    spatial = x.dim() - 2
    auto = node.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        return _ints(node.attrs.get("pads")) or [0] * (2 * spatial)
    if auto == "VALID":
        return [0] * (2 * spatial)
    begin, end = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        out = -(-int(size) // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - int(size))
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _padded(x: torch.Tensor, pads: list[int], value: float = 0.0) -> torch.Tensor:
    spatial = len(pads) // 2
    order: list[int] = []
    for i in reversed(range(spatial)):
        order += [pads[i], pads[i + spatial]]
    return F.pad(x, order, value=value) if any(order) else x


@op("Conv")
def _conv(run: _Run, node: Node, ins: list[Any]) -> Any:
    x, w = ins[0], ins[1]
    spatial = x.dim() - 2
    strides = _ints(node.attrs.get("strides")) or [1] * spatial
    dilations = _ints(node.attrs.get("dilations")) or [1] * spatial
    kernel = _ints(node.attrs.get("kernel_shape")) or list(w.shape[2:])
    x = _padded(x, _pads(node, x, kernel, strides, dilations))
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    bias = ins[2] if len(ins) > 2 else None
    return conv(x, w, bias, stride=strides, dilation=dilations, groups=int(node.attrs.get("group", 1)))


@op("ConvTranspose")
def _conv_transpose(run: _Run, node: Node, ins: list[Any]) -> Any:
    x, w = ins[0], ins[1]
    spatial = x.dim() - 2
    auto = node.attrs.get("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else str(auto)) not in ("NOTSET", "") or "output_shape" in node.attrs:
        raise Unsupported(f"{node.label} (ConvTranspose): auto_pad or output_shape")
    strides = _ints(node.attrs.get("strides")) or [1] * spatial
    dilations = _ints(node.attrs.get("dilations")) or [1] * spatial
    pads = _ints(node.attrs.get("pads")) or [0] * (2 * spatial)
    extra = _ints(node.attrs.get("output_padding")) or [0] * spatial
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    bias = ins[2] if len(ins) > 2 else None
    out = conv(x, w, bias, stride=strides, dilation=dilations, groups=int(node.attrs.get("group", 1)),
               output_padding=extra)
    index = [slice(None), slice(None)] + [slice(b, out.shape[2 + i] - e) for i, (b, e) in
                                          enumerate(zip(pads[:spatial], pads[spatial:]))]
    return out[tuple(index)]


@op("BatchNormalization")
def _batch_norm(run: _Run, node: Node, ins: list[Any]) -> Any:
    x, scale, bias, mean, var = ins[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    eps = float(node.attrs.get("epsilon", 1e-5))
    return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)


@op("InstanceNormalization")
def _instance_norm(run: _Run, node: Node, ins: list[Any]) -> Any:
    x, scale, bias = ins
    return F.instance_norm(x, weight=scale, bias=bias, eps=float(node.attrs.get("epsilon", 1e-5)))


@op("LayerNormalization")
def _layer_norm(run: _Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axis = _axis(int(node.attrs.get("axis", -1)), x.dim())
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    out = (x - mean) / torch.sqrt(var + float(node.attrs.get("epsilon", 1e-5))) * ins[1]
    return out + ins[2] if len(ins) > 2 and ins[2] is not None else out


# -- pools and reductions --------------------------------------------------------------------------
@op("MaxPool", "AveragePool")
def _pool(run: _Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    spatial = x.dim() - 2
    kernel = _ints(node.attrs["kernel_shape"])
    strides = _ints(node.attrs.get("strides")) or [1] * spatial
    dilations = _ints(node.attrs.get("dilations")) or [1] * spatial
    pads = _pads(node, x, kernel, strides, dilations)
    ceil = bool(int(node.attrs.get("ceil_mode", 0)))
    if node.op == "MaxPool":
        if len(node.outputs) > 1 and node.outputs[1]:
            raise Unsupported(f"{node.label} (MaxPool): indices output")
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
        return pool(_padded(x, pads, -math.inf), kernel, strides, 0, dilations, ceil_mode=ceil)
    if any(d != 1 for d in dilations):
        raise Unsupported(f"{node.label} (AveragePool): dilations")
    padded = _padded(x, pads)
    avg = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
    total = avg(padded, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if int(node.attrs.get("count_include_pad", 0)) or not any(pads):
        return total
    count = avg(_padded(torch.ones_like(x[:1, :1]), pads), kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    return total / count


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(run: _Run, node: Node, ins: list[Any]) -> Any:
    dims = tuple(range(2, ins[0].dim()))
    return ins[0].mean(dim=dims, keepdim=True) if node.op == "GlobalAveragePool" else ins[0].amax(dim=dims, keepdim=True)


@op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare")
def _reduce(run: _Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else _ints(node.attrs.get("axes"))
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return x
        axes = list(range(x.dim()))
    dims = tuple(_axis(a, x.dim()) for a in axes)
    keep = bool(int(node.attrs.get("keepdims", 1)))
    if node.op == "ReduceMean":
        return x.mean(dim=dims, keepdim=keep)
    if node.op == "ReduceSum":
        return x.sum(dim=dims, keepdim=keep)
    if node.op == "ReduceSumSquare":
        return (x * x).sum(dim=dims, keepdim=keep)
    if node.op == "ReduceL2":
        return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
    return x.amax(dim=dims, keepdim=keep) if node.op == "ReduceMax" else x.amin(dim=dims, keepdim=keep)


@op("Softmax", "LogSoftmax")
def _softmax(run: _Run, node: Node, ins: list[Any]) -> Any:
    axis = int(node.attrs.get("axis", -1))
    return F.softmax(ins[0], dim=axis) if node.op == "Softmax" else F.log_softmax(ins[0], dim=axis)


# -- shapes and data movement ------------------------------------------------------------------------
@op("Reshape")
def _reshape(run: _Run, node: Node, ins: list[Any]) -> Any:
    x, shape = ins[0], _ints(ins[1])
    if not int(node.attrs.get("allowzero", 0)):
        shape = [int(x.shape[i]) if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def _flatten(run: _Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axis = _axis(int(node.attrs.get("axis", 1)), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), -1)


@op("Transpose")
def _transpose(run: _Run, node: Node, ins: list[Any]) -> Any:
    perm = _ints(node.attrs.get("perm")) or list(reversed(range(ins[0].dim())))
    return ins[0].permute(perm)


@op("Squeeze", "Unsqueeze")
def _squeeze(run: _Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else _ints(node.attrs.get("axes"))
    if node.op == "Squeeze":
        dims = [_axis(a, x.dim()) for a in axes] or [i for i, s in enumerate(x.shape) if s == 1]
        return x.reshape([s for i, s in enumerate(x.shape) if i not in dims])
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


@op("Concat")
def _concat(run: _Run, node: Node, ins: list[Any]) -> Any:
    return torch.cat([t for t in ins if t is not None], dim=int(node.attrs["axis"]))


@op("Split")
def _split(run: _Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axis = _axis(int(node.attrs.get("axis", 0)), x.dim())
    sizes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else _ints(node.attrs.get("split"))
    if not sizes:
        parts = len(node.outputs)
        step = -(-int(x.shape[axis]) // parts)
        sizes = [min(step, int(x.shape[axis]) - i * step) for i in range(parts)]
    return tuple(torch.split(x, sizes, dim=axis))


@op("Slice")
def _slice(run: _Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    if len(ins) == 1:  # opset < 10: starts, ends and axes are attributes
        starts, ends = _ints(node.attrs.get("starts")), _ints(node.attrs.get("ends"))
        axes = _ints(node.attrs.get("axes")) or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, x.dim())
        size = int(x.shape[axis])
        if step < 0:
            lo = max(-1, min(size - 1, start + size if start < 0 else start))
            hi = max(-1, min(size - 1, end + size if end < 0 else end))
            x = x.index_select(axis, torch.arange(lo, hi, step))
        else:
            lo = max(0, min(size, start + size if start < 0 else start))
            hi = max(0, min(size, end + size if end < 0 else end))
            x = x[(slice(None),) * axis + (slice(lo, hi, step),)]
    return x


@op("Gather")
def _gather(run: _Run, node: Node, ins: list[Any]) -> Any:
    x, index = ins
    axis = _axis(int(node.attrs.get("axis", 0)), x.dim())
    index = torch.where(index < 0, index + x.shape[axis], index)
    out = x.index_select(axis, index.reshape(-1))
    return out.reshape(*x.shape[:axis], *index.shape, *x.shape[axis + 1:])


@op("Shape")
def _shape(run: _Run, node: Node, ins: list[Any]) -> Any:
    dims = list(ins[0].shape)
    start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
    return torch.tensor(dims[start:None if end is None else int(end)], dtype=torch.int64)


@op("Size")
def _size(run: _Run, node: Node, ins: list[Any]) -> Any:
    return torch.tensor(ins[0].numel(), dtype=torch.int64)


@op("Constant")
def _constant(run: _Run, node: Node, ins: list[Any]) -> Any:
    from onnx import numpy_helper

    for key in ("value", "sparse_value"):
        if key in node.attrs:
            return run.tensor(numpy_helper.to_array(node.attrs[key]))
    for key, dtype in (("value_float", np.float64), ("value_floats", np.float64), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in node.attrs:
            return run.tensor(np.asarray(node.attrs[key], dtype=dtype))
    raise Unsupported(f"{node.label} (Constant): a string constant")


@op("ConstantOfShape")
def _constant_of_shape(run: _Run, node: Node, ins: list[Any]) -> Any:
    from onnx import numpy_helper

    fill = numpy_helper.to_array(node.attrs["value"]) if "value" in node.attrs else np.zeros(1, np.float32)
    return run.tensor(np.full(_ints(ins[0]), fill.reshape(-1)[0], dtype=fill.dtype))


@op("Expand")
def _expand(run: _Run, node: Node, ins: list[Any]) -> Any:
    shape = torch.broadcast_shapes(tuple(ins[0].shape), tuple(_ints(ins[1])))
    return ins[0].expand(shape)


@op("Tile")
def _tile(run: _Run, node: Node, ins: list[Any]) -> Any:
    return ins[0].repeat(_ints(ins[1]))


@op("Range")
def _range(run: _Run, node: Node, ins: list[Any]) -> Any:
    start, limit, delta = (t.item() for t in ins)
    dtype = ins[0].dtype
    return torch.arange(start, limit, delta, dtype=dtype)


@op("Pad")
def _pad(run: _Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    pads = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else _ints(node.attrs.get("pads"))
    if len(ins) > 3 and ins[3] is not None:
        raise Unsupported(f"{node.label} (Pad): axes input")
    mode = node.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    value = float(ins[2].reshape(-1)[0]) if len(ins) > 2 and ins[2] is not None and ins[2].numel() else \
        float(node.attrs.get("value", 0.0))
    rank = x.dim()
    order: list[int] = []
    for i in reversed(range(rank)):
        order += [pads[i], pads[i + rank]]
    while len(order) > 2 and order[-2:] == [0, 0]:
        order = order[:-2]
    if mode == "constant":
        return F.pad(x, order, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return F.pad(x, order, mode=torch_mode)


@op("Resize", "Upsample")
def _resize(run: _Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    mode = node.attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    transform = node.attrs.get("coordinate_transformation_mode", b"half_pixel")
    transform = transform.decode() if isinstance(transform, bytes) else str(transform)
    scales = ins[1] if node.op == "Upsample" else (ins[2] if len(ins) > 2 else None)
    sizes = ins[3] if node.op == "Resize" and len(ins) > 3 else None
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
    elif scales is not None and scales.numel():
        size = [int(math.floor(float(n) * float(s))) for n, s in zip(x.shape[2:], scales.reshape(-1).tolist()[2:])]
    else:
        raise Unsupported(f"{node.label} ({node.op}): neither scales nor sizes")
    if mode == "nearest" and transform in ("asymmetric", "half_pixel") and node.attrs.get(
            "nearest_mode", b"round_prefer_floor") in (b"floor", "floor") or (mode == "nearest" and node.op == "Upsample"):
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners") and x.dim() in (3, 4, 5):
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        return F.interpolate(x, size=size, mode=torch_mode, align_corners=transform == "align_corners")
    raise Unsupported(f"{node.label} ({node.op}): mode {mode} with {transform} coordinates")


@op("If")
def _if(run: _Run, node: Node, ins: list[Any]) -> Any:
    branch = node.subgraphs["then_branch" if bool(ins[0].reshape(-1)[0]) else "else_branch"]
    inner = _Run(branch, run.dtype, run.values)
    for name in node.captures:
        if name not in inner.values:
            inner.values[name] = run.value(name)
    outs = inner.outputs()
    return tuple(outs) if len(outs) > 1 else outs[0]
