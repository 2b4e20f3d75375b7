"""Rigorous enclosures of a scalar function and its derivative over intervals, and the supremum of |h'|.

A ``Span`` holds, for a batch of intervals of ``x``, an interval containing every value ``f(x)``
and one containing every derivative ``f'(x)`` (forward-mode differentiation in interval
arithmetic). Each bound is rounded outward: arithmetic by a relative 4 ulps, library functions
(exp, tanh, erf, log) by 16 ulps, and by the smallest subnormal near zero, so the enclosures hold in
real arithmetic. Where a function has a kink (ReLU, Clip, Max), the derivative interval on a piece
that contains it is the hull of both sides' slopes: the Lipschitz constant of a piecewise smooth
function is the largest one-sided slope.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# Largest float32: every activation of a float32 graph lies within it; a graph with doubles reaches float64's.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT64_MAX = float(np.finfo(np.float64).max)
_ARITH = 4 * 2.0**-52
_LIBRARY = 16 * 2.0**-52
_TINY = 5e-324


def _down(a: np.ndarray, rel: float = _ARITH) -> np.ndarray:
    return a - np.abs(a) * rel - _TINY


def _up(a: np.ndarray, rel: float = _ARITH) -> np.ndarray:
    return a + np.abs(a) * rel + _TINY


def _mul(alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray, bhi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        products = np.stack([alo * blo, alo * bhi, ahi * blo, ahi * bhi])
    # 0 * inf: an endpoint 0 times a factor past float range is 0; a NaN already in a factor stays NaN.
    unknown = np.isnan(alo) | np.isnan(ahi) | np.isnan(blo) | np.isnan(bhi)
    products = np.where(np.isnan(products) & ~unknown, 0.0, products)
    found_lo, found_hi = products.min(axis=0), products.max(axis=0)
    return np.where(unknown, np.nan, _down(found_lo)), np.where(unknown, np.nan, _up(found_hi))


class Span:
    """Intervals [lo, hi] of values and [dlo, dhi] of derivatives, one per piece of the x axis."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, dlo: np.ndarray, dhi: np.ndarray) -> None:
        self.lo, self.hi, self.dlo, self.dhi = lo, hi, dlo, dhi

    @staticmethod
    def variable(lo: np.ndarray, hi: np.ndarray) -> Span:
        """x itself on the pieces [lo, hi]: derivative 1."""
        return Span(lo, hi, np.ones_like(lo), np.ones_like(lo))

    def constant(self, c: float) -> Span:
        """A constant on the same pieces."""
        full = np.full_like(self.lo, c)
        zero = np.zeros_like(self.lo)
        return Span(full, full.copy(), zero, zero.copy())

    def __add__(self, other: Span) -> Span:
        return Span(_down(self.lo + other.lo), _up(self.hi + other.hi), _down(self.dlo + other.dlo), _up(self.dhi + other.dhi))

    def __sub__(self, other: Span) -> Span:
        return Span(_down(self.lo - other.hi), _up(self.hi - other.lo), _down(self.dlo - other.dhi), _up(self.dhi - other.dlo))

    def __neg__(self) -> Span:
        return Span(-self.hi, -self.lo, -self.dhi, -self.dlo)

    def __mul__(self, other: Span) -> Span:
        lo, hi = _mul(self.lo, self.hi, other.lo, other.hi)
        alo, ahi = _mul(self.dlo, self.dhi, other.lo, other.hi)
        blo, bhi = _mul(self.lo, self.hi, other.dlo, other.dhi)
        return Span(lo, hi, _down(alo + blo), _up(ahi + bhi))

    def scaled(self, c: float) -> Span:
        """c times this function (c a nonzero float; 1/c is taken as its own float)."""
        lo, hi = _mul(self.lo, self.hi, np.full_like(self.lo, c), np.full_like(self.lo, c))
        dlo, dhi = _mul(self.dlo, self.dhi, np.full_like(self.lo, c), np.full_like(self.lo, c))
        return Span(lo, hi, dlo, dhi)

    def divided(self, c: float) -> Span:
        """This function divided by the nonzero constant c (rounded outward)."""
        lo, hi = (self.lo / c, self.hi / c) if c > 0 else (self.hi / c, self.lo / c)
        dlo, dhi = (self.dlo / c, self.dhi / c) if c > 0 else (self.dhi / c, self.dlo / c)
        return Span(_down(lo), _up(hi), _down(dlo), _up(dhi))

    def chain(self, lo: np.ndarray, hi: np.ndarray, slo: np.ndarray, shi: np.ndarray) -> Span:
        """f of this function, given f's value interval [lo, hi] and slope interval [slo, shi] on it."""
        dlo, dhi = _mul(slo, shi, self.dlo, self.dhi)
        return Span(lo, hi, dlo, dhi)


def _peak_at_zero(lo: np.ndarray, hi: np.ndarray, fprime: Callable[[np.ndarray], np.ndarray], peak: float) -> tuple[np.ndarray, np.ndarray]:
    """The range of an even slope function decreasing in |t| (sigmoid', tanh', erf') over [lo, hi]."""
    near = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
    far = np.maximum(np.abs(lo), np.abs(hi))
    with np.errstate(over="ignore", under="ignore"):
        top = np.where(near == 0.0, peak, fprime(near))
        bottom = fprime(far)
    return np.maximum(_down(bottom, _LIBRARY), 0.0), _up(top, _LIBRARY)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-t) to a few ulps relative everywhere, its tiny tails included."""
    from scipy.special import expit

    return np.asarray(expit(t))


def _tanh_slope(t: np.ndarray) -> np.ndarray:
    """1 / cosh(t)^2, accurate where 1 - tanh(t)^2 would cancel to 0."""
    with np.errstate(over="ignore"):
        return 1.0 / np.cosh(t) ** 2


def sigmoid(v: Span) -> Span:
    """The logistic function: increasing, slope sigma(t) sigma(-t), largest (1/4) at 0."""
    slo, shi = _peak_at_zero(v.lo, v.hi, lambda t: _sigmoid(t) * _sigmoid(-t), 0.25)
    return v.chain(np.maximum(_down(_sigmoid(v.lo), _LIBRARY), 0.0), np.minimum(_up(_sigmoid(v.hi), _LIBRARY), 1.0), slo, shi)


def tanh(v: Span) -> Span:
    """tanh: increasing, slope 1/cosh^2, largest (1) at 0."""
    slo, shi = _peak_at_zero(v.lo, v.hi, _tanh_slope, 1.0)
    return v.chain(np.maximum(_down(np.tanh(v.lo), _LIBRARY), -1.0), np.minimum(_up(np.tanh(v.hi), _LIBRARY), 1.0), slo, shi)


def erf(v: Span) -> Span:
    """erf: increasing, slope 2/sqrt(pi) exp(-t^2), largest at 0."""
    from scipy.special import erf as scipy_erf

    scale = 2.0 / math.sqrt(math.pi)
    slo, shi = _peak_at_zero(v.lo, v.hi, lambda t: scale * np.exp(-(t**2)), scale)
    return v.chain(np.maximum(_down(scipy_erf(v.lo), _LIBRARY), -1.0), np.minimum(_up(scipy_erf(v.hi), _LIBRARY), 1.0), slo, shi)


def softplus(v: Span) -> Span:
    """log(1 + e^t): increasing, slope sigma(t), increasing."""
    with np.errstate(over="ignore"):
        lo, hi = np.logaddexp(0.0, v.lo), np.logaddexp(0.0, v.hi)
    slo = np.maximum(_down(_sigmoid(v.lo), _LIBRARY), 0.0)
    shi = np.minimum(_up(_sigmoid(v.hi), _LIBRARY), 1.0)
    return v.chain(np.maximum(_down(lo, _LIBRARY), 0.0), _up(hi, _LIBRARY), slo, shi)


def clip(v: Span, low: float, high: float) -> Span:
    """min(max(t, low), high): slope 1 strictly inside, 0 outside, either on a piece holding an end."""
    inside = (v.lo > low) & (v.hi < high)
    outside = (v.hi <= low) | (v.lo >= high)
    slo = np.where(inside, 1.0, 0.0)
    shi = np.where(outside, 0.0, 1.0)
    return v.chain(np.clip(v.lo, low, high), np.clip(v.hi, low, high), slo, shi)


def maximum(a: Span, b: Span) -> Span:
    """max(f, g): where one is above the other on the whole piece, its slope; else either."""
    lo, hi = np.maximum(a.lo, b.lo), np.maximum(a.hi, b.hi)
    a_wins, b_wins = a.lo >= b.hi, b.lo >= a.hi
    dlo = np.where(a_wins, a.dlo, np.where(b_wins, b.dlo, np.minimum(a.dlo, b.dlo)))
    dhi = np.where(a_wins, a.dhi, np.where(b_wins, b.dhi, np.maximum(a.dhi, b.dhi)))
    return Span(lo, hi, dlo, dhi)


def minimum(a: Span, b: Span) -> Span:
    """min(f, g) = -max(-f, -g)."""
    return -maximum(-a, -b)


def power(v: Span, p: int) -> Span:
    """t^p for an integer p >= 0."""
    if p == 0:
        return v.constant(1.0)
    if p == 1:
        return v
    with np.errstate(over="ignore"):
        a, b = v.lo**p, v.hi**p
        if p % 2:
            lo, hi = a, b
        else:
            straddles = (v.lo < 0) & (v.hi > 0)
            lo = np.where(straddles, 0.0, np.minimum(a, b))
            hi = np.maximum(a, b)
    inner = power(v, p - 1) if p > 2 else v
    slo, shi = _mul(np.full_like(v.lo, float(p)), np.full_like(v.lo, float(p)), inner.lo, inner.hi)
    return v.chain(_down(lo), _up(hi), slo, shi)


def slope_sup(
    h: Callable[[Span], Span], *, limit: float = FLOAT32_MAX, rel: float = 1e-6, edge: float = 2.0**64, max_pieces: int = 1 << 17, rounds: int = 60
) -> float | None:
    """A certified upper bound on sup |h'| over |x| <= ``limit``, or None where h' grows or is unbounded.

    The line is cut into a uniform grid on [-1, 1] and doubling pieces out to ``limit``; pieces whose
    enclosure of |h'| could exceed the best slope found at piece midpoints by more than ``rel`` are
    halved, for ``rounds`` rounds or until ``max_pieces`` are open. The result is the largest
    enclosure left, so it holds however early the refinement stops. A slope beyond ``edge`` that
    exceeds the one within it means h' still grows far out: h is not globally Lipschitz.
    """
    inner = np.linspace(-1.0, 1.0, 4097)
    top = math.frexp(limit)[1]  # 2^(top - 1) <= limit < 2^top
    powers = np.ldexp(1.0, np.arange(0, top))
    outer = np.concatenate([powers[powers < limit], [limit]])
    right_lo, right_hi = outer[:-1], outer[1:]
    lo = np.concatenate([inner[:-1], right_lo, -right_hi])
    hi = np.concatenate([inner[1:], right_hi, -right_lo])
    final: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    best = 0.0
    for _ in range(rounds):
        found = _slope_bounds(h, lo, hi)
        if found is None:
            return None
        mid = 0.5 * lo + 0.5 * hi  # no overflow next to float64's largest value
        estimate = _slope_bounds(h, mid, mid)
        if estimate is None:
            return None
        best = max(best, float(estimate.max()))
        open_ = found > best * (1 + rel)
        final.append((lo[~open_], hi[~open_], found[~open_]))
        if not open_.any():
            break
        lo, hi = lo[open_], hi[open_]
        if 2 * lo.size > max_pieces:
            final.append((lo, hi, found[open_]))
            break
        halfway = 0.5 * lo + 0.5 * hi
        middle = np.where(np.abs(lo) >= 1.0, np.sign(halfway) * np.sqrt(np.abs(lo)) * np.sqrt(np.abs(hi)), halfway)
        middle = np.where((middle <= lo) | (middle >= hi), halfway, middle)
        lo, hi = np.concatenate([lo, middle]), np.concatenate([middle, hi])
    else:
        left = _slope_bounds(h, lo, hi)
        if left is None:
            return None
        final.append((lo, hi, left))
    pieces_lo = np.concatenate([f[0] for f in final])
    pieces_hi = np.concatenate([f[1] for f in final])
    bounds = np.concatenate([f[2] for f in final])
    if bounds.size == 0 or not np.all(np.isfinite(bounds)):
        return None
    far = (np.abs(pieces_lo) >= edge) & (np.abs(pieces_hi) >= edge)
    near_sup = float(bounds[~far].max()) if (~far).any() else 0.0
    far_sup = float(bounds[far].max()) if far.any() else 0.0
    if far_sup > near_sup * (1 + 1e-3):
        return None
    return max(near_sup, far_sup)


def _slope_bounds(h: Callable[[Span], Span], lo: np.ndarray, hi: np.ndarray) -> np.ndarray | None:
    """max |h'| enclosed on each piece [lo, hi]; None where an enclosure is not a number."""
    with np.errstate(all="ignore"):
        out = h(Span.variable(lo, hi))
        found = np.maximum(np.abs(out.dlo), np.abs(out.dhi))
    if np.isnan(found).any():
        return None
    return found
