"""The product bound: in log space, and rounded up."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipcheck.product import log10_product, product_from_log10, product_upper


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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=60))
def test_product_is_rounded_up_never_below_the_exact_product(uppers: list[float]) -> None:
    exact = math.prod(Fraction(u) for u in uppers)
    got = product_upper(uppers)
    assert got is not None
    assert Fraction(got) >= exact
    assert got <= float(exact) * (1 + 1e-13)


def test_product_past_float_range_is_still_rounded_up() -> None:
    uppers = [1e-200, 1e-200, 1e300]  # the running product underflows on the way
    got = product_upper(uppers)
    assert got is not None and Fraction(got) >= Fraction(1e-200) ** 2 * Fraction(1e300)
    assert got == pytest.approx(1e-100, rel=1e-12)
