"""The one weight edit every writer applies: divide in float64, then store in the weight's own dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def divided(tensor: torch.Tensor, divisor: float) -> torch.Tensor:
    """``tensor / divisor`` computed in float64 and cast back to the tensor's dtype (a new tensor)."""
    import torch

    return (tensor.detach().to(torch.float64) / divisor).to(tensor.dtype)


def divided_array(array: np.ndarray, divisor: float) -> np.ndarray:
    """The numpy form of :func:`divided`."""
    return (array.astype(np.float64) / divisor).astype(array.dtype)
