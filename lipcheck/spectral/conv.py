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
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from lipcheck.model import ConvGeometry
from lipcheck.spectral.dense import certify

# Build the operator as a dense matrix when its smaller side has at most this many entries.
EXPLICIT_MAX_SIDE = 1536
# Circular embeddings tried beyond the smallest on small inputs (< 16 after striding): each is a
# valid bound and the least is kept; they tighten it by up to ~0.3%, not worth 4x the time on larger ones.
_EXTRA_EMBEDDINGS = 3


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
            y = conv_t(x, weight, stride=geometry.stride, padding=pad, dilation=geometry.dilation,
                       groups=geometry.groups, output_padding=geometry.output_padding or 0)
            extra = [(b - p, e - p) for b, e, p in zip(begin, end, pad)]
            slices = [slice(None), slice(None)] + [slice(lo, y.shape[2 + i] - hi) for i, (lo, hi) in enumerate(extra)]
            return y[tuple(slices)]
        flat = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
        mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
        padded = F.pad(x, flat, mode=mode) if any(flat) else x
        return conv(padded, weight, stride=geometry.stride, dilation=geometry.dilation, groups=geometry.groups)

    return apply


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


def power_lower(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool, *,
                tol: float, max_iter: int, seed: int, upper: float = math.inf,
                start: torch.Tensor | None = None) -> tuple[float, int]:
    """Power iteration on the operator: x <- A^T A x; returns (||A x|| for unit x, iterations).

    Stops when within ``tol`` of ``upper``, when the step changes sigma by under tol/10, or when
    50 more steps closed less than 1% of the remaining gap (a slowly converging tail: the value is
    a true lower bound wherever it stops).
    """
    apply = _conv_fn(weight, geometry, transposed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, input_channels(weight, geometry, transposed), *spatial, generator=g, dtype=torch.float64)
    if start is not None and start.shape == x.shape:
        x = start + 1e-3 * x * (start.norm() / x.norm())  # a little noise keeps every direction present
    sigma, previous, checkpoint = 0.0, -1.0, 0.0
    for it in range(1, max_iter + 1):
        x = x / x.norm()
        y, vjp = torch.func.vjp(apply, x)
        sigma = max(sigma, float(y.norm()))
        if (math.isfinite(upper) and upper - sigma <= tol * upper) or abs(sigma - previous) <= 0.1 * tol * sigma:
            return sigma, it
        if it % 50 == 0:
            if math.isfinite(upper) and sigma - checkpoint < 0.01 * (upper - sigma):
                return sigma, it
            checkpoint = sigma
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


def pad_norm(spatial: tuple[int, ...], geometry: ConvGeometry) -> float:
    """The norm of torch's non-zero padding map at this size: sqrt of the most copies of one input."""
    n = len(spatial)
    begin, end = _pads(geometry, n)
    flat = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
    index = torch.arange(math.prod(spatial), dtype=torch.float64).reshape(1, 1, *spatial)
    padded = F.pad(index, flat, mode=geometry.padding_mode).reshape(-1).long()
    return math.sqrt(int(torch.bincount(padded).max()))


def circular_upper(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> float:
    """A certified upper bound on the operator norm from circular embeddings (see module doc)."""
    return circular_bound(weight, geometry, spatial, transposed)[0]


# The circular operator's top mode: (frequency per axis, group, that frequency's matrix).
Mode = tuple[list[float], int, torch.Tensor]


def circular_bound(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...],
                   transposed: bool) -> tuple[float, Mode | None]:
    """The circular-embedding upper bound and the top mode of the smallest embedding (for a warm start)."""
    if transposed:
        # ConvTranspose is the adjoint of the conv with the same weight, taken at the output size.
        out_spatial = _transposed_output(weight, geometry, spatial)
        return circular_upper(weight, geometry, out_spatial, transposed=False), None
    n = weight.dim() - 2
    begin, end = _pads(geometry, n)
    if geometry.padding_mode != "zeros":
        # Non-zero padding = a padding map (norm computed exactly) followed by an unpadded conv.
        valid = replace(geometry, padding=(0,) * (2 * n), padding_mode="zeros")
        padded = tuple(size + b + e for size, b, e in zip(spatial, begin, end))
        return pad_norm(spatial, geometry) * circular_upper(weight, valid, padded, transposed=False), None
    stride = geometry.stride
    base = [-(-(size + b + e) // s) * s for size, b, e, s in zip(spatial, begin, end, stride)]
    best = math.inf
    extras = _EXTRA_EMBEDDINGS if min(b // s for b, s in zip(base, stride)) < 16 else 0
    mode = None
    for extra in range(extras + 1):
        sizes = [b + extra * s for b, s in zip(base, stride)]
        value, found = _circular_norm(weight, geometry, sizes)
        best = min(best, value)
        if extra == 0:
            mode = found
    return best * (1.0 + SVD_MARGIN), mode


def fourier_start(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...],
                  mode: Mode | None) -> torch.Tensor | None:
    """A start vector for power iteration: the circular operator's top mode, windowed to the input.

    At frequency w with top right singular vector v of K(w) (C_in/g * phases entries), the input
    x[c, s*m + r] = Re(v[c*phases + r] e^{i w.m}) is the circular conv's top singular input; the
    zero-padded operator's top input is close to it, so power iteration starts near the answer.
    """
    if mode is None:
        return None
    freq, group, matrix = mode
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    v = vh[0].conj()  # K v = sigma u  with v the first right singular vector
    stride = geometry.stride
    phases = math.prod(stride)
    c_in_g = weight.shape[1]
    channels = c_in_g * geometry.groups
    x = torch.zeros(1, channels, *spatial, dtype=torch.float64)
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in spatial), indexing="ij")
    m = [g // s for g, s in zip(grids, stride)]
    residue = torch.zeros_like(grids[0], dtype=torch.long)
    for g_axis, s in zip(grids, stride):
        residue = residue * s + (g_axis.long() % s)
    wave = torch.exp(1j * sum(f * mi for f, mi in zip(freq, m)))
    for c in range(c_in_g):
        coeff = v[c * phases + residue]
        x[0, group * c_in_g + c] = (coeff * wave).real
    return x if float(x.norm()) > 0 else None


def _transposed_output(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...]) -> tuple[int, ...]:
    n = weight.dim() - 2
    begin, end = _pads(geometry, n)
    out_pad = geometry.output_padding or (0,) * n
    return tuple((size - 1) * s - b - e + d * (k - 1) + op + 1
                 for size, s, b, e, d, k, op in zip(spatial, geometry.stride, begin, end, geometry.dilation,
                                                     weight.shape[2:], out_pad))


# Relative margin on per-frequency norms from LAPACK's SVD, whose singular values are accurate to
# a few n*2^-53 relative for these block sizes (n <= a few thousand); 1e-9 covers that.
SVD_MARGIN = 1e-9
# Largest per-chunk spectrum, in complex entries (16 bytes each): bounds the memory of the FFT bound.
_CHUNK_ENTRIES = 1 << 22


def _circular_norm(weight: torch.Tensor, geometry: ConvGeometry, sizes: list[int]) -> tuple[float, Mode | None]:
    g = geometry.groups
    c_out, c_in_g = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    stride, dilation = geometry.stride, geometry.dilation
    reduced = [size // s for size, s in zip(sizes, stride)]
    phases = math.prod(stride)
    w = weight.to(torch.float64).reshape(g, c_out // g, c_in_g, *kernel).to(torch.complex128)
    freqs = [2 * math.pi * torch.arange(m, dtype=torch.float64) / m for m in reduced]
    block = g * (c_out // g) * c_in_g * phases
    rows = max(1, _CHUNK_ENTRIES // max(1, block * math.prod(reduced[1:])))
    taps = []
    for tap in itertools.product(*(range(k) for k in kernel)):
        offset = [t * d for t, d in zip(tap, dilation)]
        r = 0
        for o, s in zip(offset, stride):
            r = r * s + o % s
        taps.append((tap, [o // s for o, s in zip(offset, stride)], r))
    best, mode = 0.0, None
    for start in range(0, reduced[0], rows):
        chunk = [freqs[0][start:start + rows], *freqs[1:]]
        # Per frequency: K[f] is (groups, C_out/g, C_in/g * phases).
        spectrum = torch.zeros(*(len(f) for f in chunk), g, c_out // g, c_in_g * phases, dtype=torch.complex128)
        for tap, shift, r in taps:
            phase = torch.ones((), dtype=torch.complex128)
            for axis, (f, q) in enumerate(zip(chunk, shift)):
                view = [1] * len(chunk)
                view[axis] = -1
                phase = phase * torch.exp(1j * f * q).reshape(view)
            cols = torch.arange(c_in_g) * phases + r
            spectrum[..., cols] += phase[..., None, None, None] * w[(slice(None), slice(None), slice(None), *tap)]
        norms = torch.linalg.matrix_norm(spectrum, ord=2)  # (*freqs, groups)
        top = float(norms.max())
        if top > best:
            flat = int(torch.argmax(norms))
            where = list(torch.unravel_index(torch.tensor(flat), norms.shape))
            freq = [float(f[int(i)]) for f, i in zip(chunk, where[:-1])]
            mode = (freq, int(where[-1]), spectrum[tuple(int(i) for i in where)].clone())
        best = max(best, top)
    return best, mode


METHOD_EXPLICIT = "explicit operator matrix at the input size: Lanczos (lower), Cholesky certificate (upper)"
METHOD_OPERATOR = "power iteration on the operator at the input size (lower), circular-embedding FFT bound (upper)"


def operator_interval(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool, *,
                      tol: float, max_iter: int, seed: int, upper_cap: float = math.inf) -> ConvInterval:
    """Bracket a conv's operator norm at the given input spatial size.

    ``upper_cap`` is any other valid upper bound (the size-free one); the smaller end is kept.
    """
    w64 = weight.to(torch.float64)
    geometry = resolve(w64, geometry, spatial, transposed)
    c = input_channels(weight, geometry, transposed)
    in_size = c * math.prod(spatial)
    out_size = _output_size(w64, geometry, spatial, transposed)
    if min(in_size, out_size) <= EXPLICIT_MAX_SIDE:
        est = certify(explicit_matrix(w64, geometry, spatial, transposed), tol=tol, max_iter=max_iter, seed=seed)
        return ConvInterval(est.sigma, est.upper, METHOD_EXPLICIT, est.iterations, est.converged, est.certificate_steps)
    circular, mode = circular_bound(w64, geometry, spatial, transposed)
    upper = min(circular, upper_cap)
    start = None if transposed or geometry.padding_mode != "zeros" else fourier_start(w64, geometry, spatial, mode)
    lower, iterations = power_lower(w64, geometry, spatial, transposed, tol=tol, max_iter=max_iter, seed=seed,
                                    upper=upper, start=start)
    lower = min(lower, upper)
    return ConvInterval(lower, upper, METHOD_OPERATOR, iterations, upper - lower <= tol * upper)


def _output_size(weight: torch.Tensor, geometry: ConvGeometry, spatial: tuple[int, ...], transposed: bool) -> int:
    x = torch.zeros(1, input_channels(weight, geometry, transposed), *spatial, dtype=torch.float64)
    return _conv_fn(weight, geometry, transposed)(x).numel()
