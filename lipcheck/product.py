"""Combine per-layer Lipschitz bounds into bounds on the whole network."""

from __future__ import annotations

import math
from collections.abc import Sequence

PRODUCT_ASSUMPTION = (
    "product: the product of every layer's upper bound; a bound on the network only for a plain chain "
    "of these layers with 1-Lipschitz activations between them (no residual adds, attention or normalization)"
)


def log10_product(uppers: Sequence[float | None]) -> float | None:
    """Return log10 of the product of the bounds, summed in log space; None if any is unknown.

    A zero factor gives -inf (the product is 0).
    """
    if any(u is None or not math.isfinite(u) for u in uppers):
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

    Each float multiplication rounds by at most one part in 2^53; the result is raised by that
    much per factor. Falls back to 10**log10 (also raised) when the running product leaves float
    range; None when a bound is unknown or the product is beyond float range.
    """
    log10 = log10_product(uppers)
    if log10 is None or log10 == -math.inf:
        return product_from_log10(log10)
    raise_by = 1.0 + 4.0 * (len(uppers) + 1) * 2.0**-53
    direct = math.prod(uppers)  # type: ignore[arg-type]
    if direct != 0.0 and math.isfinite(direct) and direct > 1e-290:
        return direct * raise_by
    value = product_from_log10(log10)
    # 10**x has a relative error of about |x| * ln(10) * 2^-53 from x's own rounding.
    return None if value is None else value * (raise_by + 8.0 * (abs(log10) + 1.0) * 2.0**-53)
