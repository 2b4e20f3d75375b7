"""A certified upper bound on a zero-padded conv's operator norm from one circular embedding.

Embedding. Per axis, pad the input with b zeros in front and read output o at padded positions
o*s + t*d (t < k). Place the input at [b, b+n) in a ring of N cells, N a multiple of s with
N >= b + n, N >= n_out * s and N > max read - b: every read past the ring's end lands in [0, b),
which holds zeros, so the zero-padded operator is a submatrix (rows and columns restricted) of the
circular conv on N cells, and its norm is at most the circular one. That admits N = n + max(b, e)
for "same" padding, one less than n + b + e.

Polyphase. Split the ring's positions i = s*m + r (residue r of s^D). Tap t reads offset
t*d = s*q_t + r_t, so y[o] = sum_t W_t z_{r_t}[o + q_t], a stride-1 circular conv on N/s cells
from C_in/g * s^D channels. On the Fourier mode z_r[m] = v_r e^{i w.m} it gives K(w) v e^{i w.o}
with K(w) = sum_t e^{i w.q_t} W_t E_{r_t} (Sedghi, Gupta & Long 2019), so the circular norm is the
largest sigma_1(K(w)) over the (N/s)^D frequencies w and the g groups.

Gram taps. sigma_1(K)^2 = lambda_max of the smaller of K K^H (C_out/g, "out") and K^H K
(C_in/g * s^D, "in"). Both are trigonometric polynomials G(w) = sum_delta e^{i w.delta} H_delta
with real coefficients from products of taps: out: H_{q_t - q_t'} += W_t W_t'^T over taps of one
residue; in: block (r_t, r_t') of H_{q_t' - q_t} += W_t^T W_t'. One real product of the stacked
taps gives every H. Pairing delta with -delta, G(w) = H_0 + sum_{delta > 0} cos(w.delta) S_delta
+ i sin(w.delta) D_delta with S = H_delta + H_-delta and D = H_delta - H_-delta, so one real
product of a [cos | sin] table with S and D laid out as real and imaginary parts writes G(w) for
all frequencies in complex form. G(-w) = conj G(w), so half the frequencies suffice.

Rounding. Let E(w) = fl(G(w)) - G(w). With u = 2^-53: each H entry is a sum of at most T dot
products of length L, so |fl(H) - H| <= gamma_{L+T} sum |W_t||W_t'|^T, whose spectral norm is at
most (sum_t ||W_t||_F)^2. The phase angle 2*pi*(sum_a (j_a delta_a mod M_a)/M_a) is exact up
to a few ulps, and cos/sin to about one more: |c_hat - c| <= mu = 128 u. Forming S and D errs by
u (|fl H_delta| + |fl H_-delta|), so each term c_hat fl(S) is within (mu (1+u) + u) <= mu' = mu + 2u
of c fl(S) in units of |fl H_delta| + |fl H_-delta|. The sum over at most Delta terms errs by
gamma_{Delta+1} sum |c_hat||fl S|. So |E| <= sqrt2 [(mu' + gamma_{Delta+1}(1+mu')) sum_delta |fl H|
+ (1+mu')(1+gamma_{Delta+1}) |fl H - H|] entrywise (sqrt2: real and imaginary parts), and
||E||_2 <= the Frobenius norm of that bound: one number e_G for every frequency (Weyl). The
bound is symmetric, so it also holds for the Hermitian matrix the Cholesky factorization reads
from the lower triangle of fl(G).

Certificate. For each frequency, a Cholesky factorization of tau I - fl(G) in complex128 that
completes gives R^H R = tau I - fl(G) + D1 + D2 with |D1_ii| <= u (tau + |g_ii|) (forming the
shift) and ||D2||_2 <= gamma~ ||R||_F^2 (Higham, Accuracy and Stability of Numerical Algorithms,
Theorem 10.3, with gamma~ = gamma_{4n+8} for complex arithmetic). R^H R is positive
semidefinite, so lambda_max(fl G) <= tau + u (tau + max|g_ii|) + gamma~ ||R||_F^2, and
lambda_max(G) <= that + e_G. ||R||_F^2 needs no pass over R: it is the trace of |R^H||R|, which
bounds |D2| entrywise, so ||R||_F^2 = tr(R^H R) <= tr(A) + gamma~ ||R||_F^2 for the shifted
matrix A the factorization read, i.e. ||R||_F^2 <= tr(A) / (1 - gamma~). tau comes from Lanczos on the frequencies whose power-iteration
estimate is largest; a frequency whose factorization fails is refined and retried, and the
Frobenius norm of fl(G) (never below lambda_max) is the last resort.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

UNIT_ROUNDOFF = 2.0**-53
_SAFETY = 2.0
# Phase table error in units of u (angle to a few ulps, then cos/sin): see the module doc.
_PHASE_ERROR = 128.0
# Complex entries per frequency chunk of Gram blocks (16 bytes each): bounds the memory.
_CHUNK_ENTRIES = 1 << 22
# Gram blocks of every frequency are kept between the screen and the certificates up to this many
# complex entries (256 MiB); larger symbols are recomputed per chunk.
_STORE_ENTRIES = 1 << 24
# Frequencies refined by Lanczos before the first certificate.
_CANDIDATES = 8
_SCREEN_STEPS = 5
# numpy's batched Cholesky kernel (the one numpy.linalg.cholesky calls), where this numpy has it.
_NUMPY_CHOLESKY = getattr(getattr(np.linalg, "_umath_linalg", None), "cholesky_lo", None)


def _gamma(k: int) -> float:
    """Higham's gamma_k = k u / (1 - k u) with a safety factor: a k-term float64 sum's relative error."""
    ku = k * UNIT_ROUNDOFF
    return _SAFETY * ku / (1.0 - ku)


def ring_sizes(
    spatial: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...], begin: list[int], end: list[int]
) -> list[int]:
    """The smallest ring per axis whose circular conv contains the zero-padded one (module doc)."""
    sizes = []
    for n, k, s, d, b, e in zip(spatial, kernel, stride, dilation, begin, end):
        span = (k - 1) * d + 1
        n_out = max(1, (n + b + e - span) // s + 1)
        last_read = (n_out - 1) * s + (k - 1) * d
        need = max(b + n, last_read - b + 1, n_out * s, 1)
        sizes.append(-(-need // s) * s)
    return sizes


@dataclass(frozen=True)
class TapOffsets:
    """Every tap's shift q_t on the reduced grid and residue r_t, and the geometry around them."""

    shifts: list[tuple[int, ...]]
    residues: list[int]
    phases: int
    reduced: list[int]


def tap_offsets(kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...], sizes: list[int]) -> TapOffsets:
    shifts, residues = [], []
    for tap in itertools.product(*(range(k) for k in kernel)):
        offsets = [t * d for t, d in zip(tap, dilation)]
        r = 0
        for o, s in zip(offsets, stride):
            r = r * s + o % s
        shifts.append(tuple(o // s for o, s in zip(offsets, stride)))
        residues.append(r)
    return TapOffsets(shifts, residues, math.prod(stride), [n // s for n, s in zip(sizes, stride)])


@dataclass
class GramTaps:
    """G(w) as a [cos | sin] table's product with paired coefficients, per group, and rounding bounds."""

    deltas: list[tuple[int, ...]]  # delta = 0 first, then one of each pair {delta, -delta}
    table: torch.Tensor  # (2 len(deltas) - 1, groups * n * n * 2) float64: S (real part) then D (imaginary)
    abs_sum: torch.Tensor  # (groups, n, n): sum over every delta of |fl H_delta|
    n: int
    groups: int
    side: str  # "out": K K^H, "in": K^H K
    product_error: float  # spectral-norm bound on fl(H_delta) - H_delta summed over delta
    taps: TapOffsets


def gram_taps(weight: torch.Tensor, groups: int, stride: tuple[int, ...], dilation: tuple[int, ...], sizes: list[int]) -> GramTaps:
    """The Gram polynomial's coefficients on the smaller side (see the module doc)."""
    w = weight.to(torch.float64)
    c_out, c_in = w.shape[0], w.shape[1]
    m = c_out // groups
    kernel = tuple(w.shape[2:])
    taps = tap_offsets(kernel, stride, dilation, sizes)
    t_count = len(taps.shifts)
    per_tap = w.reshape(groups, m, c_in, t_count).permute(0, 3, 1, 2)  # (g, T, m, c)
    side = "out" if m <= c_in * taps.phases else "in"
    index: dict[tuple[int, ...], int] = {}
    blocks: list[torch.Tensor] = []

    def slot(delta: tuple[int, ...], n: int) -> torch.Tensor:
        if delta not in index:
            index[delta] = len(blocks)
            blocks.append(torch.zeros(groups, n, n, dtype=torch.float64, device=w.device))
        return blocks[index[delta]]

    if side == "out":
        for r in sorted(set(taps.residues)):
            members = [t for t, rr in enumerate(taps.residues) if rr == r]
            # Pair (b, a) is the transpose of pair (a, b): half the products are enough.
            for a, ta in enumerate(members):
                rest = per_tap[:, members[a:]].reshape(groups, (len(members) - a) * m, c_in)
                products = torch.bmm(per_tap[:, ta], rest.mT).reshape(groups, m, len(members) - a, m)
                for b, tb in enumerate(members[a:]):
                    delta = tuple(x - y for x, y in zip(taps.shifts[ta], taps.shifts[tb]))
                    block = products[:, :, b, :]
                    slot(delta, m).add_(block)
                    if b > 0:
                        slot(tuple(-x for x in delta), m).add_(block.mT)
        length = c_in
    else:
        n = c_in * taps.phases
        cols = per_tap.permute(0, 2, 1, 3).reshape(groups, m, t_count * c_in)
        for a in range(t_count):
            # Pair (b, a) is the transpose of pair (a, b): half the products are enough.
            products = torch.bmm(per_tap[:, a].mT, cols[:, :, a * c_in :]).reshape(groups, c_in, t_count - a, c_in)
            for b in range(a, t_count):
                delta = tuple(y - x for x, y in zip(taps.shifts[a], taps.shifts[b]))
                product = products[:, :, b - a, :]
                # Input column of channel c at residue r: c * phases + r.
                block = slot(delta, n).view(groups, c_in, taps.phases, c_in, taps.phases)
                block[:, :, taps.residues[a], :, taps.residues[b]] += product
                if b > a:
                    mirror = slot(tuple(-x for x in delta), n).view(groups, c_in, taps.phases, c_in, taps.phases)
                    mirror[:, :, taps.residues[b], :, taps.residues[a]] += product.mT
        length = m
    tap_norms = per_tap.square().sum(dim=(2, 3)).sqrt().sum(dim=1).max()  # max over groups of sum_t ||W_t||_F
    product_error = _gamma(length + t_count + 2) * float(tap_norms) ** 2 * (1 + _gamma(4))
    return _paired(index, blocks, groups, side, product_error, taps)


def _paired(index: dict[tuple[int, ...], int], blocks: list[torch.Tensor], groups: int, side: str, product_error: float, taps: TapOffsets) -> GramTaps:
    """Pair each H_delta with H_-delta into S (cos, real part) and D (sin, imaginary part) rows."""
    n = blocks[0].shape[-1]
    zero = tuple(0 for _ in taps.reduced)
    half = [d for d in index if d > zero]
    rows = 1 + 2 * len(half)
    device = blocks[0].device
    table = torch.zeros(rows, groups * n * n, 2, dtype=torch.float64, device=device)
    empty = torch.zeros(groups * n * n, dtype=torch.float64, device=device)

    def coefficient(delta: tuple[int, ...]) -> torch.Tensor:
        return blocks[index[delta]].reshape(-1) if delta in index else empty

    table[0, :, 0] = coefficient(zero)
    for j, delta in enumerate(half):
        plus, minus = coefficient(delta), coefficient(tuple(-x for x in delta))
        table[1 + j, :, 0] = plus + minus
        table[1 + len(half) + j, :, 1] = plus - minus
    abs_sum = torch.stack(blocks).abs().sum(dim=0)
    return GramTaps([zero] + half, table.reshape(rows, -1), abs_sum, n, groups, side, product_error, taps)


def _half_frequencies(reduced: list[int]) -> torch.Tensor:
    """Integer frequency indices covering every class of {j, -j}: first axis up to M_0 / 2."""
    axes = [torch.arange(reduced[0] // 2 + 1)] + [torch.arange(m) for m in reduced[1:]]
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=1)


def _phase_table(freqs: torch.Tensor, deltas: list[tuple[int, ...]], reduced: list[int]) -> torch.Tensor:
    """[cos | sin] of w.delta per frequency row (sin for the deltas after 0), from exact integer residues."""
    d = torch.tensor(deltas, dtype=torch.int64).reshape(len(deltas), -1)
    angle = torch.zeros(freqs.shape[0], len(deltas), dtype=torch.float64)
    for axis, m in enumerate(reduced):
        angle += torch.remainder(freqs[:, axis : axis + 1] * d[:, axis], m).to(torch.float64) / m
    angle *= 2 * math.pi
    return torch.cat([torch.cos(angle), torch.sin(angle[:, 1:])], dim=1)


def gram_blocks(taps: GramTaps, freqs: torch.Tensor) -> torch.Tensor:
    """fl(G(w)) for the given integer frequencies: (F, groups, n, n) complex128."""
    out = torch.empty(freqs.shape[0], taps.groups, taps.n, taps.n, dtype=torch.complex128, device=taps.table.device)
    phases = _phase_table(freqs, taps.deltas, taps.taps.reduced).to(taps.table.device)
    flat = torch.view_as_real(out).reshape(freqs.shape[0], -1)
    if out.device.type == "cpu":
        # numpy's BLAS takes this short inner dimension about twice as fast as torch's on a CPU.
        np.matmul(phases.numpy(), taps.table.numpy(), out=flat.numpy())
    else:
        torch.mm(phases, taps.table, out=flat)
    return out


def gram_error(taps: GramTaps) -> float:
    """A spectral-norm bound on fl(G(w)) - G(w) valid at every frequency (module doc)."""
    mu = _PHASE_ERROR * UNIT_ROUNDOFF + 2 * UNIT_ROUNDOFF
    terms = 2 * len(taps.deltas) - 1
    g_sum = _gamma(terms + 1)
    abs_sum = taps.abs_sum
    fro = float(abs_sum.square().sum(dim=(1, 2)).sqrt().max()) * (1 + _gamma(abs_sum[0].numel() + terms))
    bound = math.sqrt(2) * ((mu + g_sum * (1 + mu)) * fro + (1 + mu) * (1 + g_sum) * taps.product_error)
    return bound * (1 + 1e-12)


def _cholesky_bounds(g: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Try tau I - G per matrix; return success flags and the certified lambda_max(fl G) bound.

    ``g`` is overwritten with tau I - G (the blocks are large and read once).
    """
    n = g.shape[-1]
    diag = g.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1)
    shifted = g.neg_()
    shifted.diagonal(dim1=-2, dim2=-1).add_(tau.unsqueeze(-1).to(g.dtype))
    trace = shifted.diagonal(dim1=-2, dim2=-1).real.abs().sum(dim=-1) * (1 + _gamma(n + 2))
    factored = _factorizes(shifted)
    fro2 = trace / (1 - _gamma(4 * n + 8))
    bound = tau + UNIT_ROUNDOFF * _SAFETY * (tau + diag) + _gamma(4 * n + 8) * fro2
    ok = factored & torch.isfinite(fro2)
    return ok, bound * (1 + _gamma(4))


def _factorizes(a: torch.Tensor) -> torch.Tensor:
    """Whether a Cholesky factorization of each finite Hermitian matrix in the batch completes.

    On a CPU the factorizations run in numpy's LAPACK (numpy's own batched kernel, which marks a
    failed matrix with NaNs and goes on), about twice as fast as torch's for the small blocks of a
    large map. A NaN pivot can pass as positive in some LAPACK builds, so a matrix with a
    non-finite entry (its sum is not finite: one pass, where isfinite on complex numbers takes
    several), or a factor with a non-finite or non-positive diagonal, fails.
    """
    finite = torch.isfinite(torch.view_as_real(a).sum(dim=(-3, -2, -1)) if a.is_complex() else a.sum(dim=(-2, -1)))
    if a.device.type != "cpu" or _NUMPY_CHOLESKY is None:
        _, info = torch.linalg.cholesky_ex(a)
        return finite & (info == 0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore"):
        factors = _NUMPY_CHOLESKY(a.numpy())
    pivots = np.diagonal(factors, axis1=-2, axis2=-1).real.min(axis=-1)
    return finite & torch.from_numpy((pivots > 0) & np.isfinite(pivots))


def hermitian_top(g: torch.Tensor, *, rel: float, start: torch.Tensor | None = None, max_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lanczos with full reorthogonalization on a batch of Hermitian matrices: top Ritz values and vectors.

    Stops when every top Ritz value moved by under ``rel`` (relative) over the last two steps or the
    space is exhausted. An estimate only: the Cholesky certificate decides.
    """
    b, n, _ = g.shape
    steps = n if max_steps is None else min(n, max_steps)
    gen = torch.Generator().manual_seed(0)
    q = start if start is not None else torch.randn(b, n, generator=gen, dtype=torch.float64).to(device=g.device, dtype=g.dtype)
    q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-300)
    basis = [q]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    history: list[torch.Tensor] = []
    values = torch.zeros(b, dtype=torch.float64, device=g.device)
    vectors = torch.zeros(b, 1, dtype=torch.float64, device=g.device)
    for j in range(steps):
        z = torch.bmm(g, basis[-1].unsqueeze(2)).squeeze(2)
        kept = torch.stack(basis, dim=1)  # (b, j+1, n)
        for _ in range(2):
            coeff = torch.bmm(kept.conj(), z.unsqueeze(2))
            z = z - torch.bmm(kept.mT, coeff).squeeze(2)
            if _ == 0:
                alphas.append(coeff[:, j, 0].real + 0)
        beta = torch.linalg.vector_norm(z, dim=1)
        t = torch.diag_embed(torch.stack(alphas, dim=1))
        if betas:
            off = torch.stack(betas, dim=1)
            t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        values_all, vectors = torch.linalg.eigh(t)
        values = values_all[:, -1]
        history.append(values)
        if len(history) >= 3 and bool(((history[-1] - history[-3]).abs() <= rel * history[-1].abs()).all()):
            break
        tiny = beta <= 1e-13 * values.abs().clamp_min(1e-300)
        if bool(tiny.all()):
            break
        fresh = torch.randn(b, n, generator=gen, dtype=torch.float64).to(device=g.device, dtype=g.dtype)
        z = torch.where(tiny.unsqueeze(1), fresh, z)
        for _ in range(2):
            z = z - torch.bmm(kept.mT, torch.bmm(kept.conj(), z.unsqueeze(2))).squeeze(2)
        z = z / torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min(1e-300)
        betas.append(torch.where(tiny, torch.zeros_like(beta), beta))
        basis.append(z)
    kept = torch.stack(basis[: len(alphas)], dim=1)
    top = vectors[:, :, -1].to(g.dtype)
    return values, torch.bmm(top.unsqueeze(1), kept).squeeze(1)


@dataclass
class CircularBound:
    """The certified circular bound and its top mode (integer frequency, group, Gram eigenvector)."""

    upper: float
    frequency: tuple[int, ...]
    group: int
    vector: torch.Tensor  # top eigenvector of G at that frequency (side-dependent)
    taps: GramTaps
    certificates: int  # Cholesky factorizations behind the bound


def circular_certificate(
    weight: torch.Tensor, groups: int, stride: tuple[int, ...], dilation: tuple[int, ...], sizes: list[int], *, rel: float, device: str = "cpu"
) -> CircularBound:
    """Certify sigma_1 of the circular conv on the ring ``sizes`` to within about ``rel`` (module doc)."""
    dev = torch.device(device)
    taps = gram_taps(weight.to(dev), groups, stride, dilation, sizes)
    freqs = _half_frequencies(taps.taps.reduced)
    n = taps.n
    e_g = gram_error(taps)
    per_chunk = max(1, _CHUNK_ENTRIES // max(1, groups * n * n))
    chunks = [freqs[i : i + per_chunk] for i in range(0, freqs.shape[0], per_chunk)]
    stored: dict[int, torch.Tensor] = {}
    keep = freqs.shape[0] * groups * n * n <= _STORE_ENTRIES

    def blocks(number: int) -> torch.Tensor:
        if number in stored:
            return stored[number]
        g = gram_blocks(taps, chunks[number]).to(dev).reshape(-1, n, n)
        if keep:
            stored[number] = g
        return g

    # Screen: a few power steps on every frequency and group, then Lanczos on the best few.
    rho = torch.cat([_power_screen(blocks(i)) for i in range(len(chunks))])
    picks = torch.topk(rho, min(_CANDIDATES, rho.numel())).indices
    cand = _blocks_at(taps, freqs, picks, groups, n).to(dev)
    values, vectors = hermitian_top(cand, rel=rel / 20)
    best = int(torch.argmax(values))
    tau = float(values[best]) * (1 + rel)
    top_index, top_vector = int(picks[best]), vectors[best].cpu()
    bound, steps, offset = 0.0, 0, 0
    for chunk_number in range(len(chunks)):
        g = blocks(chunk_number)
        stored.pop(chunk_number, None)
        taus = torch.full((g.shape[0],), tau, dtype=torch.float64, device=dev)
        ok, found = _cholesky_bounds(g, taus)
        del g
        steps += taus.shape[0]
        failed = torch.nonzero(~ok).flatten()
        for _ in range(3):
            if failed.numel() == 0:
                break
            retry = _blocks_at(taps, freqs, offset + failed.cpu(), groups, n).to(dev)
            values, vectors = hermitian_top(retry, rel=rel / 20)
            sub_tau = torch.maximum(values * (1 + rel), taus[failed] * (1 + rel))
            sub_ok, sub_found = _cholesky_bounds(retry, sub_tau)
            steps += failed.numel()
            found[failed] = sub_found
            ok[failed] = sub_ok
            taus[failed] = sub_tau
            worst = int(torch.argmax(torch.where(sub_ok, sub_found, torch.zeros_like(sub_found))))
            if float(sub_found[worst]) > tau and bool(sub_ok[worst]):
                top_index, top_vector = offset + int(failed[worst]), vectors[worst].cpu()
                tau = float(sub_found[worst])
            failed = failed[~sub_ok]
        if failed.numel():
            fro = torch.linalg.matrix_norm(_blocks_at(taps, freqs, offset + failed.cpu(), groups, n).to(dev), ord="fro") * (1 + _gamma(n * n + 2))
            found[failed] = fro
        bound = max(bound, float(found.max()))
        offset += taus.shape[0]
    upper = math.sqrt((bound + e_g) * (1 + _gamma(4))) * (1 + _gamma(2))
    freq_row, group = divmod(top_index, groups)
    return CircularBound(upper, tuple(int(x) for x in freqs[freq_row]), group, top_vector, taps, steps)


def _power_screen(g: torch.Tensor) -> torch.Tensor:
    """Rayleigh quotients after a few power steps: a cheap ranking of the frequencies."""
    x = torch.ones(g.shape[0], g.shape[1], 1, dtype=g.dtype, device=g.device)
    x[:, ::2] = -1  # not orthogonal to a top vector for any real structure in practice; only a ranking
    x = x + 0.1j * torch.arange(g.shape[1], dtype=torch.float64, device=g.device).reshape(1, -1, 1) / g.shape[1]
    for _ in range(_SCREEN_STEPS):
        x = torch.bmm(g, x)
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-300)
    return torch.bmm(x.mH, torch.bmm(g, x)).real.reshape(-1).cpu()


def _blocks_at(taps: GramTaps, freqs: torch.Tensor, picks: torch.Tensor, groups: int, n: int) -> torch.Tensor:
    rows = torch.div(picks, groups, rounding_mode="floor")
    blocks = gram_blocks(taps, freqs[rows])  # (P, groups, n, n)
    return blocks[torch.arange(picks.numel(), device=blocks.device), (picks % groups).to(blocks.device)]
