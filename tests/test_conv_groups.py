"""Grouped convs on small inputs: each group's explicit operator, certified, against independent references.

The reference is the float64 SVD of the whole operator, built by torch's conv applied to every
basis vector (not by lipcheck's tap placement), and each group's norm from its own block of it.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lipcheck.model import ConvGeometry
from lipcheck.spectral import conv as conv_module
from lipcheck.spectral import conv_groups
from tests.reference import exact_sigma


def _operator(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> torch.Tensor:
    channels = conv_module.input_channels(weight, geometry, transposed)
    size = channels * math.prod(spatial)
    columns = conv_module._conv_fn(weight, geometry, transposed)(torch.eye(size, dtype=torch.float64).reshape(size, channels, *spatial))
    return columns.reshape(size, -1).T


@st.composite
def grouped(draw):  # type: ignore[no-untyped-def]
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    k = draw(st.integers(1, 5 if dims < 3 else 3))
    stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    groups = draw(st.sampled_from([2, 3, 5, 8]))
    per_in, per_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    begin, end = draw(st.integers(0, k // 2 + 1)), draw(st.integers(0, k // 2 + 1))
    if transposed:
        begin = end = min(begin, (k - 1) * dilation)
    low = max(1, (k - 1) * dilation + 1 - begin - end)
    n = draw(st.integers(low, max(low, 9 if dims < 3 else 4)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    shape = (groups * per_in, per_out, *(k,) * dims) if transposed else (groups * per_out, per_in, *(k,) * dims)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** draw(st.sampled_from([-12, 0, 12]))
    if draw(st.booleans()):  # most groups far below the top one, as in trained depthwise convs
        weight[: shape[0] // 2] *= 1e-3
    geometry = ConvGeometry((stride,) * dims, (begin,) * dims + (end,) * dims, (dilation,) * dims, groups, output_padding=(0,) * dims if transposed else ())
    return weight, geometry, (n,) * dims, transposed


@settings(max_examples=60, deadline=None)
@given(grouped())
def test_grouped_interval_holds_the_operator_norm_and_is_tight(case) -> None:  # type: ignore[no-untyped-def]
    weight, geometry, spatial, transposed = case
    try:
        operator = _operator(weight, geometry, spatial, transposed)
    except RuntimeError:  # torch refuses the geometry at this size
        return
    if operator.numel() == 0 or min(operator.shape) // geometry.groups > conv_groups.MAX_SIDE:
        return  # the circular path's own tests take groups this large
    exact = exact_sigma(operator)
    with pytest.MonkeyPatch.context() as patch:  # the explicit whole operator would otherwise take these small convs
        patch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)
        found = conv_module.operator_interval(weight, geometry, spatial, transposed, tol=1e-6, max_iter=100, seed=0)
        upper_only = conv_module.operator_upper(weight, geometry, spatial, transposed, tol=1e-6, max_iter=100, seed=0)
    assert found.method == conv_module.METHOD_GROUPS or exact == 0  # a conv that never reads its input: declined
    assert found.lower <= exact * (1 + 1e-12) and exact <= found.upper and exact <= upper_only
    if exact > 0:
        assert found.upper - found.lower <= 1e-6 * found.upper
        assert found.converged


@settings(max_examples=40, deadline=None)
@given(grouped())
def test_each_group_is_within_its_size_free_bound_and_operators_are_placed_exactly(case) -> None:  # type: ignore[no-untyped-def]
    weight, geometry, spatial, transposed = case
    if transposed:
        return
    try:
        operator = _operator(weight, geometry, spatial, transposed)
        resolved = conv_module.resolve(weight, geometry, spatial, transposed)
    except RuntimeError:
        return
    groups = geometry.groups
    begin, _ = conv_module._pads(resolved, len(spatial))
    outs = conv_module._out_spatial(weight, resolved, spatial, transposed)
    placed = conv_groups.placed_operators(weight, resolved.stride, resolved.dilation, begin, spatial, outs, groups)
    rows, cols = operator.shape[0] // groups, operator.shape[1] // groups
    bounds = conv_groups.group_bounds(weight, groups)
    for g in range(groups):
        block = operator[g * rows : (g + 1) * rows, g * cols : (g + 1) * cols]
        assert torch.equal(placed[g], block)  # every entry one weight: exactly torch's
        assert exact_sigma(block) <= float(bounds[g])


def test_a_depthwise_conv_like_a_trained_one_is_exact_and_factors_few_groups() -> None:
    """512 channels of 5x5 at 7x7 with channel scales spread over three decades: the circular bound
    is loose on such small maps; the per-group certificate is exact and builds only the groups whose
    size-free bound reaches the top one's norm."""
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(512, 1, 5, 5, generator=gen, dtype=torch.float64) * torch.logspace(-3, 0, 512, dtype=torch.float64).reshape(-1, 1, 1, 1)
    geometry = ConvGeometry((1, 1), (2, 2, 2, 2), (1, 1), 512)
    spatial = (7, 7)
    one = ConvGeometry((1, 1), (2, 2, 2, 2), (1, 1), 1)
    exact = max(exact_sigma(_operator(weight[g : g + 1], one, spatial, False)) for g in range(512))
    found = conv_module.operator_interval(weight, geometry, spatial, False, tol=1e-6, max_iter=100, seed=0)
    assert found.method == conv_module.METHOD_GROUPS
    assert found.lower <= exact * (1 + 1e-12) <= found.upper * (1 + 1e-12) and found.upper <= exact * (1 + 1e-6)
    assert 0 < found.certificate_steps < 64
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv_groups, "MAX_SIDE", 0)
        circular = conv_module.operator_interval(weight, geometry, spatial, False, tol=1e-6, max_iter=100, seed=0)
    assert circular.method == conv_module.METHOD_OPERATOR and circular.upper >= exact


def test_large_groups_or_maps_stay_on_the_circular_path() -> None:
    weight = torch.randn(32, 1, 3, 3, dtype=torch.float64)
    geometry = ConvGeometry((1, 1), (1, 1, 1, 1), (1, 1), 32)
    found = conv_module.operator_interval(weight, geometry, (24, 24), False, tol=1e-6, max_iter=100, seed=0)
    assert 24 * 24 > conv_groups.MAX_SIDE and found.method == conv_module.METHOD_OPERATOR


def test_operators_whose_products_underflow_never_give_a_false_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """TF-style SAME padding on a 2x2 map never reads the kernel's last row and column: with the
    largest weight there and the read ones 1e-165, the built operators' products underflow. The
    per-group certificate declines and the circular bound stands; where only some groups are that
    small, the others carry the bound."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 1, 3, 3, generator=gen, dtype=torch.float64) * 1e-165
    weight[:, :, 2, 2] = 1.0
    monkeypatch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)  # the whole operator is small here
    geometry = ConvGeometry((2, 2), (0, 0, 1, 1), (1, 1), 64)
    one = ConvGeometry((2, 2), (0, 0, 1, 1), (1, 1), 1)
    # Each group's operator is a 1x4 row of its read weights: its norm is their Euclidean length (scaled to stay in range).
    exact = max(exact_sigma(weight[g, 0, :2, :2].reshape(1, 4) * 2.0**600) * 2.0**-600 for g in range(64))
    found = conv_module.operator_interval(weight, geometry, (2, 2), False, tol=1e-6, max_iter=100, seed=0)
    assert found.method == conv_module.METHOD_OPERATOR and found.upper >= exact
    assert conv_module.operator_upper(weight, geometry, (2, 2), False, tol=1e-6, max_iter=100, seed=0) >= exact
    mixed = weight.clone()
    mixed[:32, :, :2, :2] = torch.randn(32, 1, 2, 2, generator=gen, dtype=torch.float64)
    blocks = [_operator(mixed[g : g + 1], one, (2, 2), False) for g in range(64)]
    exact = max(exact_sigma(block) for block in blocks)
    found = conv_module.operator_interval(mixed, geometry, (2, 2), False, tol=1e-6, max_iter=100, seed=0)
    assert found.method == conv_module.METHOD_GROUPS
    assert found.lower <= exact * (1 + 1e-12) and exact <= found.upper <= exact * (1 + 1e-6)
