"""Per-layer numbers: sigma in torch's convention and a certified Lipschitz interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lipcheck.formats.limits import check_layer_size
from lipcheck.model import Layer
from lipcheck.settings import Settings
from lipcheck.spectral.conv import any_size_factor, operator_interval
from lipcheck.spectral.dense import SpectralEstimate, certify

METHOD_DENSE = "power iteration (lower), Gram iteration (upper)"
METHOD_CONV_NO_GEOMETRY = ("no geometry in the file: sqrt(kernel taps) * upper sigma, for any stride, dilation, groups and "
                           "zero/circular padding; an ONNX or TorchScript file gives the operator norm")
METHOD_CONV_ANY_SIZE = ("input size unknown: sqrt(max taps per input position) * upper sigma, valid for every input size; "
                        "pass --input-shape for the operator norm")
METHOD_CONV_1X1 = "1x1 conv: the operator norm is sigma(W) at every input size"


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
    check_layer_size(layer.display_name, layer.shape)
    weight = layer.load().detach().to(torch.float64)
    if not bool(torch.isfinite(weight).all()):
        return LayerEstimate(None, None, None, 0, 0, False)
    warm = layer.warm_u() if layer.warm_u is not None else None
    mat = sigma_matrix(layer, weight)
    est = certify(mat, tol=settings.tol, max_iter=settings.max_iter, seed=settings.seed, u0=warm)
    if not layer.is_conv:
        interval = Interval(est.sigma, est.upper, METHOD_DENSE)
        return LayerEstimate(est.sigma, est.upper, interval, est.iterations, est.gram_steps, est.converged)
    interval = _conv_interval(layer, weight, est, settings)
    return LayerEstimate(est.sigma, est.upper, interval, est.iterations, est.gram_steps, est.converged)


def _conv_interval(layer: Layer, weight: torch.Tensor, est: SpectralEstimate, settings: Settings) -> Interval:
    """The operator norm of a conv: exact-ish at a known input size, else a bound for every size."""
    kernel = tuple(weight.shape[2:])
    # A ConvTranspose is the adjoint of the conv with the same weight read as (out = dim 0), so
    # the dim-0 matrix bounds both; for a Conv that is sigma's own matrix.
    upper = est.upper
    if layer.is_transposed:
        upper = certify(weight.reshape(weight.shape[0], -1), tol=settings.tol, max_iter=settings.max_iter,
                        seed=settings.seed).upper
    geometry = layer.geometry
    if geometry is None:
        return Interval(None, math.sqrt(math.prod(kernel)) * upper, METHOD_CONV_NO_GEOMETRY)
    any_size = any_size_factor(kernel, geometry) * upper
    if math.prod(kernel) == 1 and geometry.groups == 1 and not any(geometry.padding):
        # A 1x1 conv applies W at every position: its norm is sigma(W) at any size.
        return Interval(est.sigma, est.upper, METHOD_CONV_1X1)
    if layer.input_spatial is None:
        return Interval(None, any_size, METHOD_CONV_ANY_SIZE)
    found = operator_interval(weight, geometry, layer.input_spatial, layer.is_transposed, tol=settings.tol,
                              max_iter=settings.max_iter, seed=settings.seed, upper_cap=any_size)
    return Interval(found.lower, found.upper, found.method)
