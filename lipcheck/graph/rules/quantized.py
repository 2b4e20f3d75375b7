"""Quantization: bounds are on the tensors' own values, integer tensors included, rounding aside.

QuantizeLinear divides by its scale and DequantizeLinear multiplies by it, so a Quantize/Dequantize
pair with one scale is the identity up to rounding; QLinearMatMul and QLinearConv are their
dequantized float weight times input scale over output scale. Dynamic quantization
(DynamicQuantizeLinear) picks its scale from the input's range, so its integer output is not
Lipschitz in the input; it is bounded only where the integer product is multiplied back by that
same scale (onnxruntime's quantize_dynamic: MatMulInteger or ConvInteger with the input's own zero
point, Cast, Mul by the scale times the weight scale), which is the float layer up to rounding.
Rounding to the integer grid (at most half a scale step per entry) is not counted, and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.rules import rule

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

ROUNDING = "quantized: rounding to the integer grid (at most half a scale step per entry, so the bound holds up to that additive offset) is not counted"
DYNAMIC = (
    "dynamic quantization: the integer output scales with the input's own range, so it is bounded only "
    "where an integer product is multiplied back by the same dynamic scale"
)


def _scale(walk: Walk, name: str) -> np.ndarray | None:
    c = walk.const(name) if name else None
    return c if c is not None and c.size and bool(np.all(np.isfinite(c))) and bool(np.all(c != 0.0)) else None


@rule("QuantizeLinear", "DequantizeLinear")
def quantize(walk: Walk, node: Node, ins: list[float]) -> float:
    """Quantize: 1/min|scale| times; Dequantize: max|scale| times (a dynamic quantization's own scale: its input)."""
    if node.op == "DequantizeLinear":
        source = walk.find(node.inputs[0])
        if (
            source is not None
            and source.op == "DynamicQuantizeLinear"
            and node.inputs[1] == source.outputs[1]
            and len(node.inputs) > 2
            and node.inputs[2] == source.outputs[2]
        ):
            walk.forgive([source.label])
            walk.note(ROUNDING)
            return walk.of(source.inputs[0])
    if any(lip > 0.0 for lip in ins[1:]):
        return walk.unbounded(node, "a quantization scale or zero point that depends on the input")
    scale = _scale(walk, node.inputs[1])
    if scale is None:
        return walk.unbounded(node, "a quantization scale lipcheck could not read")
    walk.note(ROUNDING)
    magnitude = np.abs(scale)
    return ins[0] / float(magnitude.min()) if node.op == "QuantizeLinear" else ins[0] * float(magnitude.max())


@rule("DynamicQuantizeLinear")
def dynamic_quantize(walk: Walk, node: Node, ins: list[float]) -> tuple[float, ...]:
    """Unbounded outputs: see :func:`rescaled` for the pattern that dequantizes them."""
    walk.unbounded(node, DYNAMIC)
    return (float("inf"),) * len(node.outputs)


def qlinear_factor(walk: Walk, node: Node, ins: list[float]) -> float | None:
    """QLinearMatMul/QLinearConv: input scale over output scale (their dequantized weight is the layer), or None."""
    if any(lip > 0.0 for i, lip in enumerate(ins) if i not in (0, 3)):
        walk.unbounded(node, "quantization parameters or a bias that depend on the input")
        return None
    a, y = _scale(walk, node.inputs[1]), _scale(walk, node.inputs[6]) if len(node.inputs) > 6 else None
    if a is None or y is None or a.size != 1 or y.size != 1:
        walk.unbounded(node, "per-tensor input and output scales lipcheck could not read")
        return None
    walk.note(ROUNDING)
    return abs(float(a.reshape(()))) / abs(float(y.reshape(())))


def rescaled(walk: Walk, node: Node) -> float | None:
    """``Mul(Cast(int product), dynamic scale · weight scale)`` after MatMulInteger/ConvInteger of a
    DynamicQuantizeLinear output with its own zero point: the float layer applied to the quantized input.

    The layer's weight includes the weight scale where the reader folded it (the Mul is then in
    ``graph.dequantize`` and its factor must be exactly scale · one constant); otherwise the
    constants' max|c| multiplies here. A float bias added to the integer product must be a constant
    divided by the same scale times constants (a bias quantized on the product's grid).
    """
    for i, j in ((0, 1), (1, 0)):
        seen: list[str] = []
        product = _through(walk, node.inputs[i], ("Cast",), seen)
        add = walk.find(product)
        bias: Node | None = None
        if add is not None and add.op == "Add":
            for a, b in ((0, 1), (1, 0)):
                candidate = walk.find(_through(walk, add.inputs[b], ("Cast", "Floor", "Round"), seen))
                if candidate is not None and candidate.op == "Div" and walk.of(candidate.inputs[0]) == 0.0:
                    bias, product = candidate, _through(walk, add.inputs[a], ("Cast",), seen)
                    seen.append(add.label)
                    break
        source = walk.find(product)
        if source is None or source.op not in ("MatMulInteger", "ConvInteger") or source.label not in walk.graph.layer_nodes:
            continue
        dyn = walk.find(source.inputs[0])
        if dyn is None or dyn.op != "DynamicQuantizeLinear" or len(source.inputs) < 3 or source.inputs[2] != dyn.outputs[2]:
            continue
        if len(source.inputs) > 3 and source.inputs[3] and walk.const(source.inputs[3]) is None:
            continue  # the weight's zero point must be a constant
        folded = node.label in walk.graph.dequantize
        factor = _scale_factor(walk, node.inputs[j], dyn.outputs[1], exact=folded)
        if factor is None or (bias is not None and _scale_factor(walk, bias.inputs[1], dyn.outputs[1]) is None):
            continue
        upper = walk.uppers[walk.graph.layer_nodes[source.label]]
        if upper is None:
            continue
        walk.forgive([dyn.label, source.label, *seen] + ([bias.label] if bias is not None else []))
        walk.note(ROUNDING)
        data = walk.of(dyn.inputs[0])
        return 0.0 if upper == 0.0 else (1.0 if folded else factor) * upper * data
    return None


def _through(walk: Walk, name: str, ops: tuple[str, ...], seen: list[str] | None = None) -> str:
    node = walk.find(name)
    while node is not None and node.op in ops:
        if seen is not None:
            seen.append(node.label)
        name = node.inputs[0]
        node = walk.find(name)
    return name


def _scale_factor(walk: Walk, name: str, scale: str, exact: bool = False) -> float | None:
    """``name`` = the dynamic scale times constants: the constants' product of max|c|; None when it is
    something else. ``exact``: only the scale times one constant (the one folded into the layer)."""
    if name == scale:
        return None if exact else 1.0
    node = walk.find(name)
    if node is None or node.op != "Mul":
        return None
    for i, j in ((0, 1), (1, 0)):
        c = walk.const(node.inputs[j])
        if c is None:
            continue
        if exact:
            return 1.0 if node.inputs[i] == scale else None
        inner = _scale_factor(walk, node.inputs[i], scale)
        if inner is not None:
            return inner * (float(np.abs(c).max()) if c.size else 0.0)
    return None
