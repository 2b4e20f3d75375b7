"""ONNX's elementwise ops, linear maps, normalizations, pools and reductions, run in torch."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lipcheck.graph.ir import Node
from lipcheck.graph.torch_eval import Run, Unsupported, axis_of, ints, op

# ONNX TensorProto element types that are floating point, and the integer ones torch reads as int64.
_FLOAT_TYPES = {1, 10, 11, 16}
_INT_TYPES = {2, 3, 4, 5, 6, 7, 12, 13}

# -- elementwise -----------------------------------------------------------------------------------
_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Softplus": F.softplus,
    "Softsign": F.softsign,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Sign": torch.sign,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
    "Not": torch.logical_not,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Atan": torch.atan,
    "Asinh": torch.asinh,
}


@op(*_UNARY)
def _unary(run: Run, node: Node, ins: list[Any]) -> Any:
    if node.op == "Relu" and run.smooth is not None:
        return F.softplus(ins[0], beta=run.smooth)
    return _UNARY[node.op](ins[0])


@op("Identity", "Dropout")
def _identity(run: Run, node: Node, ins: list[Any]) -> Any:
    return ins[0] if len(node.outputs) < 2 else (ins[0], torch.ones_like(ins[0], dtype=torch.bool))


@op("LeakyRelu")
def _leaky(run: Run, node: Node, ins: list[Any]) -> Any:
    alpha = float(node.attrs.get("alpha", 0.01))
    if run.smooth is not None:
        return alpha * ins[0] + (1.0 - alpha) * F.softplus(ins[0], beta=run.smooth)
    return F.leaky_relu(ins[0], alpha)


@op("Elu", "Celu")
def _elu(run: Run, node: Node, ins: list[Any]) -> Any:
    alpha = float(node.attrs.get("alpha", 1.0))
    return F.elu(ins[0], alpha) if node.op == "Elu" else F.celu(ins[0], alpha)


@op("Selu")
def _selu(run: Run, node: Node, ins: list[Any]) -> Any:
    alpha, gamma = float(node.attrs.get("alpha", 1.67326319217681884765625)), float(node.attrs.get("gamma", 1.05070102214813232421875))
    x = ins[0]
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("HardSigmoid")
def _hard_sigmoid(run: Run, node: Node, ins: list[Any]) -> Any:
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    return torch.clamp(alpha * ins[0] + beta, 0.0, 1.0)


@op("Gelu")
def _gelu(run: Run, node: Node, ins: list[Any]) -> Any:
    approximate = node.attrs.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    return F.gelu(ins[0], approximate=approximate)


@op("Clip")
def _clip(run: Run, node: Node, ins: list[Any]) -> Any:
    low = ins[1] if len(ins) > 1 and ins[1] is not None else node.attrs.get("min")
    high = ins[2] if len(ins) > 2 and ins[2] is not None else node.attrs.get("max")
    x = ins[0]
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return x


@op("PRelu")
def _prelu(run: Run, node: Node, ins: list[Any]) -> Any:
    return torch.where(ins[0] >= 0, ins[0], ins[0] * ins[1])


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
}


@op(*_BINARY)
def _binary(run: Run, node: Node, ins: list[Any]) -> Any:
    return _BINARY[node.op](ins[0], ins[1])


@op("Div")
def _div(run: Run, node: Node, ins: list[Any]) -> Any:
    a, b = ins
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@op("Max", "Min", "Sum", "Mean")
def _variadic(run: Run, node: Node, ins: list[Any]) -> Any:
    out = ins[0]
    for other in ins[1:]:
        out = {"Max": torch.maximum, "Min": torch.minimum}.get(node.op, torch.add)(out, other)
    return out / len(ins) if node.op == "Mean" else out


@op("Where")
def _where(run: Run, node: Node, ins: list[Any]) -> Any:
    return torch.where(ins[0].bool(), ins[1], ins[2])


@op("Cast", "CastLike")
def _cast(run: Run, node: Node, ins: list[Any]) -> Any:
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
def _matmul(run: Run, node: Node, ins: list[Any]) -> Any:
    return torch.matmul(ins[0], ins[1])


@op("Gemm")
def _gemm(run: Run, node: Node, ins: list[Any]) -> Any:
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
def _einsum(run: Run, node: Node, ins: list[Any]) -> Any:
    equation = node.attrs["equation"]
    return torch.einsum(equation.decode() if isinstance(equation, bytes) else equation, *ins)


def _pads(node: Node, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """Begin-then-end pads, ONNX order, with auto_pad resolved."""
    spatial = x.dim() - 2
    auto = node.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        return ints(node.attrs.get("pads")) or [0] * (2 * spatial)
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
def _conv(run: Run, node: Node, ins: list[Any]) -> Any:
    x, w = ins[0], ins[1]
    spatial = x.dim() - 2
    strides = ints(node.attrs.get("strides")) or [1] * spatial
    dilations = ints(node.attrs.get("dilations")) or [1] * spatial
    kernel = ints(node.attrs.get("kernel_shape")) or list(w.shape[2:])
    x = _padded(x, _pads(node, x, kernel, strides, dilations))
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    bias = ins[2] if len(ins) > 2 else None
    return conv(x, w, bias, stride=strides, dilation=dilations, groups=int(node.attrs.get("group", 1)))


@op("ConvTranspose")
def _conv_transpose(run: Run, node: Node, ins: list[Any]) -> Any:
    x, w = ins[0], ins[1]
    spatial = x.dim() - 2
    auto = node.attrs.get("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else str(auto)) not in ("NOTSET", "") or "output_shape" in node.attrs:
        raise Unsupported(f"{node.label} (ConvTranspose): auto_pad or output_shape")
    strides = ints(node.attrs.get("strides")) or [1] * spatial
    dilations = ints(node.attrs.get("dilations")) or [1] * spatial
    pads = ints(node.attrs.get("pads")) or [0] * (2 * spatial)
    extra = ints(node.attrs.get("output_padding")) or [0] * spatial
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    bias = ins[2] if len(ins) > 2 else None
    out = conv(x, w, bias, stride=strides, dilation=dilations, groups=int(node.attrs.get("group", 1)), output_padding=extra)
    index = [slice(None), slice(None)] + [slice(b, out.shape[2 + i] - e) for i, (b, e) in enumerate(zip(pads[:spatial], pads[spatial:]))]
    return out[tuple(index)]


@op("BatchNormalization")
def _batch_norm(run: Run, node: Node, ins: list[Any]) -> Any:
    x, scale, bias, mean, var = ins[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    eps = float(node.attrs.get("epsilon", 1e-5))
    return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)


@op("InstanceNormalization")
def _instance_norm(run: Run, node: Node, ins: list[Any]) -> Any:
    x, scale, bias = ins
    return F.instance_norm(x, weight=scale, bias=bias, eps=float(node.attrs.get("epsilon", 1e-5)))


@op("LayerNormalization")
def _layer_norm(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axis = axis_of(int(node.attrs.get("axis", -1)), x.dim())
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    out = (x - mean) / torch.sqrt(var + float(node.attrs.get("epsilon", 1e-5))) * ins[1]
    return out + ins[2] if len(ins) > 2 and ins[2] is not None else out


# -- pools and reductions --------------------------------------------------------------------------
@op("MaxPool", "AveragePool")
def _pool(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    spatial = x.dim() - 2
    kernel = ints(node.attrs["kernel_shape"])
    strides = ints(node.attrs.get("strides")) or [1] * spatial
    dilations = ints(node.attrs.get("dilations")) or [1] * spatial
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
def _global_pool(run: Run, node: Node, ins: list[Any]) -> Any:
    dims = tuple(range(2, ins[0].dim()))
    return ins[0].mean(dim=dims, keepdim=True) if node.op == "GlobalAveragePool" else ins[0].amax(dim=dims, keepdim=True)


@op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare")
def _reduce(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else ints(node.attrs.get("axes"))
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return x
        axes = list(range(x.dim()))
    dims = tuple(axis_of(a, x.dim()) for a in axes)
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
def _softmax(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    if node.attrs.get("coerced_2d"):  # opsets before 13: one softmax over the trailing axes from axis
        axis = int(node.attrs.get("axis", 1)) % max(x.dim(), 1)
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        out = F.softmax(flat, dim=1) if node.op == "Softmax" else F.log_softmax(flat, dim=1)
        return out.reshape(x.shape)
    axis = int(node.attrs.get("axis", -1))
    return F.softmax(x, dim=axis) if node.op == "Softmax" else F.log_softmax(x, dim=axis)
