"""Elementwise gates ``x · g(x)`` on the same ``x``, recognised by structure, not by node names.

``g`` is any chain (or small DAG) of elementwise ops with scalar constants reaching back to ``x``
alone: SiLU ``x·σ(x)``, ``x·σ(βx)``, HardSwish ``x·HardSigmoid(x)`` or ``x·Clip(x+3, 0, 6)/6``,
GELU ``x·0.5·(1+erf(x/√2))`` and its tanh form, Mish ``x·tanh(softplus(x))``. The product is then
the scalar function ``h(x) = x·g(x)`` applied entrywise, whose Lipschitz constant is
``sup |h'|``. That supremum is computed numerically: ``h'`` by central differences in float64 on
a grid of step 2e-4 over [-64, 64] (scaled by the inner constants), the tails checked to settle
(``h'`` at ±1e2 … ±1e6 must agree and stay below the grid maximum, else ``g`` does not saturate
and the product is not Lipschitz), and the maximum rounded up by a relative 1e-4. Where a
documented constant lies within that margin it is used instead (SiLU and ``x·σ(βx)`` for every
β: 1.09984, since ``d/dx[xσ(βx)] = s(βx)`` with ``s`` SiLU's derivative; HardSwish 1.5 exactly;
GELU 1.12900; Mish 1.0885).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.rules.activations import GELU, MISH, SILU

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

Fn = Callable[[np.ndarray], np.ndarray]
_KNOWN = (1.0, 1.5, SILU, GELU, MISH, 2 * GELU)
_DEPTH = 24


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


def _scalar(walk: Walk, name: str) -> float | None:
    c = walk.const(name)
    return float(c.reshape(())) if c is not None and c.size == 1 else None


def _full(c: float) -> Fn:
    return lambda t: np.full_like(t, c)


def _times_input(g: Fn) -> Fn:
    return lambda t: t * g(t)


def expression(walk: Walk, name: str, x: str, seen: list[str], depth: int = 0) -> Fn | None:
    """``name`` as a scalar function of ``x`` built from elementwise ops and scalar constants, or None."""
    if name == x:
        return lambda t: t
    c = _scalar(walk, name)
    if c is not None:
        return _full(c)
    node = walk.find(name)
    if node is None or depth > _DEPTH or len(node.outputs) != 1 and node.op not in ("Dropout",):
        return None
    args = [expression(walk, i, x, seen, depth + 1) for i in node.inputs[:1]]
    a = args[0] if args else None
    op, at = node.op, node.attrs
    fn: Fn | None = None
    if op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"):
        if len(node.inputs) != 2:
            return None
        b = expression(walk, node.inputs[1], x, seen, depth + 1)
        if a is None or b is None:
            return None
        if op == "Div" and _scalar(walk, node.inputs[1]) is None:
            return None  # a divisor that moves with x can reach 0: a pole no grid bounds
        fn = {
            "Add": lambda t: a(t) + b(t),
            "Sub": lambda t: a(t) - b(t),
            "Mul": lambda t: a(t) * b(t),
            "Div": lambda t: a(t) / b(t),
            "Max": lambda t: np.maximum(a(t), b(t)),
            "Min": lambda t: np.minimum(a(t), b(t)),
        }.get(op)
        if op == "Pow":
            p = _scalar(walk, node.inputs[1])
            if p is None or p != int(p) or p < 0:
                return None
            fn = lambda t: a(t) ** int(p)  # noqa: E731
    elif a is None:
        return None
    elif op == "Sigmoid":
        fn = lambda t: 1.0 / (1.0 + np.exp(-a(t)))  # noqa: E731
    elif op == "HardSigmoid":
        alpha, beta = float(at.get("alpha", 0.2)), float(at.get("beta", 0.5))
        fn = lambda t: np.clip(alpha * a(t) + beta, 0.0, 1.0)  # noqa: E731
    elif op == "Clip":
        lo = _scalar(walk, node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else at.get("min")
        hi = _scalar(walk, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else at.get("max")
        fn = lambda t: np.clip(a(t), -np.inf if lo is None else lo, np.inf if hi is None else hi)  # noqa: E731
    elif op == "Relu":
        fn = lambda t: np.maximum(a(t), 0.0)  # noqa: E731
    elif op == "Tanh":
        fn = lambda t: np.tanh(a(t))  # noqa: E731
    elif op == "Erf":
        fn = lambda t: _erf(a(t))  # noqa: E731
    elif op == "Softplus":
        fn = lambda t: np.logaddexp(0.0, a(t))  # noqa: E731
    elif op == "Neg":
        fn = lambda t: -a(t)  # noqa: E731
    elif op in ("Identity", "Dropout") or (op == "Cast" and int(at.get("to", 1)) in (1, 10, 11, 16)):
        fn = a
    if fn is not None:
        seen.append(node.label)
    return fn


_DENSITY = 5000  # grid points per unit of the gate's innermost argument
_MAX_POINTS = 4_000_001


def sup_slope(h: Fn, scale: float = 1.0, offset: float = 0.0, shrink: float = 1.0) -> float | None:
    """An upper bound of ``sup |h'|`` (grid maximum rounded up), or None when ``h'`` does not settle.

    The grid covers |x| <= (64 + offset) / min(shrink, 1), ``offset`` the sum of the gate's additive
    constants and ``shrink`` its smallest multiplier (where the slope changes), with _DENSITY points
    per unit of x·scale; a gate needing more than _MAX_POINTS is not bounded here.
    """
    step = 1e-6
    with np.errstate(all="ignore"):
        slope: Fn = lambda t: (h(t + step) - h(t - step)) / (2 * step)  # noqa: E731
        span = (64.0 + offset) / min(max(shrink, 1e-12), 1.0) / max(scale, 1e-3)
        points = int(2 * span * max(scale, 1e-3) * _DENSITY) + 1
        if points > _MAX_POINTS:
            return known_gate(h)
        grid = np.linspace(-span, span, max(points, 640_001))
        inner = float(np.nanmax(np.abs(slope(grid))))
        tails = [np.abs(slope(np.array([s * 10.0**k]))).item() for s in (-1, 1) for k in (2, 3, 4, 5, 6)]
        far = [np.abs(slope(np.array([s * 10.0**k]) / max(scale, 1e-3))).item() for s in (-1, 1) for k in (5, 6)]
    if not all(math.isfinite(v) for v in [inner, *tails, *far]):
        return None
    if abs(far[0] - far[1]) > 1e-4 * (1 + far[1]) or abs(far[2] - far[3]) > 1e-4 * (1 + far[3]):
        return None  # the slope keeps changing far out: g does not saturate
    raw = max(inner, *tails)
    bound = raw * (1 + 1e-4) + 1e-9
    return next((k for k in _KNOWN if raw <= k <= bound), bound)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


_FAMILIES: list[tuple[Fn, float]] = [
    (lambda t: 0.5 * t * (1.0 + _erf(t / math.sqrt(2.0))), GELU),
    (lambda t: 0.5 * t * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (t + 0.044715 * t**3))), GELU),
    (lambda t: t * np.clip(t / 6.0 + 0.5, 0.0, 1.0), 1.5),
    (lambda t: t * np.tanh(np.logaddexp(0.0, t)), MISH),
]


def known_gate(h: Fn) -> float | None:
    """For a gate that matches GELU (either form), HardSwish, Mish or x·σ(βx) to 1e-6 on a wide grid
    (constants stored in float32 differ in their last bits), the larger of that family's documented
    constant and the gate's own grid maximum of |h'| rounded up; else None. For gates whose slope
    features are too spread out for the plain grid: these families change slope only near 0."""
    grid = np.concatenate([np.linspace(-50.0, 50.0, 500_001), np.geomspace(50.0, 1e6, 2001), -np.geomspace(50.0, 1e6, 2001)])
    step = 1e-6
    with np.errstate(all="ignore"):
        values = h(grid)
        one = float(h(np.array([1.0]))[0])
        candidates = list(_FAMILIES)
        if 0.0 < one < 1.0:
            beta = math.log(one / (1.0 - one))  # x·σ(βx) at x = 1 is σ(β)
            candidates.append((lambda t: t * _sigmoid(beta * t), SILU))
        for f, constant in candidates:
            if bool(np.all(np.abs(values - f(grid)) <= 1e-6 * (1.0 + np.abs(values)))):
                slope = float(np.nanmax(np.abs((h(grid + step) - h(grid - step)) / (2 * step))))
                return max(constant, slope * (1 + 1e-4) + 1e-9) if math.isfinite(slope) else None
    return None


def gate(walk: Walk, node: Node) -> float | None:
    """A Mul of ``x`` and a function of the same ``x``: ``sup |h'|`` times ``x``'s bound, or None."""
    for i, j in ((0, 1), (1, 0)):
        x, other = node.inputs[i], node.inputs[j]
        if walk.of(x) == 0.0 or other == x:
            continue
        seen: list[str] = []
        g = expression(walk, other, x, seen)
        if g is None or not seen:
            continue
        slope = sup_slope(_times_input(g), _inner_scale(walk, seen), *_offsets(walk, seen))
        if slope is None:
            continue
        walk.forgive(seen)
        return slope * walk.of(x)
    return None


def _inner_scale(walk: Walk, labels: list[str]) -> float:
    """The largest scalar multiplier inside the gate, so the grid covers where its slope changes."""
    scale = 1.0
    for node in (walk.find_label(label) for label in labels):
        if node is not None and node.op in ("Mul", "Div"):
            for name in node.inputs[1:] if node.op == "Div" else node.inputs:
                c = _scalar(walk, name)
                if c:
                    scale = max(scale, abs(1.0 / c) if node.op == "Div" else abs(c))
    return scale


def _offsets(walk: Walk, labels: list[str]) -> tuple[float, float]:
    """The sum of the gate's additive constants and its smallest multiplier: where its slope can change."""
    offset, shrink = 0.0, 1.0
    for node in (walk.find_label(label) for label in labels):
        if node is None:
            continue
        for position, name in enumerate(node.inputs):
            c = _scalar(walk, name) if name else None
            if c is None:
                continue
            if node.op in ("Add", "Sub", "Max", "Min", "Clip"):
                offset += abs(c)
            elif node.op == "Mul" and c != 0.0:
                shrink = min(shrink, abs(c))
            elif node.op == "Div" and position == 1 and c != 0.0:
                shrink = min(shrink, abs(1.0 / c))
        if node.op == "HardSigmoid":
            alpha, beta = abs(float(node.attrs.get("alpha", 0.2))), abs(float(node.attrs.get("beta", 0.5)))
            offset += beta / max(alpha, 1e-12)
    return offset, shrink


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
