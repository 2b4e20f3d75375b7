"""Operator norms of convolutions at a known input shape: a certified interval.

Upper end: the zero-padded conv is a submatrix of a circular conv on a slightly larger ring, whose
norm is the largest per-frequency sigma_1 of the polyphase symbol (conv_fourier.py derives the
embedding and certifies it with rounding accounted). A ConvTranspose has the norm of the conv it
transposes at its output size; non-zero padding is a padding map (norm computed exactly) then an
unpadded conv. Small operators are built explicitly and bracketed like any dense matrix; so are
the groups of a grouped conv whose groups are small (conv_groups.py), where the whole operator is
not: the circular bound is several percent high on the small maps where depthwise convs sit.

Lower end: the circular operator's top mode, windowed to the real input, starts Lanczos on the
real operator (the conv and its adjoint at the input shape, real padding and stride) in float32;
the reported value is ||A x|| / ||x|| for the Ritz vector x, recomputed in float64 and rounded down.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from lipcheck.model import ConvGeometry
from lipcheck.spectral import conv_fourier, conv_groups, conv_start
from lipcheck.spectral.dense import certify_row_scaled

# Build the operator as a dense matrix when its smaller side has at most this many entries
# (a 512-channel layer on a 2x2 map).
EXPLICIT_MAX_SIDE = 2048
# Relative width at which a conv's operator interval counts as converged (when --tol is smaller):
# the circular bound sits a fraction of a percent above the zero-padded norm at moderate sizes,
# so the dense tolerance (1e-6) is out of reach for the operator path.
CONV_TOL = 1e-3
# Lanczos on the operator: basis width before a restart from the Ritz vector.
_MAX_BASIS = 40
# The lower end has stopped moving once Lanczos' error estimate is below this share of the tolerance.
_SETTLED = 0.1


@dataclass(frozen=True)
class ConvInterval:
    """A certified interval for a conv's operator norm, and how it was obtained.

    ``iterations`` and ``converged`` describe this interval: the explicit matrix's Lanczos steps,
    or the power iteration's on the operator; converged when upper - lower <= tol * upper.
    """

    lower: float
    upper: float
    method: str
    iterations: int
    converged: bool
    certificate_steps: int = 0  # Cholesky factorizations behind the upper end (none for the FFT bound)
    # Upper ends of the conv with its output channels scaled by each of operator_interval's
    # ``row_scales`` (None where they were not worked out along the way).
    scaled_uppers: tuple[float | None, ...] = ()


def _pads(geometry: ConvGeometry, n: int) -> tuple[list[int], list[int]]:
    if geometry.padding:
        return list(geometry.padding[:n]), list(geometry.padding[n:])
    return [0] * n, [0] * n


def resolve(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> ConvGeometry:
    """Turn ONNX auto_pad (SAME_UPPER, SAME_LOWER, VALID) into explicit pads for this input size."""
    auto = geometry.auto_pad.upper()
    n = weight.dim() - 2
    if auto in ("", "NOTSET"):
        return geometry if geometry.padding else replace(geometry, padding=(0,) * (2 * n))
    if auto == "VALID":
        return replace(geometry, padding=(0,) * (2 * n), auto_pad="NOTSET")
    if auto not in ("SAME", "SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {geometry.auto_pad!r}")
    begin, end = [], []
    out_pad = geometry.output_padding or (0,) * n
    for size, k, s, d, op in zip(spatial, weight.shape[2:], geometry.stride, geometry.dilation, out_pad):
        span = (k - 1) * d + 1
        if transposed:
            total = max(0, s * (size - 1) + op + span - size * s)
        else:
            total = max(0, (-(-size // s) - 1) * s + span - size)
        small, large = total // 2, total - total // 2
        begin.append(large if auto == "SAME_LOWER" else small)
        end.append(small if auto == "SAME_LOWER" else large)
    return replace(geometry, padding=tuple(begin) + tuple(end), auto_pad="NOTSET")


def _conv_fn(weight: torch.Tensor, geometry: ConvGeometry, transposed: bool):  # type: ignore[no-untyped-def]
    n = weight.dim() - 2
    begin, end = _pads(geometry, n)

    def apply(x: torch.Tensor) -> torch.Tensor:
        if transposed:
            conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
            pad = [min(b, e) for b, e in zip(begin, end)]
            y = conv_t(
                x, weight, stride=geometry.stride, padding=pad, dilation=geometry.dilation, groups=geometry.groups, output_padding=geometry.output_padding or 0
            )
            extra = [(b - p, e - p) for b, e, p in zip(begin, end, pad)]
            slices = [slice(None), slice(None)] + [slice(lo, y.shape[2 + i] - hi) for i, (lo, hi) in enumerate(extra)]
            return y[tuple(slices)]
        flat = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
        mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
        padded = F.pad(x, flat, mode=mode) if any(flat) else x
        return conv(padded, weight, stride=geometry.stride, dilation=geometry.dilation, groups=geometry.groups)

    return apply


def _adjoint_fn(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The operator's adjoint at this input size: a transposed conv for a zero-padded conv, else autograd.

    For y = conv(pad(x)), the adjoint is the transposed conv (same weight, stride, dilation, groups),
    whose output covers padded positions [0, (n_out - 1) s + (k - 1) d + 1), read back at [b, b + n)
    with zeros past its end. Only the lower end's search uses it: the reported ratio is evaluated
    with the forward operator.
    """
    n = weight.dim() - 2
    begin, _ = _pads(geometry, n)
    if transposed or geometry.padding_mode != "zeros":
        apply = _conv_fn(weight, geometry, transposed)
        channels = input_channels(weight, geometry, transposed)

        def by_autograd(y: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                x = torch.zeros(1, channels, *spatial, dtype=y.dtype, device=y.device, requires_grad=True)
                (grad,) = torch.autograd.grad((apply(x) * y).sum(), x)
            return grad

        return by_autograd
    conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]

    def adjoint(y: torch.Tensor) -> torch.Tensor:
        z = conv_t(y, weight, stride=geometry.stride, dilation=geometry.dilation, groups=geometry.groups)
        kept = [slice(min(b, got), min(b + size, got)) for size, b, got in zip(spatial, begin, z.shape[2:])]
        z = z[(slice(None), slice(None), *kept)]
        flat = [p for size, got in zip(reversed(spatial), reversed(z.shape[2:])) for p in (0, size - got)]
        return F.pad(z, flat)

    return adjoint


def input_channels(weight: torch.Tensor, geometry: ConvGeometry, transposed: bool) -> int:
    """The number of input channels the layer expects."""
    return weight.shape[0] if transposed else weight.shape[1] * geometry.groups


def any_size_factor(kernel: tuple[int, ...], geometry: ConvGeometry) -> float:
    """A factor f with ||conv|| <= f * max_g sigma(W_g reshaped), valid for every input size.

    Output p reads input positions p*s + j*d (j < k) per axis, so one input position feeds at most
    ceil(k * gcd(s, d) / s) (output, tap) pairs per axis; summing ||W patch_p(x)||^2 over outputs
    gives ||A x||^2 <= sigma^2 * m * ||x||^2 with m the product over axes. Padding other than zeros
    repeats input values (at most 3 times per axis for reflect/circular, b+e+1 for replicate).
    """
    m = 1.0
    n = len(kernel)
    begin, end = _pads(geometry, n)
    for axis, (k, s, d) in enumerate(zip(kernel, geometry.stride, geometry.dilation)):
        m *= -(-k * math.gcd(s, d) // s)
        if geometry.padding_mode != "zeros":
            pad = begin[axis] + end[axis] if geometry.padding else (k - 1) * d
            if pad:
                m *= pad + 1 if geometry.padding_mode == "replicate" else 3
    return math.sqrt(m)


def explicit_matrix(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> torch.Tensor:
    """The operator as a dense matrix (outputs x inputs), rows and columns in (channel, position) order.

    A zero-padded conv is written tap by tap, group by group (conv_groups.placed_operators). Other
    operators are applied to every basis vector.
    """
    if transposed or geometry.padding_mode != "zeros":
        apply = _conv_fn(weight, geometry, transposed)
        c = input_channels(weight, geometry, transposed)
        size = c * math.prod(spatial)
        basis = torch.eye(size, dtype=torch.float64).reshape(size, c, *spatial)
        return apply(basis).reshape(size, -1).T
    begin, _ = _pads(geometry, len(spatial))
    outs = _out_spatial(weight, geometry, spatial, transposed)
    if min(outs, default=1) <= 0:
        raise RuntimeError("the conv has no output at this input size")
    # Block-diagonal over the groups, rows (group, channel, position) and columns alike.
    return torch.block_diag(*conv_groups.placed_operators(weight, geometry.stride, geometry.dilation, begin, spatial, outs, geometry.groups))


def pad_norm(spatial: tuple[int, ...], geometry: ConvGeometry) -> float:
    """The norm of torch's non-zero padding map at this size: sqrt of the most copies of one input."""
    n = len(spatial)
    begin, end = _pads(geometry, n)
    flat = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
    index = torch.arange(math.prod(spatial), dtype=torch.float64).reshape(1, 1, *spatial)
    padded = F.pad(index, flat, mode=geometry.padding_mode).reshape(-1).long()
    return math.sqrt(int(torch.bincount(padded).max()))


def _transposed_output(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...]) -> tuple[int, ...]:
    n = weight.dim() - 2
    begin, end = _pads(geometry, n)
    out_pad = geometry.output_padding or (0,) * n
    return tuple(
        (size - 1) * s - b - e + d * (k - 1) + op + 1
        for size, s, b, e, d, k, op in zip(spatial, geometry.stride, begin, end, geometry.dilation, weight.shape[2:], out_pad)
    )


METHOD_EXPLICIT = "explicit operator matrix at the input size: Lanczos (lower), Cholesky certificate (upper)"
METHOD_GROUPS = "each group's explicit operator at the input size: eigenvector (lower), Cholesky certificate per group (upper)"
METHOD_OPERATOR = (
    "Lanczos on the operator at the input size from the windowed top Fourier mode (lower), circular-embedding per-frequency Cholesky certificate (upper)"
)


def _output_size(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> int:
    """The number of outputs the layer writes at this input size (resolved geometry), from the shapes alone."""
    channels = weight.shape[1] * geometry.groups if transposed else weight.shape[0]
    sizes = _out_spatial(weight, geometry, spatial, transposed)
    if min(sizes, default=1) <= 0:
        # Torch decides what an empty or impossible output is (on the meta device: shapes only).
        x = torch.zeros(1, input_channels(weight, geometry, transposed), *spatial, dtype=weight.dtype, device="meta")
        return _conv_fn(weight.to("meta"), geometry, transposed)(x).numel()
    return channels * math.prod(sizes)


def operator_bytes(weight_shape: tuple[int, ...], geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> int:
    """About the memory the operator interval at this input size needs: its Lanczos basis of input-sized
    vectors (a grouped conv certified group by group stays under conv_groups' own limit instead)."""
    weight = torch.empty(weight_shape, device="meta")
    resolved = resolve(weight, geometry, spatial, transposed)
    elements = max(input_channels(weight, resolved, transposed) * math.prod(spatial), _output_size(weight, resolved, spatial, transposed))
    return elements * (4 * (_MAX_BASIS + 4) + 16)


def _normalized(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The weight in float64 times an exact power of two 2^k bringing its largest entry near 1, and 2^k.

    Operator norms scale with it exactly; float32 iterations and float64 Gram blocks then stay
    inside their ranges for weights of any size.
    """
    w = weight.to(torch.float64)
    peak = float(w.abs().max()) if w.numel() else 0.0
    exponent = math.frexp(peak)[1] if peak > 0.0 and math.isfinite(peak) else 0
    scale = 2.0 ** -max(exponent, -1000) if abs(exponent) > 32 else 1.0
    return (w * scale if scale != 1.0 else w), scale


def _unscaled(value: float, scale: float, up: bool) -> float:
    """``value / scale`` rounded outward (it can be subnormal, where division rounds)."""
    if scale == 1.0:
        return value
    found = value / scale
    return math.nextafter(found, math.inf if up else 0.0)


def conv_tolerance(tol: float) -> float:
    """The relative width a conv operator interval aims at: the dense tolerance, at least CONV_TOL."""
    return max(tol, CONV_TOL)


@dataclass(frozen=True)
class UpperEnd:
    """A certified upper bound on a conv's norm at an input size, and a start vector for its lower end."""

    upper: float
    start: torch.Tensor | None  # float64 input-shaped start vector, or None
    certificates: int
    scaled: tuple[float | None, ...] = ()  # the same bound with each of upper_end's row_scales applied, where worked out


def upper_end(
    weight: torch.Tensor,
    geometry: ConvGeometry,
    spatial: tuple[int, ...],
    transposed: bool,
    *,
    rel: float,
    device: str = "cpu",
    row_scales: Sequence[torch.Tensor] = (),
    want_start: bool = True,
) -> UpperEnd:
    """The circular-embedding bound for this conv at this input size (resolved geometry), and the
    bounds of the conv with its output channels scaled by each of ``row_scales`` where the same
    Gram polynomial serves them (conv_fourier.scaled_taps). ``want_start``: also the lower end's start."""
    n = weight.dim() - 2
    if transposed:
        # ConvTranspose is the adjoint of the conv with the same weight, taken at the output size.
        out_spatial = _transposed_output(weight, geometry, spatial)
        conv_geometry = replace(geometry, output_padding=())
        found = upper_end(weight, conv_geometry, out_spatial, False, rel=rel, device=device, want_start=False)
        return UpperEnd(found.upper, None, found.certificates, (None,) * len(row_scales))
    begin, end = _pads(geometry, n)
    if geometry.padding_mode != "zeros":
        valid = replace(geometry, padding=(0,) * (2 * n), padding_mode="zeros")
        padded = tuple(size + b + e for size, b, e in zip(spatial, begin, end))
        found = upper_end(weight, valid, padded, False, rel=rel, device=device, row_scales=row_scales, want_start=False)
        factor = pad_norm(spatial, geometry) * (1 + 2.0**-50)
        scaled = tuple(None if value is None else factor * value for value in found.scaled)
        return UpperEnd(factor * found.upper, None, found.certificates, scaled)
    kernel = tuple(weight.shape[2:])
    sizes = conv_fourier.ring_sizes(spatial, kernel, geometry.stride, geometry.dilation, begin, end)
    found_c, scaled_c = conv_fourier.circular_certificate(
        weight, geometry.groups, geometry.stride, geometry.dilation, sizes, rel=rel, device=device, row_scales=row_scales
    )
    start = conv_start.windowed_mode(weight, geometry.groups, found_c, spatial, geometry.stride, begin) if want_start else None
    return UpperEnd(found_c.upper, start if start is not None and float(start.norm()) > 0 else None, found_c.certificates, tuple(scaled_c))


def circular_upper(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> float:
    """A certified upper bound on the operator norm from a circular embedding (module doc)."""
    w64, scale = _normalized(weight)
    return _unscaled(upper_end(w64, resolve(w64, geometry, spatial, transposed), spatial, transposed, rel=1e-4, want_start=False).upper, scale, True)


def certified_ratio(weight: torch.Tensor, geometry: ConvGeometry, transposed: bool, x: torch.Tensor) -> float:
    """A rounded-down ||A x|| / ||x|| evaluated in float64.

    Each output is a dot product of at most L = C_in * taps terms, so |fl(Ax) - Ax| <= gamma_L |A||x|
    entrywise, and || |A||x| || <= || |A| || ||x|| <= any_size_factor * ||W||_F * ||x|| (|A| is the
    same conv with |W|). The norms themselves are within (1 +- gamma_N).
    """
    w = weight.to(torch.float64)
    x = x.to(torch.float64)
    y = _conv_fn(w, geometry, transposed)(x)
    taps = math.prod(weight.shape[2:])
    dot = taps * max(weight.shape[0], weight.shape[1] * geometry.groups)
    g_dot = conv_fourier._gamma(dot + 2)
    abs_norm = any_size_factor(tuple(weight.shape[2:]), geometry) * float(w.norm()) * (1 + conv_fourier._gamma(w.numel()))
    g_x = conv_fourier._gamma(x.numel() + 2)
    g_y = conv_fourier._gamma(y.numel() + 2)
    x_norm = float(x.norm()) * (1 + g_x)
    if x_norm == 0.0:
        return 0.0
    y_low = float(y.norm()) * (1 - g_y) - g_dot * abs_norm * x_norm
    return max(0.0, y_low / x_norm * (1 - conv_fourier._gamma(2)))


def operator_lower(
    weight: torch.Tensor,
    geometry: ConvGeometry,
    spatial: tuple[int, ...],
    transposed: bool,
    *,
    upper: float,
    tol: float,
    max_iter: int,
    seed: int,
    start: torch.Tensor | None = None,
    device: str = "cpu",
) -> tuple[float, int]:
    """Lanczos on A^T A at the input size in float32; returns (certified lower end, iterations).

    Stops when the lower end is within ``tol`` of ``upper`` (the interval meets the tolerance),
    when Lanczos' error estimate says the top Ritz value has settled to a small share of ``tol``
    (the remaining width is the upper end's, which more steps cannot close), or at ``max_iter``.
    """
    w32 = weight.to(device=device, dtype=torch.float32)
    apply = _conv_fn(w32, geometry, transposed)
    adjoint = _adjoint_fn(w32, geometry, spatial, transposed)
    channels = input_channels(weight, geometry, transposed)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, channels, *spatial, generator=g, dtype=torch.float64)
    x0 = noise if start is None else start + 1e-3 * noise * (start.norm() / noise.norm())
    shape = x0.shape
    q = (x0 / x0.norm()).to(device=device, dtype=torch.float32).reshape(-1)
    # The basis lives in one buffer, read as a matrix at each step.
    space = torch.empty(_MAX_BASIS, q.numel(), dtype=torch.float32, device=device)
    space[0] = q
    size = 1
    alphas: list[float] = []
    betas: list[float] = []
    best_vec = q
    theta = 0.0
    it = 0
    while it < max_iter:
        it += 1
        xq = space[size - 1].reshape(shape)
        z = adjoint(apply(xq)).reshape(-1)
        kept = space[:size]
        coeff = kept @ z
        alphas.append(float(coeff[-1]))
        z = z - kept.T @ coeff
        z = z - kept.T @ (kept @ z)
        beta = float(z.norm())
        j = len(alphas)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(t)
        theta = max(0.0, float(values[-1]))
        residual = beta * abs(float(vectors[-1, -1]))
        error = residual if j == 1 else min(residual, residual**2 / max(float(values[-1] - values[-2]), 1e-300))
        sigma = math.sqrt(theta)
        met = sigma >= upper * (1 - 0.9 * tol)
        settled = error <= _SETTLED * tol * theta
        done = met or settled or beta <= 1e-7 * max(theta, 1e-300) or it >= max_iter
        if done or j >= _MAX_BASIS:
            # The Ritz vector is assembled only where it is used: one pass over the basis, not one per step.
            best_vec = (vectors[:, -1].to(device=kept.device, dtype=torch.float32) @ kept).reshape(-1)
            if done:
                break
            space[0], size, alphas, betas = best_vec / best_vec.norm(), 1, [], []
            continue
        betas.append(beta)
        space[size] = z / beta
        size += 1
    # On the CPU: its rounding bound assumes plain dot products, which a GPU library need not use.
    lower = certified_ratio(weight, geometry, transposed, best_vec.reshape(shape).cpu())
    return min(lower, upper), it


def operator_interval(
    weight: torch.Tensor,
    geometry: ConvGeometry,
    spatial: tuple[int, ...],
    transposed: bool,
    *,
    tol: float,
    max_iter: int,
    seed: int,
    upper_cap: float = math.inf,
    device: str = "cpu",
    row_scales: Sequence[torch.Tensor] = (),
) -> ConvInterval:
    """Bracket a conv's operator norm at the given input spatial size.

    Small operators take the dense path at ``tol``; the others aim at conv_tolerance(tol).
    ``upper_cap`` is any other valid upper bound (the size-free one); the smaller end is kept.
    ``row_scales``: per-output-channel scales (batch norms folded into the conv); where the
    explicit operator's Gram product (certify_row_scaled) or the circular certificate's Gram
    polynomial (conv_fourier.scaled_taps) serves them too, their upper ends come back as
    ``scaled_uppers``, each bounding the conv with its weight scaled exactly by that vector.
    """
    w64, scale = _normalized(weight)
    if scale != 1.0:
        inner = operator_interval(
            w64, geometry, spatial, transposed, tol=tol, max_iter=max_iter, seed=seed, upper_cap=upper_cap * scale, device=device, row_scales=row_scales
        )
        scaled = tuple(None if value is None else _unscaled(value, scale, True) for value in inner.scaled_uppers)
        return replace(inner, lower=_unscaled(inner.lower, scale, False), upper=_unscaled(inner.upper, scale, True), scaled_uppers=scaled)
    geometry = resolve(w64, geometry, spatial, transposed)
    c = input_channels(weight, geometry, transposed)
    in_size = c * math.prod(spatial)
    out_size = _output_size(w64, geometry, spatial, transposed)
    if min(in_size, out_size) <= EXPLICIT_MAX_SIDE:
        matrix = explicit_matrix(w64, geometry, spatial, transposed)
        positions = out_size // max(1, weight.shape[0])
        # One scale per output row ((channel, position) order); a scale of another length becomes an
        # empty one, which certify_row_scaled leaves out.
        rows = [] if transposed else [s.to(torch.float64).repeat_interleave(positions) if s.numel() == weight.shape[0] else s.new_empty(0) for s in row_scales]
        est, scaled_found = certify_row_scaled(matrix, rows, tol=tol, max_iter=max_iter, seed=seed, device=device)
        scaled_uppers = tuple(e.upper if e is not None else None for e in scaled_found) if rows else (None,) * len(row_scales)
        return ConvInterval(est.sigma, est.upper, METHOD_EXPLICIT, est.iterations, est.converged, est.certificate_steps, scaled_uppers)
    found_g = _group_bound(w64, geometry, spatial, transposed, tol, in_size, out_size)
    if found_g is not None:
        upper = min(found_g.upper, upper_cap)
        lower = min(certified_ratio(w64, geometry, transposed, found_g.start), upper)
        return ConvInterval(lower, upper, METHOD_GROUPS, 1, upper - lower <= tol * upper, found_g.certificates, (None,) * len(row_scales))
    ctol = conv_tolerance(tol)
    found = upper_end(w64, geometry, spatial, transposed, rel=ctol / 8, device=device, row_scales=row_scales)
    upper = min(found.upper, upper_cap)
    lower, iterations = operator_lower(
        w64, geometry, spatial, transposed, upper=upper, tol=ctol, max_iter=max_iter, seed=seed, start=found.start, device=device
    )
    return ConvInterval(lower, upper, METHOD_OPERATOR, iterations, upper - lower <= ctol * upper, found.certificates, found.scaled)


def _by_groups(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool, in_size: int, out_size: int) -> bool:
    """Whether each group's explicit operator is small enough to certify (conv_groups.fits); zero padding only,
    where every entry of the operators is one weight."""
    groups = geometry.groups
    if groups == 1 or geometry.padding_mode != "zeros":
        return False
    channels_in = input_channels(weight, geometry, transposed)
    channels_out = out_size // math.prod(_out_spatial(weight, geometry, spatial, transposed))
    return conv_groups.fits(groups, in_size // groups, out_size // groups, channels_in, channels_out, math.prod(spatial), out_size // channels_out)


def _out_spatial(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> tuple[int, ...]:
    """The output's spatial size at this input size (resolved geometry); a size of 0 or less where torch gives none."""
    if transposed:
        return _transposed_output(weight, geometry, spatial)
    begin, end = _pads(geometry, weight.dim() - 2)
    return tuple(
        (size + b + e - d * (k - 1) - 1) // s + 1 for size, b, e, d, k, s in zip(spatial, begin, end, geometry.dilation, weight.shape[2:], geometry.stride)
    )


def _group_bound(
    weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool, tol: float, in_size: int, out_size: int
) -> conv_groups.GroupBound | None:
    """The per-group certificate (conv_groups) for a resolved grouped conv, its start shaped as an
    input; None where the path does not apply (_by_groups) or declines (entries too small: underflow)."""
    if not _by_groups(weight, geometry, spatial, transposed, in_size, out_size):
        return None
    groups = geometry.groups
    channels = input_channels(weight, geometry, transposed)
    per_group = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
    begin, _ = _pads(geometry, len(spatial))
    outs = _out_spatial(weight, geometry, spatial, transposed)

    def build(indices: torch.Tensor) -> torch.Tensor:
        chosen = per_group[indices].reshape(-1, *weight.shape[1:])
        count = int(indices.numel())
        if transposed:
            apply = _conv_fn(chosen, replace(geometry, groups=count), transposed)
            return conv_groups.group_operators(apply, channels // groups * count, count, spatial)
        return conv_groups.placed_operators(chosen, geometry.stride, geometry.dilation, begin, spatial, outs, count)

    found = conv_groups.certify(build, conv_groups.group_bounds(weight, groups), rel=max(tol, 1e-9) / 2)
    return None if found is None else replace(found, start=found.start.reshape(1, channels, *spatial))


def operator_upper(
    weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool, *, tol: float, max_iter: int, seed: int, device: str = "cpu"
) -> float:
    """Only the certified upper end of operator_interval (no lower end is computed where avoidable)."""
    w64, scale = _normalized(weight)
    if scale != 1.0:
        return _unscaled(operator_upper(w64, geometry, spatial, transposed, tol=tol, max_iter=max_iter, seed=seed, device=device), scale, True)
    geometry = resolve(w64, geometry, spatial, transposed)
    in_size = input_channels(weight, geometry, transposed) * math.prod(spatial)
    out_size = _output_size(w64, geometry, spatial, transposed)
    if min(in_size, out_size) <= EXPLICIT_MAX_SIDE:
        return operator_interval(w64, geometry, spatial, transposed, tol=tol, max_iter=max_iter, seed=seed, device=device).upper
    found_g = _group_bound(w64, geometry, spatial, transposed, tol, in_size, out_size)
    if found_g is not None:
        return found_g.upper
    return upper_end(w64, geometry, spatial, transposed, rel=conv_tolerance(tol) / 8, device=device, want_start=False).upper
