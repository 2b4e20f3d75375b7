"""A layer's converged flag and iteration count describe the interval reported as its Lipschitz constant.

For a conv at a known input size that interval is the operator's, from another iteration than
sigma's (the reshaped weight's): sigma can be certified to 1e-6 while the operator interval is
wide. Every interval must also contain the operator norm, taken from the explicit operator matrix
(the Jacobian of F.conv2d in float64 at the input size) by a float64 SVD.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipcheck.api import inspect
from lipcheck.report.data import LayerReport
from lipcheck.settings import Settings
from lipcheck.spectral import conv as conv_module
from tests.reference import exact_sigma


def _export(channels: int, size: int, path: Path, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    torch.onnx.export(conv, (torch.randn(1, channels, size, size),), str(path), dynamo=False, opset_version=17)
    return conv


def _operator_norm(conv: nn.Conv2d, size: int) -> float:
    w = conv.weight.detach().double()
    x = torch.zeros(1, w.shape[1], size, size, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: F.conv2d(t, w, padding=conv.padding), x, vectorize=True)
    return exact_sigma(jac.reshape(-1, x.numel()))


def _check(entry: LayerReport, reference: float, tol: float) -> float:
    """Assert the interval contains the reference and the flag matches its width; return the width."""
    interval = entry.lipschitz
    assert interval is not None and interval.lower is not None
    assert interval.lower <= reference * (1 + 1e-12) and reference <= interval.upper * (1 + 1e-12)
    width = (interval.upper - interval.lower) / interval.upper
    assert entry.converged == (width <= tol)
    return width


def test_wide_operator_interval_is_not_converged_though_sigma_is(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # At 2x2 the circular-embedding upper end is far above the operator norm: the interval stays wide.
    monkeypatch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)  # the path large convs take, on a small one
    conv = _export(16, 2, tmp_path / "c.onnx")
    settings = Settings(max_iter=30, lower=False)
    (entry,) = inspect(tmp_path / "c.onnx", settings=settings).layers
    assert entry.lipschitz is not None and entry.lipschitz.method == conv_module.METHOD_OPERATOR
    assert entry.sigma is not None and entry.sigma_upper is not None
    assert entry.sigma_upper - entry.sigma <= settings.tol * entry.sigma_upper  # sigma did converge
    width = _check(entry, _operator_norm(conv, 2), settings.tol)
    assert width > 0.1
    assert not entry.converged
    assert 1 <= entry.iterations <= settings.max_iter


@pytest.mark.parametrize("tol", [0.05, 1e-3])
def test_operator_interval_flag_follows_its_width_against_the_tolerance(tmp_path: Path, monkeypatch, tol: float) -> None:  # type: ignore[no-untyped-def]
    # At 24x24 the interval is under 1% wide: within 5%, not within 0.1%.
    monkeypatch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)
    conv = _export(2, 24, tmp_path / "c.onnx", seed=1)
    (entry,) = inspect(tmp_path / "c.onnx", settings=Settings(tol=tol, lower=False)).layers
    assert entry.lipschitz is not None and entry.lipschitz.method == conv_module.METHOD_OPERATOR
    width = _check(entry, _operator_norm(conv, 24), tol)
    assert 1e-3 < width < 0.05
    assert entry.converged == (tol == 0.05)


def test_explicit_operator_interval_is_tight_and_converged(tmp_path: Path) -> None:
    conv = _export(8, 4, tmp_path / "c.onnx", seed=2)
    settings = Settings(lower=False)
    (entry,) = inspect(tmp_path / "c.onnx", settings=settings).layers
    assert entry.lipschitz is not None and entry.lipschitz.method == conv_module.METHOD_EXPLICIT
    _check(entry, _operator_norm(conv, 4), settings.tol)
    assert entry.converged


def test_explicit_operator_interval_cut_short_is_not_converged(tmp_path: Path) -> None:
    # Two Lanczos steps on the 128x128 operator cannot reach 1e-6; the flag must say so.
    conv = _export(8, 4, tmp_path / "c.onnx", seed=2)
    settings = Settings(max_iter=2, lower=False)
    (entry,) = inspect(tmp_path / "c.onnx", settings=settings).layers
    assert entry.lipschitz is not None and entry.lipschitz.method == conv_module.METHOD_EXPLICIT
    width = _check(entry, _operator_norm(conv, 4), settings.tol)
    assert width > settings.tol and not entry.converged
    assert entry.iterations <= 2
