"""ONNX layers whose weights are stored quantized or stacked: QLinear/Integer ops and recurrent cells.

Integer weights are dequantized as scale·(q − zero point), per tensor or per output channel;
MatMulInteger and ConvInteger carry no weight scale, so it is found in the Mul after the product
(and that Mul is then known to the walk as a rescaling already inside the layer). LSTM/GRU/RNN
weights are reported per direction, stacked and per gate, int8 DynamicQuantizeLSTM ones dequantized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from onnx import NodeProto

from lipcheck.formats import recurrent
from lipcheck.formats.onnx_consts import dequantize, to_torch

if TYPE_CHECKING:
    from lipcheck.formats.onnx_graph import _Const, _Reader, _Scope

# (weight, scale, zero point) input positions; None: the scale is applied after the product.
_POSITIONS: dict[str, tuple[int, int | None, int]] = {
    "QLinearConv": (3, 4, 5),
    "QLinearMatMul": (3, 4, 5),
    "MatMulInteger": (1, None, 3),
    "ConvInteger": (1, None, 3),
}
QUANTIZED = set(_POSITIONS)


def recurrent_layers(reader: _Reader, scope: _Scope, node: NodeProto, label: str, consts: list[_Const | None]) -> None:
    """LSTM/GRU/RNN: W (input) and R (hidden) per direction, stacked and per gate; int8 ones dequantized."""
    op, gates = node.op_type, recurrent.ONNX_GATES[node.op_type]
    quantized = op == "DynamicQuantizeLSTM"  # W, R stored (directions, in, 4H) with scales and zero points
    for at, kind, scale_at in ((1, "W", 8), (2, "R", 10)):
        const = consts[at] if len(consts) > at else None
        if const is None or len(const.value_shape) != 3:
            continue
        scale = consts[scale_at] if quantized and len(consts) > scale_at else None
        zero = consts[scale_at + 1] if quantized and len(consts) > scale_at + 1 else None
        reader.layer_sources.add((reader.owner(scope, const.source), const.source))
        for d in range(const.value_shape[0]):

            def load(c: _Const = const, d: int = d, s: _Const | None = scale, z: _Const | None = zero) -> torch.Tensor:
                w = c.array()[d]
                if quantized:
                    sc = s.array()[d] if s is not None else np.ones(())
                    zp = z.array()[d] if z is not None else None
                    w = dequantize(w, sc, zp, -1, 0).T
                return to_torch(w)

            shape = const.value_shape[1:][::-1] if quantized else const.value_shape[1:]
            name = const.source if const.value_shape[0] == 1 else f"{const.source}[{('forward', 'reverse')[d]}]"
            how = ", dequantized scale·(q − zero point)" if quantized else ""
            reader.layers.extend(
                recurrent.layers(name, op, gates, tuple(shape), const.dtype, load, f"node {label}: {op} {kind}{how}", scope=scope.path, node=label)
            )


def quantized_layer(reader: _Reader, scope: _Scope, node: NodeProto, label: str, consts: list[_Const | None], attrs: dict[str, Any]) -> None:
    """Integer and QLinear layers: the weight dequantized as scale·(q − zero point), per tensor or channel."""
    op = node.op_type
    w_at, scale_at, zero_at = _POSITIONS[op]
    weight = consts[w_at] if len(consts) > w_at else None
    if weight is None or consts[0] is not None:
        return
    zero = consts[zero_at] if len(consts) > zero_at else None
    scale = consts[scale_at] if scale_at is not None else None
    mul = None
    if scale is None:  # MatMulInteger/ConvInteger: the weight scale is multiplied in after the product
        scale, mul = _weight_scale(reader, scope, node)
    conv = op in ("QLinearConv", "ConvInteger")
    axis = 0 if conv else 1

    def load(w: _Const = weight, z: _Const | None = zero, sc: _Const | None = scale) -> np.ndarray:
        q = w.array()
        zp = z.array() if z is not None else None
        s = sc.array() if sc is not None else np.ones(())
        return dequantize(q, s, zp, axis, 0)

    how = "dequantized scale·(q − zero point)" if scale is not None else "q − zero point (no weight scale found)"
    if mul is not None:
        reader.dequantize.add(mul)
    if conv:
        reader.conv(scope, node, label, weight, attrs, load=load, note=f"node {label}: {op}, {how}")
    elif len(weight.value_shape) == 2:
        reader.add(scope, weight, "matmul", lambda: load().T, note=f"node {label}: {op}, {how}")


def _weight_scale(reader: _Reader, scope: _Scope, node: NodeProto) -> tuple[_Const | None, str | None]:
    """After MatMulInteger: Cast, then Mul by (input scale · weight scale); the weight scale and that Mul."""
    consumers = _consumers(scope)
    name = node.output[0]
    for _ in range(2):
        users = consumers.get(name, [])
        if len(users) != 1:
            return None, None
        user = users[0]
        if user.op_type == "Cast":
            name = user.output[0]
            continue
        if user.op_type != "Mul":
            return None, None
        other = user.input[1] if user.input[0] == name else user.input[0]
        scale_mul = reader.producer(scope, other)
        if scale_mul is None or scale_mul.op_type != "Mul":
            return None, None
        for candidate in scale_mul.input:
            const = reader.resolve(scope, candidate)
            if const is not None:
                local = reader.labels[id(user)]
                return const, f"{scope.path}/{local}" if scope.path else local
        return None, None
    return None, None


def _consumers(scope: _Scope) -> dict[str, list[NodeProto]]:
    found: dict[str, list[NodeProto]] = {}
    seen: set[int] = set()
    for node in scope.producers.values():
        if id(node) in seen:
            continue
        seen.add(id(node))
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found
