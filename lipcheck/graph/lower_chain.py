"""Lower bounds for plain chains: a search over the chain's own Jacobian for the inputs where it is largest.

Only directions are searched here; every value reported is an attained ratio certified in float64
by lipcheck.graph.lower (see its module docstring for the rounding slack).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lipcheck.graph.lower import CHECKED


def chain_directions(
    weights: Sequence[torch.Tensor],
    biases: Sequence[np.ndarray | None],
    activations: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    seed: int,
    budget_s: float = 2.0,
    starts: int = 64,
    kinked: Sequence[bool] = (),
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Points x and unit directions v where the chain's Jacobian norm ‖J(x)‖ is large, best first,
    with the norm found: x ↦ W_l φ(⋯ φ(W_0 x + c_0) ⋯) + c_l, searched in float64.

    The search climbs σ_max(J(x)) by gradient ascent from many starts at several scales. For
    piecewise-linear activations J is piecewise constant, so the climb runs on a smoothed Jacobian
    (each activation's slope averaged over a Gaussian of width τ around the pre-activation, τ
    shrinking to 0), which moves x across region boundaries toward regions of large ‖J‖; every
    candidate is then scored by its exact Jacobian at x. Where activations have one kink at 0
    (``kinked``: ReLU, leaky ReLU), a walk over activation patterns follows (``_pattern_walk``).
    Nothing here is certified: the caller evaluates the file's own function at the pairs (x, x + hv).
    """

    import torch

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    ws = [w.to(torch.float64) for w in weights]
    bs = [
        torch.as_tensor(b, dtype=torch.float64).reshape(-1)
        if b is not None and np.asarray(b).size == w.shape[0]
        else torch.zeros(w.shape[0], dtype=torch.float64)
        for w, b in zip(ws, biases)
    ]
    n0 = ws[0].shape[1]

    def slopes(z: torch.Tensor, phi: Callable[[torch.Tensor], torch.Tensor], tau: float) -> torch.Tensor:
        if tau > 0.0:  # Gauss–Hermite average of φ' over z + τ·N(0, 1), by differences of φ
            nodes, weights_ = _HERMITE
            total = torch.zeros_like(z)
            h = tau * 1e-3
            for node, weight in zip(nodes, weights_):
                shifted = z + tau * node
                total = total + weight * (phi(shifted + h) - phi(shifted - h)) / (2 * h)
            return total
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (d,) = torch.autograd.grad(phi(zz).sum(), zz)
        return d

    def jacobian(x: torch.Tensor, tau: float) -> torch.Tensor:
        """J(x) for a batch of points (B, n0): (B, n_out, n0), the slopes smoothed by τ."""
        z = x @ ws[0].mT + bs[0]
        derivs = []
        for k, phi in enumerate(activations):
            derivs.append(slopes(z, phi, tau * _scale[k]))
            z = phi(z) @ ws[k + 1].mT + bs[k + 1]
        j = ws[-1].expand(x.shape[0], -1, -1)
        for k in range(len(activations) - 1, -1, -1):
            j = (j * derivs[k][:, None, :]) @ ws[k]
        return j

    def top(j: torch.Tensor) -> torch.Tensor:
        small = j @ j.mT if j.shape[1] <= j.shape[2] else j.mT @ j
        return torch.linalg.eigvalsh(0.5 * (small + small.mT))[:, -1].clamp_min(0.0).sqrt()

    # pre-activation scales at random inputs, so τ means the same in every layer
    with torch.no_grad():
        probe = torch.randn(256, n0, generator=generator, dtype=torch.float64)
        z = probe @ ws[0].mT + bs[0]
        _scale = []
        for k, phi in enumerate(activations):
            _scale.append(float(z.std()) + 1e-12)
            z = phi(z) @ ws[k + 1].mT + bs[k + 1]
    found: list[tuple[float, torch.Tensor]] = []
    scales = (0.1, 1.0, 3.0)
    if n0 * sum(w.shape[0] for w in ws) <= 1 << 16:  # small nets: exact Jacobians at many random points first
        with torch.no_grad():
            for s in (0.3, 1.0, 3.0):
                sample = s * torch.randn(1024, n0, generator=generator, dtype=torch.float64)
                try:
                    found.extend(zip(top(jacobian(sample, 0.0)).tolist(), sample))
                except RuntimeError:
                    pass
    per = max(1, starts // len(scales))
    rounds = 0
    kinked = list(kinked) or [False] * len(activations)
    search_s = budget_s * (0.5 if any(kinked) else 1.0)
    while rounds == 0 or (time.perf_counter() - start < search_s and rounds < 8):
        rounds += 1
        x = torch.cat([s * torch.randn(per, n0, generator=generator, dtype=torch.float64) for s in scales])
        x.requires_grad_(True)
        adam = _Adam(x, 0.05)
        steps = 150
        try:
            for step in range(steps):
                tau = 0.3 * (1.0 - step / steps) ** 2
                value = top(jacobian(x, tau))
                adam.step(-value.sum())
                if time.perf_counter() - start > search_s:
                    break
            with torch.no_grad():
                exact = top(jacobian(x.detach(), 0.0))
        except RuntimeError:  # an eigensolver that fails on a degenerate or overflowing Jacobian: next round
            continue
        for got, point in zip(exact.tolist(), x.detach()):
            found.append((float(got), point))
    if any(kinked) and found:
        found.sort(key=lambda item: item[0], reverse=True)
        seeds = torch.stack([point for _, point in found[:starts]])
        try:
            walked = _pattern_walk(seeds, ws, bs, activations, kinked, _scale, jacobian, top, budget_s - (time.perf_counter() - start))
        except RuntimeError:  # as above: the candidates found so far stand
            walked = ([], [])
        for got, point in zip(*walked):
            found.append((float(got), point))
    found = [(got, point) for got, point in found if math.isfinite(got) and bool(torch.isfinite(point).all())]
    found.sort(key=lambda item: item[0], reverse=True)
    out: list[tuple[np.ndarray, np.ndarray, float]] = []
    for got, point in found[:CHECKED]:
        with torch.no_grad():
            j = jacobian(point[None], 0.0)[0]
        try:
            _, _, vh = torch.linalg.svd(j, full_matrices=False)
        except RuntimeError:
            continue
        if bool(torch.isfinite(vh[0]).all()):
            out.append((point.numpy(), vh[0].numpy(), got))
    return out


def _pattern_walk(
    x: torch.Tensor,
    ws: list[torch.Tensor],
    bs: list[torch.Tensor],
    activations: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    kinked: list[bool],
    scales: list[float],
    jacobian: Callable[[torch.Tensor, float], torch.Tensor],
    top: Callable[[torch.Tensor], torch.Tensor],
    budget_s: float,
) -> tuple[list[float], list[torch.Tensor]]:
    """Alternate between the best activation pattern for the current top singular pair and a point
    that realizes it.

    With u, v the top singular pair of J(x) = W_l D_l ⋯ D_1 W_0, uᵀJv is linear in each slope d_ki,
    with coefficient p_ki q_ki (p the row uᵀW_l D_l ⋯ W_k, q the column W_{k−1} ⋯ W_0 v): the pattern
    that raises it most turns on exactly the neurons with p_ki q_ki > 0. A few gradient steps on a
    softplus margin then move x toward pre-activations of those signs; the exact ‖J(x)‖ of every
    iterate is kept.
    """

    import torch

    start = time.perf_counter()
    values: list[float] = []
    points: list[torch.Tensor] = []
    x = x.detach().clone()
    row = float(ws[0].norm(dim=1).mean()) + 1e-300
    for _ in range(6):
        if time.perf_counter() - start > budget_s:
            break
        with torch.no_grad():
            values.extend(top(jacobian(x, 0.0)).tolist())
            points.extend(x.clone())
            z = x @ ws[0].mT + bs[0]
            ds, lows = [], []
            for k, phi in enumerate(activations):
                zz = z.detach().requires_grad_(True)
                with torch.enable_grad():
                    (d,) = torch.autograd.grad(phi(zz).sum(), zz)
                ds.append(d)
                ones = torch.ones_like(zz[:1])
                with torch.enable_grad():
                    probe = (-ones).requires_grad_(True)
                    (low,) = torch.autograd.grad(phi(probe).sum(), probe)
                lows.append(low)
                z = phi(z) @ ws[k + 1].mT + bs[k + 1]
            for _ in range(20):  # the best pattern for the top pair, and the top pair for that pattern
                if time.perf_counter() - start > budget_s:
                    break
                j = ws[-1].expand(x.shape[0], -1, -1)
                for k in range(len(activations) - 1, -1, -1):
                    j = (j * ds[k][:, None, :]) @ ws[k]
                uu, _, vh = torch.linalg.svd(j, full_matrices=False)
                u, v = uu[:, :, 0], vh[:, 0, :]
                qs, q = [], v @ ws[0].mT
                for k in range(len(activations)):
                    qs.append(q)
                    q = (q * ds[k]) @ ws[k + 1].mT
                p, changed = u @ ws[-1], False
                for k in range(len(activations) - 1, -1, -1):
                    if kinked[k]:
                        wanted = torch.where(p * qs[k] > 0, torch.ones_like(ds[k]), lows[k].expand_as(ds[k]))
                        changed = changed or not torch.equal(wanted, ds[k])
                        ds[k] = wanted
                    p = (p * ds[k]) @ ws[k]
                if not changed:
                    break
            targets = [torch.where(d >= 1.0, 1.0, -1.0) for d in ds]
        y = x.clone().requires_grad_(True)
        adam = _Adam(y, 0.1 * scales[0] / row)
        for _ in range(60):
            if time.perf_counter() - start > budget_s:
                break
            z = y @ ws[0].mT + bs[0]
            loss = torch.zeros((), dtype=torch.float64)
            for k, phi in enumerate(activations):
                if kinked[k]:
                    loss = loss + torch.nn.functional.softplus(-targets[k] * z / (0.05 * scales[k]) + 1.0).sum()
                z = phi(z) @ ws[k + 1].mT + bs[k + 1]
            adam.step(loss)
        x = y.detach()
    with torch.no_grad():
        values.extend(top(jacobian(x, 0.0)).tolist())
        points.extend(x.clone())
    return values, points


class _Adam:
    """Adam's update (betas 0.9 and 0.999) on one tensor, minimizing: written out because the first
    torch.optim optimizer of a process imports the compiler stack, over a second of every run."""

    def __init__(self, x: torch.Tensor, lr: float) -> None:
        import torch

        self.x, self.lr, self.steps = x, lr, 0
        self.first, self.second = torch.zeros_like(x), torch.zeros_like(x)

    def step(self, loss: torch.Tensor) -> None:
        import torch

        (grad,) = torch.autograd.grad(loss, self.x)
        self.steps += 1
        with torch.no_grad():
            self.first.mul_(0.9).add_(grad, alpha=0.1)
            self.second.mul_(0.999).addcmul_(grad, grad, value=0.001)
            first = self.first / (1.0 - 0.9**self.steps)
            second = self.second / (1.0 - 0.999**self.steps)
            self.x.sub_(self.lr * first / (second.sqrt() + 1e-8))


_HERMITE = tuple(np.asarray(a, dtype=np.float64) for a in np.polynomial.hermite_e.hermegauss(9))
_HERMITE = (_HERMITE[0], _HERMITE[1] / _HERMITE[1].sum())


def certified_pairs(run: Callable[[np.ndarray, np.ndarray], float], candidates: list[tuple[np.ndarray, np.ndarray, float]]) -> float:
    """The largest certified ratio over pairs (x, x + hv) at a few step sizes h; ``run`` returns the
    certified float64 ratio of one pair (``lower.certified`` or ``lower.certified_torch``). Candidates
    go best estimate first, and the checks stop once no estimate left can beat the best ratio."""
    best = 0.0
    for x, v, estimate in sorted(candidates, key=lambda item: -item[2]):
        if best > 0.0 and estimate <= best * (1.0 + 1e-6):
            break
        scale = max(1.0, float(np.linalg.norm(x)) / math.sqrt(max(1, x.size)))
        for h in (1e-4, 1e-6, 1e-8):
            best = max(best, run(x, x + h * scale * v))
    return best
