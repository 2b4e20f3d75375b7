"""Power iteration (the lower end) and Gram iteration (a certified upper end) for one matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Relative safety margin on the Gram certificate. Each float64 product G^T G has a relative
# Frobenius error below n*2^-53 (n: the inner size); the bound takes the 2^t-th root, so all
# rounding together moves it by less than about 2*n*2^-53 (~2e-10 for n = 1e6). 1e-9 covers that.
GRAM_MARGIN = 1e-9
# Power iteration stops its first pass when sigma changes by less than this share of `tol`;
# the certificate then decides whether the value is good enough.
_PASS_ONE_FRACTION = 0.1
# Largest smaller side for which a stalled power iteration is restarted from the SVD's vector.
RESTART_MAX_SIDE = 2048


@dataclass(frozen=True)
class SpectralEstimate:
    """A certified interval [sigma, upper] for the largest singular value of a matrix."""

    sigma: float
    upper: float
    iterations: int
    gram_steps: int
    converged: bool


def _random_unit(n: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, generator=generator, dtype=torch.float64)
    return x / x.norm()


class _PowerIteration:
    """The seed's power iteration on one matrix, resumable so the certificate can ask for more."""

    def __init__(self, w: torch.Tensor, u0: torch.Tensor | None, seed: int) -> None:
        self.w = w
        self.generator = torch.Generator().manual_seed(seed)
        if u0 is not None and u0.numel() == w.shape[0] and float(u0.norm()) > 0:
            self.u = u0.to(torch.float64) / u0.to(torch.float64).norm()
        else:
            self.u = _random_unit(w.shape[0], self.generator)
        self.sigma = 0.0
        self.iterations = 0

    def step(self) -> float:
        """One iteration: v <- W^T u/|W^T u|, u <- W v/|W v|, sigma = u^T W v (seed eqs. 5.1, 5.2)."""
        v = self.w.mT @ self.u
        nv = v.norm()
        if float(nv) == 0.0:  # u is orthogonal to W's range: restart from a random vector
            self.u = _random_unit(self.w.shape[0], self.generator)
            v = self.w.mT @ self.u
            nv = v.norm()
        v = v / nv
        wv = self.w @ v
        self.u = wv / wv.norm()
        self.sigma = float(self.u @ wv)
        self.iterations += 1
        return self.sigma

    def run(self, max_iter: int, rel_change: float) -> None:
        """Iterate until sigma changes by at most ``rel_change`` relative, or ``max_iter`` total."""
        previous = self.sigma
        while self.iterations < max_iter:
            current = self.step()
            if abs(current - previous) <= rel_change * current:
                return
            previous = current


def gram_upper(w: torch.Tensor, stop_at: float = 0.0, max_steps: int = 40) -> tuple[float, int]:
    """Return a certified upper bound on sigma_1(w) by Gram iteration, and the steps taken.

    G_0 = W, G_{t+1} = G_t^T G_t; sigma_1 <= ||G_t||_F^(1/2^t) (Delattre et al., 2023), with the
    scale kept in log space. Stops once the bound is at most ``stop_at``, or stops improving.
    """
    h = w.to(torch.float64)
    if h.shape[0] > h.shape[1]:
        h = h.mT
    log_scale = 0.0
    best = math.inf
    steps = 0
    while True:
        norm = float(torch.linalg.matrix_norm(h))
        if norm == 0.0:
            return 0.0, steps
        bound_log = (math.log(norm) + log_scale) / 2.0**steps
        improved = bound_log < best - 1e-15 * abs(best) if math.isfinite(best) else True
        best = min(best, bound_log)
        upper = math.exp(best) * (1.0 + GRAM_MARGIN)
        if upper <= stop_at or not improved or steps >= max_steps:
            return upper, steps
        h = h / norm
        log_scale = 2.0 * (log_scale + math.log(norm))
        h = h @ h.mT
        steps += 1


def certify(
    w: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    seed: int,
    u0: torch.Tensor | None = None,
) -> SpectralEstimate:
    """Bracket sigma_1 of a 2-D matrix: power iteration below, Gram iteration above.

    Converged means the interval's relative width is at most ``tol``. Power iteration first runs
    until it stalls; the certificate then runs until it meets the estimate; if the two still
    disagree (a small spectral gap stalls power iteration), power iteration resumes.
    """
    w64 = w.detach().to(torch.float64)
    if w64.numel() == 0 or float(w64.abs().max()) == 0.0:
        return SpectralEstimate(0.0, 0.0, 0, 0, True)
    power = _PowerIteration(w64, u0, seed)
    power.run(max_iter, _PASS_ONE_FRACTION * tol)
    upper, steps = gram_upper(w64, stop_at=power.sigma * (1.0 + tol))
    if upper - power.sigma > tol * upper and min(w64.shape) <= RESTART_MAX_SIDE:
        # Nearly equal top singular values stall power iteration; on a small matrix, restart it
        # from the SVD's top vector (power iteration still produces the reported value).
        _, _, vh = torch.linalg.svd(w64, full_matrices=False)
        start = w64 @ vh[0]
        if float(start.norm()) > 0.0:
            power.u = start / start.norm()
    while power.iterations < max_iter and upper - power.sigma > tol * upper:
        power.step()
    sigma = min(power.sigma, upper)
    return SpectralEstimate(
        sigma=sigma,
        upper=upper,
        iterations=power.iterations,
        gram_steps=steps,
        converged=upper - sigma <= tol * upper,
    )
