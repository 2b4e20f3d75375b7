"""Weights a conv reads that are no module's own: a buffer passed to F.conv1d (an STFT basis), and a
weight computed from constants in ``forward``, through TorchScript (traced and scripted) and ONNX.

References are float64: the exact operator norm of the strided conv (its Jacobian's SVD) and the
Jacobian of the whole network at sampled inputs, a lower bound on its Lipschitz constant.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from lipcheck.api import inspect
from lipcheck.settings import Settings

N_FFT, HOP, LENGTH = 16, 4, 64
SHAPE = (1, 1, LENGTH)


def _basis() -> torch.Tensor:
    k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)[:, None]
    t = torch.arange(N_FFT, dtype=torch.float64)[None, :]
    angle = 2 * math.pi * k * t / N_FFT
    return (torch.cat([torch.cos(angle), -torch.sin(angle)]) * torch.hann_window(N_FFT, dtype=torch.float64))[:, None, :]


class _Stft(torch.nn.Module):
    """The real and imaginary STFT parts as one strided conv with a stored basis."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("forward_basis", _basis().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.forward_basis, stride=4)


class _Computed(torch.nn.Module):
    """The same basis computed in ``forward`` from stored phases and window."""

    def __init__(self) -> None:
        super().__init__()
        k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)[:, None]
        t = torch.arange(N_FFT, dtype=torch.float64)[None, :]
        angle = 2 * math.pi * k * t / N_FFT
        self.register_buffer("phase", torch.cat([angle, angle + math.pi / 2])[:, None, :].float())
        self.register_buffer("window", torch.hann_window(N_FFT, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, torch.cos(self.phase) * self.window, stride=4)  # HOP; scripting reads no globals


class _Net(torch.nn.Module):
    def __init__(self, front: torch.nn.Module) -> None:
        super().__init__()
        self.stft = front
        self.fc = torch.nn.Conv1d(2 * (N_FFT // 2 + 1), 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.stft(x)))


def _net(front: type[torch.nn.Module]) -> _Net:
    torch.manual_seed(0)
    return _Net(front()).eval()


def _conv_norm(basis: torch.Tensor) -> float:
    """The exact operator norm of the strided conv on inputs of LENGTH samples (its Jacobian's top singular value)."""
    jac = torch.autograd.functional.jacobian(lambda v: F.conv1d(v, basis, stride=HOP), torch.zeros(SHAPE, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(jac.reshape(-1, LENGTH), 2))


def _sampled(net: torch.nn.Module) -> float:
    """The largest float64 Jacobian norm of the network over a few random inputs."""
    double = net.double()
    rng = np.random.default_rng(0)
    best = 0.0
    for _ in range(4):
        x = torch.from_numpy(rng.standard_normal(SHAPE))
        jac = torch.autograd.functional.jacobian(double, x).reshape(-1, LENGTH)
        best = max(best, float(torch.linalg.matrix_norm(jac, 2)))
    return best


def _save(net: torch.nn.Module, path: Path, how: str) -> Path:
    x = torch.randn(SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "trace":
            torch.jit.trace(net, x).save(str(path))
        elif how == "script":
            torch.jit.script(net).save(str(path))
        else:
            torch.onnx.export(net, x, str(path), dynamo=False, opset_version=17, do_constant_folding=False)
    return path


@pytest.mark.parametrize("front", [_Stft, _Computed])
@pytest.mark.parametrize("how", ["trace", "script", "onnx"])
def test_a_conv_weight_the_module_does_not_own_is_a_layer(tmp_path: Path, front: type[torch.nn.Module], how: str) -> None:
    net = _net(front)
    path = _save(net, tmp_path / ("net.onnx" if how == "onnx" else "net.pt"), how)
    report = inspect(path, settings=Settings(input_shape=(SHAPE,), lower=False))
    basis = [layer for layer in report.layers if layer.name != "fc.weight"]
    assert len(basis) == 1 and basis[0].op == "conv1d" and basis[0].shape == (2 * (N_FFT // 2 + 1), 1, N_FFT)
    assert "stft.forward_basis" not in {s.name for s in report.skipped}
    truth = _conv_norm(_basis())
    sigma = basis[0].lipschitz
    assert sigma.lower <= truth * (1 + 1e-6) and truth <= sigma.upper <= truth * (1 + 1e-3)
    assert report.bound.graph is not None, report.bound.blocking
    assert report.bound.graph >= _sampled(net) * (1 - 1e-9)


def test_an_onnx_conv_weight_computed_by_non_pass_through_ops(tmp_path: Path) -> None:
    phase = _Computed().phase.numpy()
    window = torch.hann_window(N_FFT).numpy()
    nodes = [
        helper.make_node("Cos", ["phase"], ["c"]),
        helper.make_node("Mul", ["c", "window"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["y"], strides=[HOP]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2 * (N_FFT // 2 + 1), 13])],
        [numpy_helper.from_array(phase, "phase"), numpy_helper.from_array(window, "window")],
    )
    path = tmp_path / "cos.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    report = inspect(path, settings=Settings(lower=False))
    assert [(layer.name, layer.op) for layer in report.layers] == [("w", "conv1d")]
    assert "Mul of constants" in (report.layers[0].note or "") and report.skipped == []
    truth = _conv_norm(_basis())
    assert truth <= report.bound.graph <= truth * (1 + 1e-3)
