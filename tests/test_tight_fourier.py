"""Per-frequency LipSDP bounds of conv runs (lipcheck.graph.lipsdp_fourier) against independent
references: explicit zero-padded operators with numpy's FFT and float64 SVD, the complex matrices'
own eigenvalues, ratios the zero-padded network attains, and, for tiny runs, the norm of the linear
map at every activation pattern."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipcheck.graph import lipsdp
from lipcheck.graph.lipsdp_fourier import (
    ConvLink,
    FrequencyObjective,
    Skip,
    certified_run_bound,
    certify_frequencies,
    half_frequencies,
    masked_slopes,
    reduced_ring,
    symbols,
    top_eigenvalues,
)
from lipcheck.model import ConvGeometry


def _conv(x: torch.Tensor, link: ConvLink) -> torch.Tensor:
    """The zero-padded conv in float64, written out here: pad, then torch's conv."""
    d = len(link.spatial)
    begin, end = link.geometry.padding[:d], link.geometry.padding[d:]
    pads: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        pads += [b, e]
    return F.conv2d(F.pad(x, pads), link.weight, stride=link.geometry.stride, dilation=link.geometry.dilation, groups=link.geometry.groups)


def _random_link(
    g: torch.Generator, c_in: int, c_out: int, spatial: tuple[int, ...], kernel: tuple[int, int], stride: int, dilation: int, pads: tuple[int, ...], groups: int
) -> ConvLink:
    w = torch.randn(c_out, c_in // groups, *kernel, generator=g, dtype=torch.float64) / math.sqrt(c_in * kernel[0] * kernel[1] / groups)
    return ConvLink(w, ConvGeometry(stride=(stride, stride), padding=pads, dilation=(dilation, dilation), groups=groups), spatial)


GEOMETRIES = [
    # (c_in, c_out, spatial, kernel, stride, dilation, pads (b1, b2, e1, e2), groups)
    (3, 4, (7, 6), (3, 3), 1, 1, (1, 1, 1, 1), 1),
    (2, 4, (9, 8), (3, 2), 2, 1, (1, 0, 1, 1), 1),
    (4, 4, (8, 8), (3, 3), 1, 2, (2, 2, 2, 2), 2),
    (2, 3, (10, 7), (5, 3), 3, 1, (2, 1, 0, 2), 1),
    (3, 2, (6, 9), (1, 3), 2, 1, (0, 0, 0, 1), 1),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_the_symbols_give_the_zero_padded_conv_through_numpys_fft(geometry: tuple[Any, ...]) -> None:
    c_in, c_out, spatial, kernel, stride, dilation, pads, groups = geometry
    g = torch.Generator().manual_seed(1)
    link = _random_link(g, c_in, c_out, spatial, kernel, stride, dilation, pads, groups)
    ring = reduced_ring([link])
    assert isinstance(ring, list)
    grid = torch.stack(torch.meshgrid(*(torch.arange(m) for m in ring), indexing="ij"), dim=-1).reshape(-1, 2)
    (k,), (error,) = symbols([link], ring, grid)
    assert 0.0 < error < 1e-12
    x = torch.randn(1, c_in, *spatial, generator=g, dtype=torch.float64)
    expected = _conv(x, link)[0].numpy()
    # The input on a ring of ring * stride cells at [0, n), split into its polyphase stack.
    full = np.zeros((c_in, ring[0] * stride, ring[1] * stride))
    full[:, : spatial[0], : spatial[1]] = x[0].numpy()
    stack = np.stack([full[:, r0::stride, r1::stride] for r0 in range(stride) for r1 in range(stride)], axis=1).reshape(c_in * stride * stride, *ring)
    spectrum = np.fft.fft2(stack).reshape(stack.shape[0], -1)
    out = np.einsum("fij,jf->if", k.numpy(), spectrum).reshape(c_out, *ring)
    y = np.fft.ifft2(out)
    n_out = expected.shape[1:]
    assert np.abs(y.imag).max() < 1e-10
    np.testing.assert_allclose(y.real[:, : n_out[0], : n_out[1]], expected, rtol=0, atol=1e-10 * np.abs(expected).max())


def _explicit(link: ConvLink) -> torch.Tensor:
    """The zero-padded conv as a matrix (out, in) on flattened samples."""
    c_in = link.weight.shape[1] * link.geometry.groups
    n = c_in * math.prod(link.spatial)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, c_in, *link.spatial)
    return _conv(basis, link).reshape(n, -1).T


def _run(seed: int, depth: int, channels: int, spatial: tuple[int, int], strided: bool) -> list[ConvLink]:
    g = torch.Generator().manual_seed(seed)
    links = [_random_link(g, 2, channels, spatial, (3, 3), 2 if strided else 1, 1, (1, 1, 1, 1), 1)]
    for index in range(1, depth):
        c_out = 2 if index == depth - 1 else channels
        links.append(_random_link(g, channels, c_out, links[-1].output_size(), (3, 3), 1, 1, (1, 0, 1, 2), 1))
    return links


@pytest.mark.parametrize("seed", range(4))
def test_a_run_with_identity_slopes_is_bounded_by_no_less_than_its_exact_linear_norm(seed: int) -> None:
    # φ(x) = x has slope 1, inside every widened range, so the bound holds for the linear composition.
    links = _run(seed, 2 + seed % 2, 3, (7, 6), strided=seed % 2 == 1)
    exact = _explicit(links[0])
    for link in links[1:]:
        exact = _explicit(link) @ exact
    truth = float(torch.linalg.svdvals(exact)[0])
    found = certified_run_bound(links, [(0.999, 1.0)] * (len(links) - 1), max_iter=10, budget_s=30.0)
    assert found is not None
    assert found.bound >= truth
    assert found.bound <= found.start_bound * (1 + 1e-9)


def _ascended(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], seed: int, points: int = 20, steps: int = 30) -> float:
    """The largest ratio ‖fn(x + hv) − fn(x)‖/h in float64 over random x, v from power iteration on J(x)ᵀJ(x)."""
    g = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(points):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        for _ in range(steps):
            v = v / v.norm()
            jv = torch.func.jvp(fn, (x,), (v,))[1]
            v = torch.func.vjp(fn, x)[1](jv)[0]
        v = v / v.norm()
        h = 1e-6
        best = max(best, float((fn(x + h * v) - fn(x)).norm() / h))
    return best


def _attained(links: list[ConvLink], act: str, seed: int) -> float:
    """The largest ratio ‖F(x) − F(y)‖/‖x − y‖ of the zero-padded run found by random pairs and ascent."""
    fn = {"relu": torch.relu, "tanh": torch.tanh, "leaky": lambda z: F.leaky_relu(z, 0.1)}[act]

    def run(x: torch.Tensor) -> torch.Tensor:
        for index, link in enumerate(links):
            x = _conv(x, link)
            if index < len(links) - 1:
                x = fn(x)
        return x

    c_in = links[0].weight.shape[1] * links[0].geometry.groups
    return _ascended(run, (1, c_in, *links[0].spatial), seed)


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky"])
@pytest.mark.parametrize("seed", range(3))
def test_the_certified_bound_of_a_run_is_never_below_an_attained_ratio(act: str, seed: int) -> None:
    links = _run(10 + seed, 2 + seed % 2, 4, (8, 7), strided=seed == 1)
    slope = {"relu": (0.0, 1.0), "tanh": (0.0, 1.0), "leaky": (0.1, 1.0)}[act]
    found = certified_run_bound(links, [slope] * (len(links) - 1), max_iter=20, budget_s=30.0)
    assert found is not None
    attained = _attained(links, act, seed)
    assert found.bound >= attained
    assert found.bound < found.start_bound  # the optimizer improved on the closed form


def _hermitian(
    links: list[ConvLink], slopes: list[tuple[float, float]], multipliers: list[torch.Tensor], rho: float, skip: bool = False, skip_conv: ConvLink | None = None
) -> torch.Tensor:
    """N(ρ, T)(ω) at every frequency as complex Hermitian matrices, written from the definition
    (with ``skip``, for x + F(x): ρ·I − I on the first block and −K_1ᴴ added to N_10; with
    ``skip_conv`` S, for S x + F(x): −SᴴS and −K_1ᴴS)."""
    ring = reduced_ring(links)
    assert isinstance(ring, list)
    if skip_conv is not None:
        alone = reduced_ring([skip_conv])
        assert isinstance(alone, list)
        ring = [max(x, y) for x, y in zip(ring, alone)]
    ws, _ = symbols(links, ring, half_frequencies(ring))
    sizes = [ws[0].shape[-1]] + [w.shape[-2] for w in ws[:-1]]
    total, f = sum(sizes), ws[0].shape[0]
    n = torch.zeros(f, total, total, dtype=torch.complex128)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]

    def block(i: int, j: int) -> tuple[slice, slice]:
        return slice(starts[i], starts[i] + sizes[i]), slice(starts[j], starts[j] + sizes[j])

    n[(slice(None), *block(0, 0))] += rho * torch.eye(sizes[0], dtype=torch.complex128)
    for k, (a, b) in enumerate(slopes):
        t = torch.diag(multipliers[k]).to(torch.complex128)
        w = ws[k]
        n[(slice(None), *block(k, k))] += 2 * a * b * w.mH @ t @ w
        n[(slice(None), *block(k + 1, k + 1))] += 2 * t
        n[(slice(None), *block(k + 1, k))] += -(a + b) * t @ w
        n[(slice(None), *block(k, k + 1))] += -(a + b) * w.mH @ t
    last = ws[-1]
    n[(slice(None), *block(len(sizes) - 1, len(sizes) - 1))] -= last.mH @ last
    if skip_conv is not None:
        (sym,), _ = symbols([skip_conv], ring, half_frequencies(ring))
        n[(slice(None), *block(0, 0))] -= sym.mH @ sym
        n[(slice(None), *block(1, 0))] -= last.mH @ sym
        n[(slice(None), *block(0, 1))] -= sym.mH @ last
    elif skip:
        n[(slice(None), *block(0, 0))] -= torch.eye(sizes[0], dtype=torch.complex128)
        n[(slice(None), *block(1, 0))] -= last.mH
        n[(slice(None), *block(0, 1))] -= last
    return n


def test_the_certificate_agrees_with_the_complex_matrices_eigenvalues() -> None:
    links = _run(3, 3, 3, (6, 6), strided=False)
    slopes = lipsdp_slopes = [lipsdp.outward(a, b) for a, b in masked_slopes([(0.0, 1.0), (-0.2, 1.0)])]
    ring = reduced_ring(links)
    assert isinstance(ring, list)
    ws, errors = symbols(links, ring, half_frequencies(ring))
    objective = FrequencyObjective(ws, slopes)
    thetas = objective.initial()
    multipliers = [t.exp() for t in thetas]
    rho_star = objective.rho(thetas)
    for factor, expected in ((1.0 - 1e-4, False), (1.0 + 1e-6, True)):
        rho = rho_star * factor
        smallest = float(torch.linalg.eigvalsh(_hermitian(links, lipsdp_slopes, multipliers, rho)).min())
        assert (smallest >= 0.0) == expected
        assert certify_frequencies(ws, errors, slopes, multipliers, rho) == expected


def test_a_strided_conv_after_the_first_ends_the_common_ring() -> None:
    links = _run(0, 2, 3, (8, 8), strided=False)
    strided = ConvLink(links[1].weight, ConvGeometry(stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1), links[1].spatial)
    assert reduced_ring([links[0], strided]) == "a strided conv after the first"


def test_masked_slope_ranges_contain_zero_and_the_bound_uses_them() -> None:
    assert masked_slopes([(0.1, 1.0), (-0.2, 1.1), (0.0, 0.25)]) == [(0.0, 1.0), (-0.2, 1.1), (0.0, 0.25)]
    links = _run(4, 2, 3, (6, 6), strided=False)
    leaky = certified_run_bound(links, [(0.5, 1.0)], max_iter=0, budget_s=10.0)
    relu = certified_run_bound(links, [(0.0, 1.0)], max_iter=0, budget_s=10.0)
    assert leaky is not None and relu is not None and leaky.bound == relu.bound


class _Block(nn.Module):
    """relu(x + conv(relu(conv(x)))): a ResNet basic block with its batch norms folded."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, channels * stride, 3, stride=stride, padding=1)
        self.b = nn.Conv2d(channels * stride, channels * stride, 3, padding=1)
        self.skip = nn.Conv2d(channels, channels * stride, 1, stride=stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.skip(x) + self.b(torch.relu(self.a(x))))


def _resnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), _Block(4), _Block(4, stride=2), _Block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    ).eval()


SIZE = 40  # maps of 4 x 40 x 40 = 6400 values: beyond explicit operators


def _export(net: nn.Module, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17)
    return path


@pytest.mark.parametrize("seed", [0, 1])
def test_a_residual_cnn_takes_its_branches_from_the_conv_certificate_and_stays_above_attained_ratios(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipcheck.api import inspect
    from lipcheck.graph import segments

    net = _resnet(seed)
    path = _export(net, tmp_path / "resnet.onnx")
    found = inspect(path).bound
    runs = [note for note in found.assumptions if "conv chain" in note]
    assert len(runs) == 3 and all("certified at each of" in note for note in runs), found.assumptions
    assert sum("identity skip" in note for note in runs) == 2 and sum("skip conv" in note for note in runs) == 1
    monkeypatch.setattr(segments, "find_conv_runs", lambda model, reader=None: [])
    plain = inspect(path).bound
    assert found.graph is not None and plain.graph is not None and found.lower is not None
    assert found.method == "graph and certified chain segments"
    assert found.lower <= found.graph < 0.8 * plain.graph
    net = net.double()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for _ in range(20):
        v = v / v.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        jv = torch.func.jvp(net, (x,), (v,))[1]
        v = torch.func.vjp(net, x)[1](jv)[0]
    v = v / v.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        ratios = (net(x + 1e-5 * v) - net(x)).flatten(1).norm(dim=1) / 1e-5
    assert float(ratios.max()) <= found.graph


def test_torchscript_with_its_input_shape_gets_the_onnx_files_conv_chains(tmp_path: Path) -> None:
    from lipcheck.api import inspect
    from lipcheck.settings import Settings

    net = _resnet(3)
    onnx_bound = inspect(_export(net, tmp_path / "resnet.onnx")).bound
    script = tmp_path / "resnet.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, SIZE, SIZE)), str(script))
    shape = ((1, 3, SIZE, SIZE),)
    script_bound = inspect(script, settings=Settings(input_shape=shape)).bound
    onnx_runs = [note for note in onnx_bound.assumptions if "conv chain" in note]
    script_runs = [note for note in script_bound.assumptions if "conv chain" in note]
    assert len(onnx_runs) == len(script_runs) == 3
    assert script_bound.graph == pytest.approx(onnx_bound.graph, rel=1e-6)


def test_a_conv_whose_reading_does_not_reproduce_the_file_gets_no_run_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipcheck.api import inspect
    from lipcheck.spectral import conv

    path = _export(_resnet(4), tmp_path / "resnet.onnx")
    real = conv._conv_fn

    def flipped(weight, geometry, transposed):  # type: ignore[no-untyped-def]
        return real(weight.flip(-1), geometry, transposed)

    monkeypatch.setattr(conv, "_conv_fn", flipped)
    notes = [note for note in inspect(path).bound.assumptions if "conv chain" in note]
    assert notes and all("does not reproduce the file's" in note for note in notes), notes


def _square_run(seed: int, channels: int, spatial: tuple[int, int]) -> list[ConvLink]:
    """Two stride-1 convs from ``channels`` back to ``channels`` channels: a residual branch."""
    g = torch.Generator().manual_seed(seed)
    first = _random_link(g, channels, channels + 1, spatial, (3, 3), 1, 1, (1, 1, 1, 1), 1)
    return [first, _random_link(g, channels + 1, channels, spatial, (3, 3), 1, 1, (1, 1, 1, 1), 1)]


@pytest.mark.parametrize("slope", [(0.0, 1.0), (-0.2, 1.1)])
def test_the_skip_certificate_agrees_with_the_complex_matrices_eigenvalues(slope: tuple[float, float]) -> None:
    links = _square_run(5, 3, (6, 5))
    slopes = [lipsdp.outward(*masked_slopes([slope])[0])]
    ring = reduced_ring(links)
    assert isinstance(ring, list)
    ws, errors = symbols(links, ring, half_frequencies(ring))
    objective = FrequencyObjective(ws, slopes, Skip())
    thetas = objective.initial()
    multipliers = [t.exp() for t in thetas]
    assert objective.offset == 1.0
    rho_star = objective.rho(thetas) + objective.offset
    assert rho_star > 1.0
    for factor, expected in ((1.0 - 1e-4, False), (1.0 + 1e-6, True)):
        rho = rho_star * factor
        smallest = float(torch.linalg.eigvalsh(_hermitian(links, slopes, multipliers, rho, skip=True)).min())
        assert (smallest >= 0.0) == expected
        assert certify_frequencies(ws, errors, slopes, multipliers, rho - 1.0, Skip()) == expected


@pytest.mark.parametrize("seed", range(4))
def test_a_residual_block_is_bounded_above_its_linear_norm_and_every_attained_ratio(seed: int) -> None:
    links = _square_run(20 + seed, 2 + seed % 2, (7, 6))
    a0, a1 = _explicit(links[0]), _explicit(links[1])
    linear = float(torch.linalg.svdvals(torch.eye(a0.shape[1], dtype=torch.float64) + a1 @ a0)[0])
    identity = certified_run_bound(links, [(0.999, 1.0)], max_iter=10, budget_s=30.0, skip=True)
    assert identity is not None and identity.bound >= linear

    found = certified_run_bound(links, [(0.0, 1.0)], max_iter=20, budget_s=30.0, skip=True)
    branch = certified_run_bound(links, [(0.0, 1.0)], max_iter=20, budget_s=30.0)
    assert found is not None and branch is not None
    assert found.bound < 1.0 + branch.bound  # tighter than the walk's 1 + branch

    def block(x: torch.Tensor) -> torch.Tensor:
        return x + _conv(torch.relu(_conv(x, links[0])), links[1])

    assert _ascended(block, (1, links[0].weight.shape[1], *links[0].spatial), seed) <= found.bound


def _vertex_norm(links: list[ConvLink], slope: tuple[float, float], skip: ConvLink | bool | None) -> float:
    """max ‖S + W_k D_{k-1} ⋯ D_1 W_1‖ over every diagonal D_j with entries lo or hi, from the explicit
    zero-padded operators.

    Any LipSDP certificate for activations with slopes in [lo, hi] bounds the network x ↦ S x + W_k D ⋯ W_1 x
    for each such choice (a linear activation of those slopes), so it is at least this maximum: far
    above the ratios a ReLU net attains, and an exact check of the inequality's assembly.
    """
    mats = [_explicit(link) for link in links]
    sizes = [m.shape[0] for m in mats[:-1]]
    hidden = sum(sizes)
    assert hidden <= 16, "2^hidden patterns are enumerated"
    bits = ((torch.arange(2**hidden).unsqueeze(1) >> torch.arange(hidden)) & 1).to(torch.float64)
    diag = slope[0] + (slope[1] - slope[0]) * bits
    maps = mats[0].unsqueeze(0)
    offset = 0
    for size, mat in zip(sizes, mats[1:]):
        maps = mat @ (diag[:, offset : offset + size].unsqueeze(2) * maps)
        offset += size
    if skip is True:
        maps = maps + torch.eye(mats[0].shape[1], dtype=torch.float64)
    elif isinstance(skip, ConvLink):
        maps = maps + _explicit(skip)
    return float(torch.linalg.matrix_norm(maps, ord=2).max())


@pytest.mark.parametrize("slope", [(0.0, 1.0), (0.1, 1.0), (-0.5, 1.0)])
@pytest.mark.parametrize("case", ["plain", "strided", "three convs", "identity skip", "conv skip"])
def test_a_conv_run_certificate_bounds_the_network_at_every_activation_pattern(case: str, slope: tuple[float, float]) -> None:
    """Tiny runs whose 2^hidden activation patterns can all be tried: the certified bound is at
    least the largest norm of the linear maps they give (ReLU, leaky ReLU, a slope range below 0)."""
    g = torch.Generator().manual_seed(zlib.crc32(repr((case, slope)).encode()))
    skip: ConvLink | bool | None = None
    if case == "plain":
        links = [_random_link(g, 1, 1, (3, 4), (3, 3), 1, 1, (1, 1, 1, 1), 1), _random_link(g, 1, 2, (3, 4), (2, 3), 1, 1, (0, 1, 1, 1), 1)]
    elif case == "strided":
        links = [_random_link(g, 2, 2, (4, 5), (3, 3), 2, 1, (1, 1, 1, 1), 1), _random_link(g, 2, 1, (2, 3), (3, 3), 1, 1, (1, 1, 1, 1), 1)]
    elif case == "three convs":
        links = [_random_link(g, 1, 1, (2, 3), (3, 3), 1, 1, (1, 1, 1, 1), 1) for _ in range(3)]
    elif case == "identity skip":
        links = [_random_link(g, 1, 1, (3, 4), (3, 3), 1, 1, (1, 1, 1, 1), 1), _random_link(g, 1, 1, (3, 4), (3, 3), 1, 1, (1, 1, 1, 1), 1)]
        skip = True
    else:
        links = [_random_link(g, 2, 2, (4, 5), (3, 3), 2, 1, (1, 1, 1, 1), 1), _random_link(g, 2, 2, (2, 3), (3, 3), 1, 1, (1, 1, 1, 1), 1)]
        skip = _random_link(g, 2, 2, (4, 5), (1, 1), 2, 1, (0, 0, 0, 0), 1)
    if skip is not None:  # a small branch: the skip's own part of the bound then decides the check
        links = [replace(link, weight=0.4 * link.weight) for link in links]
    truth = _vertex_norm(links, slope, skip)
    for steps in (0, 20):  # the closed form and optimized multipliers
        found = certified_run_bound(
            links, [slope] * (len(links) - 1), max_iter=steps, budget_s=30.0, skip=skip is True, skip_conv=skip if isinstance(skip, ConvLink) else None
        )
        assert found is not None
        assert found.bound >= truth * (1 - 1e-12), (case, slope, steps, found.bound, truth)


def test_the_chain_segments_report_their_progress(tmp_path: Path) -> None:
    from lipcheck.api import inspect
    from lipcheck.graph.tight import reporting
    from lipcheck.settings import Settings

    path = _export(_resnet(5), tmp_path / "resnet.onnx")
    seen: list[tuple[int, int, str]] = []
    with reporting(lambda fraction, best: None, lambda done, total, name: seen.append((done, total, name))):
        inspect(path, settings=Settings(lower=False))
    assert [done for done, _, _ in seen] == [0, 1, 2] and all(total == 3 for _, total, _ in seen)
    assert seen[0][2].endswith("/Add") and "Conv" in seen[0][2]


def test_every_conv_run_gets_an_even_share_of_the_optimizer_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the default effort, the first run's optimizer must not spend the time the later runs need."""
    import time

    from lipcheck.formats import load
    from lipcheck.graph import lipsdp_fourier, segments

    model = load(_export(_resnet(5), tmp_path / "resnet.onnx"))
    budgets: list[float] = []

    def spending(*args: Any, budget_s: float, **kwargs: Any) -> Any:
        budgets.append(budget_s)
        started = time.perf_counter()
        while time.perf_counter() - started < budget_s:  # an optimizer that uses every second it is given
            time.sleep(0.01)
        return lipsdp_fourier.RunResult(1.0, 1.0, 1, 0, budget_s)

    monkeypatch.setattr(lipsdp_fourier, "certified_run_bound", spending)
    monkeypatch.setattr(segments, "TOTAL_SECONDS", 1.0)
    constants, notes = segments.segment_constants(model, effort=2.0)
    assert len(budgets) == 3 and len(constants) == 3, notes
    total = segments.TOTAL_SECONDS * 2.0
    # Each run gets what is left over the runs still to come: a third of the total, then half the rest, ...
    assert all(0.2 * total < b <= total / 2 for b in budgets), budgets


def test_the_conv_runs_certified_are_the_cheapest_that_fit_the_counted_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Which runs get a certificate depends on counted float operations, never on the clock or the graph order."""
    from lipcheck.graph import lipsdp_fourier, segments

    # (symbol entries, factorization flops) per run: work = flops + 2500 per entry
    costs = {
        "a": (1e6, 5e10),
        "b": (1e7, 1.9e10),
        "c": (1e6, 1e9),
        "d": (4e6, 1.5e10),
        "e": (2e6, 1.8e10),
        "f": (0, 0.0),
        "g": (8e6, 1e10),
        "h": (1.6e7, 1.9e10),
    }
    runs: list[Any] = [type("Run", (), {"links": name, "skip_link": None})() for name in costs]
    monkeypatch.setattr(lipsdp_fourier, "cost", lambda links, skip=None: costs[links])

    def funded(effort: float) -> set[int]:
        return segments._funded_runs([segments._work(run, effort) for run in runs], effort)

    # Effort 1: "a" is past the 2e10 flops a run may take; c (3.5e9) + e (2.3e10) + d (2.5e10) + g (3e10)
    # + b (4.4e10) fit 1.8e11 together, h (5.9e10) would not.
    assert funded(1.0) == {1, 2, 3, 4, 6}
    # Effort 3: every run with a symbol ("f" has none) fits 5.4e11 together.
    assert funded(3.0) == {0, 1, 2, 3, 4, 6, 7}


def test_conv_runs_never_tried_get_one_note_that_says_what_would_change_that(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs past every budget are named in one note with the --effort the cheapest needs, or as too large at any effort."""
    from lipcheck.graph import lipsdp_fourier, segments

    costs = {"a": (1e6, 5e10), "b": (1e6, 9e10), "huge": (segments.MAX_SYMBOL_ENTRIES + 1, 1e9)}
    runs: list[Any] = [type("Run", (), {"links": name, "skip_link": None, "first": f"{name}0", "last": f"{name}1"})() for name in costs]
    monkeypatch.setattr(lipsdp_fourier, "cost", lambda links, skip=None: costs[links])

    # "a" needs 5e10 / 2e10 = 2.5 for its flops (its work 5.25e10 fits 1.8e11 at 0.3); "b" 4.5.
    assert segments.needed_effort(runs[0]) == pytest.approx(2.5)
    assert segments.needed_effort(runs[1]) == pytest.approx(4.5)
    assert segments.needed_effort(runs[2]) is None
    for run in runs[:2]:
        effort = segments.needed_effort(run)
        assert effort is not None and math.isfinite(segments._work(run, effort)) and segments._work(run, effort * 0.99) == math.inf
    note = segments._untried_note(runs, 1.0)
    assert note.startswith("3 conv chains (a0..a1 and 2 more)") and "--effort 2.5 or more" in note
    assert "in memory at any effort" in segments._untried_note(runs[2:], 1.0) and "huge0..huge1" in segments._untried_note(runs[2:], 1.0)
    costs["flat"] = (0, 0.0)  # no circular embedding
    flat: Any = type("Run", (), {"links": "flat", "skip_link": None, "first": "f0", "last": "f1"})()
    assert segments.needed_effort(flat) is None and "no circular embedding" in segments._untried_note([flat], 1.0)
    mixed = segments._untried_note([runs[2], flat], 1.0)
    assert "1 has no circular embedding" in mixed and "in memory at any effort" in mixed


def _dronet_block(path: Path, seed: int) -> tuple[Path, dict[str, np.ndarray]]:
    """DroNet's block as its Keras export writes it: conv (stride 2), batch norm, relu, conv, plus a
    strided 1x1 conv skip; the batch norm stays a node of its own."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = 3
    p = {
        "w1": rng.normal(size=(4, c, 3, 3)) / 3,
        "b1": rng.normal(size=4),
        "scale": rng.uniform(0.5, 3.0, size=4),
        "shift": rng.normal(size=4),
        "mean": rng.normal(size=4),
        "var": rng.uniform(0.1, 2.0, size=4),
        "w2": rng.normal(size=(4, 4, 3, 3)) / 6,
        "ws": rng.normal(size=(4, c, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"], ["n1"], epsilon=1e-3, name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Conv", ["x", "ws"], ["s"], strides=[2, 2], name="skip"),
        helper.make_node("Add", ["c2", "s"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 30, 30])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 15, 15])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in p.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_batch_norm_after_a_conv_is_folded_into_the_run_and_the_bound_stays_above_attained_ratios(tmp_path: Path, seed: int) -> None:
    from lipcheck.api import inspect
    from lipcheck.settings import Settings

    path, p = _dronet_block(tmp_path / "block.onnx", seed)
    found = inspect(path, settings=Settings(lower=False)).bound
    notes = [note for note in found.assumptions if "conv chain conv1..add" in note]
    assert len(notes) == 1 and "and the skip conv skip beside them" in notes[0], found.assumptions
    t = {k: torch.from_numpy(v) for k, v in p.items()}

    def block(x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, t["w1"], t["b1"], stride=2, padding=1)
        h = (h - t["mean"].reshape(1, -1, 1, 1)) / torch.sqrt(t["var"].reshape(1, -1, 1, 1) + 1e-3) * t["scale"].reshape(1, -1, 1, 1)
        h = torch.relu(h + t["shift"].reshape(1, -1, 1, 1))
        return F.conv2d(h, t["w2"], padding=1) + F.conv2d(x, t["ws"], stride=2)

    assert found.graph is not None and _ascended(block, (1, 3, 30, 30), seed, points=10) <= found.graph


def test_a_strided_conv_after_the_first_starts_a_new_run(tmp_path: Path) -> None:
    from lipcheck.api import inspect
    from lipcheck.settings import Settings

    torch.manual_seed(6)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, 1, 1),
        nn.Flatten(),
        nn.Linear(400, 2),
    ).eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 40, 40),), str(tmp_path / "dave.onnx"), dynamo=False, opset_version=17)
    notes = [note for note in inspect(tmp_path / "dave.onnx", settings=Settings(lower=False)).bound.assumptions if "conv chain" in note]
    assert len(notes) == 1 and "/2/Conv../6/Conv (3 convs)" in notes[0], notes


def _strided_block(seed: int) -> tuple[list[ConvLink], ConvLink]:
    """A downsampling block's branch (3x3 stride 2, then 3x3) and its 1x1 stride-2 skip conv."""
    g = torch.Generator().manual_seed(seed)
    first = _random_link(g, 2, 3, (9, 8), (3, 3), 2, 1, (1, 1, 1, 1), 1)
    second = _random_link(g, 3, 3, first.output_size(), (3, 3), 1, 1, (1, 1, 1, 1), 1)
    skip = _random_link(g, 2, 3, (9, 8), (1, 1), 2, 1, (0, 0, 0, 0), 1)
    assert skip.output_size() == second.output_size()
    return [first, second], skip


def test_the_conv_skip_certificate_agrees_with_the_complex_matrices_eigenvalues() -> None:
    links, skip = _strided_block(7)
    slopes = [lipsdp.outward(0.0, 1.0)]
    ring = [max(x, y) for x, y in zip(reduced_ring(links), reduced_ring([skip]))]  # type: ignore[arg-type]
    freqs = half_frequencies(ring)
    ws, errors = symbols(links, ring, freqs)
    (sym,), (s_err,) = symbols([skip], ring, freqs)
    objective = FrequencyObjective(ws, slopes, Skip(sym, s_err))
    thetas = objective.initial()
    multipliers = [t.exp() for t in thetas]
    rho_star = objective.rho(thetas)
    for factor, expected in ((1.0 - 1e-4, False), (1.0 + 1e-6, True)):
        rho = rho_star * factor
        smallest = float(torch.linalg.eigvalsh(_hermitian(links, slopes, multipliers, rho, skip_conv=skip)).min())
        assert (smallest >= 0.0) == expected
        assert certify_frequencies(ws, errors, slopes, multipliers, rho, Skip(sym, s_err)) == expected


@pytest.mark.parametrize("seed", range(3))
def test_a_downsampling_block_is_bounded_above_its_linear_norm_and_every_attained_ratio(seed: int) -> None:
    links, skip = _strided_block(30 + seed)
    a0, a1, s = _explicit(links[0]), _explicit(links[1]), _explicit(skip)
    linear = float(torch.linalg.svdvals(s + a1 @ a0)[0])
    identity = certified_run_bound(links, [(0.999, 1.0)], max_iter=10, budget_s=30.0, skip_conv=skip)
    assert identity is not None and identity.bound >= linear
    found = certified_run_bound(links, [(0.0, 1.0)], max_iter=20, budget_s=30.0, skip_conv=skip)
    branch = certified_run_bound(links, [(0.0, 1.0)], max_iter=20, budget_s=30.0)
    assert found is not None and branch is not None
    assert found.bound < float(torch.linalg.svdvals(s)[0]) + branch.bound  # tighter than the walk's sum

    def block(x: torch.Tensor) -> torch.Tensor:
        return _conv(x, skip) + _conv(torch.relu(_conv(x, links[0])), links[1])

    assert _ascended(block, (1, 2, 9, 8), seed) <= found.bound


def test_a_skip_block_whose_constant_is_one_keeps_its_certificate_at_any_effort() -> None:
    # x + (−0.5)·relu(x) on 1x1 convs: the constant is max |1 − 0.5 s| over s in [0, 1], exactly 1,
    # and the optimizer drives ρ* − 1 to about 1e-33, below what 1 + (ρ* − 1) can hold in float64.
    geometry = ConvGeometry(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    links = [ConvLink(one, geometry, (4, 4)), ConvLink(-0.5 * one, geometry, (4, 4))]
    for steps in (0, 10, 60):
        found = certified_run_bound(links, [(0.0, 1.0)], max_iter=steps, budget_s=30.0, skip=True)
        assert found is not None
        assert 1.0 <= found.bound <= (1.0 + 1e-9 if steps else found.start_bound * (1 + 1e-12))


def test_silu_written_as_x_times_sigmoid_x_joins_a_conv_run(tmp_path: Path) -> None:
    import warnings

    import onnx

    from lipcheck.api import inspect
    from lipcheck.settings import Settings

    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.SiLU(), nn.Conv2d(6, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)).eval()
    path = tmp_path / "silu.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17)
    assert {"Sigmoid", "Mul"} <= {node.op_type for node in onnx.load(str(path)).graph.node}
    found = inspect(path, settings=Settings(lower=False)).bound
    notes = [note for note in found.assumptions if "conv chain" in note]
    assert len(notes) == 1 and "(2 convs)" in notes[0], found.assumptions
    assert found.graph is not None and _ascended(net.double(), (1, 3, SIZE, SIZE), 8, points=6, steps=20) <= found.graph


def test_top_eigenvalues_are_exact_where_largest_and_never_above_elsewhere() -> None:
    """Against numpy's eigvalsh of every matrix: the batch's largest value is found exactly, and
    the estimates elsewhere are Ritz values, below the largest eigenvalue up to rounding."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 160, 160, generator=g, dtype=torch.complex128)
    batch = x @ x.mH
    batch[7] *= 1.5  # the largest, well apart, at a frequency in the middle
    exact = np.linalg.eigvalsh(batch.numpy())[:, -1]
    found = top_eigenvalues(batch).numpy()
    assert found.argmax() == 7
    assert found.max() == pytest.approx(exact.max(), rel=1e-12)
    assert np.all(found <= exact * (1 + 1e-10))
    assert np.all(found >= 0.5 * exact)  # a ranking worth the name: 16 Lanczos steps from a random start


def _chain_matrix(ws: list[torch.Tensor], slopes: list[tuple[float, float]], ts: list[torch.Tensor], rho: float) -> torch.Tensor:
    """LipSDP-Neuron's N(ρ, T) for one chain of (complex) weights, assembled densely (lipcheck.graph.lipsdp's doc)."""
    sizes = [ws[0].shape[-1]] + [w.shape[-2] for w in ws[:-1]]
    offsets = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    n = offsets[-1]
    big = torch.zeros(n, n, dtype=torch.complex128)

    def block(i: int, j: int) -> slice:
        return slice(offsets[i], offsets[i + 1]) if j < 0 else slice(offsets[j], offsets[j + 1])

    big[block(0, -1), block(0, -1)] += rho * torch.eye(sizes[0], dtype=torch.complex128)
    for k, ((a, b), t) in enumerate(zip(slopes, ts)):
        w = ws[k]
        big[block(k, -1), block(k, -1)] += 2 * a * b * (w.mH @ (t[:, None] * w))
        big[block(k + 1, -1), block(k + 1, -1)] += torch.diag(2 * t).to(torch.complex128)
        big[block(k + 1, -1), block(k, -1)] += -(a + b) * (t[:, None] * w)
        big[block(k, -1), block(k + 1, -1)] += (-(a + b) * (t[:, None] * w)).mH
    last = ws[-1]
    big[block(len(sizes) - 1, -1), block(len(sizes) - 1, -1)] -= last.mH @ last
    return big


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.floats(-0.5, 0.5), st.integers(0, 2**16))
def test_the_complex_certificate_accepts_exactly_where_the_hermitian_matrix_is_psd(n: int, h: int, m: int, low: float, seed: int) -> None:
    """certify_batch on complex weights agrees with the eigenvalues of N(ρ, T) itself, for ρ around its threshold."""
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(h, n, generator=gen, dtype=torch.complex128)
    w1 = torch.randn(m, h, generator=gen, dtype=torch.complex128)
    # Multipliers with 2T ≻ W_1ᴴW_1, so that a large enough ρ makes N ⪰ 0.
    t = (torch.rand(h, generator=gen, dtype=torch.float64) + 1.0) * float(torch.linalg.matrix_norm(w1, ord=2)) ** 2
    slopes = [lipsdp.outward(min(low, 0.0), 1.0)]
    # The threshold: the smallest ρ with N ⪰ 0 (N is affine in ρ on its first block), by bisection.
    lo, hi = 0.0, 1.0
    while float(torch.linalg.eigvalsh(_chain_matrix([w0, w1], slopes, [t], hi)).min()) < 0.0:
        lo, hi = hi, hi * 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(torch.linalg.eigvalsh(_chain_matrix([w0, w1], slopes, [t], mid)).min()) < 0.0 else (lo, mid)
    for factor, expected in ((1.0 - 1e-6, False), (1.0 + 1e-6, True)):
        rho = hi * factor
        assert lipsdp.certify_batch([w0.unsqueeze(0), w1.unsqueeze(0)], slopes, [t], rho) == expected
