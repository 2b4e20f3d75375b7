"""Spectral normalization for training code, with a conv's true operator norm (power iteration carried across training steps).

torch's ``spectral_norm`` divides a conv weight by the reshaped kernel's sigma, which is not the
conv's Lipschitz constant. ``spectral_normalize(module)`` registers a parametrization on every
Linear and Conv that divides by the operator's own norm, estimated as torch's power iteration is: a persistent
vector, one power-iteration step (the layer and its exact adjoint) per training forward, no
gradient through the vector. Convs learn their input size from the first forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

_CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


class OperatorNorm(nn.Module):
    """Parametrization W -> W / ||A_W||, with A_W the layer's linear map at its input size."""

    def __init__(self, layer: nn.Module, n_power_iterations: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self._conv: Callable[..., torch.Tensor] | None = None
        self.stride: Any = 1
        self.padding: Any = 0
        self.dilation: Any = 1
        self.groups: Any = 1
        self._x: torch.Tensor
        for cls, fn in _CONVS.items():
            if type(layer) is cls:
                self._conv = fn
        if self._conv is not None:
            self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
            if getattr(layer, "padding_mode", "zeros") != "zeros":
                raise ValueError("spectral_normalize supports zero-padded convs only")
        self.register_buffer("_x", torch.empty(0))

    def _apply_op(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self._conv is None:
            return x @ weight.T
        return self._conv(x, weight, stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def start(self, input_shape: torch.Size, weight: torch.Tensor) -> None:
        """Create the persistent power-iteration vector for one input sample of this shape."""
        shape = (1, *input_shape[1:]) if self._conv is not None else (1, weight.shape[1])
        x = torch.randn(shape, device=weight.device, dtype=weight.dtype)
        self._x = x / x.norm()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self._x.numel() == 0:  # input size unknown yet (before the first forward): identity
            self.start(
                torch.Size([1, weight.shape[1], *([1] * (weight.dim() - 2))])
                if self._conv is None
                else torch.Size([1, weight.shape[1] * self.groups, *([weight.shape[2]] * (weight.dim() - 2))]),
                weight,
            )
        w = weight.detach()
        x = self._x
        if self.training:
            with torch.no_grad():
                for _ in range(self.n_power_iterations):
                    xr = x.clone().requires_grad_(True)
                    with torch.enable_grad():
                        y = self._apply_op(w, xr)
                        (g,) = torch.autograd.grad(y, xr, y)
                    x = g / (g.norm() + self.eps)
                self._x = x
        y = self._apply_op(weight, x)  # the gradient flows through the weight, not through the vector
        return weight / (y.norm() + self.eps)


def spectral_normalize(module: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Register operator-norm spectral normalization on every Linear and Conv1d/2d/3d of ``module``."""
    for sub in list(module.modules()):
        is_conv = type(sub) in _CONVS  # read before parametrize swaps the class
        if isinstance(sub, nn.Linear) or is_conv:
            norm = OperatorNorm(sub, n_power_iterations)
            parametrize.register_parametrization(sub, "weight", norm)
            if is_conv:
                sub.register_forward_pre_hook(_size_hook(norm))
    return module


def _size_hook(norm: OperatorNorm) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def hook(layer: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if norm._x.numel() == 0 or norm._x.shape[1:] != x.shape[1:]:
            original: torch.Tensor = layer.parametrizations["weight"].original  # type: ignore[union-attr, index]
            norm.start(x.shape, original.detach())

    return hook
