"""A grouped conv's operator norm on a small input, certified from each group's explicit operator.

A grouped conv is block-diagonal over its groups, so its norm is the largest group's. Each group's
operator A_g is written out, tap by tap for a conv and by applying a ConvTranspose to unit inputs:
with zero padding every entry is one weight (one weight times 1), so A_g is exact. The smaller
Gram matrix per group, fl(A_g^T A_g) or fl(A_g A_g^T), is a batch of dot products of length L, so
|fl(G) - G| <= gamma_L |A_g|^T |A_g| entrywise (plus at most L 2^-1074 per entry from products that
underflow) and its spectral norm is at most gamma_L ||A_g||_F^2 plus side L 2^-1074: one number e_G
for every group (Weyl). A size-free bound per group (group_bounds) ranks the groups; the top
candidates' eigenvalues (float64 eigh) give tau; one Cholesky factorization of tau I - fl(G) per
group whose size-free bound exceeds sqrt(tau) certifies lambda_max(fl G) with its own rounding
terms (conv_fourier's certificate); a group whose factorization fails is refined from its own
eigenvalue and factored again, and the Frobenius norm is the last resort. The circular
embedding's bound is several percent high on the small maps where depthwise convs sit in real
networks (a 512-channel 5x5 depthwise conv at 7x7: 17%); this one is exact up to the tolerance.

Underflow. The weight arrives scaled to a largest entry of 1, but on a tiny map some taps never
read the input, and the ones that do may be tiny: their products then underflow, and neither the
size-free bounds nor the factorization's rounding analysis hold. Below a top eigenvalue of
_TAU_FLOOR the certificate declines (None) and the caller keeps the circular bound; above it, a
group whose entries underflow has a norm under 2^-500, far below sqrt(tau), so the maximum is
unaffected.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lipcheck.spectral.conv_fourier import _cholesky_bounds, _gamma

# Sides of each group's Gram matrix, and work (groups x side^3), up to which the explicit path is taken.
MAX_SIDE = 256
_MAX_WORK = 2.0e9
# Entries of the unit inputs (and of the outputs) the operators are read from.
_MAX_ENTRIES = 1 << 24
_CANDIDATES = 8
# The top group's eigenvalue (weights scaled to a largest entry of 1) below which the certificate declines.
_TAU_FLOOR = 2.0**-600
_RETRIES = 3


@dataclass(frozen=True)
class GroupBound:
    """The certified upper end, an input whose ratio gives the lower end, and the factorizations made."""

    upper: float
    start: torch.Tensor  # float64, (1, input channels, *spatial): the top group's top input
    certificates: int


def fits(groups: int, in_per_group: int, out_per_group: int, channels_in: int, channels_out: int, inputs: int, outputs: int) -> bool:
    """Whether the explicit per-group path is small enough: the Gram side, the work and the memory.

    ``in_per_group`` and ``out_per_group``: a group's input and output sizes (channels x positions);
    ``inputs`` and ``outputs``: the positions of one input and one output channel.
    """
    side = min(in_per_group, out_per_group)
    basis = in_per_group * max(channels_in * inputs, channels_out * outputs)
    return groups > 1 and 0 < side <= MAX_SIDE and groups * float(side) ** 3 <= _MAX_WORK and basis <= _MAX_ENTRIES


def group_operators(apply: Callable[[torch.Tensor], torch.Tensor], channels: int, groups: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """Every group's operator (groups, outputs per group, inputs per group) in float64, from the conv ``apply``.

    Unit input k = (j, position) puts 1 at input channel j of every group at that position; the
    output's channels of group g are then column k of A_g. Rows and columns are in (channel,
    position) order, as the conv's own tensors.
    """
    per = channels // groups
    positions = math.prod(spatial)
    count = per * positions
    unit = torch.arange(count)
    basis = torch.zeros(count, channels, positions, dtype=torch.float64)
    basis[unit.unsqueeze(1), (torch.arange(groups) * per).unsqueeze(0) + (unit // positions).unsqueeze(1), (unit % positions).unsqueeze(1)] = 1.0
    out = apply(basis.reshape(count, channels, *spatial)).to(torch.float64)
    return out.reshape(count, groups, -1).permute(1, 2, 0)


def placed_operators(
    weight: torch.Tensor, stride: tuple[int, ...], dilation: tuple[int, ...], begin: list[int], spatial: tuple[int, ...], outs: tuple[int, ...], groups: int
) -> torch.Tensor:
    """A zero-padded conv's group operators written tap by tap, as group_operators gives them.

    Output position o reads input o*s + t*d - b per axis; a pair (o, i) is read by at most one tap
    (t is fixed by o, i and d), so each entry is one weight.
    """
    w = weight.to(torch.float64)
    m, c = w.shape[0] // groups, w.shape[1]
    p_size, q_size = math.prod(outs), math.prod(spatial)
    ops = torch.zeros(groups, m, p_size, c, q_size, dtype=torch.float64)
    out_index = torch.arange(p_size).reshape(outs)
    for tap in itertools.product(*(range(k) for k in w.shape[2:])):
        reads = [torch.arange(o) * s + t * d - b for o, s, t, d, b in zip(outs, stride, tap, dilation, begin)]
        inside = [(r >= 0) & (r < n) for r, n in zip(reads, spatial)]
        rows = out_index[torch.meshgrid(*(torch.nonzero(ok).flatten() for ok in inside), indexing="ij")].reshape(-1)
        if rows.numel() == 0:
            continue
        cols = torch.zeros(rows.shape, dtype=torch.int64)
        for axis, grid in enumerate(torch.meshgrid(*(r[ok] for r, ok in zip(reads, inside)), indexing="ij")):
            cols = cols * spatial[axis] + grid.reshape(-1)
        block = w[(slice(None), slice(None)) + tap].reshape(groups, m, c)
        ops[:, :, rows, :, cols] = block.unsqueeze(0).expand(rows.numel(), groups, m, c)
    return ops.reshape(groups, m * p_size, c * q_size)


def group_bounds(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A size-free upper bound on each group's operator norm: the sum over taps of ||W_t||_F, rounded up.

    The zero-padded (or transposed) conv of a group is sum_t S_t (x) W_t with selections S_t of norm
    at most 1. Each Frobenius norm and the sum are within gamma of the exact values (float64), but
    for squares that underflow: certify's floor on tau covers those (module doc).
    """
    w = weight.to(torch.float64)
    taps = math.prod(w.shape[2:])
    per_tap = w.reshape(groups, w.shape[0] // groups, w.shape[1], taps)
    found = per_tap.square().sum(dim=(1, 2)).sqrt().sum(dim=1)
    return found * (1 + _gamma(per_tap.shape[1] * per_tap.shape[2] + taps + 4))


def certify(build: Callable[[torch.Tensor], torch.Tensor], bounds: torch.Tensor, *, rel: float) -> GroupBound | None:
    """Certify the largest sigma_1 over the groups' operators to within about ``rel`` (module doc).

    ``build(indices)`` returns those groups' operators (count, rows, cols) in float64; ``bounds``
    is group_bounds'. Groups whose bound is already below the top candidates' norm are certified
    by it and never built: in trained networks most channels of a depthwise conv are. None where
    the top eigenvalue is under _TAU_FLOOR or not finite (module doc, underflow).
    """
    groups = bounds.numel()
    order = torch.argsort(bounds, descending=True)
    # The groups with the largest bounds are solved exactly for tau and the top vector.
    picks = order[: min(_CANDIDATES, groups)]
    cand = build(picks)
    _, rows, cols = cand.shape
    side_in = cols <= rows
    length = rows if side_in else cols

    def gram(a: torch.Tensor) -> torch.Tensor:
        return a.mT @ a if side_in else a @ a.mT

    values, vectors = torch.linalg.eigh(gram(cand))
    best = int(torch.argmax(values[:, -1]))
    top_value = float(values[best, -1])
    if not top_value >= _TAU_FLOOR or not math.isfinite(top_value):
        return None
    tau = top_value * (1 + rel)
    top_group, top_vector, top_ops = int(picks[best]), vectors[best, :, -1], cand[best]
    # Every group whose size-free bound is at most sqrt(tau) is done; the others get a factorization.
    above = bounds[order] ** 2 > tau * (1 - 1e-12)
    needed, rest = order[above], bounds[order[~above]]
    upper = float(rest.max()) if rest.numel() else 0.0
    steps = 0
    if needed.numel():
        ops = build(needed)
        fro2 = float(ops.square().sum(dim=(1, 2)).max()) * (1 + _gamma(rows * cols + 2))
        e_g = (_gamma(length + 2) * fro2 + min(rows, cols) * length * 2.0**-1074) * (1 + 1e-12)
        ok, found = _cholesky_bounds(gram(ops), torch.full((needed.numel(),), tau, dtype=torch.float64))
        steps = needed.numel()
        failed = torch.nonzero(~ok).flatten()
        for _ in range(_RETRIES):
            if failed.numel() == 0:
                break
            retry = gram(ops[failed])
            sub_values, sub_vectors = torch.linalg.eigh(retry)
            sub_tau = torch.clamp_min(sub_values[:, -1] * (1 + rel), tau * (1 + rel))
            sub_ok, sub_found = _cholesky_bounds(retry, sub_tau)
            steps += failed.numel()
            found[failed] = sub_found
            ok[failed] = sub_ok
            worst = int(torch.argmax(sub_values[:, -1]))
            if float(sub_values[worst, -1]) > top_value:
                top_value = float(sub_values[worst, -1])
                top_group, top_vector, top_ops = int(needed[failed[worst]]), sub_vectors[worst, :, -1], ops[failed[worst]]
            failed = failed[~sub_ok]
        if failed.numel():
            found[failed] = torch.linalg.matrix_norm(gram(ops[failed]), ord="fro") * (1 + _gamma(min(rows, cols) ** 2 + 2))
        upper = max(upper, math.sqrt((float(found.max()) + e_g) * (1 + _gamma(4))) * (1 + _gamma(2)))
    start = top_vector if side_in else top_ops.mT @ top_vector
    return GroupBound(upper, _embed(start, top_group, groups, cols), steps)


def _embed(vector: torch.Tensor, group: int, groups: int, per_group: int) -> torch.Tensor:
    """One group's input vector placed among all the conv's input channels (zeros elsewhere), flat."""
    x = torch.zeros(groups, per_group, dtype=torch.float64)
    x[group] = vector
    return x
