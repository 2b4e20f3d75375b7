"""Layers and arithmetic: weights, sums, products with constants, concatenation, gathers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.rules import rule

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

_PRODUCT = "a product of two activations (as in attention) is not globally Lipschitz"
# A value no input reaches through its values (shapes, sizes, constants) whose value folding did not produce.
UNKNOWN_FACTOR = (
    "that does not depend on the input's values but that lipcheck could not evaluate (computed from "
    "shapes while the input size is open, or too large or unsupported to fold): pass --input-shape"
)
UNSURE_BROADCAST = (
    "dimensions of unknown size (dynamic axes) meeting in an elementwise op are taken as equal, not "
    "broadcast (copied) into a larger output; pass --input-shape to check"
)
_UNKNOWN_RANK = (
    "an elementwise input whose shape lipcheck does not know may be broadcast (copied) into a larger output, multiplying its change: pass --input-shape"
)


def copies(walk: Walk, name: str, out: str) -> float | None:
    """How many times broadcasting repeats each entry of ``name`` in ``out`` (1 where sizes agree).

    An axis of size 1 (or a missing leading axis) against a known output size ``n`` repeats each
    entry ``n`` times, and so may an axis of unknown size (it may be 1): the worst case is counted.
    Unknown sizes on both sides are taken as equal, noted in the assumptions. None where a shape
    is not known at all and the output's size does not cap the copies.
    """
    src, dst = walk.graph.shapes.get(name), walk.graph.shapes.get(out)
    c = walk.const(name)
    if src is None and c is not None:
        src = tuple(c.shape)
    known_out = dst is not None and all(dst)
    if src is not None and int(np.prod([d or 2 for d in src])) == 1 and known_out:
        return float(np.prod(dst))  # type: ignore[arg-type]
    if src is None or dst is None:
        # At worst every output entry is a copy of one input entry.
        return float(np.prod(dst)) if known_out else None  # type: ignore[arg-type]
    count = 1.0
    padded = (None,) * (len(dst) - len(src)) + tuple(src) if len(dst) >= len(src) else tuple(src)
    for index, (a, b) in enumerate(zip(padded, dst)):
        missing = index < len(dst) - len(src)
        if (missing or a == 1 or a is None) and b is not None:
            count *= b
        elif (missing or a == 1) and b is None:
            return None
        elif a is None and b is None:
            walk.note(UNSURE_BROADCAST)
    return count


def spread(walk: Walk, node: Node, ins: list[float]) -> list[float]:
    """Each input's bound times the square root of the copies broadcasting makes of its entries."""
    found = []
    for name, lip in zip(node.inputs, ins):
        if lip == 0.0:
            found.append(0.0)
            continue
        count = copies(walk, name, node.outputs[0])
        found.append(lip * math.sqrt(count) if count is not None else walk.unbounded(node, _UNKNOWN_RANK))
    return found


def layer(walk: Walk, node: Node, ins: list[float]) -> float:
    """A node whose weight is a reported layer: that layer's certified bound times its data input's."""
    upper = walk.uppers[walk.graph.layer_nodes[node.label]]
    if upper is None:
        return walk.unbounded(node, "non-finite weights")
    # The data input(s) go through the weight; a Gemm's C (or a conv's bias) is added after it.
    data = sum(lip for i, lip in enumerate(ins[:2]) if walk.const(node.inputs[i]) is None)
    if node.op in ("QLinearConv", "QLinearMatMul"):
        from lipcheck.graph.rules.quantized import qlinear_factor

        factor = qlinear_factor(walk, node, ins)
        return math.inf if factor is None else factor * _weighted(upper, ins[0])
    if node.op in ("MatMulInteger", "ConvInteger"):
        # An integer product is bounded only as part of its dequantization (quantized.rescaled).
        return walk.unbounded(node, "an integer product, bounded only where it is multiplied back by its input's dynamic scale")
    return _weighted(upper, data) + _bias(walk, node, ins)


def _weighted(upper: float, data: float) -> float:
    """A weight's bound times its input's; a zero weight makes its output constant, whatever the input."""
    return 0.0 if upper == 0.0 else upper * data


def _bias(walk: Walk, node: Node, ins: list[float]) -> float:
    """The bound of an added third input that depends on the input: Gemm's beta·C (broadcast), a
    conv's bias (one value per channel, repeated over every output position)."""
    if len(ins) < 3 or ins[2] == 0.0:
        return 0.0
    if node.op == "Gemm":
        return abs(float(node.attrs.get("beta", 1.0))) * spread(walk, node, ins)[2]
    out = walk.graph.shapes.get(node.outputs[0])
    if node.op in ("Conv", "ConvTranspose") and out and len(out) > 2 and all(out):
        return ins[2] * math.sqrt(float(np.prod(out)) / float(out[1]))  # type: ignore[arg-type]
    return walk.unbounded(node, "a bias that depends on the input, added an unknown number of times")


@rule("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul")
def unread_weight(walk: Walk, node: Node, ins: list[float]) -> float:
    """A linear op that is not a reported layer: two activations multiplied, or a weight not read."""
    data = {"QLinearConv": (0, 3), "QLinearMatMul": (0, 3), "MatMulInteger": (0, 1), "ConvInteger": (0, 1)}.get(node.op)
    pick = [ins[i] for i in data if i < len(ins)] if data else ins[:2]
    if sum(1 for lip in pick if lip > 0.0) > 1:
        return walk.unbounded(node, _PRODUCT)
    return walk.unbounded(node, "a weight lipcheck could not read")


@rule("Add", "Sub", "Sum")
def add(walk: Walk, node: Node, ins: list[float]) -> float:
    """‖f + g‖_Lip <= ‖f‖_Lip + ‖g‖_Lip, each term counting the copies broadcasting makes."""
    return sum(spread(walk, node, ins))


@rule("Max", "Min", "Concat")
def stack(walk: Walk, node: Node, ins: list[float]) -> float:
    """Concatenation (and elementwise max/min, each entry one of its inputs'): sqrt(sum L^2).

    Max/Min broadcast: an input repeated k times counts sqrt(k) times its bound.
    """
    found = spread(walk, node, ins) if node.op != "Concat" else ins
    return math.sqrt(sum(lip * lip for lip in found))


@rule("Where")
def where(walk: Walk, node: Node, ins: list[float]) -> float:
    """A constant condition selects entries of the two branches: at most sqrt(L1^2 + L2^2), copies counted.

    The two branches fill disjoint entries of the output, so their changes add in squares.
    """
    if ins[0] > 0.0:
        return walk.unbounded(node, "a condition that depends on the input can switch values: not continuous")
    found = spread(walk, node, ins)
    return math.sqrt(found[1] ** 2 + found[2] ** 2)


@rule("Mul")
def mul(walk: Walk, node: Node, ins: list[float]) -> float:
    """By a constant: max|c| times; a gate x·g(x) or a normalization: its own constant; else unbounded."""
    from lipcheck.graph.rules.gates import gate
    from lipcheck.graph.rules.norms import normalization
    from lipcheck.graph.rules.quantized import rescaled

    for i, j in ((0, 1), (1, 0)):
        c = walk.const(node.inputs[j])
        if c is not None:  # an entry broadcast k times against c meets at most k entries of c
            return float(np.abs(c).max()) * spread(walk, node, ins)[i] if c.size else 0.0
    found = rescaled(walk, node)
    if found is None:
        found = gate(walk, node)
    if found is None:
        found = normalization(walk, node)
    if found is not None:
        return found
    if min(ins) == 0.0:
        return walk.unbounded(node, "a product with a factor " + UNKNOWN_FACTOR)
    from lipcheck.graph.rules.gates import SQUEEZE_EXCITATION, squeeze_excitation

    if squeeze_excitation(walk, node):
        return walk.unbounded(node, SQUEEZE_EXCITATION)
    return walk.unbounded(node, "a product of two activations is not globally Lipschitz")


@rule("Div")
def div(walk: Walk, node: Node, ins: list[float]) -> float:
    """By a nonzero constant: 1/min|c| times; a normalization x/sqrt(mean(x²)+eps): its constant."""
    from lipcheck.graph.rules.norms import normalization

    c = walk.const(node.inputs[1])
    if ins[1] == 0.0 and c is not None and c.size and float(np.abs(c).min()) > 0.0:
        return spread(walk, node, ins)[0] / float(np.abs(c).min())
    found = normalization(walk, node)
    if found is not None:
        return found
    if ins[1] == 0.0 and c is None:
        return walk.unbounded(node, "division by a value " + UNKNOWN_FACTOR)
    return walk.unbounded(node, "division by an activation (or by zero) is not globally Lipschitz")


@rule("Gather", "GatherElements", "GatherND")
def gather(walk: Walk, node: Node, ins: list[float]) -> float:
    """Constant indices copy entries: an entry copied k times contributes sqrt(k)."""
    indices = walk.const(node.inputs[1])
    if ins[1] > 0.0 or indices is None:
        return walk.unbounded(node, "indices that depend on the input")
    shape = walk.graph.shapes.get(node.inputs[0])
    if node.op == "GatherND":
        rows = indices.reshape(-1, indices.shape[-1]) if indices.ndim else indices.reshape(1, 1)
        rows = rows.astype(np.int64)
        first = int(node.attrs.get("batch_dims", 0))
        for column in range(rows.shape[1]):
            axis = first + column
            size = shape[axis] if shape is not None and axis < len(shape) else None
            if size:
                rows[:, column] %= size  # -1 and size - 1 name the same entry
            elif bool(np.any(rows[:, column] < 0)):
                return ins[0] * math.sqrt(float(rows.shape[0]))  # unknown size: every row may name one entry
        _, counts = np.unique(rows, axis=0, return_counts=True)
    else:
        flat = indices.astype(np.int64).ravel()
        axis = int(node.attrs.get("axis", 0))
        size = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if size:
            flat = flat % size
        elif bool(np.any(flat < 0)):
            return ins[0] * math.sqrt(float(flat.size)) if flat.size else 0.0
        _, counts = np.unique(flat, return_counts=True)
    if node.op == "GatherElements":
        return ins[0] * math.sqrt(float(indices.size)) if indices.size else 0.0  # indices along one axis repeat freely
    return ins[0] * math.sqrt(float(counts.max())) if counts.size else 0.0
