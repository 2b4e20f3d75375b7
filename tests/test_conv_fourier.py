"""The circular-embedding upper end and the operator lower end against explicit operator matrices.

The reference is the float64 SVD of the Jacobian of F.conv{1,2,3}d at the exact input size, built
by autograd independently of lipcheck's conv code. Inputs are large enough that the operator is
not built explicitly by lipcheck itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lipcheck.model import ConvGeometry
from lipcheck.spectral import conv as conv_module
from lipcheck.spectral import conv_groups
from lipcheck.spectral.conv import operator_interval, operator_lower, operator_upper, resolve, upper_end
from lipcheck.spectral.conv_fourier import ring_sizes
from tests.reference import exact_sigma

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _jacobian_norm(weight: torch.Tensor, stride: int, begin: list[int], end: list[int], dilation: int, groups: int, spatial: tuple[int, ...]) -> float:
    dims = len(spatial)
    x = torch.zeros(1, weight.shape[1] * groups, *spatial, dtype=torch.float64)
    flat = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]

    def apply(t: torch.Tensor) -> torch.Tensor:
        return _CONV[dims](F.pad(t, flat), weight, stride=stride, dilation=dilation, groups=groups)

    jac = torch.autograd.functional.jacobian(apply, x, vectorize=True)
    return exact_sigma(jac.reshape(-1, x.numel()))


@st.composite
def cases(draw):  # type: ignore[no-untyped-def]
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    top = max({1: 12, 2: 8, 3: 4}[dims], (k - 1) * dilation + 1)
    n = draw(st.integers((k - 1) * dilation + 1, top))
    begin = [draw(st.integers(0, k)) for _ in range(dims)]
    end = [draw(st.integers(0, k)) for _ in range(dims)]
    seed = draw(st.integers(0, 2**16))
    weight = torch.randn(c_out, c_in // groups, *(k,) * dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if draw(st.booleans()):
        weight = weight.round()  # integer taps: ties and exact cancellations
    return weight, stride, begin, end, dilation, groups, (n,) * dims


@settings(max_examples=40, deadline=None)
@given(cases())
def test_circular_upper_and_operator_lower_bracket_the_jacobian_norm(case) -> None:  # type: ignore[no-untyped-def]
    weight, stride, begin, end, dilation, groups, spatial = case
    dims = len(spatial)
    span = (weight.shape[2] - 1) * dilation + 1
    if any(n + b + e < span for n, b, e in zip(spatial, begin, end)):
        return  # no output: torch refuses the geometry
    exact = _jacobian_norm(weight, stride, begin, end, dilation, groups, spatial)
    geometry = ConvGeometry((stride,) * dims, tuple(begin) + tuple(end), (dilation,) * dims, groups)
    found = upper_end(weight, geometry, spatial, False, rel=1e-4)
    assert found.upper >= exact
    lower, iterations = operator_lower(weight, geometry, spatial, False, upper=found.upper, tol=1e-3, max_iter=200, seed=0, start=found.start)
    assert lower <= exact and 1 <= iterations <= 200


@settings(max_examples=15, deadline=None)
@given(cases())
def test_operator_interval_on_the_fourier_path_contains_the_norm(case) -> None:  # type: ignore[no-untyped-def]
    weight, stride, begin, end, dilation, groups, spatial = case
    dims = len(spatial)
    span = (weight.shape[2] - 1) * dilation + 1
    if any(n + b + e < span for n, b, e in zip(spatial, begin, end)):
        return
    exact = _jacobian_norm(weight, stride, begin, end, dilation, groups, spatial)
    geometry = ConvGeometry((stride,) * dims, tuple(begin) + tuple(end), (dilation,) * dims, groups)
    with pytest.MonkeyPatch.context() as patch:  # the circular path, also for grouped convs
        patch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)
        patch.setattr(conv_groups, "MAX_SIDE", 0)
        interval = operator_interval(weight, geometry, spatial, False, tol=1e-6, max_iter=100, seed=0)
        upper_only = operator_upper(weight, geometry, spatial, False, tol=1e-6, max_iter=100, seed=0)
    assert interval.lower <= exact <= interval.upper
    assert upper_only >= exact
    width = (interval.upper - interval.lower) / interval.upper if interval.upper else 0.0
    assert interval.converged == (width <= conv_module.conv_tolerance(1e-6))
    assert 1 <= interval.iterations <= 100


@pytest.mark.parametrize("transposed", [False, True])
def test_transposed_and_strided_convs_are_bounded(transposed: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    geometry = ConvGeometry((2, 2), (1, 1, 1, 1), (1, 1), 1, (1, 1) if transposed else ())
    spatial = (7, 7)
    geometry = resolve(weight, geometry, spatial, transposed)
    matrix = conv_module.explicit_matrix(weight, geometry, spatial, transposed)
    exact = exact_sigma(matrix)
    found = upper_end(weight, geometry, spatial, transposed, rel=1e-4)
    lower, _ = operator_lower(weight, geometry, spatial, transposed, upper=found.upper, tol=1e-3, max_iter=200, seed=0, start=found.start)
    assert lower <= exact <= found.upper


def test_ring_is_the_smallest_valid_embedding() -> None:
    # "Same" 3x3 padding shares one zero column between the two borders: n + 1, not n + 2.
    assert ring_sizes((7, 7), (3, 3), (1, 1), (1, 1), [1, 1], [1, 1]) == [8, 8]
    assert ring_sizes((14,), (3,), (2,), (1,), [1], [1]) == [16]
    assert ring_sizes((5,), (1,), (1,), (1,), [0], [0]) == [5]
    assert math.prod(ring_sizes((4, 4, 4), (3, 3, 3), (1, 1, 1), (2, 2, 2), [2] * 3, [2] * 3)) == 6**3


@pytest.mark.parametrize("reduced", [[8], [7], [8, 8], [15, 15], [4, 6, 2], [1, 1], [2, 3], [5, 1, 4]])
def test_half_frequencies_hold_one_of_each_conjugate_pair(reduced: list[int]) -> None:
    """Every frequency j or -j (mod the ring) is certified, and no class twice: G(-w) = conj G(w)."""
    from lipcheck.spectral import conv_fourier as cf

    kept = [tuple(f) for f in cf._half_frequencies(reduced).tolist()]
    classes = {min(f, tuple(-x % m for x, m in zip(f, reduced))) for f in np.ndindex(*reduced)}
    assert len(kept) == len(set(kept)) == len(classes)
    assert {min(f, tuple(-x % m for x, m in zip(f, reduced))) for f in kept} == classes


def test_negated_blocks_are_exact_and_certify_the_same_bound() -> None:
    from lipcheck.spectral import conv_fourier as cf

    weight = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    taps = cf.gram_taps(weight, 1, (1, 1), (1, 1), [6, 6])
    freqs = cf._half_frequencies(taps.taps.reduced)
    plain = cf.gram_blocks(taps, freqs).reshape(-1, taps.n, taps.n)
    negated = cf.gram_blocks(taps, freqs, negate=True).reshape(-1, taps.n, taps.n)
    assert torch.equal(negated, -plain)
    top = torch.linalg.eigvalsh(plain).amax(dim=-1)
    for tau in (top * (1 + 1e-6), top * 0.9):
        ok_a, bound_a = cf._cholesky_bounds(plain.clone(), tau)
        ok_b, bound_b = cf._cholesky_bounds(negated.clone(), tau, negated=True)
        assert torch.equal(ok_a, ok_b) and torch.equal(bound_a, bound_b)
        assert bool(ok_a.all()) == bool((tau > top).all())


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 2),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(4, 9),
    st.integers(0, 2**16),
)
def test_gram_blocks_match_the_symbol_within_the_rounding_bound(
    dims: int, k: int, stride: int, dilation: int, groups: int, c_in: int, c_out: int, n: int, seed: int
) -> None:
    """fl(G(w)) from paired tap products is K K^H or K^H K of the directly summed symbol, at every
    frequency, whether the out side's products are taken per delta or per tap pair."""
    from lipcheck.spectral import conv_fourier as cf
    from lipcheck.spectral import conv_start

    weight = torch.randn(c_out * groups, c_in, *(k,) * dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    strides, dilations = (stride,) * dims, (dilation,) * dims
    sizes = ring_sizes((n,) * dims, (k,) * dims, strides, dilations, [k // 2] * dims, [k // 2] * dims)
    kept = cf._BY_PAIR_ENTRIES
    for by_pair in (1, 1 << 62):
        cf._BY_PAIR_ENTRIES = by_pair
        try:
            taps = cf.gram_taps(weight, groups, strides, dilations, sizes)
        finally:
            cf._BY_PAIR_ENTRIES = kept
        freqs = cf._half_frequencies(taps.taps.reduced)
        blocks = cf.gram_blocks(taps, freqs)
        bound = cf.gram_error(taps)
        for row, frequency in enumerate(freqs.tolist()):
            for group in range(groups):
                symbol = conv_start.symbol_at(weight, groups, group, taps.taps, tuple(frequency))
                gram = symbol @ symbol.mH if taps.side == "out" else symbol.mH @ symbol
                # The reference itself is a float64 sum: allow its own rounding on top of the bound.
                slack = 1e-13 * float(gram.abs().sum())
                assert float(torch.linalg.matrix_norm(blocks[row, group] - gram, ord=2)) <= bound + slack


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.floats(0.0, 1e-3), st.integers(0, 2**16), st.booleans())
def test_cholesky_bound_is_above_the_largest_eigenvalue(n: int, slack: float, seed: int, singular: bool) -> None:
    """A completed factorization of tau I - G certifies lambda_max(G) even when tau is barely above it."""
    from lipcheck.spectral import conv_fourier as cf

    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(n, max(1, n // 2) if singular else n, generator=gen, dtype=torch.complex128)
    g = (k @ k.mH).unsqueeze(0)
    top = float(torch.linalg.eigvalsh(g)[0, -1])
    ok, bound = cf._cholesky_bounds(g, torch.tensor([top * (1 + slack)], dtype=torch.float64))
    if bool(ok[0]):
        assert float(bound[0]) >= top


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("n", [1, 9, 24])
def test_factorization_flags_each_matrix_of_a_batch_on_its_own(in_place: bool, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One indefinite or non-finite matrix fails alone; the others of the batch still certify (LAPACK
    in place, or torch's batched factorization for small blocks and where SciPy has none)."""
    from lipcheck.spectral import conv_fourier as cf
    from lipcheck.spectral import lapack

    if not in_place:
        monkeypatch.setattr(lapack, "available", lambda dtype: False)

    gen = torch.Generator().manual_seed(3)
    k = torch.randn(6, n, n, generator=gen, dtype=torch.complex128)
    a = k @ k.mH + 0.5 * torch.eye(n, dtype=torch.complex128)
    a[1] = -a[1]  # negative definite
    a[3, n - 1, n // 2] = float("nan")  # on or below the diagonal, where the factorization reads
    a[4, n - 1, n - 1] = float("inf")
    expected = [True, False, True, False, False, True]
    assert cf._factorizes(a.clone()).tolist() == expected
    # The same verdicts as torch's own factorization, on the finite matrices.
    _, info = torch.linalg.cholesky_ex(a[[0, 1, 2, 5]])
    assert (info == 0).tolist() == [expected[i] for i in (0, 1, 2, 5)]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 24), st.integers(1, 5), st.floats(-0.5, 0.5), st.booleans(), st.integers(0, 2**16))
def test_in_place_factorization_agrees_with_the_eigenvalues(n: int, batch: int, shift: float, complex_: bool, seed: int) -> None:
    """LAPACK in place completes exactly where the smallest eigenvalue is clearly positive, and leaves the factor."""
    from lipcheck.spectral import lapack

    rng = np.random.default_rng(seed)
    dtype = np.complex128 if complex_ else np.float64
    k = rng.standard_normal((batch, n, n)) + (1j * rng.standard_normal((batch, n, n)) if complex_ else 0)
    a = (k @ np.conj(np.swapaxes(k, 1, 2))) / n + shift * np.eye(n)
    a = a.astype(dtype)
    # Only the lower triangle is read: garbage above it must not matter.
    lower = np.tril(a)
    held = lower + np.triu(np.full((n, n), 7.0), 1)
    smallest = np.linalg.eigvalsh(a)[:, 0]
    work = np.ascontiguousarray(held, dtype=dtype)
    done = lapack.factor_in_place(work)
    for i in range(batch):
        if smallest[i] > 1e-8:
            assert done[i]
            factor = np.tril(work[i])
            np.testing.assert_allclose(factor @ np.conj(factor.T), a[i], atol=1e-10 * n)
        elif smallest[i] < -1e-8:
            assert not done[i]


def test_certificates_on_one_thread_do_not_see_each_others_scratch_memory() -> None:
    """A certificate after a larger or smaller one on the same thread gives what it gives alone."""
    from lipcheck.spectral import conv_fourier as cf

    gen = torch.Generator().manual_seed(11)
    small = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    large = torch.randn(12, 12, 3, 3, generator=gen, dtype=torch.float64)

    def bound(weight: torch.Tensor, n: int) -> tuple[float, torch.Tensor]:
        found, _ = cf.circular_certificate(weight, 1, (1, 1), (1, 1), [n, n], rel=1e-4)
        return found.upper, found.vector.clone()

    cf.release_scratch()
    alone = bound(small, 9)
    after_large = (bound(large, 12), bound(small, 9))[1]
    again = bound(small, 9)
    cf.release_scratch()
    assert alone[0] == after_large[0] == again[0]
    assert torch.equal(alone[1], after_large[1]) and torch.equal(alone[1], again[1])
    # The bound is a bound: the circular conv's norm from numpy's FFT of the kernel on the ring.
    padded = np.zeros((6, 4, 9, 9))
    padded[:, :, :3, :3] = small.numpy()
    symbols = np.fft.fft2(padded).transpose(2, 3, 0, 1)
    exact = float(np.linalg.norm(symbols, ord=2, axis=(2, 3)).max())
    assert exact <= alone[0] <= exact * (1 + 1e-3)
