"""Interval enclosures of gate functions, hunted for counterexamples against plain float64 evaluation.

Random expressions g built from the primitives lipcheck's gate rule reads are evaluated twice: by
gate_interval in interval arithmetic, and pointwise by numpy. Every value and every finite-difference
slope numpy sees must lie inside the enclosure of a piece that holds the point, and slope_sup must be
at least every slope sampled, near the expression's own constants included.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf, expit

from lipcheck.graph.rules import gate_interval as iv
from lipcheck.graph.rules.gate_interval import Span

Pair = tuple[Callable[[Span], Span], Callable[[np.ndarray], np.ndarray], list[float]]


def _sigmoid(t: np.ndarray) -> np.ndarray:
    # Accurate in the tails: 0.5 (1 + tanh(t/2)) loses everything below 1e-16 to cancellation, and its
    # difference quotients there are noise, not slopes.
    return np.asarray(expit(t))


@st.composite
def expressions(draw, depth: int = 0) -> Pair:  # type: ignore[no-untyped-def]
    """(interval function, numpy function, the constants it uses) of a random g(x)."""
    leaf = depth >= 3 or draw(st.integers(0, 3)) == 0
    if leaf:
        if draw(st.booleans()):
            return (lambda t: t), (lambda t: t), []
        c = draw(st.sampled_from([-3.0, -0.5, 0.25, 1.0, 2.0, 6.0, 50.0]))
        return (lambda t: t.constant(c)), (lambda t: np.full_like(t, c)), [c]
    op = draw(st.sampled_from(["add", "sub", "mul", "scale", "div", "sigmoid", "tanh", "erf", "softplus", "clip", "relu", "max", "min", "pow", "hsig"]))
    a, an, ac = draw(expressions(depth + 1))
    if op in ("add", "sub", "mul", "max", "min"):
        b, bn, bc = draw(expressions(depth + 1))
        interval = {
            "add": lambda t: a(t) + b(t),
            "sub": lambda t: a(t) - b(t),
            "mul": lambda t: a(t) * b(t),
            "max": lambda t: iv.maximum(a(t), b(t)),
            "min": lambda t: iv.minimum(a(t), b(t)),
        }[op]
        point = {
            "add": lambda t: an(t) + bn(t),
            "sub": lambda t: an(t) - bn(t),
            "mul": lambda t: an(t) * bn(t),
            "max": lambda t: np.maximum(an(t), bn(t)),
            "min": lambda t: np.minimum(an(t), bn(t)),
        }[op]
        return interval, point, ac + bc
    if op in ("scale", "div"):
        k = draw(st.sampled_from([-100.0, -2.0, 0.3, 3.0, 1e3]))
        if op == "scale":
            return (lambda t: a(t).scaled(k)), (lambda t: an(t) * k), ac
        return (lambda t: a(t).divided(k)), (lambda t: an(t) / k), ac
    if op == "clip":
        lo = draw(st.sampled_from([-1.0, 0.0, 2.0]))
        hi = lo + draw(st.sampled_from([0.5, 1.0, 6.0]))
        return (lambda t: iv.clip(a(t), lo, hi)), (lambda t: np.clip(an(t), lo, hi)), ac + [lo, hi]
    if op == "hsig":
        alpha, beta = draw(st.sampled_from([0.2, 1 / 6, 50.0])), draw(st.sampled_from([0.5, 0.0, 2.0]))
        return (
            (lambda t: iv.clip(a(t).scaled(alpha) + t.constant(beta), 0.0, 1.0)),
            (lambda t: np.clip(alpha * an(t) + beta, 0.0, 1.0)),
            ac,
        )
    if op == "pow":
        p = draw(st.integers(0, 3))
        return (lambda t: iv.power(a(t), p)), (lambda t: an(t) ** p), ac
    interval_unary = {"sigmoid": iv.sigmoid, "tanh": iv.tanh, "erf": iv.erf, "softplus": iv.softplus, "relu": lambda v: iv.clip(v, 0.0, math.inf)}[op]
    point_unary = {"sigmoid": _sigmoid, "tanh": np.tanh, "erf": erf, "softplus": lambda v: np.logaddexp(0.0, v), "relu": lambda v: np.maximum(v, 0.0)}[op]
    return (lambda t: interval_unary(a(t))), (lambda t: point_unary(an(t))), ac


def _points(constants: list[float]) -> np.ndarray:
    near = [c + d for c in constants + [0.0] for c in (c, -c) for d in np.linspace(-0.05, 0.05, 41)]
    return np.unique(np.concatenate([np.linspace(-60.0, 60.0, 4001), np.array(near), np.geomspace(1.0, 1e6, 60), -np.geomspace(1.0, 1e6, 60)]))


def _check(f: Callable[[Span], Span], fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> None:
    """Values and difference quotients of fn near x inside f's enclosures on [x - step, x + step]."""
    step = 1e-7 * np.maximum(1.0, np.abs(x))
    with np.errstate(all="ignore"):
        value = fn(x)
        right, left = fn(x + step), fn(x - step)
        slope = (right - left) / (2 * step)
        rounding = 8 * 2.0**-52 * (np.abs(right) + np.abs(left)) / (2 * step)
        out = f(Span.variable(x - step, x + step))
    ok = np.isfinite(value) & np.isfinite(slope) & np.isfinite(out.lo) & np.isfinite(out.hi) & (np.abs(value) < 1e12)
    slack = 1e-9 * (1.0 + np.abs(value[ok]))
    assert np.all(out.lo[ok] - slack <= value[ok]) and np.all(value[ok] <= out.hi[ok] + slack), "a value outside its enclosure"
    # A difference quotient over [x - step, x + step] is a slope the function takes there (mean value theorem).
    slack = 1e-6 * (1.0 + np.abs(slope[ok])) + rounding[ok]
    assert np.all(out.dlo[ok] - slack <= slope[ok]) and np.all(slope[ok] <= out.dhi[ok] + slack), "a slope outside its enclosure"


@settings(max_examples=150, deadline=None)
@given(expressions())
def test_enclosures_hold_every_value_and_slope_numpy_sees(expr: Pair) -> None:
    g, gn, constants = expr
    x = _points(constants)
    _check(g, gn, x)
    _check(lambda t: t * g(t), lambda t: t * gn(t), x)


@settings(max_examples=100, deadline=None)
@given(expressions())
def test_the_slope_bound_is_at_least_every_sampled_slope(expr: Pair) -> None:
    g, gn, constants = expr
    bound = iv.slope_sup(lambda t: t * g(t))
    if bound is None:
        return  # not bounded: never a false certificate
    x = _points(constants)
    step = 1e-6 * np.maximum(1.0, np.abs(x))
    with np.errstate(all="ignore"):
        slope = np.abs(((x + step) * gn(x + step) - (x - step) * gn(x - step)) / (2 * step))
    slope = slope[np.isfinite(slope)]
    assert bound >= float(slope.max()) * (1 - 1e-6) - 1e-9


PRIMITIVES: dict[str, tuple[Callable[[Span], Span], Callable[[np.ndarray], np.ndarray]]] = {
    "sigmoid": (iv.sigmoid, _sigmoid),
    "tanh": (iv.tanh, np.tanh),
    "erf": (iv.erf, erf),
    "softplus": (iv.softplus, lambda t: np.logaddexp(0.0, t)),
    "relu": (lambda v: iv.clip(v, 0.0, math.inf), lambda t: np.maximum(t, 0.0)),
    "clip": (lambda v: iv.clip(v, -1.0, 2.0), lambda t: np.clip(t, -1.0, 2.0)),
    "square": (lambda v: iv.power(v, 2), lambda t: t**2),
    "cube": (lambda v: iv.power(v, 3), lambda t: t**3),
    "max": (lambda v: iv.maximum(v, v.scaled(-0.5)), lambda t: np.maximum(t, -0.5 * t)),
    "min": (lambda v: iv.minimum(v, v.constant(1.0)), lambda t: np.minimum(t, 1.0)),
    "product": (lambda v: v * iv.tanh(v), lambda t: t * np.tanh(t)),
    "quotient": (lambda v: v.divided(-3.0), lambda t: t / -3.0),
}


def _check_wide(f: Callable[[Span], Span], fn: Callable[[np.ndarray], np.ndarray], width: float) -> None:
    """Values and slopes at points spread over wide pieces inside those pieces' enclosures."""
    centers = np.linspace(-8.0, 8.0, 161)
    out = f(Span.variable(centers - width, centers + width))
    for fraction in np.linspace(-0.99, 0.99, 41):  # difference quotients stay inside the piece
        x = centers + fraction * width
        h = 1e-7 * np.maximum(1.0, np.abs(x))
        with np.errstate(all="ignore"):
            value, slope = fn(x), (fn(x + h) - fn(x - h)) / (2 * h)
        slack = 1e-6 * (1.0 + np.abs(slope))
        assert np.all(out.lo - 1e-9 <= value) and np.all(value <= out.hi + 1e-9), "a value outside a wide piece's enclosure"
        assert np.all(out.dlo - slack <= slope) and np.all(slope <= out.dhi + slack), "a slope outside a wide piece's enclosure"


def test_every_primitive_encloses_its_values_and_slopes() -> None:
    x = _points([-1.0, 1.0, 2.0])
    for name, (f, fn) in PRIMITIVES.items():
        try:
            _check(f, fn, x)
            _check_wide(f, fn, 0.5)
            _check_wide(f, fn, 3.0)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_slope_bounds_of_documented_gates_are_tight() -> None:
    silu = iv.slope_sup(lambda t: t * iv.sigmoid(t))
    hard_swish = iv.slope_sup(lambda t: t * iv.clip(t.scaled(1 / 6) + t.constant(0.5), 0.0, 1.0))
    mish = iv.slope_sup(lambda t: t * iv.tanh(iv.softplus(t)))
    assert silu is not None and 1.0998393 <= silu <= 1.0998393 * (1 + 2e-6)
    assert hard_swish is not None and 1.5 <= hard_swish <= 1.5 * (1 + 2e-6)
    assert mish is not None and 1.0884981 <= mish <= 1.0884981 * (1 + 2e-6)
    assert iv.slope_sup(lambda t: t * iv.clip(t, 0.0, math.inf)) is None  # x·relu(x) = x² for x > 0


def test_an_overflow_inside_an_enclosure_is_never_read_as_zero() -> None:
    # x·(σ(x) + x⁹ − x⁹) is SiLU, but x⁹ overflows far out: inf − inf must not turn into a small slope.
    bound = iv.slope_sup(lambda t: t * (iv.sigmoid(t) + iv.power(t, 9) - iv.power(t, 9)))
    assert bound is None or bound >= 1.0998393


def test_saturated_tails_keep_their_tiny_values_and_slopes() -> None:
    # Written so they cannot cancel: sigma'(t) = e^-|t| / (1 + e^-|t|)^2, tanh'(t) = 4 e^-2|t| / (1 + e^-2|t|)^2.
    t = np.array([-50.0, 30.0, 40.0])
    e = np.exp(-np.abs(t))
    out = iv.sigmoid(Span.variable(t, t))
    assert np.all(out.hi >= 1.0 / (1.0 + np.exp(-t)) * (1 - 1e-15)) and np.all(out.dhi >= e / (1 + e) ** 2 * (1 - 1e-12))
    e2 = np.exp(-2 * np.abs(t))
    assert np.all(iv.tanh(Span.variable(t, t)).dhi >= 4 * e2 / (1 + e2) ** 2 * (1 - 1e-12))
