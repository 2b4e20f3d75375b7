"""A certified interval for the largest singular value of dense matrices, several at a time.

Lower end: Lanczos (power iteration accelerated by a Krylov space) on the Gram matrix G = AᵀA of
the smaller side, in float32 when the tolerance allows; the value reported is the power-iteration estimate
ũᵀWṽ = ‖Wṽ‖ for the Lanczos vector ṽ, recomputed in float64 from the Gram matrix and rounded down.

Upper end: a Cholesky factorization of τI − Ĝ in float64. If it completes, every eigenvalue of
the computed Gram matrix is at most τ up to the factorization's rounding, so
σ₁² ≤ τ + e with e the three rounding terms below (Higham, Accuracy and Stability of Numerical
Algorithms, 2nd ed., eq. 3.13 for the products and Theorem 10.3 for Cholesky; both hold for any
summation order, so for blocked BLAS too). One factorization costs q³/3 flops, a sixth of one
Gram-iteration step, which is what makes the certificate cheaper than an SVD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from lipcheck.spectral import lapack

UNIT_ROUNDOFF = 2.0**-53
# Extra factor on every rounding term: the textbook bounds with room for fused multiply-adds and
# the handful of operations the error terms themselves take.
_SAFETY = 2.0
# Chunk of rows converted to float64 at once, so a layer never exists whole in float64.
_CHUNK_ELEMENTS = 1 << 22
# The Gram matrix is computed as this many block rows of its lower triangle.
_GRAM_BLOCKS = 4
# Float32 matrix-vector products are accurate to ~1e-7 relative: fine below this tolerance.
_FLOAT32_FROM_TOL = 1e-6
# Lanczos stops once its error estimate is below this share of the tolerance (the Cholesky
# certificate then decides); after a failed certificate it takes _CHECK_EVERY more steps at least.
_CHECK_EVERY = 4
_STOP_FRACTION = 0.5
# The widest Krylov basis kept before an explicit restart from the current Ritz vector.
_MAX_BASIS = 320
# Every this many steps the new Lanczos vector is orthogonalized a second time.
_REORTHOGONALIZE_EVERY = 4
_FLOAT32_INVARIANT = 1e-5
# Offset of the seed of the stream that fresh Lanczos directions are drawn from, and draws per direction.
_FRESH_STREAM = 0x5EED
_FRESH_DRAWS = 8
_CANCELLATION = math.sqrt(2.0)
# Gram matrices from this size on are factored in place by LAPACK on a CPU (loading it costs a
# quarter second once, which smaller factorizations would not win back).
IN_PLACE_FROM = 1024
# Row scales certify_row_scaled applies to a Gram matrix: products of two stay normal float64 numbers.
_SCALE_RANGE = 2.0**200
# ... and the scaled Gram matrix's largest diagonal entry (its scales brought to at most 1 by
# unit_scales) at least this: inside float32's range, and far above the absolute size of underflow.
SCALED_FLOOR = 2.0**-100


@dataclass(frozen=True)
class SpectralEstimate:
    """A certified interval [sigma, upper] for the largest singular value of a matrix."""

    sigma: float
    upper: float
    iterations: int  # Lanczos matrix-vector products
    certificate_steps: int  # Cholesky factorizations tried
    converged: bool


def _gamma(k: int) -> float:
    """Higham's gamma_k = k u / (1 - k u): the relative error of a k-term float64 dot product."""
    ku = k * UNIT_ROUNDOFF
    return _SAFETY * ku / (1.0 - ku)


def peak_abs(w: torch.Tensor) -> float:
    """Return max |w_ij| (nan if any entry is nan; 0 for an empty tensor) in one fast pass."""
    if w.numel() == 0:
        return 0.0
    low, high = (float(t) for t in torch.aminmax(w))  # 5x faster than an inf-norm on a CPU
    return math.nan if math.isnan(low) or math.isnan(high) else max(-low, high)


class _Side:
    """One matrix oriented so its Gram matrix is on the smaller side, scaled by a power of two."""

    def __init__(self, w: torch.Tensor, device: torch.device, peak: float | None = None) -> None:
        wide = w.shape[0] <= w.shape[1]
        self.a = w.mT if wide else w  # (p, q) with q <= p; G = aᵀa is q x q
        self.wide = wide
        self.device = device
        if peak is None:
            peak = peak_abs(w)
        # Scaling by 2^-k is exact: it keeps the Gram matrix inside float32's range (for the
        # iteration) and float64's (for the certificate). Weights of ordinary size are left alone.
        exponent = math.frexp(peak)[1] if peak > 0.0 and math.isfinite(peak) else 0
        # Subnormal weights (exponent below -1022) take 2^1000: the largest power that stays finite.
        self.scale = 2.0 ** -max(exponent, -1000) if abs(exponent) > 32 else 1.0
        self.p, self.q = self.a.shape

    def chunks(self):  # type: ignore[no-untyped-def]
        """Row blocks of the scaled matrix in float64 on the device."""
        step = max(1, _CHUNK_ELEMENTS // max(1, self.q))
        for start in range(0, self.p, step):
            block = self.a[start : start + step].to(device=self.device, dtype=torch.float64)
            yield block if self.scale == 1.0 else block * self.scale

    def gram(self) -> tuple[torch.Tensor, float]:
        """Return Ĝ = fl(aᵀa) and an upper bound on ||a||_F² (both scaled).

        Only the lower triangle's blocks are multiplied (a quarter fewer flops than one GEMM with
        four block columns), then mirrored. ||a||_F² = trace(aᵀa), and each diagonal entry is a
        sum of squares, so its computed value is within a factor (1 + gamma_p) of the truth.
        """
        q = self.q
        g = torch.empty(q, q, dtype=torch.float64, device=self.device)
        edges = [q * i // _GRAM_BLOCKS for i in range(_GRAM_BLOCKS + 1)] if q >= 4 * _GRAM_BLOCKS else [0, q]
        for number, block in enumerate(self.chunks()):
            for lo, hi in zip(edges, edges[1:]):
                rows = g[lo:hi, :hi]
                if number == 0:
                    torch.mm(block[:, lo:hi].mT, block[:, :hi], out=rows)
                else:
                    rows.addmm_(block[:, lo:hi].mT, block[:, :hi])
        for lo, hi in zip(edges, edges[1:]):
            g[:lo, lo:hi] = g[lo:hi, :lo].mT
        fro2 = float(g.diagonal().sum()) * (1.0 + _gamma(self.p + q + 1))
        return g, fro2

    def transpose_apply(self, u: torch.Tensor) -> torch.Tensor:
        """Return aᵀu (scaled) for a float64 vector u of length p."""
        out = torch.zeros(self.q, dtype=torch.float64, device=self.device)
        start = 0
        for block in self.chunks():
            out += block.mT @ u[start : start + block.shape[0]]
            start += block.shape[0]
        return out


def _rayleigh_lower(g: torch.Tensor, v: torch.Tensor, fro2: float, e1: float) -> float:
    """Return a rounded-down sqrt(vᵀ(aᵀa)v / vᵀv) from the computed Gram matrix Ĝ (scaled).

    vᵀ(aᵀa)v >= vᵀĜv - e1 |v|², with e1 >= ||Ĝ - aᵀa||₂; computing vᵀĜv in float64 errs by at most
    gamma_2q |v|ᵀ|Ĝ||v| <= gamma_2q ||Ĝ||_F |v|² <= gamma_2q ||a||_F² (1 + gamma_p) |v|².
    """
    q = g.shape[0]
    v = v.to(device=g.device, dtype=torch.float64)
    vv = float(v @ v) * (1.0 + _gamma(q + 1))
    if vv == 0.0 or not math.isfinite(vv):
        return 0.0
    quad = float(v @ (g @ v))
    slack = (e1 + _gamma(2 * q + 2) * fro2 * 1.01) * vv
    return math.sqrt(max(0.0, quad - slack) / vv)


class _Lanczos:
    """Lanczos with full reorthogonalization on a batch of Gram matrices, resumable."""

    def __init__(self, g: torch.Tensor, starts: torch.Tensor, low_precision: bool, seed: int) -> None:
        self.g = g.to(torch.float32) if low_precision else g
        self.b, self.q, _ = g.shape
        # beta below this is an invariant subspace (the largest diagonal entry is at most lambda_1).
        # Products in float32 leave rounding noise of about 1e-7 lambda_1 in z; continuing from that
        # noise would leave T without the couplings that full reorthogonalization removes, so such
        # a beta also starts a fresh block.
        self.tiny_at = (_FLOAT32_INVARIANT if low_precision else 1e-12) * g.diagonal(dim1=1, dim2=2).amax(dim=1)
        # Fresh directions come from a stream of their own: the seed's first draws are the start
        # vector itself (lipcheck.spectral.dense._starts), which the basis already holds.
        self.generator = torch.Generator().manual_seed(seed + _FRESH_STREAM)
        self.iterations = 0
        self._restart(starts)

    def _restart(self, starts: torch.Tensor) -> None:
        width = min(self.q, _MAX_BASIS) + 1
        self.basis = torch.zeros(self.b, width, self.q, dtype=torch.float64, device=self.g.device)
        self.alpha = torch.zeros(self.b, width, dtype=torch.float64, device=self.g.device)
        self.beta = torch.zeros(self.b, width, dtype=torch.float64, device=self.g.device)
        self.basis[:, 0] = starts / starts.norm(dim=1, keepdim=True)
        self.j = 0

    def _orthogonalize(self, z: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Remove the float64 basis' components from z (full reorthogonalization, one pass)."""
        return torch.baddbmm(z, kept.mT, torch.bmm(kept, z), alpha=-1.0)

    def _fresh(self, kept: torch.Tensor) -> torch.Tensor:
        """A random unit vector orthogonal to the basis, per matrix (b, q).

        A draw that lies almost inside the basis' span would leave only rounding noise, whose
        normalization is not orthogonal to anything: such a draw is replaced by another.
        """
        fresh = torch.zeros(self.b, self.q, dtype=torch.float64, device=self.g.device)
        pending = torch.ones(self.b, dtype=torch.bool, device=self.g.device)
        for _ in range(_FRESH_DRAWS):
            drawn = torch.randn(self.b, self.q, 1, generator=self.generator, dtype=torch.float64).to(self.g.device)
            left = self._orthogonalize(self._orthogonalize(drawn, kept), kept).squeeze(2)
            kept_enough = torch.linalg.vector_norm(left, dim=1) > 1e-6 * torch.linalg.vector_norm(drawn.squeeze(2), dim=1)
            take = pending & kept_enough
            fresh = torch.where(take.unsqueeze(1), left, fresh)
            pending = pending & ~kept_enough
            if not bool(pending.any()):
                break
        return fresh / fresh.norm(dim=1, keepdim=True).clamp_min(1e-300)

    def step(self) -> None:
        """Extend every Krylov space by one vector."""
        if self.j + 1 >= self.basis.shape[1]:
            self._restart(self.ritz()[1])
        j = self.j
        kept = self.basis[:, : j + 1]
        z = torch.bmm(self.g, kept[:, j:].mT.to(self.g.dtype)).to(torch.float64)
        # Full reorthogonalization; the coefficient on the newest vector is alpha_j = q_jᵀ G q_j.
        coefficients = torch.bmm(kept, z)
        self.alpha[:, j] = coefficients[:, j, 0]
        before = torch.linalg.vector_norm(z, dim=(1, 2))
        z = torch.baddbmm(z, kept.mT, coefficients, alpha=-1.0).squeeze(2)
        beta = torch.linalg.vector_norm(z, dim=1)
        # One pass loses about u * |z before| / |z after| of orthogonality, and the loss compounds
        # over later steps: where over 1 - 1/sqrt(2) of z cancelled (the criterion of Daniel, Gragg,
        # Kaufman and Stewart), a second pass restores it at once.
        cancelled = bool((beta * _CANCELLATION < before).any())
        tiny = beta <= self.tiny_at
        norm = beta
        if bool(tiny.any()):
            # An invariant subspace: continue with a fresh direction (beta 0 splits T in blocks).
            fresh = self._fresh(kept)
            z = torch.where(tiny.unsqueeze(1), fresh, z)
            beta = torch.where(tiny, torch.zeros_like(beta), beta)
            norm = torch.where(tiny, torch.ones_like(beta), beta)
        elif cancelled or j % _REORTHOGONALIZE_EVERY == _REORTHOGONALIZE_EVERY - 1:
            # A second pass now and then ("twice is enough") keeps the basis orthogonal to rounding.
            z = self._orthogonalize(z.unsqueeze(2), kept).squeeze(2)
            norm = beta = torch.linalg.vector_norm(z, dim=1)
        self.beta[:, j] = beta
        torch.div(z, norm.unsqueeze(1), out=self.basis[:, j + 1])
        self.j = j + 1
        self.iterations += 1

    def _tridiagonal_eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.j
        t = torch.diag_embed(self.alpha[:, :j])
        if j > 1:
            off = self.beta[:, : j - 1]
            t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        return torch.linalg.eigh(t.cpu())

    def error_estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The top Ritz value and an estimate of its distance to the top eigenvalue, per matrix.

        The residual of the Ritz pair is beta_j |y_j|; near convergence the eigenvalue error is
        about residual² / (gap to the next Ritz value) (Parlett, The Symmetric Eigenvalue Problem,
        ch. 11). Only a stopping rule: the certificate decides.
        """
        if self.j == 0:
            zero = torch.zeros(self.b, dtype=torch.float64)
            return zero, torch.full((self.b,), math.inf, dtype=torch.float64)
        values, vectors = self._tridiagonal_eigh()
        theta = values[:, -1]
        residual = self.beta[:, self.j - 1].cpu().abs() * vectors[:, -1, -1].abs()
        if self.j > 1:
            gap = (theta - values[:, -2]).clamp_min(1e-300)
            return theta, torch.minimum(residual, residual.square() / gap)
        return theta, residual

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The largest Ritz value and its Ritz vector, per matrix."""
        j = self.j
        if j == 0:
            return torch.zeros(self.b, dtype=torch.float64), self.basis[:, 0]
        values, vectors = self._tridiagonal_eigh()
        top = vectors[:, :, -1].to(self.g.device)
        return values[:, -1], torch.bmm(top.unsqueeze(1), self.basis[:, :j]).squeeze(1)

    @property
    def exhausted(self) -> bool:
        """The whole space is spanned: the Ritz value is the top eigenvalue, up to rounding."""
        return self.j >= self.q and self.iterations >= self.q


def _cholesky_certifies(g: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Try to factor tau_i I - G_i; return success flags and the rounding term e3 per matrix.

    Large matrices on a CPU are factored in place by LAPACK (lipcheck.spectral.lapack), about twice
    as fast as torch's factorization, which copies each matrix. ||R||_F² then comes from the trace
    of the matrix A factored: R^T R = A + ΔA with |ΔA| <= gamma_{q+1} |R^T||R|, whose trace is
    gamma_{q+1} ||R||_F², so ||R||_F² <= tr(A) / (1 - gamma_{q+1}).
    """
    q = g.shape[1]
    shifted = -g
    shifted.diagonal(dim1=1, dim2=2).add_(tau.to(g.device).unsqueeze(1))
    if shifted.device.type == "cpu" and q >= IN_PLACE_FROM and shifted.is_contiguous() and lapack.available(np.dtype(np.float64)):
        trace = shifted.diagonal(dim1=1, dim2=2).abs().sum(dim=1) * (1.0 + _gamma(q + 2))
        factored = torch.from_numpy(lapack.factor_in_place(shifted.numpy()))
        fro2 = trace / (1.0 - _gamma(q + 1))
        ok = factored & torch.isfinite(fro2)
    else:
        factor, info = torch.linalg.cholesky_ex(shifted)
        fro2 = torch.linalg.vector_norm(factor, dim=(1, 2)).square()
        ok = (info == 0) & torch.isfinite(fro2)
    e3 = fro2 * (1.0 + _gamma(q**2)) * _gamma(q + 1)
    return ok.cpu(), e3.cpu()


def certify_batch(
    mats: Sequence[torch.Tensor],
    *,
    tol: float,
    max_iter: int,
    seed: int,
    u0s: Sequence[torch.Tensor | None] | None = None,
    device: str | torch.device = "cpu",
    peaks: Sequence[float] | None = None,
) -> list[SpectralEstimate]:
    """Bracket sigma_1 of several same-shaped 2-D matrices at once (one batched iteration).

    Converged means the interval's relative width is at most ``tol``. ``u0s`` are optional warm
    starts (left singular vector guesses, e.g. a spectral-norm checkpoint's stored u); ``peaks``
    the matrices' largest absolute entries where the caller already has them.
    """
    if not mats:
        return []
    dev = torch.device(device)
    sides = [_Side(w.detach(), dev, peaks[i] if peaks else None) for i, w in enumerate(mats)]
    results: list[SpectralEstimate | None] = [None] * len(mats)
    live = []
    grams = []
    fro2s = []
    for index, side in enumerate(sides):
        g, fro2 = side.gram()
        if fro2 == 0.0:
            results[index] = SpectralEstimate(0.0, 0.0, 0, 0, True)
            continue
        live.append(index)
        grams.append(g)
        fro2s.append(fro2)
    if live:
        found = _certify_grams(
            [sides[i] for i in live],
            torch.stack(grams) if len(grams) > 1 else grams[0].unsqueeze(0),
            fro2s,
            [sides[i].p for i in live],
            tol=tol,
            max_iter=max_iter,
            seed=seed,
            u0s=[(u0s[i] if u0s else None) for i in live],
        )
        for index, estimate in zip(live, found):
            results[index] = estimate
    return [r for r in results if r is not None]


def certify(
    w: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    seed: int,
    u0: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> SpectralEstimate:
    """Bracket sigma_1 of one 2-D matrix (see certify_batch)."""
    return certify_batch([w], tol=tol, max_iter=max_iter, seed=seed, u0s=[u0], device=device)[0]


def certify_row_scaled(
    w: torch.Tensor, row_scales: Sequence[torch.Tensor], *, tol: float, max_iter: int, seed: int, device: str | torch.device = "cpu"
) -> tuple[SpectralEstimate, list[SpectralEstimate | None]]:
    """Bracket sigma_1 of ``w`` and of diag(s) ``w`` for each s in ``row_scales``, from one Gram product.

    Where ``w`` has no more rows than columns its Gram matrix is Ĝ = fl(w wᵀ). Each s is first
    brought to a largest entry in (1/2, 1] by a power of two 2^k (exact; sigma_1 scales by 2^k), so
    the scaled entries are no larger than Ĝ's. diag(s) w then has s_i s_j Ĝ_ij, computed as
    fl(fl(s_i s_j) Ĝ_ij): two more roundings per entry, so
    |Ĝ_s − D wwᵀ D| ≤ (γ_p + γ_2 + γ_p γ_2) |Dwᵀ|ᵀ|Dwᵀ| ≤ γ_{p+2} |Dwᵀ|ᵀ|Dwᵀ| entrywise, whose
    spectral norm is at most ‖D w‖_F² (bounded by the trace of Ĝ_s with its own rounding). Products
    that underflow err by an absolute 2^-1075 each, in Ĝ's own dot products (p per entry, times
    |s_i s_j| ≤ 1 here) and in the scaling: q (p + 1) 2^-1075 in spectral norm, which e1 takes as it
    is. A scaled matrix is None where its Gram matrix falls far below Ĝ's range (largest diagonal
    entry under SCALED_FLOOR: float32's Lanczos would see zeros, and underflow would be no longer
    negligible), a scale is not finite or lies outside _SCALE_RANGE, or ``w`` is taller than wide
    (its Gram matrix is then wᵀw, which a row scaling does not carry).
    """
    dev = torch.device(device)
    side = _Side(w.detach(), dev)
    scaled: list[SpectralEstimate | None] = [None] * len(row_scales)
    if not side.wide or not row_scales:
        return certify(w, tol=tol, max_iter=max_iter, seed=seed, device=device), scaled
    g, fro2 = side.gram()
    if fro2 == 0.0 or not math.isfinite(fro2):
        return certify(w, tol=tol, max_iter=max_iter, seed=seed, device=device), scaled
    grams, fro2s, exponents, which = [], [], [], []
    underflow = side.q * (side.p + 1) * 2.0**-1073
    for k, s in enumerate(row_scales):
        unit = unit_scales(s.detach().to(device=dev, dtype=torch.float64).reshape(-1))
        if unit is None or unit[0].numel() != side.q:
            continue
        d, exponent = unit
        gs = torch.outer(d, d).mul_(g)
        if not float(gs.diagonal().max()) >= SCALED_FLOOR:
            continue  # scaled to nearly nothing: the caller certifies it on its own
        grams.append(gs)
        fro2s.append(float(gs.diagonal().sum()) * (1.0 + _gamma(side.p + side.q + 3)) + underflow)
        exponents.append(exponent)
        which.append(k)
    # One batch each: a batch steps until its slowest member settles, and the two need different counts.
    raw = _certify_grams([side], g.unsqueeze(0), [fro2], [side.p], tol=tol, max_iter=max_iter, seed=seed, u0s=[None])[0]
    if which:
        try:
            found = _certify_grams(
                [side] * len(which),
                torch.stack(grams),
                fro2s,
                [side.p + 2] * len(which),
                tol=tol,
                max_iter=max_iter,
                seed=seed,
                u0s=[None] * len(which),
                absolute=underflow,
            )
        except (RuntimeError, ValueError):  # the scaled twins only save their caller work: never lose the raw interval
            found = []
        for k, exponent, estimate in zip(which, exponents, found):
            scaled[k] = replace(estimate, sigma=math.ldexp(estimate.sigma, exponent), upper=math.ldexp(estimate.upper, exponent))
    return raw, scaled


def unit_scales(d: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``d`` times 2^-k with its largest magnitude in (1/2, 1], and k; None where ``d`` fails
    safe_scales or is all zero. Exact: every nonzero scale stays a normal number."""
    if not safe_scales(d) or d.numel() == 0:
        return None
    peak = float(d.abs().max())
    if peak == 0.0:
        return None
    exponent = math.frexp(peak)[1]
    return d * 2.0**-exponent, exponent


def safe_scales(d: torch.Tensor) -> bool:
    """Whether every scale is finite and, unless zero, inside [1/_SCALE_RANGE, _SCALE_RANGE]."""
    magnitude = d.abs()
    nonzero = magnitude[magnitude > 0]
    return bool(torch.isfinite(d).all()) and (nonzero.numel() == 0 or (float(nonzero.min()) >= 1 / _SCALE_RANGE and float(nonzero.max()) <= _SCALE_RANGE))


def _starts(sides: list[_Side], u0s: Sequence[torch.Tensor | None], seed: int, dev: torch.device) -> torch.Tensor:
    """Start vectors on the Gram side: the warm start where given, else a seeded random vector."""
    starts = []
    for side, u0 in zip(sides, u0s):
        start = None
        rows = side.q if side.wide else side.p  # W's left singular vectors have W's row count
        if u0 is not None and u0.numel() == rows:
            u = u0.detach().reshape(-1).to(device=dev, dtype=torch.float64)
            start = u if side.wide else side.transpose_apply(u)
            if not bool(torch.isfinite(start).all()) or float(start.norm()) == 0.0:
                start = None
        if start is None:
            start = torch.randn(side.q, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dev)
        starts.append(start)
    return torch.stack(starts)


def _check_now(iterations: int) -> bool:
    """Look at the Ritz values after 1, 2, 4, 6, 8 steps and every fourth step after that."""
    return iterations <= 2 or iterations % (2 if iterations <= 8 else 4) == 0


def _certify_grams(
    sides: list[_Side],
    g: torch.Tensor,
    fro2s: list[float],
    terms: list[int],
    *,
    tol: float,
    max_iter: int,
    seed: int,
    u0s: Sequence[torch.Tensor | None],
    absolute: float = 0.0,
) -> list[SpectralEstimate]:
    b, q, _ = g.shape
    dev = g.device
    lanczos = _Lanczos(g, _starts(sides, u0s, seed, dev), low_precision=tol >= _FLOAT32_FROM_TOL and q > 1, seed=seed)
    diag_max = [float(g[i].diagonal().max()) for i in range(b)]
    fro2 = torch.tensor(fro2s, dtype=torch.float64)
    # ||Ĝ - aᵀa||₂ <= gamma_terms ||a||_F² + absolute: terms is the dot products' length (plus any
    # roundings after), absolute any error that does not scale with the entries (underflow).
    e1 = fro2 * torch.tensor([_gamma(t) for t in terms], dtype=torch.float64) + absolute
    # Eigenvalues of G are at least trace/q on top: a floor for tau when the iteration is poor.
    floor = torch.tensor([float(g[i].diagonal().sum()) / q for i in range(b)], dtype=torch.float64) * (1 - 1e-9)
    lower = torch.zeros(b, dtype=torch.float64)
    upper = torch.full((b,), math.inf, dtype=torch.float64)
    steps = [0] * b
    pending = list(range(b))
    certificate_for = torch.zeros(b, dtype=torch.float64)
    while pending:
        # Iterate until the Ritz values of the pending matrices settle (or the budget ends).
        while lanczos.iterations < max_iter and not lanczos.exhausted:
            lanczos.step()
            if not _check_now(lanczos.iterations) and not lanczos.exhausted:
                continue
            theta, error = lanczos.error_estimate()
            if bool((error[pending] <= _STOP_FRACTION * tol * theta[pending].abs()).all()):
                break
        _, vectors = lanczos.ritz()
        for i in pending:
            lower[i] = max(float(lower[i]), _rayleigh_lower(g[i], vectors[i], fro2s[i], float(e1[i])))
        budget_left = lanczos.iterations < max_iter and not lanczos.exhausted
        # tau: the square of the upper end wanted, lower * (1 + tol/2), with the rounding terms.
        wanted = torch.maximum(lower.square() * (1.0 + tol), floor)
        if not budget_left:
            wanted = torch.maximum(wanted, certificate_for)  # escalate after a failure at this size
        tau = wanted[pending]
        ok, e3 = _cholesky_certifies(g[pending], tau)
        still = []
        for k, i in enumerate(pending):
            steps[i] += 1
            if bool(ok[k]):
                e2 = UNIT_ROUNDOFF * _SAFETY * (float(tau[k]) + diag_max[i])
                bound = math.sqrt((float(tau[k]) + float(e1[i]) + e2 + float(e3[k])) * (1 + _gamma(4)))
                upper[i] = min(float(upper[i]), bound)
            elif budget_left:
                still.append(i)
            else:
                # No more iterations: widen the certificate (tenfold, then twofold) until a
                # factorization succeeds, ending at the Frobenius norm, which always bounds sigma_1.
                base = max(float(lower[i]) ** 2, float(floor[i]))
                rel = float(tau[k]) / base - 1.0 if base > 0.0 else math.inf
                nxt = base * (1.0 + max(rel * (10.0 if rel < 0.1 else 2.0), tol))
                if not nxt < fro2s[i]:  # NaN included: nothing left to widen from
                    upper[i] = math.sqrt(fro2s[i] * (1 + _gamma(4)))
                else:
                    certificate_for[i] = nxt
                    still.append(i)
        pending = still
        if pending and budget_left:
            for _ in range(_CHECK_EVERY):  # the factorization failed: the Ritz value is not there yet
                if lanczos.iterations < max_iter and not lanczos.exhausted:
                    lanczos.step()
    out = []
    for i, side in enumerate(sides):
        lo = float(lower[i]) / side.scale
        hi = float(upper[i]) / side.scale
        if side.scale != 1.0:  # unscaled results can be subnormal, where division rounds: round outward
            lo, hi = math.nextafter(lo, 0.0), math.nextafter(hi, math.inf)
        lo = min(lo, hi)
        out.append(SpectralEstimate(sigma=lo, upper=hi, iterations=lanczos.iterations, certificate_steps=steps[i], converged=hi - lo <= tol * hi))
    return out
