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
residue; in: block (r_t, r_t') of H_{q_t' - q_t} += W_t^T W_t'. Pairing delta with -delta,
G(w) = H_0 + sum_{delta > 0} cos(w.delta) S_delta + i sin(w.delta) D_delta with
S = H_delta + H_-delta and D = H_delta - H_-delta. On the "out" side H_-delta = H_delta^T, and
H_delta for delta >= 0 is one product of the taps of its pairs laid side by side, or (large taps)
the sum of one product per pair: either way each entry is a sum of at most L T products; on the "in" side
each tap product is added (with its sign) straight into S and D, half the products being
transposes of the others. One real product of a
[cos | sin] table with S and D laid out as real and imaginary parts writes G(w) for all
frequencies in complex form. G(-w) = conj G(w), so half the frequencies suffice.

Rounding. Let E(w) = fl(G(w)) - G(w). With u = 2^-53: each entry of S_delta or D_delta is the
sum or difference of two dot products of length at most L T ("out"), or a signed sum of at most 2T
dot products of length L ("in"), so summed over delta the errors |fl(S) - S| and |fl(D) - D| are at
most gamma_{LT+2T+1} sum |W_t||W_t'|^T, whose spectral norm is at most (sum_t ||W_t||_F)^2. Let A_delta = max(|fl S_delta|, |fl D_delta|) entrywise (|fl H_0| at
0), which in exact arithmetic is |H_delta| + |H_-delta|. The phase angle 2*pi*(sum_a (j_a delta_a
mod M_a)/M_a) is exact up to a few ulps, and cos/sin to about one more: |c_hat - c| <= mu = 128 u,
so each term c_hat fl(S) is within mu' = mu + 2u of c fl(S) in units of A_delta. The sum over at
most Delta terms errs by gamma_{Delta+1} sum |c_hat| A_delta. So |E| <= sqrt2 [(mu' +
gamma_{Delta+1}(1+mu')) sum_delta A_delta + (1+mu')(1+gamma_{Delta+1}) |fl(S, D) - (S, D)|]
entrywise (sqrt2: real and imaginary parts), and ||E||_2 <= the Frobenius norm of that bound: one
number e_G for every frequency (Weyl). The bound is symmetric, so it also holds for the Hermitian
matrix the Cholesky factorization reads from the lower triangle of fl(G).

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
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from lipcheck.spectral import lapack
from lipcheck.spectral.dense import SCALED_FLOOR, unit_scales

UNIT_ROUNDOFF = 2.0**-53
_SAFETY = 2.0
# Phase table error in units of u (angle to a few ulps, then cos/sin): see the module doc.
_PHASE_ERROR = 128.0
# Complex entries per frequency chunk of Gram blocks (16 bytes each): bounds the memory.
_CHUNK_ENTRIES = 1 << 22
# Gram blocks of every frequency are kept between the screen and the certificates up to this many
# complex entries (256 MiB); larger symbols are recomputed per chunk.
_STORE_ENTRIES = 1 << 24
# Out-side Gram coefficients come one product per tap pair (rather than one per delta over
# gathered taps) from this many weight entries per tap and group: the products dominate there.
_BY_PAIR_ENTRIES = 1 << 12
# Blocks this small are factored in one batched call: one LAPACK call per block would cost more
# than the factorizations, and two threads making millions of calls would contend for the
# interpreter lock between them.
_BATCHED_MAX_SIDE = 16
# Frequencies refined by Lanczos before the first certificate.
_CANDIDATES = 8
_SCREEN_STEPS = 5


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
    abs_sum: torch.Tensor  # (groups, n, n): sum over delta of A_delta (module doc)
    n: int
    groups: int
    side: str  # "out": K K^H, "in": K^H K
    product_error: float  # spectral-norm bound on the rounding of S and D, summed over delta
    taps: TapOffsets


def gram_taps(weight: torch.Tensor, groups: int, stride: tuple[int, ...], dilation: tuple[int, ...], sizes: list[int], *, reuse: bool = False) -> GramTaps:
    """The Gram polynomial's coefficients on the smaller side, paired into S and D (see the module doc).

    ``reuse``: the table lies in this thread's scratch memory (a CPU's), valid until the thread's next such call.
    """
    w = weight.to(torch.float64)
    c_out, c_in = w.shape[0], w.shape[1]
    m = c_out // groups
    kernel = tuple(w.shape[2:])
    taps = tap_offsets(kernel, stride, dilation, sizes)
    t_count = len(taps.shifts)
    per_tap = w.reshape(groups, m, c_in, t_count).permute(0, 3, 1, 2)  # (g, T, m, c)
    side = "out" if m <= c_in * taps.phases else "in"
    n = m if side == "out" else c_in * taps.phases
    zero = tuple(0 for _ in taps.reduced)
    if side == "out":
        table, half = _out_side_table(per_tap, taps, zero, reuse)
    else:
        table, half = _in_side_table(per_tap, taps, zero, reuse)
    rows = 1 + 2 * len(half)
    # |H_delta| + |H_-delta| = max(|S_delta|, |D_delta|).
    abs_sum = table[0, :, :, :, 0].abs()
    for j in range(len(half)):
        abs_sum += torch.maximum(table[1 + j, :, :, :, 0].abs(), table[1 + len(half) + j, :, :, :, 1].abs())
    product_error = _product_error(per_tap, c_in if side == "out" else m, 2)
    return GramTaps([zero] + half, table.reshape(rows, -1), abs_sum, n, groups, side, product_error, taps)


def _product_error(per_tap: torch.Tensor, length: int, extra: int) -> float:
    """gamma_{L T + 2T + extra} (max over groups of sum_t ||W_t||_F)^2, with room for its own rounding (module doc)."""
    t_count = per_tap.shape[1]
    tap_norms = per_tap.square().sum(dim=(2, 3)).sqrt().sum(dim=1).max()
    return _gamma(length * t_count + 2 * t_count + extra) * float(tap_norms) ** 2 * (1 + _gamma(4))


def scaled_taps(taps: GramTaps, weight: torch.Tensor, scale: torch.Tensor) -> tuple[GramTaps, int] | None:
    """The Gram polynomial of the conv with output channel i scaled by scale[i] 2^-k, from
    ``taps``'s own (on the "out" side), overwriting its table, and k: sigma_1 of the conv scaled by
    ``scale`` is 2^k times that polynomial's.

    The power of two (exact) brings the largest scale into (1/2, 1], so no scaled entry exceeds the
    old one. Out-side coefficients are sums over output pairs (i, j): scaled, each is s_i s_j times
    the old, computed as fl(fl(s_i s_j) c): two more roundings per entry, each a relative u of the
    entry. So the coefficients' error bound becomes gamma_{L T + 2T + 4} (sum_t ||S W_t||_F)^2 (the
    module doc's bound for the scaled weight, two roundings later), and A_delta's entries grow by at
    most |s_i s_j| (1 + gamma_2). Products that underflow err by an absolute 2^-1075 each, at most
    2 L T in an old coefficient's entry (times |s_i s_j| <= 1) and one in its scaling: the bound
    adds (rows) n (2 L T + 2) 2^-1074, the spectral norm of those errors over every coefficient.

    None on the "in" side, for scales outside lipcheck.spectral.dense.safe_scales' range, and where
    the scaled polynomial falls far below the old one's range (its largest diagonal entry of H_0,
    a channel's energy, under lipcheck.spectral.dense.SCALED_FLOOR): the Lanczos and norm steps
    would underflow.
    """
    if taps.side != "out" or scale.numel() != taps.groups * taps.n:
        return None
    unit = unit_scales(scale.to(device=taps.table.device, dtype=torch.float64))
    if unit is None:
        return None
    s, exponent = unit[0].reshape(taps.groups, taps.n), unit[1]
    rows = taps.table.shape[0]
    table = taps.table.view(rows, taps.groups, taps.n, taps.n, 2)
    energy = table[0, :, :, :, 0].diagonal(dim1=1, dim2=2)  # H_0's diagonal, per group
    if not float((energy * s.square()).max()) >= SCALED_FLOOR:
        return None
    pair = s.unsqueeze(2) * s.unsqueeze(1)  # (groups, n, n)
    table.mul_(pair.unsqueeze(-1))
    abs_sum = taps.abs_sum * pair.abs() * (1 + _gamma(3))
    w = weight.to(device=taps.table.device, dtype=torch.float64)
    t_count = len(taps.taps.shifts)
    per_tap = (w * s.reshape(-1, *([1] * (w.dim() - 1)))).reshape(taps.groups, taps.n, w.shape[1], t_count).permute(0, 3, 1, 2)
    underflow = rows * taps.n * (2 * w.shape[1] * t_count + 2) * 2.0**-1074
    product_error = _product_error(per_tap, w.shape[1], 4) + underflow
    return GramTaps(taps.deltas, taps.table, abs_sum, taps.n, taps.groups, taps.side, product_error, taps.taps), exponent


def _new_table(half: list[tuple[int, ...]], groups: int, n: int, device: torch.device, reuse: bool) -> torch.Tensor:
    shape = (1 + 2 * len(half), groups, n, n, 2)
    if not reuse:
        return torch.zeros(shape, dtype=torch.float64, device=device)
    table = _scratch("table", math.prod(shape), np.dtype(np.float64)).reshape(shape)
    table.fill(0.0)
    return torch.from_numpy(table)


def _out_side_table(per_tap: torch.Tensor, taps: TapOffsets, zero: tuple[int, ...], reuse: bool) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """S and D of K K^H: H_delta (delta >= 0) as one product of the taps of its pairs side by side.

    Taps pair within a residue; H_-delta = H_delta^T, so S = H + H^T and D = H - H^T.
    """
    groups, t_count, m, _ = per_tap.shape
    pairs: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for a, b in itertools.product(range(t_count), repeat=2):
        delta = tuple(x - y for x, y in zip(taps.shifts[a], taps.shifts[b]))
        if taps.residues[a] == taps.residues[b] and delta >= zero:
            pairs.setdefault(delta, []).append((a, b))
    half = sorted(d for d in pairs if d > zero)
    table = _new_table(half, groups, m, per_tap.device, reuse)
    stacked = per_tap.permute(0, 2, 3, 1)  # (g, m, c, T): the weight's own layout
    # Large taps: one product per pair, summed, from the taps laid out one after another (numpy's
    # BLAS; faster than gathering each delta's taps side by side for one product, which copies the
    # weight once per delta). Small ones: the gather, with far fewer BLAS calls.
    by_pair = per_tap.device.type == "cpu" and m * per_tap.shape[3] >= _BY_PAIR_ENTRIES
    tap_major = per_tap.contiguous().numpy() if by_pair else None
    for delta, members in pairs.items():
        if tap_major is not None:
            h = torch.from_numpy(_pair_sum(tap_major, members))
        else:
            # The product's inner index runs over (channel, pair) on both sides alike.
            left, right = ([p[i] for p in members] for i in (0, 1))
            lhs, rhs = stacked[..., left].reshape(groups, m, -1), stacked[..., right].reshape(groups, m, -1)
            if per_tap.device.type == "cpu":  # numpy's BLAS, faster than torch's here
                h = torch.from_numpy(np.matmul(lhs.numpy(), rhs.numpy().transpose(0, 2, 1)))
            else:
                h = torch.bmm(lhs, rhs.mT)
        if delta == zero:
            table[0, :, :, :, 0] = h
        else:
            j = half.index(delta)
            table[1 + j, :, :, :, 0] = h + h.mT
            table[1 + len(half) + j, :, :, :, 1] = h - h.mT
    return table, half


def _pair_sum(tap_major: np.ndarray, members: list[tuple[int, int]]) -> np.ndarray:
    """sum over the pairs (a, b) of W_a W_b^T per group, from the taps as (g, T, m, c)."""
    found = np.matmul(tap_major[:, members[0][0]], tap_major[:, members[0][1]].transpose(0, 2, 1))
    product = np.empty_like(found)
    for a, b in members[1:]:
        np.matmul(tap_major[:, a], tap_major[:, b].transpose(0, 2, 1), out=product)
        found += product
    return found


def _in_side_table(per_tap: torch.Tensor, taps: TapOffsets, zero: tuple[int, ...], reuse: bool) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """S and D of K^H K: each tap product added, with its sign, at its residues' block of S and D."""
    groups, t_count, _, c_in = per_tap.shape
    n = c_in * taps.phases
    # Block (a, b) belongs to H_delta, its transpose (b, a) to H_-delta: half the products are enough.
    deltas = {(a, b): tuple(y - x for x, y in zip(taps.shifts[a], taps.shifts[b])) for a in range(t_count) for b in range(a, t_count)}
    half = sorted({d if d > zero else tuple(-x for x in d) for d in deltas.values()} - {zero})
    table = _new_table(half, groups, n, per_tap.device, reuse)

    def add(delta: tuple[int, ...], block: torch.Tensor, place: tuple[int, int]) -> None:
        def into(row: int, part: int) -> torch.Tensor:
            return table[row, :, :, :, part].view(groups, c_in, taps.phases, c_in, taps.phases)[:, :, place[0], :, place[1]]

        if delta == zero:
            into(0, 0).add_(block)
        elif delta > zero:
            into(1 + half.index(delta), 0).add_(block)
            into(1 + len(half) + half.index(delta), 1).add_(block)
        else:
            j = half.index(tuple(-x for x in delta))
            into(1 + j, 0).add_(block)
            into(1 + len(half) + j, 1).sub_(block)

    cols = per_tap.permute(0, 2, 1, 3).reshape(groups, per_tap.shape[2], t_count * c_in)
    for a in range(t_count):
        products = torch.bmm(per_tap[:, a].mT, cols[:, :, a * c_in :]).reshape(groups, c_in, t_count - a, c_in)
        for b in range(a, t_count):
            block, place = products[:, :, b - a, :], (taps.residues[a], taps.residues[b])
            add(deltas[(a, b)], block, place)
            if b != a:
                add(tuple(-x for x in deltas[(a, b)]), block.mT, (place[1], place[0]))
    return table, half


def _half_frequencies(reduced: list[int]) -> torch.Tensor:
    """Integer frequency indices, one of each class {j, -j} (the one first in row-major order)."""
    axes = [torch.arange(reduced[0] // 2 + 1)] + [torch.arange(m) for m in reduced[1:]]
    grid = torch.meshgrid(*axes, indexing="ij")
    freqs = torch.stack([g.reshape(-1) for g in grid], dim=1)
    # Rows 0 and M_0 / 2 of the first axis hold both members of their pairs: keep the earlier one.
    sizes = torch.tensor(reduced, dtype=torch.int64)
    weights = torch.tensor([math.prod(reduced[a + 1 :]) for a in range(len(reduced))], dtype=torch.int64)
    first = (freqs * weights).sum(dim=1) <= (torch.remainder(-freqs, sizes) * weights).sum(dim=1)
    return freqs[first]


def _phase_table(freqs: torch.Tensor, deltas: list[tuple[int, ...]], reduced: list[int]) -> torch.Tensor:
    """[cos | sin] of w.delta per frequency row (sin for the deltas after 0), from exact integer residues."""
    d = torch.tensor(deltas, dtype=torch.int64).reshape(len(deltas), -1)
    angle = torch.zeros(freqs.shape[0], len(deltas), dtype=torch.float64)
    for axis, m in enumerate(reduced):
        angle += torch.remainder(freqs[:, axis : axis + 1] * d[:, axis], m).to(torch.float64) / m
    angle *= 2 * math.pi
    return torch.cat([torch.cos(angle), torch.sin(angle[:, 1:])], dim=1)


def gram_blocks(taps: GramTaps, freqs: torch.Tensor, out: np.ndarray | None = None, *, negate: bool = False) -> torch.Tensor:
    """fl(G(w)) for the given integer frequencies: (F, groups, n, n) complex128 (on a CPU, in ``out`` if given).

    ``negate``: -fl(G(w)) instead, exactly (the phase table is negated), saving the certificate a pass.
    """
    shape = (freqs.shape[0], taps.groups, taps.n, taps.n)
    phases = _phase_table(freqs, taps.deltas, taps.taps.reduced).to(taps.table.device)
    if negate:
        phases.neg_()
    if taps.table.device.type == "cpu":
        # numpy's BLAS takes this short inner dimension about twice as fast as torch's on a CPU.
        out = torch.empty(shape, dtype=torch.complex128).numpy() if out is None else out.reshape(shape)
        np.matmul(phases.numpy(), taps.table.numpy(), out=out.view(np.float64).reshape(shape[0], -1))
        return torch.from_numpy(out)
    out_t = torch.empty(shape, dtype=torch.complex128, device=taps.table.device)
    torch.mm(phases, taps.table, out=torch.view_as_real(out_t).reshape(shape[0], -1))
    return out_t


def gram_error(taps: GramTaps) -> float:
    """A spectral-norm bound on fl(G(w)) - G(w) valid at every frequency (module doc)."""
    mu = _PHASE_ERROR * UNIT_ROUNDOFF + 2 * UNIT_ROUNDOFF
    terms = 2 * len(taps.deltas) - 1
    g_sum = _gamma(terms + 1)
    abs_sum = taps.abs_sum
    fro = float(abs_sum.square().sum(dim=(1, 2)).sqrt().max()) * (1 + _gamma(abs_sum[0].numel() + terms))
    bound = math.sqrt(2) * ((mu + g_sum * (1 + mu)) * fro + (1 + mu) * (1 + g_sum) * taps.product_error)
    return bound * (1 + 1e-12)


def _cholesky_bounds(g: torch.Tensor, tau: torch.Tensor, *, negated: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Try tau I - G per matrix; return success flags and the certified lambda_max(fl G) bound.

    ``g`` is overwritten with tau I - G (then, for blocks LAPACK factors in place, with its factor):
    the blocks are large and read once. ``negated``: ``g`` holds -fl(G) (gram_blocks' ``negate``).
    """
    n = g.shape[-1]
    diag = g.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1)
    shifted = g if negated else g.neg_()
    shifted.diagonal(dim1=-2, dim2=-1).add_(tau.unsqueeze(-1).to(g.dtype))
    trace = shifted.diagonal(dim1=-2, dim2=-1).real.abs().sum(dim=-1) * (1 + _gamma(n + 2))
    factored = _factorizes(shifted)
    fro2 = trace / (1 - _gamma(4 * n + 8))
    bound = tau + UNIT_ROUNDOFF * _SAFETY * (tau + diag) + _gamma(4 * n + 8) * fro2
    ok = factored & torch.isfinite(fro2)
    return ok, bound * (1 + _gamma(4))


def _factorizes(a: torch.Tensor) -> torch.Tensor:
    """Whether a Cholesky factorization of each finite Hermitian matrix in the batch completes.

    On a CPU LAPACK factors the blocks where they lie, one call each (lipcheck.spectral.lapack);
    blocks of at most _BATCHED_MAX_SIDE rows, and every block elsewhere, go to torch's batched
    factorization, which loops over them in one call (a depthwise conv has a million 1x1 blocks).
    A factorization completes when every pivot is finite and positive. A matrix with a non-finite
    entry (its sum is not finite: one pass, where isfinite on complex numbers takes several) fails.
    """
    finite = torch.isfinite(torch.view_as_real(a).sum(dim=(-3, -2, -1)) if a.is_complex() else a.sum(dim=(-2, -1)))
    if a.device.type == "cpu" and a.shape[-1] > _BATCHED_MAX_SIDE and a.is_contiguous() and lapack.available(a.numpy().dtype):
        return finite & torch.from_numpy(lapack.factor_in_place(a.numpy()))
    factor, info = torch.linalg.cholesky_ex(a)
    pivots = factor.diagonal(dim1=-2, dim2=-1).real
    return finite & (info == 0) & torch.isfinite(pivots).all(dim=-1) & (pivots > 0).all(dim=-1)


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A batched matrix product; on a CPU numpy's BLAS computes it (faster than torch's on complex blocks)."""
    if a.device.type != "cpu":
        return torch.bmm(a, b)
    return torch.from_numpy(np.matmul(a.resolve_conj().numpy(), b.resolve_conj().numpy()))


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
    basis = torch.empty(b, steps, n, dtype=g.dtype, device=g.device)  # one buffer, read as a batch of matrices
    basis[:, 0] = q
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    history: list[torch.Tensor] = []
    values = torch.zeros(b, dtype=torch.float64, device=g.device)
    vectors = torch.zeros(b, 1, dtype=torch.float64, device=g.device)
    for j in range(steps):
        z = _bmm(g, basis[:, j].unsqueeze(2)).squeeze(2)
        kept = basis[:, : j + 1]
        for sweep in range(2):
            coeff = _project(kept, z)
            z = z - _bmm(kept.mT, coeff).squeeze(2)
            if sweep == 0:
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
        if j + 1 == steps:
            break
        tiny = beta <= 1e-13 * values.abs().clamp_min(1e-300)
        if bool(tiny.all()):
            break
        if bool(tiny.any()):  # an invariant subspace: go on from a fresh direction, orthogonalized
            fresh = torch.randn(b, n, generator=gen, dtype=torch.float64).to(device=g.device, dtype=g.dtype)
            z = torch.where(tiny.unsqueeze(1), fresh, z)
            for _ in range(2):
                z = z - _bmm(kept.mT, _project(kept, z)).squeeze(2)
        basis[:, j + 1] = z / torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min(1e-300)
        betas.append(torch.where(tiny, torch.zeros_like(beta), beta))
    kept = basis[:, : len(alphas)]
    top = vectors[:, :, -1].to(g.dtype)
    return values, _bmm(top.unsqueeze(1), kept).squeeze(1)


def _project(kept: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """kept^H z per batch entry, (b, j, 1), conjugating only z (a copy of kept's conjugate would cost a pass)."""
    return _bmm(z.conj().unsqueeze(1), kept.mT).conj().mT


@dataclass
class CircularBound:
    """The certified circular bound and its top mode (integer frequency, group, Gram eigenvector)."""

    upper: float
    frequency: tuple[int, ...]
    group: int
    vector: torch.Tensor  # top eigenvector of G at that frequency (on ``side``)
    taps: TapOffsets
    side: str  # "out": K K^H, "in": K^H K
    certificates: int  # Cholesky factorizations behind the bound


def circular_certificate(
    weight: torch.Tensor,
    groups: int,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    sizes: list[int],
    *,
    rel: float,
    device: str = "cpu",
    row_scales: Sequence[torch.Tensor] = (),
) -> tuple[CircularBound, list[float | None]]:
    """Certify sigma_1 of the circular conv on the ring ``sizes`` to within about ``rel`` (module doc),
    and that of the conv with its output channels scaled by each of ``row_scales`` where its Gram
    polynomial comes from this one's (scaled_taps; None elsewhere)."""
    dev = torch.device(device)
    taps = gram_taps(weight.to(dev), groups, stride, dilation, sizes, reuse=dev.type == "cpu")
    found = _certify(taps, groups, rel=rel, dev=dev)
    scaled: list[float | None] = []
    for number, scale in enumerate(row_scales):
        # The table is overwritten by each scaling: every scale but the last takes a copy.
        source = taps if number == len(row_scales) - 1 else replace(taps, table=taps.table.clone())
        fused = scaled_taps(source, weight, scale)
        value = None
        if fused is not None:
            try:
                value = math.ldexp(_certify(fused[0], groups, rel=rel, dev=dev).upper, fused[1])
            except (RuntimeError, ValueError):  # the scaled twins only save their caller work: the raw bound stands
                value = None
        scaled.append(value)
    return found, scaled


def _certify(taps: GramTaps, groups: int, *, rel: float, dev: torch.device) -> CircularBound:
    """The certificate itself: screen, Lanczos on the best frequencies, a factorization at every one."""
    freqs = _half_frequencies(taps.taps.reduced)
    n = taps.n
    e_g = gram_error(taps)
    per_chunk = max(1, _CHUNK_ENTRIES // max(1, groups * n * n))
    chunks = [freqs[i : i + per_chunk] for i in range(0, freqs.shape[0], per_chunk)]
    stored: dict[int, torch.Tensor] = {}
    keep = freqs.shape[0] * groups * n * n <= _STORE_ENTRIES
    space = _scratch("blocks", freqs.shape[0] * groups * n * n, np.dtype(np.complex128)) if keep and dev.type == "cpu" else None
    chunk_entries = per_chunk * groups * n * n

    def blocks(number: int) -> torch.Tensor:
        if number in stored:
            return stored[number]
        out = None if space is None else space[number * chunk_entries : number * chunk_entries + chunks[number].shape[0] * groups * n * n]
        g = gram_blocks(taps, chunks[number], out=out, negate=True).to(dev).reshape(-1, n, n)
        if keep:
            stored[number] = g
        return g

    # The blocks hold -fl(G): the factorizations read tau I - fl(G) with one pass fewer.
    # Screen: a few power steps on every frequency and group, then Lanczos on the best few from there.
    screens = [_power_screen(blocks(i)) for i in range(len(chunks))]
    rho = -torch.cat([found for found, _ in screens])
    picks = torch.topk(rho, min(_CANDIDATES, rho.numel())).indices
    if keep:
        per_block = per_chunk * groups
        cand = torch.stack([stored[int(p) // per_block][int(p) % per_block] for p in picks]).neg_()
    else:
        cand = _blocks_at(taps, freqs, picks, groups, n).to(dev)
    start = torch.cat([x for _, x in screens])[picks.to(dev)]
    values, vectors = hermitian_top(cand, rel=rel / 20, start=start)
    best = int(torch.argmax(values))
    tau = float(values[best]) * (1 + rel)
    top_index, top_vector = int(picks[best]), vectors[best].cpu()
    bound, steps, offset = 0.0, 0, 0
    for chunk_number in range(len(chunks)):
        g = blocks(chunk_number)
        stored.pop(chunk_number, None)
        taus = torch.full((g.shape[0],), tau, dtype=torch.float64, device=dev)
        ok, found = _cholesky_bounds(g, taus, negated=True)
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
    return CircularBound(upper, tuple(int(x) for x in freqs[freq_row]), group, top_vector, taps.taps, taps.side, steps)


_scratch_arrays = threading.local()
_TORCH_DTYPES = {np.dtype(np.float64): torch.float64, np.dtype(np.complex128): torch.complex128}


def _scratch(name: str, entries: int, dtype: np.dtype) -> np.ndarray:
    """An array of ``entries`` that this thread's next certificates reuse (uninitialized).

    Fresh memory for each conv would cost the kernel a pass clearing its pages. The arrays live as
    long as their thread (a pool's worker) or until release_scratch().
    """
    held: dict[str, np.ndarray] = _scratch_arrays.__dict__.setdefault("held", {})
    found = held.get(name)
    if found is None or found.size < entries or found.dtype != dtype:
        held.pop(name, None)  # let the old one go before the new one is made
        # torch's allocation: numpy asks for huge pages, whose first touch can stall on compaction.
        found = held[name] = torch.empty(entries, dtype=_TORCH_DTYPES[dtype]).numpy()
    return found[:entries]


def release_scratch() -> None:
    """Free this thread's scratch arrays (see _scratch)."""
    _scratch_arrays.__dict__.pop("held", None)


def _power_screen(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A cheap ranking of the frequencies by a few power steps: the Rayleigh quotients of the
    next-to-last iterates, and the last iterates (start vectors for Lanczos). A 1x1 block is its
    own eigenvalue (a depthwise conv's blocks). _certify passes -G: G is positive semidefinite, so
    the steps still find its top eigenvector and the quotients come back negated."""
    if g.shape[1] == 1:
        return g.real.reshape(-1).cpu(), torch.ones(g.shape[0], 1, dtype=g.dtype, device=g.device)
    x = torch.ones(g.shape[0], g.shape[1], 1, dtype=g.dtype, device=g.device)
    x[:, ::2] = -1  # not orthogonal to a top vector for any real structure in practice; only a ranking
    x = x + 0.1j * torch.arange(g.shape[1], dtype=torch.float64, device=g.device).reshape(1, -1, 1) / g.shape[1]
    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
    for _ in range(_SCREEN_STEPS):
        y = _bmm(g, x)
        quotient = (x.conj() * y).real.sum(dim=(1, 2))  # the last step's: one pass over g fewer
        x = y / torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_min(1e-300)
    return quotient.cpu(), x.squeeze(2)


def _blocks_at(taps: GramTaps, freqs: torch.Tensor, picks: torch.Tensor, groups: int, n: int) -> torch.Tensor:
    rows = torch.div(picks, groups, rounding_mode="floor")
    blocks = gram_blocks(taps, freqs[rows])  # (P, groups, n, n)
    return blocks[torch.arange(picks.numel(), device=blocks.device), (picks % groups).to(blocks.device)]
