"""Operator norms of convolutions at a known input shape: a certified interval.

Lower end: power iteration on the operator itself (the conv and its exact adjoint, by autograd).
Upper end: the zero-padded conv at n is a restriction of the circular conv at any N >= n + pads;
a strided conv is, after a polyphase split of its input (a permutation), a stride-1 conv with
s^D times the input channels on N/s. Its norm is the largest singular value over the Fourier
frequencies of the per-frequency C_out x (C_in*s^D) matrices (Sedghi, Gupta & Long 2019), per
group. Small operators are built explicitly and bracketed like any dense matrix.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lipcheck.model import ConvGeometry
from lipcheck.spectral.dense import GRAM_MARGIN, certify

# Build the operator as a dense matrix when its smaller side has at most this many entries.
EXPLICIT_MAX_SIDE = 1536
# Circular embeddings tried beyond the smallest: each is a valid bound, the least is kept.
_EXTRA_EMBEDDINGS = 3


@dataclass(frozen=True)
class ConvInterval:
    """A certified interval for a conv's operator norm, and how it was obtained."""

    lower: float
    upper: float
    method: str
    iterations: int
    converged: bool


def _pads(geometry: ConvGeometry, n: int) -> tuple[list[int], list[int]]:
    if geometry.padding:
        return list(geometry.padding[:n]), list(geometry.padding[n:])
    return [0] * n, [0] * n


def _conv_fn(weight: torch.Tensor, geometry: ConvGeometry, transposed: bool):  # type: ignore[no-untyped-def]
    n = weight.dim() - 2
    begin, end = _pads(geometry, n)

    def apply(x: torch.Tensor) -> torch.Tensor:
        if transposed:
            conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
            pad = [min(b, e) for b, e in zip(begin, end)]
            y = conv_t(x, weight, stride=geometry.stride, padding=pad, dilation=geometry.dilation,
                       groups=geometry.groups, output_padding=geometry.output_padding or 0)
            extra = [(b - p, e - p) for b, e, p in zip(begin, end, pad)]
            slices = [slice(None), slice(None)] + [slice(lo, y.shape[2 + i] - hi) for i, (lo, hi) in enumerate(extra)]
            return y[tuple(slices)]
        flat = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
        return conv(F.pad(x, flat), weight, stride=geometry.stride, dilation=geometry.dilation, groups=geometry.groups)

    return apply


def input_channels(weight: torch.Tensor, geometry: ConvGeometry, transposed: bool) -> int:
    """The number of input channels the layer expects."""
    return weight.shape[0] if transposed else weight.shape[1] * geometry.groups


def power_lower(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool, *,
                tol: float, max_iter: int, seed: int) -> tuple[float, int]:
    """Power iteration on the operator: x <- A^T A x; returns (||A x|| for unit x, iterations)."""
    apply = _conv_fn(weight, geometry, transposed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, input_channels(weight, geometry, transposed), *spatial, generator=g, dtype=torch.float64)
    sigma, previous = 0.0, -1.0
    for it in range(1, max_iter + 1):
        x = x / x.norm()
        y, vjp = torch.func.vjp(apply, x)
        sigma = float(y.norm())
        if abs(sigma - previous) <= 0.1 * tol * sigma:
            return sigma, it
        previous = sigma
        (x,) = vjp(y)
        if float(x.norm()) == 0.0:
            return sigma, it
    return sigma, max_iter


def explicit_matrix(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> torch.Tensor:
    """The operator as a dense matrix (outputs x inputs), by applying it to every basis vector."""
    apply = _conv_fn(weight, geometry, transposed)
    c = input_channels(weight, geometry, transposed)
    size = c * math.prod(spatial)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, c, *spatial)
    return apply(basis).reshape(size, -1).T


def circular_upper(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> float:
    """A certified upper bound on the operator norm from circular embeddings (see module doc)."""
    if transposed:
        # ConvTranspose is the adjoint of the conv with the same weight, taken at the output size.
        out_spatial = _transposed_output(weight, geometry, spatial)
        return circular_upper(weight, geometry, out_spatial, transposed=False)
    n = weight.dim() - 2
    begin, end = _pads(geometry, n)
    stride = geometry.stride
    base = [-(-(size + b + e) // s) * s for size, b, e, s in zip(spatial, begin, end, stride)]
    best = math.inf
    for extra in range(_EXTRA_EMBEDDINGS + 1):
        sizes = [b + extra * s for b, s in zip(base, stride)]
        best = min(best, _circular_norm(weight, geometry, sizes))
    return best * (1.0 + GRAM_MARGIN)


def _transposed_output(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...]) -> tuple[int, ...]:
    n = weight.dim() - 2
    begin, end = _pads(geometry, n)
    out_pad = geometry.output_padding or (0,) * n
    return tuple((size - 1) * s - b - e + d * (k - 1) + op + 1
                 for size, s, b, e, d, k, op in zip(spatial, geometry.stride, begin, end, geometry.dilation,
                                                     weight.shape[2:], out_pad))


def _circular_norm(weight: torch.Tensor, geometry: ConvGeometry, sizes: list[int]) -> float:
    g = geometry.groups
    c_out, c_in_g = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    stride, dilation = geometry.stride, geometry.dilation
    reduced = [size // s for size, s in zip(sizes, stride)]
    phases = math.prod(stride)
    w = weight.to(torch.float64).reshape(g, c_out // g, c_in_g, *kernel)
    # Per frequency: K[f] is (groups, C_out/g, C_in/g * phases).
    spectrum = torch.zeros(*reduced, g, c_out // g, c_in_g * phases, dtype=torch.complex128)
    freqs = [2 * math.pi * torch.arange(m, dtype=torch.float64) / m for m in reduced]
    for tap in itertools.product(*(range(k) for k in kernel)):
        offset = [t * d for t, d in zip(tap, dilation)]
        residue = [o % s for o, s in zip(offset, stride)]
        shift = [o // s for o, s in zip(offset, stride)]
        phase = torch.ones((), dtype=torch.complex128)
        for axis, (f, q) in enumerate(zip(freqs, shift)):
            view = [1] * len(reduced)
            view[axis] = -1
            phase = phase * torch.exp(1j * f * q).reshape(view)
        r = 0
        for res, s in zip(residue, stride):
            r = r * s + res
        cols = torch.arange(c_in_g) * phases + r
        spectrum[..., cols] += phase[..., None, None, None] * w[(slice(None), slice(None), slice(None), *tap)].to(torch.complex128)
    return float(torch.linalg.matrix_norm(spectrum, ord=2).max())


def operator_interval(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool, *,
                      tol: float, max_iter: int, seed: int) -> ConvInterval:
    """Bracket a conv's operator norm at the given input spatial size."""
    c = input_channels(weight, geometry, transposed)
    in_size = c * math.prod(spatial)
    w64 = weight.to(torch.float64)
    out_size = _output_size(w64, geometry, spatial, transposed)
    if min(in_size, out_size) <= EXPLICIT_MAX_SIDE:
        est = certify(explicit_matrix(w64, geometry, spatial, transposed), tol=tol, max_iter=max_iter, seed=seed)
        return ConvInterval(est.sigma, est.upper, "explicit operator matrix: power iteration + Gram iteration",
                            est.iterations, est.converged)
    lower, iterations = power_lower(w64, geometry, spatial, transposed, tol=tol, max_iter=max_iter, seed=seed)
    upper = circular_upper(w64, geometry, spatial, transposed)
    return ConvInterval(min(lower, upper), upper,
                        "power iteration on the operator (lower), circular-embedding FFT bound (upper)",
                        iterations, upper - lower <= tol * upper)


def _output_size(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> int:
    x = torch.zeros(1, input_channels(weight, geometry, transposed), *spatial, dtype=torch.float64)
    return _conv_fn(weight, geometry, transposed)(x).numel()
