"""The product bound in log space."""

from __future__ import annotations

import math

import pytest

from lipcheck.product import log10_product, product_from_log10


@pytest.mark.parametrize("sigma", [1e-3, 0.5, 7.0, 1e3])
def test_300_layers_neither_overflow_nor_underflow(sigma: float) -> None:
    log10 = log10_product([sigma] * 300)
    assert log10 == pytest.approx(300 * math.log10(sigma), rel=1e-12)
    product = product_from_log10(log10)
    if abs(log10) < 300:
        assert product == pytest.approx(sigma**300, rel=1e-10)
    elif log10 > 308:
        assert product is None  # beyond float range: the log10 value carries it


def test_zero_and_unknown_factors() -> None:
    assert product_from_log10(log10_product([2.0, 0.0])) == 0.0
    assert log10_product([2.0, None]) is None
    assert log10_product([2.0, math.inf]) is None
