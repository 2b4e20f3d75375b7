"""Numbers as text for every renderer: directed rounding keeps a printed bound a bound."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from lipcheck.model import CONV_OPS, CONV_TRANSPOSE_OPS
from lipcheck.report.data import LayerReport, Report


def down(x: float, digits: int = 6) -> str:
    """Format x with ``digits`` significant digits, rounded toward -inf (a lower end stays lower)."""
    return _directed(x, digits, math.floor)


def up(x: float, digits: int = 6) -> str:
    """Format x with ``digits`` significant digits, rounded toward +inf (an upper end stays an upper bound)."""
    return _directed(x, digits, math.ceil)


def _directed(x: float, digits: int, rounding: Callable[[float], int]) -> str:
    """x to ``digits`` significant decimal digits, rounded exactly (in decimal, from x's exact value)
    toward +inf (math.ceil) or -inf (math.floor)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    exact = Decimal(x)
    exponent = exact.adjusted() - digits + 1
    mode = ROUND_CEILING if rounding is math.ceil else ROUND_FLOOR
    value = exact.quantize(Decimal(1).scaleb(exponent), rounding=mode)
    if value.adjusted() > exact.adjusted():  # 9.99999x rounded up to 10.0000: one digit too many
        exponent += 1
        value = exact.quantize(Decimal(1).scaleb(exponent), rounding=mode)
    if Decimal("1e-4") <= abs(exact) < Decimal(10) ** digits:
        return f"{value:.{max(0, -exponent)}f}"
    return f"{value:.{digits - 1}e}"


def upper_text(layer: LayerReport) -> str:
    """A layer's upper bound rounded up, with the interval's relative width (``1.47420 ±4e-7``)."""
    lip = layer.lipschitz
    if lip is None:
        return "n/a"
    if lip.lower is None:
        return f"{up(lip.upper)} (no lower)"
    width = (lip.upper - lip.lower) / lip.upper if lip.upper > 0 else 0.0
    return f"{up(lip.upper)} ±{width:.0e}" if width > 0 else f"{up(lip.upper)} exact"


def interval_text(layer: LayerReport) -> str:
    """A layer's Lipschitz interval, rounded outward; ? for an unknown lower end."""
    lip = layer.lipschitz
    if lip is None:
        return "n/a"
    lower = down(lip.lower) if lip.lower is not None else "?"
    return f"[{lower}, {up(lip.upper)}]"


def at_text(layer: LayerReport) -> str:
    """Where a conv's interval holds: its input size, every size, or (no geometry) a loose bound."""
    if layer.op not in CONV_OPS + CONV_TRANSPOSE_OPS:
        return ""
    if layer.input_size is not None:
        return "×".join(map(str, layer.input_size))
    method = layer.lipschitz.method if layer.lipschitz is not None else ""
    return "any size" if method.startswith(("input size unknown", "1x1")) else "no geometry"


def product_text(report: Report) -> str:
    """The product bound, rounded up, or its log10 when it is beyond float range."""
    b = report.bound
    if b.product_log10 is None:
        return "n/a (no layer weights found)" if not report.layers else "n/a (a layer has no finite bound: non-finite weights, or a bound beyond float range)"
    if b.product is not None and 1e-4 <= b.product < 1e7:
        return up(b.product)
    if b.product == 0.0 or b.product_log10 == -math.inf:  # a layer of zeros
        return "0"
    # The exponent rounded up in its last printed digit, so the printed power is never below the product.
    return f"10^{math.ceil(b.product_log10 * 1e4) / 1e4:.4f}"


def network_text(report: Report) -> str:
    """The network bound rounded up with how it was found, or why there is none."""
    b = report.bound
    if b.upper is None:
        return "none: " + (b.blocking[0] if b.blocking else "lipcheck cannot bound this network")
    return f"{up(b.upper)} ({b.method})"


def lower_text(report: Report) -> str:
    """The attained lower bound rounded down, with its gap to the network bound where there is one."""
    b = report.bound
    if b.lower is None:
        return "n/a"
    gap = f" (upper/lower {b.upper / b.lower:.3g})" if b.upper is not None and b.lower > 0 else ""
    return down(b.lower) + gap


def finite(value: Any) -> Any:
    """A JSON body with every non-finite float replaced by null (JSON has no Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
