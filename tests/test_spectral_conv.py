"""Conv operator-norm intervals against the explicit operator matrix in float64."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lipcheck.model import ConvGeometry
from lipcheck.spectral.conv import (
    _conv_fn,
    circular_upper,
    explicit_matrix,
    operator_interval,
    operator_lower,
    resolve,
    upper_end,
)


@st.composite
def conv_cases(draw):  # type: ignore[no-untyped-def]
    dims = draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 2))
    transposed = draw(st.booleans())
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    n = draw(st.integers(max(k * dilation, 3), 9))
    begin = [draw(st.integers(0, k)) for _ in range(dims)]
    end = begin if transposed else [draw(st.integers(0, k)) for _ in range(dims)]
    out_pad = [draw(st.integers(0, stride - 1)) if transposed and dilation == 1 else 0 for _ in range(dims)]
    geometry = ConvGeometry((stride,) * dims, tuple(begin) + tuple(end), (dilation,) * dims, groups, tuple(out_pad) if transposed else ())
    shape = (c_in, c_out // groups) if transposed else (c_out, c_in // groups)
    seed = draw(st.integers(0, 2**16))
    weight = torch.randn(*shape, *(k,) * dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return weight, geometry, (n,) * dims, transposed


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_interval_contains_the_exact_operator_norm(case) -> None:  # type: ignore[no-untyped-def]
    weight, geometry, spatial, transposed = case
    try:
        matrix = explicit_matrix(weight, geometry, spatial, transposed)
    except RuntimeError:  # output would be empty: torch refuses the geometry
        return
    x = torch.randn(matrix.shape[1], dtype=torch.float64)
    channels = weight.shape[0] if transposed else weight.shape[1] * geometry.groups
    y = _conv_fn(weight, geometry, transposed)(x.reshape(1, channels, *spatial)).reshape(-1)
    assert torch.allclose(matrix @ x, y)  # the explicit matrix is the operator
    exact = float(torch.linalg.svdvals(matrix)[0])
    assert circular_upper(weight, geometry, spatial, transposed) >= exact
    resolved = resolve(weight, geometry, spatial, transposed)
    lower, _ = operator_lower(weight, resolved, spatial, transposed, upper=exact * 2, tol=1e-7, max_iter=300, seed=0)
    assert lower <= exact
    interval = operator_interval(weight, geometry, spatial, transposed, tol=1e-6, max_iter=20000, seed=0)
    assert interval.lower <= exact * (1 + 1e-9) <= interval.upper * (1 + 1e-9)
    assert interval.upper - interval.lower <= 1e-6 * interval.upper


def test_padded_conv_circular_bound_is_tight_at_32px() -> None:
    weight = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    geometry = ConvGeometry((1, 1), (1, 1, 1, 1), (1, 1), 1)
    upper = circular_upper(weight, geometry, (32, 32), False)
    lower, _ = operator_lower(weight, geometry, (32, 32), False, upper=upper, tol=1e-6, max_iter=2000, seed=0)
    assert lower <= upper <= lower * 1.01


def test_windowed_fourier_start_needs_fewer_iterations() -> None:
    """The circular operator's top mode, windowed to the input, starts Lanczos near the answer."""
    weight = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for geometry in (
        ConvGeometry((1, 1), (1, 1, 1, 1), (1, 1), 1),
        ConvGeometry((2, 2), (1, 1, 1, 1), (1, 1), 1),
        ConvGeometry((1, 1), (1, 1, 1, 1), (1, 1), 2),
    ):
        w = weight[:, : 8 // geometry.groups]
        found = upper_end(w, geometry, (32, 32), False, rel=1e-5)
        assert found.start is not None
        cold, cold_it = operator_lower(w, geometry, (32, 32), False, upper=found.upper, tol=1e-4, max_iter=2000, seed=0)
        warm, warm_it = operator_lower(w, geometry, (32, 32), False, upper=found.upper, tol=1e-4, max_iter=2000, seed=0, start=found.start)
        assert warm_it < cold_it and warm >= cold * (1 - 1e-4) and warm <= found.upper


def test_float32_lanczos_keeps_orthogonality_where_the_krylov_space_closes_early() -> None:
    # The explicit matrix of this transposed conv has a Gram with few distinct eigenvalues (the top
    # one, 2.0061^2, repeated): the Krylov space closes after a few steps and the float32 products
    # leave a small, mostly cancelled residual. One orthogonalization pass there lost the basis'
    # orthogonality, and the interval stayed at [1.47, 2.62].
    weight = torch.tensor([[[[0.3923, -0.2236, -0.3195], [-1.2050, 1.0445, -0.6332], [0.5731, 0.5409, -0.3919]]]], dtype=torch.float64)
    geometry = ConvGeometry((3, 3), (1, 1, 1, 1), (2, 2), 1, (0, 0))
    matrix = explicit_matrix(weight, resolve(weight, geometry, (6, 6), True), (6, 6), True)
    exact = float(torch.linalg.svdvals(matrix)[0])
    interval = operator_interval(weight, geometry, (6, 6), True, tol=1e-6, max_iter=20000, seed=0)
    assert interval.lower <= exact <= interval.upper
    assert interval.converged and interval.upper - interval.lower <= 1e-6 * interval.upper
