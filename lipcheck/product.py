"""Combine per-layer Lipschitz bounds into bounds on the whole network."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from fractions import Fraction

PRODUCT_ASSUMPTION = (
    "product: the product of every layer's upper bound; a bound on the network only for a plain chain "
    "of these layers with 1-Lipschitz activations between them (no residual adds, attention or normalization)"
)


def log10_product(uppers: Sequence[float | None]) -> float | None:
    """Return log10 of the product of the bounds, summed in log space; None if any is unknown or
    there are none (no layer bounds nothing).

    A zero factor gives -inf (the product is 0).
    """
    if not uppers or any(u is None or not math.isfinite(u) for u in uppers):
        return None
    if any(u == 0.0 for u in uppers):
        return -math.inf
    return math.fsum(math.log10(u) for u in uppers)  # type: ignore[arg-type]


def product_from_log10(log10: float | None) -> float | None:
    """Return 10**log10 as a float, or None when it is unknown or beyond float range."""
    if log10 is None:
        return None
    if log10 == -math.inf:
        return 0.0
    if log10 > 308.0:
        return None
    return 10.0**log10


def product_upper(uppers: Sequence[float | None]) -> float | None:
    """Return the product of the bounds rounded up, so it is never below the exact product.

    The product is formed exactly (binary fractions) and rounded up to the next float; None when a
    bound is unknown or the product is beyond float range.
    """
    log10 = log10_product(uppers)
    if log10 is None or log10 == -math.inf:
        return product_from_log10(log10)
    exact = Fraction(1)
    for value in uppers:
        exact *= Fraction(value)  # type: ignore[arg-type]
    if exact > Fraction(sys.float_info.max):
        return None
    found = float(exact)
    return math.nextafter(found, math.inf) if Fraction(found) < exact else found


def root_sum_squares(values: Sequence[float]) -> float:
    """sqrt(sum of squares) of non-negative values, scaled by the largest so no square overflows; not
    rounded either way (the caller rounds up for a bound, down for an attained value)."""
    if not values:
        return 0.0
    largest = max(values)
    if len(values) == 1 or largest == 0.0:
        return largest
    return largest * math.sqrt(math.fsum((v / largest) ** 2 for v in values))
