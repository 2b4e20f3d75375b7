"""Elementwise activations: the bound is ``max |f'|`` times the input's bound.

Constants of smooth activations are the supremum of ``|f'|`` computed on a fine float64 grid and
rounded up in the last digit kept (SiLU: 1.0998393 -> 1.09984; GELU erf form 1.1289041 and tanh
form 1.1289931 -> 1.12900, the erf form alone 1.128905; Mish 1.0884982 -> 1.0885). ``tests/test_coverage_ops.py`` checks
each against a float64 numerical derivative.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.rules import not_lipschitz, rule, scaled
from lipcheck.graph.rules.linear import spread

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

SILU = 1.09984
GELU = 1.12900
GELU_ERF = 1.128905
MISH = 1.0885

rule("Relu", "Abs", "Softplus", "Softsign", "Tanh", "Relu6", constant=1.0)(scaled)
rule(
    "TorchSoftplus",
    reason="torch's softplus returns x where beta*x exceeds its threshold, a jump of log(1+exp(-threshold))/beta "
    "there: not continuous, so not Lipschitz (--node-constant with 1 for this node assumes the smooth softplus)",
)(not_lipschitz)
rule("Sigmoid", constant=0.25)(scaled)
rule("Silu", "Swish", constant=SILU)(scaled)
rule("FastGelu", "BiasGelu", constant=GELU)(scaled)


@rule("Gelu")
def gelu(walk: Walk, node: Node, ins: list[float]) -> float:
    """GELU: its erf form's constant, or the tanh approximation's (slightly larger)."""
    approximate = node.attrs.get("approximate", "none")
    exact = (approximate.decode() if isinstance(approximate, bytes) else str(approximate)) == "none"
    return (GELU_ERF if exact else GELU) * ins[0] if ins else 0.0


rule("Mish", constant=MISH)(scaled)
rule("HardSwish", constant=1.5)(scaled)
rule("Erf", constant=2 / math.sqrt(math.pi))(scaled)
rule("Sin", "Cos", "Atan", "Asinh", constant=1.0)(scaled)  # |atan'| = 1/(1+x²), |asinh'| = 1/√(1+x²)
# Softmax's Jacobian diag(p) - p p^T has spectral norm <= 1/2.
rule("Softmax", constant=0.5)(scaled)

rule("Exp", reason="exp is not globally Lipschitz")(not_lipschitz)
rule("Log", reason="log is not globally Lipschitz (its slope is unbounded near 0)")(not_lipschitz)
rule("Sqrt", reason="sqrt is not globally Lipschitz (its slope is unbounded near 0)")(not_lipschitz)
rule("Reciprocal", reason="1/x is not globally Lipschitz")(not_lipschitz)
rule("Tan", reason="tan is not globally Lipschitz")(not_lipschitz)


@rule("Pow", reason="x^p is not globally Lipschitz for p > 1 or p < 1 (other than p = 1)")
def power(walk: Walk, node: Node, ins: list[float]) -> float:
    """x^1 is the identity and x^0 a constant; every other power of an activation is unbounded."""
    p = walk.const(node.inputs[1]) if len(node.inputs) > 1 else None
    if ins[1] == 0.0 and p is not None and p.size == 1:
        if float(p.reshape(())) == 1.0:
            return ins[0]
        if float(p.reshape(())) == 0.0:
            return 0.0
    if ins[1] > 0.0:
        return walk.unbounded(node, "an exponent that depends on the input is not globally Lipschitz")
    return walk.unbounded(node, "x^p is not globally Lipschitz for a constant p other than 0 and 1")


@rule("LeakyRelu")
def leaky_relu(walk: Walk, node: Node, ins: list[float]) -> float:
    """Slopes 1 and alpha."""
    return max(1.0, abs(float(node.attrs.get("alpha", 0.01)))) * ins[0]


@rule("Elu", "Celu")
def elu(walk: Walk, node: Node, ins: list[float]) -> float:
    """Slopes 1 and alpha·e^x (x < 0), so at most max(1, |alpha|)."""
    return max(1.0, abs(float(node.attrs.get("alpha", 1.0)))) * ins[0]


# ONNX's defaults (float32 1.67326319... and 1.05070102...) and torch's, rounded up.
SELU_ALPHA, SELU_GAMMA = 1.6732633, 1.0507011


@rule("Selu")
def selu(walk: Walk, node: Node, ins: list[float]) -> float:
    """gamma times Elu's bound."""
    return abs(float(node.attrs.get("gamma", SELU_GAMMA))) * max(1.0, abs(float(node.attrs.get("alpha", SELU_ALPHA)))) * ins[0]


@rule("Clip")
def clip(walk: Walk, node: Node, ins: list[float]) -> float:
    """min(max(x, lo), hi) moves by at most the largest move of x, lo and hi: 1-Lipschitz in x for
    constant bounds, else sqrt of the sum of squares, broadcast copies counted (as Max and Min)."""
    if all(lip == 0.0 for lip in ins[1:]):
        return ins[0]
    return math.sqrt(sum(lip * lip for lip in spread(walk, node, ins)))


@rule("HardSigmoid")
def hard_sigmoid(walk: Walk, node: Node, ins: list[float]) -> float:
    """clip(alpha·x + beta, 0, 1): slope |alpha| or 0."""
    return abs(float(node.attrs.get("alpha", 0.2))) * ins[0]


@rule("ThresholdedRelu", reason="ThresholdedRelu jumps at its threshold: not continuous")
def thresholded(walk: Walk, node: Node, ins: list[float]) -> float:
    """x for x > alpha else 0: a jump of size alpha unless alpha is 0."""
    if float(node.attrs.get("alpha", 1.0)) == 0.0:
        return ins[0]
    return walk.unbounded(node, "ThresholdedRelu jumps at its threshold: not continuous")


@rule("PRelu")
def prelu(walk: Walk, node: Node, ins: list[float]) -> float:
    """Slopes 1 and the per-channel slope, times the copies a slope larger than the input makes.

    The standard broadcasts the slope to the input only, but onnxruntime also broadcasts the input
    to a larger slope, so the copies are counted from the two shapes, not from the declared output.
    """
    slope = walk.const(node.inputs[1])
    if slope is None:
        return walk.unbounded(node, "a PRelu slope lipcheck could not read")
    copies = _broadcast_copies(walk.graph.shapes.get(node.inputs[0]), slope.shape)
    if copies is None:
        return walk.unbounded(node, "a PRelu slope that may broadcast its input to a larger shape lipcheck cannot size")
    return max(1.0, float(np.abs(slope).max())) * ins[0] * math.sqrt(copies)


def _broadcast_copies(shape: tuple[int | None, ...] | None, other: tuple[int, ...]) -> int | None:
    """How many times broadcasting against a constant of shape ``other`` repeats each input entry,
    or None where an unknown size leaves it open. A size-1 axis of the constant never repeats."""
    if all(c == 1 for c in other):
        return 1
    if shape is None:
        return None
    copies = math.prod(other[: max(0, len(other) - len(shape))])
    for c, d in zip(reversed(other), reversed(shape)):
        if c == 1 or c == d:
            continue
        if d != 1:
            return None  # unknown, or sizes that do not broadcast
        copies *= c
    return copies
