"""Lanczos (lower end) and the Cholesky certificate (upper end) against a float64 full SVD."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lipcheck.spectral import dense
from lipcheck.spectral.dense import certify, certify_batch
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
    assert est.sigma == pytest.approx(5.0, rel=TOL)
    assert 5.0 <= est.upper <= 5.0 * (1 + 1e-6)


def test_nearly_degenerate_top_pair_where_fixed_iterations_fail() -> None:
    values = [3.0, 3.0 * 0.9997] + [1.0] * 60
    w = with_singular_values(80, 64, values, seed=3)
    # A fixed handful of iterations, as training-time spectral norm uses, is far off here...
    fixed = certify(w, tol=1e-15, max_iter=3, seed=0)
    assert abs(fixed.sigma - 3.0) / 3.0 > 1e-5
    assert not fixed.converged
    # ...while the certified stopping rule keeps going until the interval is tight.
    _check(w)


def test_non_converged_interval_is_still_certified() -> None:
    w = with_singular_values(80, 64, [3.0, 3.0 * 0.9997, 1.0], seed=4)
    est = certify(w, tol=1e-12, max_iter=1, seed=0)
    assert not est.converged
    assert est.certificate_steps > 1  # the certificate widened until a factorization succeeded
    assert est.sigma <= 3.0 <= est.upper
    assert est.upper <= 3.0 * 1.5


def test_cholesky_failure_sends_lanczos_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stop Lanczos after its first check: the first factorization then fails and it must resume.
    monkeypatch.setattr(dense, "_STOP_FRACTION", 1e12)
    w = with_singular_values(60, 50, [2.0, 1.99, 1.98, 1.0], seed=8)
    est = certify(w, tol=TOL, max_iter=10_000, seed=0)
    assert est.certificate_steps > 1
    assert est.converged and est.sigma <= 2.0 <= est.upper


def test_float32_and_float64_iterations_give_certified_intervals() -> None:
    w = with_singular_values(300, 200, [4.0, 3.999, 3.99] + [1.0] * 50, seed=2)
    for tol in (1e-4, 1e-6, 1e-8):  # float32 matrix-vector products from 1e-6 up, float64 below
        est = certify(w, tol=tol, max_iter=10_000, seed=0)
        assert est.converged and est.sigma <= 4.0 <= est.upper
        assert est.upper - est.sigma <= tol * est.upper


def test_batch_matches_one_at_a_time() -> None:
    g = torch.Generator().manual_seed(11)
    mats = [torch.randn(96, 40, generator=g) for _ in range(5)] + [torch.zeros(96, 40)]
    batched = certify_batch(mats, tol=TOL, max_iter=10_000, seed=0)
    for w, est in zip(mats, batched):
        single = certify(w, tol=TOL, max_iter=10_000, seed=0)
        exact = exact_sigma(w)
        assert est.sigma <= exact <= est.upper
        assert est.upper - est.sigma <= TOL * est.upper
        assert est.upper == pytest.approx(single.upper, rel=2 * TOL)


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
    assert est.iterations <= 2
    assert est.sigma == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_no_overflow_or_underflow(scale: float) -> None:
    w = with_singular_values(20, 20, [1.0, 0.5], seed=6) * scale
    est = certify(w, tol=TOL, max_iter=1000, seed=0)
    assert math.isfinite(est.upper) and est.converged
    assert est.sigma <= scale <= est.upper <= scale * (1 + 1e-6)


def test_certificate_is_not_fooled_by_a_start_orthogonal_to_the_top() -> None:
    # A warm start exactly orthogonal to the top singular vector spans an invariant subspace
    # without it: Lanczos must leave that subspace before the certificate can succeed.
    w = torch.diag(torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64))
    est = certify(w, tol=TOL, max_iter=1000, seed=0, u0=torch.tensor([1.0, 0.0, 0.0]))
    assert est.converged and est.sigma <= 5.0 <= est.upper <= 5.0 * (1 + TOL)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 80),
    n=st.integers(1, 80),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-6, 6),
    rank=st.integers(0, 80),
)
def test_interval_contains_svd_for_any_shape_and_dtype(m: int, n: int, dtype: torch.dtype, seed: int, log_scale: float, rank: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g)
    if rank < min(m, n):  # low rank: repeated zero singular values and invariant Krylov subspaces
        w = torch.randn(m, max(rank, 1), generator=g) @ torch.randn(max(rank, 1), n, generator=g)
    w = (w * 10.0**log_scale).to(dtype)
    assume(bool(torch.isfinite(w).all()))  # float16 overflows past 65504
    # The reference is the SVD of exactly the stored (rounded) values.
    _check(w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_peak_abs_finds_the_largest_entry_and_non_finite_ones(dtype: torch.dtype) -> None:
    w = torch.tensor([[0.5, -3.0], [2.0, 1.0]], dtype=dtype)
    assert dense.peak_abs(w) == 3.0
    assert dense.peak_abs(torch.zeros(0, 3, dtype=dtype)) == 0.0
    for bad, expect_nan in ((float("nan"), True), (float("inf"), False), (-float("inf"), False)):
        v = w.clone()
        v[1, 0] = bad
        got = dense.peak_abs(v)
        assert math.isnan(got) if expect_nan else got == math.inf


def test_a_clustered_top_spectrum_keeps_the_basis_orthogonal(tmp_path: Path) -> None:
    """A DCGAN-style ConvTranspose2d(3, 16, 4, stride=2, padding=1) at 8x8: its operator's top
    singular values cluster, and a basis whose orthogonality decayed gave [15.9, 22.5] around 19.59."""
    from lipcheck.api import inspect
    from lipcheck.settings import Settings

    g = torch.Generator().manual_seed(0)
    for shape in ((8, 8, 3, 3), (4, 3, 3, 3), (16, 8, 3, 3)):  # draws before the weight: they pick this instance
        torch.randn(shape, generator=g, dtype=torch.float64)
    layer = torch.nn.ConvTranspose2d(3, 16, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 16, 4, 4, generator=g, dtype=torch.float64))
    basis = torch.eye(192, dtype=torch.float64).reshape(192, 3, 8, 8)
    matrix = torch.nn.functional.conv_transpose2d(basis, layer.weight.detach().double(), stride=2, padding=1).reshape(192, -1)
    truth = float(torch.linalg.matrix_norm(matrix, ord=2))
    path = tmp_path / "dcgan.pt"
    torch.jit.script(torch.nn.Sequential(layer)).save(str(path))
    found = inspect(path, settings=Settings(lower=False, input_shape=((1, 3, 8, 8),))).layers[0]
    assert found.converged and found.lipschitz is not None
    assert found.lipschitz.lower <= truth <= found.lipschitz.upper <= truth * (1 + 2e-6)


@pytest.mark.parametrize("seed", range(4))
def test_a_fresh_lanczos_direction_is_orthogonal_even_when_a_draw_lies_in_the_basis_span(seed: int) -> None:
    """After a breakdown Lanczos continues from a random direction outside the basis' span.

    A draw inside the span leaves only rounding noise after orthogonalization, and that noise,
    normalized, is not orthogonal to the basis: the next draw must be taken instead.
    """
    q = 18
    g = torch.eye(q, dtype=torch.float64).unsqueeze(0)
    lanczos = dense._Lanczos(g, torch.ones(1, q, dtype=torch.float64), low_precision=False, seed=seed)
    first = torch.randn(1, q, 1, generator=torch.Generator().manual_seed(seed + dense._FRESH_STREAM), dtype=torch.float64).reshape(q)
    others = torch.randn(q, 8, generator=torch.Generator().manual_seed(50 + seed), dtype=torch.float64)
    span, _ = torch.linalg.qr(torch.cat([first.unsqueeze(1), others], dim=1))  # holds the stream's first draw
    kept = span.T.unsqueeze(0).contiguous()
    fresh = lanczos._fresh(kept)
    assert abs(float(fresh.norm()) - 1.0) < 1e-12
    assert float((kept[0] @ fresh[0]).abs().max()) < 1e-12


def test_a_grouped_strided_transposed_conv_that_broke_lanczos_converges() -> None:
    """The operator of this small grouped ConvTranspose (found by hypothesis) gets a tight interval."""
    from lipcheck.model import ConvGeometry
    from lipcheck.spectral.conv import explicit_matrix, operator_interval

    weight = torch.tensor(
        [[[0.7376, 1.9459, -0.6995]], [[-1.3023, -0.5133, -0.2696]], [[0.2462, 0.4839, 0.4504]], [[-0.9568, 1.5012, -0.3136]]], dtype=torch.float64
    )
    geometry = ConvGeometry(stride=(2,), padding=(3, 3), dilation=(2,), groups=2, output_padding=(0,), auto_pad="NOTSET", padding_mode="zeros")
    exact = exact_sigma(explicit_matrix(weight, geometry, (6,), True))
    found = operator_interval(weight, geometry, (6,), True, tol=1e-6, max_iter=20000, seed=0)
    assert found.lower <= exact <= found.upper
    assert found.converged and found.upper - found.lower <= 1e-6 * found.upper


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    rows=st.integers(1, 30),
    extra=st.integers(-8, 40),
    seed=st.integers(0, 2**16),
    spread=st.floats(0.0, 12.0),
    zeros=st.booleans(),
)
def test_row_scaled_intervals_contain_the_scaled_matrix_norm(rows: int, extra: int, seed: int, spread: float, zeros: bool) -> None:
    """One Gram product serves W and diag(s) W: each interval holds the float64 SVD's sigma_1."""
    cols = max(1, rows + extra)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    scales = [torch.exp(torch.empty(rows, dtype=torch.float64).uniform_(-spread, spread, generator=g)) for _ in range(2)]
    if zeros:
        scales[1][::3] = 0.0
    raw, scaled = dense.certify_row_scaled(w, scales, tol=TOL, max_iter=20_000, seed=0)
    exact = exact_sigma(w)
    assert raw.sigma <= exact * (1 + 1e-12) and raw.upper >= exact and raw.converged
    for s, est in zip(scales, scaled):
        if rows > cols:  # its Gram matrix is WᵀW, which a row scaling does not carry
            assert est is None
            continue
        assert est is not None
        truth = exact_sigma(s.unsqueeze(1) * w)
        assert est.sigma <= truth * (1 + 1e-12) and est.upper >= truth * (1 - 1e-14)
        assert est.converged and est.upper - est.sigma <= TOL * est.upper


def test_row_scales_outside_the_safe_range_are_left_to_the_caller() -> None:
    w = torch.randn(6, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    huge, tiny, ok = (
        torch.full((6,), 2.0**201, dtype=torch.float64),
        torch.full((6,), 2.0**-201, dtype=torch.float64),
        torch.linspace(0.5, 2.0, 6, dtype=torch.float64),
    )
    raw, scaled = dense.certify_row_scaled(w, [huge, tiny, ok, torch.ones(5)], tol=TOL, max_iter=20_000, seed=0)
    assert scaled[0] is None and scaled[1] is None and scaled[3] is None
    assert scaled[2] is not None and scaled[2].upper >= exact_sigma(ok.unsqueeze(1) * w)
    assert raw.upper >= exact_sigma(w) >= raw.sigma


@pytest.mark.parametrize("shape", [(1100, 1024), (1024, 2100)])
def test_large_grams_factored_in_place_match_svd(shape: tuple[int, int]) -> None:
    assert min(shape) >= dense.IN_PLACE_FROM  # LAPACK factors these in place
    _check(torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1])))


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (37, 19), (64, 200)])
def test_in_place_factorization_matches_svd_at_every_size(shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense, "IN_PLACE_FROM", 1)
    _check(torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64))


@pytest.mark.parametrize("in_place", [True, False])
def test_a_shift_below_the_top_eigenvalue_never_certifies(in_place: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """tau I - G factors exactly when tau is above lambda_max; the rounding term is the trace's share."""
    monkeypatch.setattr(dense, "IN_PLACE_FROM", 1 if in_place else 1 << 30)
    w = with_singular_values(60, 40, [3.0, 2.9, 1.0, 0.5])
    g = (w.T @ w).unsqueeze(0).contiguous()
    top = 9.0
    below, above = torch.tensor([top * (1 - 1e-9)], dtype=torch.float64), torch.tensor([top * (1 + 1e-9)], dtype=torch.float64)
    assert not bool(dense._cholesky_certifies(g, below)[0][0])
    ok, e3 = dense._cholesky_certifies(g, above)
    trace = float(40 * above[0] - torch.trace(g[0]))
    assert bool(ok[0]) and 0 < float(e3[0]) <= 1.01 * trace * dense._gamma(41)


def test_row_scales_that_reach_subnormal_gram_entries_stay_certified() -> None:
    """Scales inside the safe range can still push Gram entries into subnormal numbers: a scaled
    matrix that is all tiny is left to the caller, and one whose tiny rows sit beside a normal row
    keeps its interval around the float64 SVD's value (the entries' absolute underflow counted)."""
    q, x = 8, 2.0**-350
    w = torch.zeros(q, q + 5, dtype=torch.float64)
    w[0, 0], w[0, 1] = 1.0, 0.5
    w[1:, 2] = x
    tiny = torch.full((q,), math.sqrt(0.79 * 2.0**-1074) / x, dtype=torch.float64)  # s² x² is subnormal
    alone, beside = tiny.clone(), tiny.clone()
    alone[0], beside[0] = 0.0, 1e-3
    _, scaled = dense.certify_row_scaled(w, [alone, beside], tol=TOL, max_iter=200, seed=0)
    assert scaled[0] is None
    assert scaled[1] is not None
    truth = exact_sigma(beside.unsqueeze(1) * w)
    assert scaled[1].sigma <= truth * (1 + 1e-12) and scaled[1].upper >= truth


def test_a_scale_that_revives_an_underflowed_product_never_gives_a_false_upper() -> None:
    """The dominant row scaled to 0 and a row whose own product underflowed scaled by 2^190: the
    underflow in Ĝ itself must not be scaled past the bound (left to the caller, or bounded)."""
    x = math.sqrt(1.45) * 2.0**-537  # x * x rounds to the smallest subnormal
    w = torch.tensor([[1.0, 0.5, 0.25], [x, 0.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([0.0, 2.0**190], dtype=torch.float64)
    _, scaled = dense.certify_row_scaled(w, [s], tol=TOL, max_iter=100, seed=0)
    assert scaled[0] is None or scaled[0].upper >= exact_sigma(s.unsqueeze(1) * w)
