"""Exact references the tests compare against: float64 SVDs and explicit operator matrices."""

from __future__ import annotations

import torch


def exact_sigma(matrix: torch.Tensor) -> float:
    """The largest singular value by a full float64 SVD."""
    return float(torch.linalg.svdvals(matrix.detach().to(torch.float64))[0])


def torch_convention_matrix(weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """The weight reshaped as torch.nn.utils.spectral_norm does (dim=1 for ConvTranspose)."""
    w = weight.detach().to(torch.float64)
    if transposed:
        w = w.transpose(0, 1)
    return w.reshape(w.shape[0], -1)


def with_singular_values(m: int, n: int, values: list[float], seed: int = 0) -> torch.Tensor:
    """A random m x n float64 matrix whose singular values are exactly ``values`` (padded with 0)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.zeros(m, n, dtype=torch.float64)
    k = min(m, n, len(values))
    s[range(k), range(k)] = torch.tensor(values[:k], dtype=torch.float64)
    return u @ s @ v.T
