"""Operator-norm spectral normalization for training (one power step per forward, with the true conv norm)."""

from __future__ import annotations

import pytest
import torch

from lipcheck.training import spectral_normalize
from tests.reference import exact_sigma


def _operator_norm(layer: torch.nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.zeros(shape, dtype=torch.float64)
    weight = layer.weight.detach().double()
    fn = (
        (lambda t: torch.nn.functional.conv2d(t, weight, stride=layer.stride, padding=layer.padding))
        if isinstance(layer, torch.nn.Conv2d)
        else (lambda t: t @ weight.T)
    )
    jac = torch.autograd.functional.jacobian(fn, x)
    return exact_sigma(jac.reshape(-1, x.numel()))


def test_layers_reach_operator_norm_one_and_train() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, stride=2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 5 * 5, 4)).double()
    spectral_normalize(net)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    x = torch.randn(16, 3, 10, 10, dtype=torch.float64)
    net.train()
    for _ in range(200):  # power iteration advances one step per forward, as in Algorithm 1
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    net.eval()
    conv_norm = _operator_norm(net[0], (1, 3, 10, 10))
    linear_norm = _operator_norm(net[3], (1, 200))
    assert conv_norm == pytest.approx(1.0, rel=1e-2)
    assert linear_norm == pytest.approx(1.0, rel=1e-2)
    # torch's reshaped-kernel convention would have left this conv's operator norm far from 1.
    reshaped = exact_sigma(net[0].weight.detach().reshape(8, -1))
    assert abs(reshaped - 1.0) > 0.05
