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
    upper, steps, _ = _gram(w, stop_at, max_steps)
    return upper, steps


def _gram(w: torch.Tensor, stop_at: float, max_steps: int) -> tuple[float, int, torch.Tensor | None]:
    """Gram iteration; also returns a left singular direction of w read off the last iterate.

    The last iterate is (scaled) (W W^T)^(2^(t-1)) or (W^T W)^(2^(t-1)): applied to any vector it
    acts like 2^t steps of power iteration, which separates nearly equal top singular values.
    """
    tall = w.shape[0] > w.shape[1]
    h = w.to(torch.float64)
    if tall:
        h = h.mT
    log_scale = 0.0
    best = math.inf
    steps = 0
    while True:
        norm = float(torch.linalg.matrix_norm(h))
        if norm == 0.0:
            return 0.0, steps, None
        bound_log = (math.log(norm) + log_scale) / 2.0**steps
        improved = bound_log < best - 1e-15 * abs(best) if math.isfinite(best) else True
        best = min(best, bound_log)
        upper = math.exp(best) * (1.0 + GRAM_MARGIN)
        if upper <= stop_at or not improved or steps >= max_steps:
            return upper, steps, (_direction(w, h, tall) if steps else None)
        h = h / norm
        log_scale = 2.0 * (log_scale + math.log(norm))
        h = h @ h.mT
        steps += 1


def _direction(w: torch.Tensor, h: torch.Tensor, tall: bool) -> torch.Tensor | None:
    column = h[:, int(torch.argmax(h.diagonal()))]  # the dominant eigenvector's largest component
    if tall:  # h acts on W's row space: map the right singular direction to a left one
        column = w.to(torch.float64) @ column
    norm = float(column.norm())
    return column / norm if norm > 0.0 and math.isfinite(norm) else None


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
    upper, steps, direction = _gram(w64, stop_at=power.sigma * (1.0 + tol), max_steps=40)
    if upper - power.sigma > tol * upper and direction is not None:
        # Nearly equal top singular values stall power iteration: restart it from the Gram
        # iterate's direction (power iteration still produces the reported value).
        power.u = direction
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
