"""Normalization layers: batch norm by its stored statistics; LayerNorm, RMSNorm, GroupNorm and
InstanceNorm by a global constant that is sound but can be very loose.

Derivation. Write ``y = γ ⊙ n(Px) + β`` where ``P`` subtracts the mean over the normalized axes
(an orthogonal projection, ‖P‖ = 1; RMSNorm has no ``P``) and ``n(d) = d / s(d)`` with
``s(d) = sqrt(‖d‖²/N + ε)``. The Jacobian of ``n`` is ``(1/s)(I − d dᵀ/(N s²))``: on the directions
orthogonal to ``d`` it scales by ``1/s``, along ``d`` by ``(1/s)(1 − ‖d‖²/(N s²)) = ε/s³``. Both are
at most ``1/s <= 1/√ε``, with equality at ``d = 0`` (an input constant over the normalized axes),
so ``sup ‖J‖ = 1/√ε`` exactly and, the domain being convex, ``n`` is ``1/√ε``-Lipschitz and no
better. Hence ``‖y‖_Lip <= max|γ|/√ε``; GroupNorm and InstanceNorm apply the same map to each
group separately (a block-diagonal Jacobian), so the same constant holds. With ε = 1e-5 this is
316·max|γ|, far above what the layer does to typical inputs, whose variance is far from 0: the
bound is global, and honest, not tight. Rounding in the file's float type is not counted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.rules import not_lipschitz, rule

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

_LOOSE = (
    "normalization: {what} bounded by max|γ|/√ε (ε = {eps:g}), its global constant, reached only at inputs "
    "constant over the normalized axes; usually very loose"
)


@rule("BatchNormalization")
def batch_norm(walk: Walk, node: Node, ins: list[float]) -> float:
    """γ/sqrt(var+ε) per channel; folded into the conv/linear before it where that is tighter."""
    if int(node.attrs.get("training_mode", 0)):
        return walk.unbounded(node, "batch norm in training mode normalizes by the batch's own statistics")
    if any(lip > 0.0 for lip in ins[1:]):
        return walk.unbounded(node, "batch-norm parameters that depend on the input")
    gamma, var = walk.const(node.inputs[1]), walk.const(node.inputs[4])
    if gamma is None or var is None:
        return walk.unbounded(node, "batch-norm statistics lipcheck could not read")
    if gamma.size == 0:  # no affine weight (torch's F.batch_norm with weight=None): a scale of 1
        gamma = np.ones_like(var)
    scale = np.abs(gamma) / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    separate = float(np.max(scale)) * ins[0]
    return min(separate, _folded(walk, node, scale))


def _folded(walk: Walk, node: Node, scale: np.ndarray) -> float:
    """Batch norm right after a conv/linear used nowhere else: bound the fused layer instead."""
    producer = walk.producer.get(node.inputs[0])
    if (
        walk.fuse is None
        or producer is None
        or producer.label not in walk.graph.layer_nodes
        or producer.op not in ("Conv", "Gemm")
        or walk.consumers.get(node.inputs[0], 0) != 1
    ):
        return math.inf
    # The fused weight scales the layer's output rows: only where those are the channels batch norm
    # scales (axis 1): a conv, or a Gemm x·Wᵀ (weight as B, no transA) with a 2-D output; and only
    # with no added term that depends on the input (a bias computed from it is not scaled here).
    shape = walk.graph.shapes.get(node.inputs[0])
    if producer.op == "Gemm" and (
        int(producer.attrs.get("transA", 0))
        or walk.const(producer.inputs[1]) is None
        or walk.const(producer.inputs[0]) is not None
        or not shape
        or len(shape) != 2
    ):
        return math.inf
    if any(walk.of(name) > 0.0 for name in producer.inputs[2:]):
        return math.inf
    fused = walk.fuse(walk.graph.layer_nodes[producer.label], scale)
    if fused is None:
        return math.inf
    data = sum(walk.of(name) for name in producer.inputs[:2] if walk.const(name) is None)
    return fused * data


@rule(
    "LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "SkipSimplifiedLayerNormalization", "GroupNormalization", "InstanceNormalization"
)
def fused_norm(walk: Walk, node: Node, ins: list[float]) -> float:
    """max|γ|/√ε times the input's bound (see the module docstring)."""
    eps = float(node.attrs.get("epsilon", 1e-5))
    gamma = walk.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else np.ones(1)
    if gamma is None or (len(ins) > 1 and ins[1] > 0.0):
        return walk.unbounded(node, "a scale that lipcheck could not read as a constant")
    if node.op != "SkipSimplifiedLayerNormalization" and any(lip > 0.0 for lip in ins[2:]):
        return walk.unbounded(node, "a normalization bias that depends on the input")
    if eps <= 0.0:
        return walk.unbounded(node, "normalization with ε = 0 is not Lipschitz near inputs constant over its axes")
    walk.note(_LOOSE.format(what=f"{node.op} {node.label}", eps=eps))
    g = float(np.abs(gamma).max()) if gamma.size else 0.0
    data = ins[0] + (ins[2] if node.op == "SkipSimplifiedLayerNormalization" and len(ins) > 2 else 0.0)
    return g / math.sqrt(eps) * data


rule("LpNormalization", reason="dividing by the input's own norm is not Lipschitz near 0")(not_lipschitz)
rule("MeanVarianceNormalization", reason="mean-variance normalization has no ε: its slope is unbounded near inputs constant over its axes")(not_lipschitz)


def _axes(walk: Walk, node: Node) -> tuple[int, ...] | None:
    if len(node.inputs) > 1 and node.inputs[1]:
        c = walk.const(node.inputs[1])
        return None if c is None else tuple(sorted(int(v) for v in c.ravel()))
    axes = node.attrs.get("axes")
    return tuple(sorted(int(v) for v in axes)) if axes is not None else ()


def _square_mean(walk: Walk, name: str, d: str, seen: list[str]) -> tuple[tuple[int, ...], float] | None:
    """``name`` = mean(d²) + ε over some axes, with ε > 0 a constant: (axes, ε)."""
    add = walk.find(name)
    if add is None or add.op != "Add":
        return None
    for i, j in ((0, 1), (1, 0)):
        eps = walk.const(add.inputs[j])
        mean = walk.find(add.inputs[i])
        if eps is None or eps.size != 1 or float(eps.reshape(())) <= 0.0 or mean is None or mean.op != "ReduceMean":
            continue
        if not int(mean.attrs.get("keepdims", 1)):
            continue  # without kept axes the mean broadcasts against d along other axes
        square = walk.find(mean.inputs[0])
        if square is None:
            continue
        is_square = (
            square.op == "Pow"
            and square.inputs[0] == d
            and walk.const(square.inputs[1]) is not None
            and walk.const(square.inputs[1]).size == 1  # type: ignore[union-attr]
            and float(walk.const(square.inputs[1]).reshape(-1)[0]) == 2.0  # type: ignore[union-attr]
        ) or (square.op == "Mul" and square.inputs[0] == square.inputs[1] == d)
        axes = _axes(walk, mean)
        if is_square and axes is not None:
            seen += [add.label, mean.label, square.label]
            return axes, float(eps.reshape(()))
    return None


def _root(walk: Walk, name: str, inverse: bool, seen: list[str]) -> str | None:
    """The value under sqrt(·) (inverse: under 1/sqrt(·)) that ``name`` computes, or None."""
    node = walk.find(name)
    if node is None:
        return None
    if not inverse and node.op == "Sqrt":
        seen.append(node.label)
        return node.inputs[0]
    if inverse and node.op == "Reciprocal":
        seen.append(node.label)
        return _root(walk, node.inputs[0], False, seen)
    if inverse and node.op == "Div":
        one = walk.const(node.inputs[0])
        if one is not None and one.size == 1 and float(one.reshape(())) == 1.0:
            seen.append(node.label)
            return _root(walk, node.inputs[1], False, seen)
    if inverse and node.op == "Pow":
        p = walk.const(node.inputs[1])
        if p is not None and p.size == 1 and float(p.reshape(())) == -0.5:
            seen.append(node.label)
            return node.inputs[0]
    return None


def normalization(walk: Walk, node: Node) -> float | None:
    """A decomposed LayerNorm or RMSNorm: ``d / sqrt(mean(d²) + ε)`` (or ``d · 1/sqrt(...)``).

    ``d`` is ``x − mean(x)`` over the same axes (LayerNorm) or ``x`` itself (RMSNorm); the result is
    ``1/√ε`` times ``x``'s bound (the module docstring), γ and β following as their own Mul and Add.
    """
    pairs = [(0, 1)] if node.op == "Div" else [(0, 1), (1, 0)]
    for i, j in pairs:
        d, seen = node.inputs[i], []  # type: tuple[str, list[str]]
        under = _root(walk, node.inputs[j], node.op == "Mul", seen)
        found = _square_mean(walk, under, d, seen) if under else None
        if found is None:
            continue
        axes, eps = found
        x, what = d, "RMSNorm (decomposed)"
        sub = walk.find(d)
        if sub is not None and sub.op == "Sub":
            mean = walk.find(sub.inputs[1])
            if (
                mean is not None
                and mean.op == "ReduceMean"
                and mean.inputs[0] == sub.inputs[0]
                and _axes(walk, mean) == axes
                and int(mean.attrs.get("keepdims", 1))
            ):
                x, what = sub.inputs[0], "LayerNorm (decomposed)"
        walk.forgive(seen)
        walk.note(_LOOSE.format(what=f"{what} ending at {node.label}", eps=eps))
        return walk.of(x) / math.sqrt(eps)
    return None
