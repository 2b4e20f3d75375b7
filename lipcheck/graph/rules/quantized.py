"""Quantization: every quantized tensor stands for its dequantized float value scale·(q − zero point).

Quantize/Dequantize pairs are then the identity up to rounding, which the bound does not count
(it says so in its notes); quantized layers are bounded by their dequantized float weight.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.rules import rule

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

ROUNDING = (
    "quantized: each quantized tensor is taken as its dequantized value scale·(q − zero point), so "
    "Quantize/Dequantize pairs are the identity; the rounding to the integer grid (at most scale/2 "
    "per entry, a constant offset, not a slope) is not counted"
)


@rule("QuantizeLinear", "DequantizeLinear")
def quantize(walk: Walk, node: Node, ins: list[float]) -> float:
    """The identity on dequantized values (rounding noted)."""
    if len(ins) > 1 and any(lip > 0.0 for lip in ins[1:]):
        return walk.unbounded(node, "a quantization scale that depends on the input")
    walk.note(ROUNDING)
    return ins[0]


@rule("DynamicQuantizeLinear")
def dynamic_quantize(walk: Walk, node: Node, ins: list[float]) -> tuple[float, ...]:
    """The quantized tensor stands for the input; its scale and zero point depend on the input.

    They are left unbounded here: a consumer that multiplies an integer product back by that
    scale is recognised in :func:`rescaled` and treated as the dequantization it is.
    """
    walk.note(ROUNDING)
    return (ins[0], math.inf, math.inf)[: len(node.outputs)]


def rescaled(walk: Walk, node: Node) -> float | None:
    """``Mul(int product, input scale · weight scale)`` after MatMulInteger/ConvInteger: the dequantization.

    The layer's weight already includes the weight scale where the reader found it (the node is
    then in ``graph.dequantize``); otherwise the weight scale's max|c| multiplies here.
    """
    for i, j in ((0, 1), (1, 0)):
        product = _through_bias(walk, _through(walk, node.inputs[i], ("Cast",)))
        source = walk.find(product) if product else None
        if source is None or source.op not in ("MatMulInteger", "ConvInteger"):
            continue
        dyn = walk.find(source.inputs[0])
        if dyn is None or dyn.op != "DynamicQuantizeLinear":
            continue
        factor = _scale_factor(walk, node.inputs[j], dyn.outputs[1])
        if factor is None:
            continue
        if node.label in walk.graph.dequantize:
            factor = 1.0
        return factor * walk.of(product)
    return None


def _through(walk: Walk, name: str, ops: tuple[str, ...]) -> str:
    node = walk.find(name)
    while node is not None and node.op in ops:
        name = node.inputs[0]
        node = walk.find(name)
    return name


def _through_bias(walk: Walk, name: str) -> str:
    """Past ``Add(int product, quantized bias)``: the bias is a constant on the integer grid (see :func:`quantized_bias`)."""
    node = walk.find(name)
    if node is not None and node.op == "Add":
        for i, j in ((0, 1), (1, 0)):
            if walk.of(node.inputs[j]) == 0.0:
                return _through(walk, node.inputs[i], ("Cast",))
    return name


def quantized_bias(walk: Walk, node: Node) -> bool:
    """Whether ``node`` divides a constant by a dynamic quantization scale (times constants).

    Exporters quantize a layer's float bias b as floor(b / (s_x·s_w)) on the integer grid of the
    product and multiply the sum back by s_x·s_w: the bias term is then b up to one grid step, a
    bounded offset like every other rounding here, so it counts as the constant b.
    """
    if node.op != "Div" or walk.of(node.inputs[0]) != 0.0:
        return False
    return any(
        candidate.op == "DynamicQuantizeLinear" and _scale_factor(walk, node.inputs[1], candidate.outputs[1]) is not None for candidate in walk.graph.nodes
    )


def _scale_factor(walk: Walk, name: str, scale: str) -> float | None:
    """``name`` = the dynamic scale times constants: max|constants|; None when it is something else."""
    if name == scale:
        return 1.0
    node = walk.find(name)
    if node is None or node.op != "Mul":
        return None
    for i, j in ((0, 1), (1, 0)):
        c = walk.const(node.inputs[j])
        inner = _scale_factor(walk, node.inputs[i], scale)
        if c is not None and inner is not None:
            return inner * (float(np.abs(c).max()) if c.size else 0.0)
    return None
