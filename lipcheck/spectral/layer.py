"""Per-layer numbers: sigma in torch's convention and a certified Lipschitz interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lipcheck.model import Layer
from lipcheck.settings import Settings
from lipcheck.spectral.dense import certify

METHOD_DENSE = "power iteration (lower), Gram iteration (upper)"
METHOD_CONV_NO_GEOMETRY = "geometry-free: sqrt(kernel taps) * Gram upper bound of the reshaped kernel"


@dataclass(frozen=True)
class Interval:
    """A certified interval for a layer's Lipschitz constant; ``lower`` may be unknown."""

    lower: float | None
    upper: float
    method: str


@dataclass(frozen=True)
class LayerEstimate:
    """What lipcheck knows about one layer's weight; all None when the weight is not finite."""

    sigma: float | None
    sigma_upper: float | None
    lipschitz: Interval | None
    iterations: int
    gram_steps: int
    converged: bool


def sigma_matrix(layer: Layer, weight: torch.Tensor) -> torch.Tensor:
    """Reshape a weight as torch's spectral_norm does: rows are outputs (dim 1 for ConvTranspose)."""
    if layer.is_transposed:
        return weight.transpose(0, 1).reshape(weight.shape[1], -1)
    return weight.reshape(weight.shape[0], -1)


def estimate(layer: Layer, settings: Settings) -> LayerEstimate:
    """Estimate one layer: sigma by power iteration, and its Lipschitz interval."""
    weight = layer.load().detach().to(torch.float64)
    if not bool(torch.isfinite(weight).all()):
        return LayerEstimate(None, None, None, 0, 0, False)
    warm = layer.warm_u() if layer.warm_u is not None else None
    mat = sigma_matrix(layer, weight)
    est = certify(mat, tol=settings.tol, max_iter=settings.max_iter, seed=settings.seed, u0=warm)
    if not layer.is_conv:
        interval = Interval(est.sigma, est.upper, METHOD_DENSE)
        return LayerEstimate(est.sigma, est.upper, interval, est.iterations, est.gram_steps, est.converged)
    # Geometry unknown: ||conv|| <= sqrt(taps) * sigma(W as (C_out, C_in/g * taps)), for any stride,
    # padding, dilation and groups. A ConvTranspose is the adjoint of the conv with the same weight
    # read as (out = dim 0), so the same dim-0 matrix bounds it.
    upper = est.upper
    if layer.is_transposed:
        upper = certify(weight.reshape(weight.shape[0], -1), tol=settings.tol, max_iter=settings.max_iter,
                        seed=settings.seed).upper
    interval = Interval(None, math.sqrt(math.prod(weight.shape[2:])) * upper, METHOD_CONV_NO_GEOMETRY)
    return LayerEstimate(est.sigma, est.upper, interval, est.iterations, est.gram_steps, est.converged)
