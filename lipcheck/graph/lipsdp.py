"""LipSDP-Neuron bounds for chains of linear layers and slope-restricted activations, without an SDP
solver: multipliers optimized by first-order methods, the final ones certified in float64.

The network is f(x) = W_l φ_l(W_{l-1} ⋯ φ_1(W_0 x)), hidden layer k (1 ≤ k ≤ l) of width n_k with
activations slope-restricted in [a_k, b_k]: (φ(s)−φ(t))/(s−t) ∈ [a_k, b_k] for all s ≠ t. Biases do
not change the constant. For diagonal T_k ⪰ 0 and ρ > 0, LipSDP-Neuron (Fazlyab et al., 2019) says
‖f(x)−f(y)‖ ≤ √ρ ‖x−y‖ whenever the symmetric block-tridiagonal matrix N(ρ, T) is PSD, with blocks
(variables x_0 = the input, x_k = hidden layer k's output)

    N_00 = ρI + 2a_1b_1 W_0ᵀT_1W_0
    N_kk = 2T_k + 2a_{k+1}b_{k+1} W_kᵀT_{k+1}W_k          (1 ≤ k < l)
    N_ll = 2T_l − W_lᵀW_l
    N_{k+1,k} = −(a_{k+1}+b_{k+1}) T_{k+1}W_k.

Eliminating the blocks from the output end, N ⪰ 0 with Y_k ≻ 0 for k ≥ 1 is equivalent to

    Y_k = 2T_k − G_k,   G_l = W_lᵀW_l,   G_{k-1} = W_{k-1}ᵀ R_k W_{k-1},
    R_k = (a_k+b_k)² T_k Y_k⁻¹ T_k − 2a_kb_k T_k,   ρ ≥ ρ*(T) = λ_max(W_0ᵀR_1W_0),

so for given multipliers the best ρ is an eigenvalue, and ρ*(T) grows without bound as some Y_k
nears singularity: it is its own barrier, and any T with every Y_k ≻ 0 gives a bound. The optimizer
minimizes log ρ* over log T (L-BFGS with a backtracking line search, on a soft maximum of the
eigenvalues that tends to λ_max), starting from a closed form: T_k = t_k I with t_k minimizing the
top eigenvalue of R_k given G_k (t = g b/(b−a) for g = λ_max(G_k); t = g for ReLU), the backward
twin of ECLipsE-Fast's choice. The optimizer's Y_k hold back a 2⁻¹⁸ share of 2T_k (``_RESERVE``):
ρ* of those smaller blocks is valid for N too, with room left for the certificate's margins.

The optimizer needs no proof. ``certify`` checks N(ρ, T) ⪰ 0 for the final T in float64: it forms
N̂ = fl(N), bounds |N̂ − N| entrywise by the rounding of each product (Higham, Accuracy and
Stability of Numerical Algorithms, 2nd ed., eq. 3.13), so N ⪰ N̂ − diag(f) with f the row sums of
that bound, and runs a block Cholesky (first block first) on A = N̂ − diag(f) − diag(c·N̂_ii) with
c = n γ_{n+1}/(1−γ_{n+1}). If it completes, A + ΔA = L̂L̂ᵀ ⪰ 0 with |ΔA| ≤ γ_{n+1}|L̂||L̂ᵀ| (Higham,
Theorem 10.3, for any summation order, so for the blocked triangular solves and products too); the
row norms d_i² of L̂ are at most A_ii/(1−γ_{n+1}), and by Cauchy–Schwarz ΔA ⪯ γ_{n+1} n diag(d²) ⪯
diag(c·N̂_ii). Hence N ⪰ A + diag(c N̂_ii) ⪰ 0. When the check fails (the optimum makes N singular),
ρ grows by a doubling margin until it passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

UNIT_ROUNDOFF = 2.0**-53
_SAFETY = 2.0  # as in lipcheck.spectral.dense: room for fused multiply-adds and the error terms' own arithmetic
_SLOPE_GRID = 2.0**-20  # slope bounds are rounded outward to this grid, so a+b and 2ab are exact in float64
_MAX_MARGIN_STEPS = 60
# Share of 2T_k the optimizer leaves out of Y_k: its multipliers then keep every hidden block
# positive definite by that much, which the rounding margins of the certificate need (a block that
# the input never reaches could otherwise drift to singular without raising ρ*).
_RESERVE = 2.0**-18
_THREADED_WIDTH = 1024  # from this hidden width on, the factorizations use every thread
_PARTIAL_EIGEN = 256  # from this order on, the top eigenvalue alone comes from Lanczos

# (fraction of budget done, best certified-candidate bound so far); the CLI draws it as a bar
Progress = Callable[[float, float], None]


def _gamma(k: int) -> float:
    """Higham's γ_k = k u/(1 − k u), times the safety factor."""
    ku = k * UNIT_ROUNDOFF
    return _SAFETY * ku / (1.0 - ku)


def outward(a: float, b: float) -> tuple[float, float]:
    """Round a slope range [a, b] outward to the dyadic grid the certificate needs."""
    return math.floor(a / _SLOPE_GRID) * _SLOPE_GRID, math.ceil(b / _SLOPE_GRID) * _SLOPE_GRID


@dataclass
class Chain:
    """A chain of weights (out, in) in float64 with slope ranges between them.

    ``slopes[k]`` belongs to the activation after ``weights[k]`` (hidden layer k+1), so there is one
    fewer slope than weights; ``scale`` multiplies the bound (a last activation's largest |slope|).
    """

    weights: list[torch.Tensor]
    slopes: list[tuple[float, float]]
    scale: float = 1.0
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.slopes) != len(self.weights) - 1 or not self.slopes:
            raise ValueError("a chain needs one slope range between each pair of layers")
        for w, v in zip(self.weights, self.weights[1:]):
            if v.shape[1] != w.shape[0]:
                raise ValueError("consecutive layers of the chain do not fit")
        for a, b in self.slopes:
            if not (b > a and a + b > 0.0):
                raise ValueError("slope ranges need b > a and a + b > 0")
        self.slopes = [outward(a, b) for a, b in self.slopes]


@dataclass(frozen=True)
class Result:
    """A certified bound with its multipliers, ρ = bound² (uncertified ρ* before the margin), and effort."""

    bound: float
    rho: float
    rho_optimized: float
    multipliers: list[torch.Tensor]
    iterations: int
    seconds: float
    margin_steps: int


# -- the objective ---------------------------------------------------------------------------------------
class Objective:
    """ρ*(T) of the module docstring, as a differentiable function of log T (float64 torch)."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.ws = [w.to(torch.float64) for w in chain.weights]
        self.start_rho = math.inf  # ρ* at the closed-form start, once initial() has run
        last = self.ws[-1]
        self.g_last = last.mT @ last
        first = self.ws[0]
        # W_0 = K Pᵀ with P orthonormal: W_0ᵀRW_0 has the eigenvalues of KᵀRK (r = rank-side columns)
        if first.shape[1] <= first.shape[0]:
            self.k0 = first
        else:
            evals, evecs = torch.linalg.eigh(first @ first.mT)
            self.k0 = evecs * evals.clamp_min(0.0).sqrt()

    def sizes(self) -> list[int]:
        """Widths of the hidden layers."""
        return [w.shape[0] for w in self.ws[:-1]]

    def eigenvalues(self, thetas: list[torch.Tensor]) -> torch.Tensor | None:
        """The eigenvalues of W_0ᵀR_1W_0 (on its range), or None where some Y_k is not positive definite."""
        g = self.reduced(thetas)
        return None if g is None else torch.linalg.eigvalsh(g)

    def reduced(self, thetas: list[torch.Tensor]) -> torch.Tensor | None:
        """W_0ᵀR_1W_0 (on its range), or None where some Y_k is not positive definite."""
        g = self.g_last
        for k in range(len(thetas) - 1, -1, -1):
            t = thetas[k].exp()
            y = torch.diag((2.0 - _RESERVE) * t) - g
            factor, info = torch.linalg.cholesky_ex(y)
            if int(info) != 0:
                return None
            a, b = self.chain.slopes[k]
            below = self.ws[k] if k > 0 else self.k0
            scaled = t[:, None] * below
            v = torch.linalg.solve_triangular(factor, scaled, upper=False)
            g = (a + b) ** 2 * (v.mT @ v)
            if a * b != 0.0:
                g = g - 2.0 * a * b * (below.mT @ scaled)
            g = 0.5 * (g + g.mT)
        return g

    def rho(self, thetas: list[torch.Tensor]) -> float:
        """ρ*(T), or inf where the multipliers are infeasible."""
        with torch.no_grad():
            g = self.reduced(thetas)
        if g is None or not bool(torch.isfinite(g).all()):
            return math.inf
        value = _top_eigenvalue(g)
        return value if math.isfinite(value) else math.inf

    def initial(self) -> list[torch.Tensor]:
        """log T of the per-layer closed form T_k = t_k I (module docstring)."""
        thetas: list[torch.Tensor] = [torch.zeros(0)] * (len(self.ws) - 1)
        g = self.g_last
        for k in range(len(self.ws) - 2, -1, -1):
            a, b = self.chain.slopes[k]
            top = max(_top_eigenvalue(g), 1e-12 * float(g.diagonal().abs().max()) + 1e-300)
            t = top * b / (b - a) * (1.0 + 1e-9)
            y = torch.diag(torch.full((g.shape[0],), (2.0 - _RESERVE) * t, dtype=torch.float64)) - g
            factor, info = torch.linalg.cholesky_ex(y)
            if int(info) != 0:  # the estimate fell short: the full spectrum decides
                top = max(float(torch.linalg.eigvalsh(g)[-1]), top)
                t = top * b / (b - a) * (1.0 + 1e-9)
                y = torch.diag(torch.full((g.shape[0],), (2.0 - _RESERVE) * t, dtype=torch.float64)) - g
                factor = torch.linalg.cholesky(y)
            thetas[k] = torch.full((g.shape[0],), math.log(t), dtype=torch.float64)
            scaled = t * (self.ws[k] if k > 0 else self.k0)
            v = torch.linalg.solve_triangular(factor, scaled, upper=False)
            below = self.ws[k] if k > 0 else self.k0
            g = (a + b) ** 2 * (v.mT @ v)
            if a * b != 0.0:
                g = g - 2.0 * a * b * (below.mT @ scaled)
            g = 0.5 * (g + g.mT)
        self.start_rho = _top_eigenvalue(g) if bool(torch.isfinite(g).all()) else math.inf
        return thetas


def _top_eigenvalue(g: torch.Tensor) -> float:
    """The largest eigenvalue of a symmetric matrix: Lanczos (ARPACK) for large ones, else the full spectrum."""
    if g.shape[0] <= _PARTIAL_EIGEN:
        return float(torch.linalg.eigvalsh(g)[-1])
    from scipy.sparse.linalg import ArpackError, eigsh

    try:
        matrix = g.detach().numpy()
        start = np.random.default_rng(0).standard_normal(matrix.shape[0])  # ARPACK's own start differs run to run
        value = eigsh(matrix, k=1, which="LA", tol=1e-12, v0=start, return_eigenvectors=False)
        return float(value[0])
    except (ArpackError, ValueError):  # no convergence: the full spectrum
        return float(torch.linalg.eigvalsh(g)[-1])


def _soft_log(ev: torch.Tensor, sharpness: float) -> torch.Tensor:
    """log of a soft maximum of the eigenvalues, ≥ log λ_max, within log(n)/sharpness of it."""
    top = ev[-1].detach()
    return torch.log(top) + torch.logsumexp(sharpness * (ev / top - 1.0), 0) / sharpness


# -- the optimizer ---------------------------------------------------------------------------------------
class Searched(Protocol):
    """What the optimizer reads of an objective: ρ*(T), the eigenvalues its soft maximum is taken
    over, and the chain (for its ``scale``)."""

    chain: Any

    def eigenvalues(self, thetas: list[torch.Tensor]) -> torch.Tensor | None: ...

    def rho(self, thetas: list[torch.Tensor]) -> float: ...


def optimize(
    objective: Searched, thetas: list[torch.Tensor], budget_s: float, progress: Progress | None = None, max_iter: int = 100_000
) -> tuple[list[torch.Tensor], float, int]:
    """L-BFGS on the soft log ρ* from feasible ``thetas`` until the budget or a plateau; returns the
    best multipliers by the exact ρ*, that ρ*, and the iterations taken."""
    start = time.perf_counter()
    sizes = [t.numel() for t in thetas]
    x = torch.cat(thetas).clone()
    best_x, best = x.clone(), objective.rho(thetas)
    if not math.isfinite(best) or budget_s <= 0.0:
        return thetas, best, 0

    def split(flat: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(flat, sizes))

    def evaluate(flat: torch.Tensor, sharpness: float, gradient: bool = True) -> tuple[float, torch.Tensor | None, float]:
        flat = flat.detach().requires_grad_(gradient)
        with torch.set_grad_enabled(gradient):
            ev = objective.eigenvalues(split(flat))
            if ev is None or not bool(torch.isfinite(ev.detach()).all()) or float(ev[-1].detach()) <= 0.0:
                return math.inf, None, math.inf
            loss = _soft_log(ev, sharpness)
        grad = torch.autograd.grad(loss, flat)[0] if gradient else torch.zeros(0)
        return float(loss.detach()), grad, float(ev[-1].detach())

    iterations = 0
    sharpness = 1e3
    memory: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss, first, exact = evaluate(x, sharpness)
    assert first is not None
    grad: torch.Tensor = first
    stall = 0
    while iterations < max_iter and time.perf_counter() - start < budget_s:
        iterations += 1
        # two-loop recursion
        q = grad.clone()
        alphas = []
        for s, y in reversed(memory):
            rho_sy = 1.0 / float(y @ s)
            alpha = rho_sy * float(s @ q)
            alphas.append((alpha, rho_sy, s, y))
            q -= alpha * y
        if memory:
            s, y = memory[-1]
            q *= float(s @ y) / float(y @ y)
        else:
            q /= max(1.0, float(grad.abs().max()))
        for alpha, rho_sy, s, y in reversed(alphas):
            beta = rho_sy * float(y @ q)
            q += (alpha - beta) * s
        direction = -q
        slope = float(grad @ direction)
        if slope >= 0.0:
            memory.clear()
            direction, slope = -grad, -float(grad @ grad)
        step, accepted = 1.0, False
        t_grad: torch.Tensor = grad
        for _ in range(40):
            trial = x + step * direction
            t_loss, probe, t_exact = evaluate(trial, sharpness, gradient=False)
            if probe is not None and t_loss <= loss + 1e-4 * step * slope:
                t_loss, full, t_exact = evaluate(trial, sharpness)
                accepted = full is not None
                if full is not None:
                    t_grad = full
                break
            step *= 0.3
        if not accepted:
            memory.clear()
            if sharpness >= 1e7:
                break
            sharpness *= 10.0
            loss, again, exact = evaluate(x, sharpness)
            assert again is not None
            grad = again
            continue
        s_vec, y_vec = trial - x, t_grad - grad
        if float(s_vec @ y_vec) > 1e-18 * float(s_vec @ s_vec) ** 0.5:
            memory.append((s_vec, y_vec))
            if len(memory) > 20:
                memory.pop(0)
        improvement = loss - t_loss
        x, loss, grad, exact = trial, t_loss, t_grad, t_exact
        if exact < best:
            best, best_x = exact, x.clone()
        if improvement < 1e-11:
            stall += 1
            if stall >= 5:
                if sharpness >= 1e7:
                    break
                sharpness *= 10.0
                memory.clear()
                loss, again, exact = evaluate(x, sharpness)
                assert again is not None
                grad = again
                stall = 0
        else:
            stall = 0
        if progress is not None and iterations % 10 == 0:
            progress(min(1.0, (time.perf_counter() - start) / budget_s), math.sqrt(best) * objective.chain.scale)
    return split(best_x), best, iterations


# -- the certificate -------------------------------------------------------------------------------------
def certify(chain: Chain, multipliers: list[torch.Tensor], rho: float) -> bool:
    """Whether N(ρ, T) ⪰ 0 holds in exact arithmetic, checked in float64 (module docstring)."""
    return certify_batch([w.to(torch.float64).unsqueeze(0) for w in chain.weights], chain.slopes, multipliers, rho)


def certify_batch(
    weights: list[torch.Tensor],
    slopes: list[tuple[float, float]],
    multipliers: list[torch.Tensor],
    rho: float,
    shift: float = 0.0,
    skip: bool = False,
    skip_weight: torch.Tensor | None = None,
) -> bool:
    """``certify`` for a batch of chains with the same multipliers: weights (B, out, in) each, real or
    complex (then N is Hermitian, and each complex dot product of k terms is bounded as two real
    ones of 2k terms, the factorization with γ_{4n+8}).

    Checks N(ρ, T) − shift·I ⪰ 0 for every chain of the batch: ``shift`` (≥ 0) is how far the
    caller's weights may be from exact ones, as a spectral-norm bound on the change of N. With
    ``skip`` (two layers) it checks the matrix of S x + W_1 φ(W_0 x) instead, S = ``skip_weight``
    (B, out, in) or the identity: ‖S Δ + W_1 u‖² adds −W_1ᵀS to the off-diagonal block N_10 and
    takes SᵀS from the first block. With the identity, ``rho`` is then ρ − 1:
    ‖x + W_1 φ(W_0 x) − (y + W_1 φ(W_0 y))‖² ≤ (rho + 1)‖x − y‖².
    """
    if skip_weight is not None:
        skip = True
        if skip_weight.shape[-2:] != (weights[-1].shape[-2], weights[0].shape[-1]):
            return False
    if skip and (len(weights) != 2 or (skip_weight is None and weights[1].shape[-2] != weights[0].shape[-1])):
        return False
    complex_ = any(w.is_complex() for w in weights) or (skip_weight is not None and skip_weight.is_complex())
    dtype = torch.complex128 if complex_ else torch.float64
    ws = [w.to(dtype) for w in weights]
    ts = [t.to(torch.float64) for t in multipliers]
    if not (math.isfinite(rho) and rho > 0.0) or any(not bool((t > 0).all() & torch.isfinite(t).all()) for t in ts):
        return False
    if not (math.isfinite(shift) and shift >= 0.0):
        return False
    batch = ws[0].shape[0]
    sizes = [ws[0].shape[-1]] + [w.shape[-2] for w in ws[:-1]]
    n = sum(sizes)
    u = UNIT_ROUNDOFF
    up = 1.0 + 1e-10  # rounds the bounds' own (nonnegative, short) sums up

    def dot(k: int) -> float:
        """The relative rounding of a k-term dot product; a complex one is two real ones of 2k terms."""
        return math.sqrt(2.0) * _gamma(2 * k) if complex_ else _gamma(k)

    def diagonal(values: torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(values.expand(batch, -1)).clone()

    # diagonal blocks, their formation-error row sums, and the off-diagonal blocks with theirs
    diag: list[torch.Tensor] = []
    f: list[torch.Tensor] = []
    offs: list[torch.Tensor] = []
    skip_product = product_error = None  # W_1ᵀS and a bound on its rounding, entrywise
    if skip:
        skip_product, product_error = ws[1].mH, torch.zeros(ws[1].mH.shape, dtype=torch.float64, device=ws[1].device)
    if skip_weight is not None:
        s_w = skip_weight.to(dtype)
        skip_product = ws[1].mH @ s_w
        product_error = dot(s_w.shape[-2] + 2) * (ws[1].abs().mT @ s_w.abs())
    for k in range(len(sizes)):
        if k == 0:
            block = diagonal(torch.full((sizes[0],), rho, dtype=torch.float64))
            err = torch.zeros(batch, sizes[0], dtype=torch.float64)
            if skip_weight is not None:
                block = block - s_w.mH @ s_w
                err = dot(s_w.shape[-2] + 2) * (s_w.abs().mT @ s_w.abs().sum(-1, keepdim=True)).squeeze(-1) * up
        elif k < len(sizes) - 1:
            block = diagonal(2.0 * ts[k - 1])
            err = torch.zeros(batch, sizes[k], dtype=torch.float64)
        else:
            last = ws[-1]
            gram = last.mH @ last
            block = diagonal(2.0 * ts[k - 1]) - gram
            err = dot(last.shape[-2] + 2) * (last.abs().mT @ last.abs().sum(-1, keepdim=True)).squeeze(-1) * up
        if k < len(sizes) - 1:
            a, b = slopes[k]
            w, t = ws[k], ts[k]
            if a * b != 0.0:
                scaled = t[:, None] * w
                block = block + (2.0 * a * b) * (w.mH @ scaled)
                weighted = (t * w.abs().sum(-1)).unsqueeze(-1)
                err = err + dot(w.shape[-2] + 4) * abs(2.0 * a * b) * (w.abs().mT @ weighted).squeeze(-1) * up
            off = -(a + b) * (t[:, None] * w)
            if skip_product is not None and k == 0:
                off = off - skip_product
            offs.append(off)
        err = err + 2.0 * u * block.abs().sum(-1) * up  # the final addition of each entry
        if shift > 0.0:
            err = err + shift
        diag.append(block)
        f.append(err)
    for k, off in enumerate(offs):  # two roundings per entry (t·w, then ·(a+b)), a third for the skip's −W_1ᵀS
        if skip_product is not None and product_error is not None and k == 0:
            bound = (_gamma(3) * (off.abs() + 2.0 * skip_product.abs()) + (1.0 + _gamma(3)) * product_error) * up
        else:
            bound = 2.0 * _gamma(1) * off.abs()
        f[k] = f[k] + bound.sum(-2) * up
        f[k + 1] = f[k + 1] + bound.sum(-1) * up
    # Complex Cholesky: Higham's γ_{n+1} with complex operations counted as real ones (as in
    # lipcheck.spectral.conv_fourier).
    gamma = _gamma(4 * n + 8) if complex_ else _gamma(n + 1)
    c = n * gamma / (1.0 - gamma) * up + 4.0 * u
    shifted = []
    for block, err in zip(diag, f):
        margin = (err + c * block.diagonal(dim1=-2, dim2=-1).real.clamp_min(0.0)) * up
        block = block.clone()
        block.diagonal(dim1=-2, dim2=-1).sub_(margin)
        shifted.append(block)
    # block Cholesky, first block first; the Schur complement of each block feeds the next
    schur = shifted[0]
    for k in range(len(shifted)):
        if k == 0 and skip_weight is None and slopes[0][0] * slopes[0][1] == 0.0 and len(shifted) > 1:
            # ρI less its margins: the factorization of a diagonal matrix is the root of each entry,
            # its triangular solve a division by it (what LAPACK computes there, without its O(n³) pass)
            pivots = schur.diagonal(dim1=-2, dim2=-1).real
            if not bool((pivots > 0.0).all()) or not bool(torch.isfinite(pivots).all()):
                return False
            z = offs[0].mH / pivots.sqrt().unsqueeze(-1)
            schur = shifted[1] - z.mH @ z
            continue
        factor, info = torch.linalg.cholesky_ex(schur)
        if bool((info != 0).any()) or not bool(torch.isfinite(factor).all()):
            return False
        if k == len(shifted) - 1:
            return True
        z = torch.linalg.solve_triangular(factor, offs[k].mH, upper=False)  # L_k⁻¹ N_{k,k+1}
        schur = shifted[k + 1] - z.mH @ z
    return True


def certified_bound(chain: Chain, budget_s: float = 2.0, progress: Progress | None = None) -> Result | None:
    """Optimize the multipliers within ``budget_s`` seconds and certify the bound; None when no
    multipliers pass (a chain whose Gram blocks overflow, say)."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if max(w.shape[0] for w in chain.weights[:-1]) < _THREADED_WIDTH:
        torch.set_num_threads(1)  # these matrices are small: threads cost more in overhead than they save
    try:
        objective = Objective(chain)
        thetas = objective.initial()
        if budget_s > 0.0:
            thetas, rho, iterations = optimize(objective, thetas, budget_s, progress)
        else:  # the start's ρ* as initial() found it (the certificate below checks it with its margins)
            rho, iterations = objective.start_rho, 0
    except (AssertionError, ArithmeticError, RuntimeError, ValueError):  # weights whose products under- or overflow
        return None
    finally:
        torch.set_num_threads(threads)
    if not math.isfinite(rho):
        return None
    multipliers = [t.exp() for t in thetas]
    margin = 2.0**-40
    for step in range(_MAX_MARGIN_STEPS):
        trial = rho * (1.0 + margin)
        if certify(chain, multipliers, trial):
            bound = math.sqrt(trial) * (1.0 + 2.0**-50) * chain.scale
            if progress is not None:
                progress(1.0, bound)
            return Result(bound, trial, rho, multipliers, iterations, time.perf_counter() - start, step)
        margin *= 8.0
    return None


def eclipse_fast(weights: list[torch.Tensor], beta: float = 1.0) -> float:
    """ECLipsE-Fast's closed-form estimate for activations slope-restricted in [0, β] (uncertified).

    Forward: X_0 = I, λ_i = 1/(2m² λ_max(W_i X_{i-1}⁻¹ W_iᵀ)), X_i = λ_i I − λ_i² m² W_i X_{i-1}⁻¹ W_iᵀ
    with m = β/2, and L² = λ_max(W_lᵀW_l X_{l-1}⁻¹).
    """
    m = beta / 2.0
    ws = [w.to(torch.float64) for w in weights]
    x = torch.eye(ws[0].shape[1], dtype=torch.float64)
    for w in ws[:-1]:
        k = w @ torch.linalg.solve(x, w.mT)
        k = 0.5 * (k + k.mT)
        lam = 1.0 / (2.0 * m * m * float(torch.linalg.eigvalsh(k)[-1]))
        x = lam * torch.eye(w.shape[0], dtype=torch.float64) - lam * lam * m * m * k
    last = ws[-1]
    inner = torch.linalg.solve(x, last.mT @ last)
    return math.sqrt(float(torch.linalg.eigvals(inner).real.max()))
