"""Elementwise gates ``x · g(x)`` on the same ``x``, recognised by structure, not by node names.

``g`` is any chain (or small DAG) of elementwise ops with scalar constants reaching back to ``x``
alone: SiLU ``x·σ(x)``, ``x·σ(βx)``, HardSwish ``x·HardSigmoid(x)`` or ``x·Clip(x+3, 0, 6)/6``,
GELU ``x·0.5·(1+erf(x/√2))`` and its tanh form, Mish ``x·tanh(softplus(x))``. The product is then
the scalar function ``h(x) = x·g(x)`` applied entrywise, whose Lipschitz constant is
``sup |h'|``. That supremum is bounded rigorously (gate_interval.slope_sup): ``h`` and ``h'`` are
enclosed in interval arithmetic with outward rounding over pieces of the line, refined where the
bound could still exceed the largest slope found, out to float32's largest value (every activation a
float32 graph holds), or float64's where the file holds doubles anywhere. A slope that keeps growing far out means ``g`` does not saturate and the
product is not Lipschitz. The bound lies within a relative 1e-6 of the true supremum where the
refinement completes (SiLU 1.09984, HardSwish 1.5, GELU 1.12900, Mish 1.0885).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from lipcheck.graph.rules import gate_interval as iv
from lipcheck.graph.rules.gate_interval import Span

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

Fn = Callable[[Span], Span]
_DEPTH = 24
# Slope bounds of gates already worked out, by the gate's expression written out.
_SLOPES: dict[str, float | None] = {}


def _scalar(walk: Walk, name: str) -> float | None:
    c = walk.const(name)
    return float(c.reshape(())) if c is not None and c.size == 1 else None


def expression(walk: Walk, name: str, x: str, seen: list[str], depth: int = 0) -> tuple[Fn, str] | None:
    """``name`` as a scalar function of ``x`` built from elementwise ops and scalar constants, with
    its expression written out, or None."""
    if name == x:
        return (lambda t: t), "x"
    c = _scalar(walk, name)
    if c is not None:
        return (lambda t: t.constant(c)), repr(c)
    node = walk.find(name)
    if node is None or depth > _DEPTH or len(node.outputs) != 1 and node.op not in ("Dropout",):
        return None
    first = expression(walk, node.inputs[0], x, seen, depth + 1) if node.inputs else None
    op, at = node.op, node.attrs
    found: tuple[Fn, str] | None = None
    if op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"):
        second = expression(walk, node.inputs[1], x, seen, depth + 1) if len(node.inputs) == 2 else None
        if first is None or second is None:
            return None
        (a, ka), (b, kb) = first, second
        constant = _scalar(walk, node.inputs[1])
        text = f"{op}({ka},{kb})"
        if op == "Div":
            if constant is None or constant == 0.0:
                return None  # a divisor that moves with x can reach 0: a pole
            found = (lambda t: a(t).divided(constant)), text
        elif op == "Pow":
            if constant is None or constant != int(constant) or not 0 <= constant <= 16:
                return None
            found = (lambda t: iv.power(a(t), int(constant))), text
        else:
            fn = {
                "Add": lambda t: a(t) + b(t),
                "Sub": lambda t: a(t) - b(t),
                "Mul": lambda t: a(t) * b(t),
                "Max": lambda t: iv.maximum(a(t), b(t)),
                "Min": lambda t: iv.minimum(a(t), b(t)),
            }[op]
            found = fn, text
    elif first is None:
        return None
    else:
        a, ka = first
        if op == "Sigmoid":
            found = (lambda t: iv.sigmoid(a(t))), f"Sigmoid({ka})"
        elif op == "HardSigmoid":
            alpha, beta = float(at.get("alpha", 0.2)), float(at.get("beta", 0.5))
            found = (lambda t: iv.clip(a(t).scaled(alpha) + t.constant(beta), 0.0, 1.0)), f"HardSigmoid[{alpha!r},{beta!r}]({ka})"
        elif op == "Clip":
            given = [*node.inputs[1:3], "", ""][:2]
            bounds = [_scalar(walk, name) if name else at.get(attr) for name, attr in zip(given, ("min", "max"))]
            if any(name and bound is None for name, bound in zip(given, bounds)):
                return None  # a bound that is not a constant moves with the input
            lo, hi = bounds
            low, high = -math.inf if lo is None else float(lo), math.inf if hi is None else float(hi)
            found = (lambda t: iv.clip(a(t), low, high)), f"Clip[{low!r},{high!r}]({ka})"
        elif op == "Relu":
            found = (lambda t: iv.clip(a(t), 0.0, math.inf)), f"Relu({ka})"
        elif op in ("Tanh", "Erf", "Softplus"):
            unary = {"Tanh": iv.tanh, "Erf": iv.erf, "Softplus": iv.softplus}[op]
            found = (lambda t: unary(a(t))), f"{op}({ka})"
        elif op == "Neg":
            found = (lambda t: -a(t)), f"Neg({ka})"
        elif op in ("Identity", "Dropout") or (op == "Cast" and int(at.get("to", 1)) in (1, 11)):
            found = first
    if found is not None:
        seen.append(node.label)
    return found


def _times_input(g: Fn) -> Fn:
    return lambda t: t * g(t)


def gate(walk: Walk, node: Node) -> float | None:
    """A Mul of ``x`` and a function of the same ``x``: ``sup |h'|`` times ``x``'s bound, or None."""
    for i, j in ((0, 1), (1, 0)):
        x, other = node.inputs[i], node.inputs[j]
        if walk.of(x) == 0.0 or other == x:
            continue
        seen: list[str] = []
        built = expression(walk, other, x, seen)
        if built is None or not seen:
            continue
        g, text = built
        limit = iv.FLOAT64_MAX if walk.graph.wide else iv.FLOAT32_MAX
        key = f"{text}|{limit!r}"
        if key not in _SLOPES:
            _SLOPES[key] = iv.slope_sup(_times_input(g), limit=limit)
        slope = _SLOPES[key]
        if slope is None:
            continue
        walk.forgive(seen)
        return slope * walk.of(x)
    return None


SQUEEZE_EXCITATION = (
    "a squeeze-excitation gate multiplies activations by a sigmoid of their pooled values, a "
    "function of the input: not globally Lipschitz (its slope grows with the activations' size)"
)
_POOLED = ("GlobalAveragePool", "ReduceMean", "GlobalMaxPool", "ReduceMax", "AdaptiveAveragePool")
_SQUASH = ("Sigmoid", "HardSigmoid", "Clip", "Div", "Mul", "Add", "Relu", "Identity")


def squeeze_excitation(walk: Walk, node: Node) -> bool:
    """Whether a Mul multiplies an activation by a squashed function of a pooled activation."""
    for j in (0, 1):
        head = walk.find(node.inputs[j])
        if head is None or head.op not in ("Sigmoid", "HardSigmoid", "Clip", "Div", "Mul"):
            continue
        stack, seen = [node.inputs[j]], 0
        while stack and seen < 48:
            found = walk.find(stack.pop())
            seen += 1
            if found is None:
                continue
            if found.op in _POOLED and walk.of(found.inputs[0]) > 0.0:
                return walk.of(node.inputs[1 - j]) > 0.0
            if found.op in ("Conv", "Gemm", "MatMul", "Reshape", "Squeeze", "Unsqueeze", "Flatten", *_SQUASH):
                stack.extend(name for name in found.inputs if name and walk.of(name) > 0.0)
    return False
