"""Power iteration and the Gram certificate against a float64 full SVD."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lipcheck.spectral.dense import certify, gram_upper
from tests.reference import exact_sigma, with_singular_values

TOL = 1e-6


def _check(w: torch.Tensor, **kwargs: object) -> None:
    est = certify(w, tol=TOL, max_iter=20_000, seed=0, **kwargs)  # type: ignore[arg-type]
    exact = exact_sigma(w)
    assert est.converged
    assert est.sigma <= exact * (1 + 1e-12)
    assert est.upper >= exact
    assert abs(est.sigma - exact) <= 1e-5 * exact
    assert est.upper - est.sigma <= TOL * est.upper


@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (50, 1), (37, 19), (200, 300), (512, 64)])
def test_random_matrices_match_svd(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    _check(torch.randn(*shape, generator=g))


def test_prescribed_singular_values() -> None:
    w = with_singular_values(40, 30, [5.0, 2.0, 1.0, 0.5])
    est = certify(w, tol=TOL, max_iter=1000, seed=0)
    assert est.sigma == pytest.approx(5.0, rel=1e-9)
    assert 5.0 <= est.upper <= 5.0 * (1 + 1e-6)


def test_nearly_degenerate_top_pair_where_fixed_iterations_fail() -> None:
    values = [3.0, 3.0 * 0.9997] + [1.0] * 60
    w = with_singular_values(80, 64, values, seed=3)
    # A fixed 50 (or 500) iterations, as training-time spectral norm uses, is far off here...
    fixed = certify(w, tol=1e-15, max_iter=50, seed=0)
    assert abs(fixed.sigma - 3.0) / 3.0 > 1e-5
    assert not fixed.converged
    # ...while the certified stopping rule keeps going until the interval is tight.
    _check(w)


def test_non_converged_interval_is_still_certified() -> None:
    w = with_singular_values(80, 64, [3.0, 3.0 * 0.9997, 1.0], seed=4)
    est = certify(w, tol=1e-9, max_iter=5, seed=0)
    assert not est.converged
    assert est.sigma <= 3.0 <= est.upper


def test_zero_matrix() -> None:
    est = certify(torch.zeros(4, 5), tol=TOL, max_iter=10, seed=0)
    assert (est.sigma, est.upper, est.converged) == (0.0, 0.0, True)


def test_same_seed_same_numbers() -> None:
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(9))
    assert certify(w, tol=TOL, max_iter=1000, seed=7) == certify(w, tol=TOL, max_iter=1000, seed=7)


def test_warm_start_from_the_top_singular_vector_converges_at_once() -> None:
    w = with_singular_values(30, 20, [2.0, 1.9, 1.0], seed=5)
    u = torch.linalg.svd(w).U[:, 0]
    est = certify(w, tol=TOL, max_iter=1000, seed=0, u0=u)
    assert est.iterations <= 3
    assert est.sigma == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("scale", [1e-150, 1e150])
def test_gram_upper_has_no_overflow_or_underflow(scale: float) -> None:
    w = with_singular_values(20, 20, [1.0, 0.5], seed=6) * scale
    upper, _ = gram_upper(w)
    assert math.isfinite(upper)
    assert scale <= upper <= scale * (1 + 1e-6)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 48),
    n=st.integers(1, 48),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-6, 6),
)
def test_interval_contains_svd_for_any_shape_and_dtype(m: int, n: int, dtype: torch.dtype, seed: int, log_scale: float) -> None:
    w = (torch.randn(m, n, generator=torch.Generator().manual_seed(seed)) * 10.0**log_scale).to(dtype)
    assume(bool(torch.isfinite(w).all()))  # float16 overflows past 65504
    # The reference is the SVD of exactly the stored (rounded) values.
    _check(w)
