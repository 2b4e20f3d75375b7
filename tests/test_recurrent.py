"""Recurrent layers: W and R of LSTM/GRU/RNN reported as layers (stacked and per gate) in ONNX,
state_dicts and TorchScript; the recursion over time is not bounded and names its node."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipcheck.api import inspect


def _sigma(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.detach().to(torch.float64), 2))


def _check(layers: dict[str, object], name: str, w: torch.Tensor, gates: tuple[str, ...]) -> None:
    stacked = layers[name]
    assert _sigma(w) <= stacked.lipschitz.upper <= _sigma(w) * (1 + 1e-5)  # type: ignore[attr-defined]
    rows = w.shape[0] // len(gates)
    for k, gate in enumerate(gates if len(gates) > 1 else ()):
        part = _sigma(w[k * rows : (k + 1) * rows])
        assert part <= layers[f"{name}[{gate}]"].lipschitz.upper <= part * (1 + 1e-5)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cell,gates", [("LSTM", ("i", "o", "f", "c")), ("GRU", ("z", "r", "h")), ("RNN", ("h",))])
def test_onnx_recurrent_weights_are_layers_and_the_recursion_is_named(tmp_path: Path, cell: str, gates: tuple[str, ...]) -> None:
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    net = getattr(torch.nn, cell)(5, 3, batch_first=True).eval()
    torch.onnx.export(net, torch.randn(1, 7, 5), str(tmp_path / "r.onnx"), dynamo=False, opset_version=17)
    report = inspect(tmp_path / "r.onnx")
    by_name = {layer.name: layer for layer in report.layers}
    model = onnx.load(str(tmp_path / "r.onnx"))
    node = next(n for n in model.graph.node if n.op_type == cell)
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    for name in node.input[1:3]:
        _check(by_name, name, inits[name][0], gates)
    assert report.bound.graph is None
    assert any(f"({cell}): a recurrent layer" in line for line in report.bound.blocking)


class _Wrapped(torch.nn.Module):
    def __init__(self, rnn: torch.nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


@pytest.mark.parametrize("how", ["state_dict", "torchscript"])
@pytest.mark.parametrize("cell,gates", [("LSTM", ("i", "f", "g", "o")), ("GRU", ("r", "z", "n")), ("RNN", ("h",))])
def test_torch_recurrent_weights_are_layers(tmp_path: Path, how: str, cell: str, gates: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    net = getattr(torch.nn, cell)(5, 3, num_layers=2, bidirectional=True).eval()
    path = tmp_path / ("r.pt" if how == "state_dict" else "r.ts")
    if how == "state_dict":
        torch.save(net.state_dict(), path)
    else:
        torch.jit.trace(_Wrapped(net), torch.randn(7, 1, 5)).save(str(path))
    report = inspect(path)
    by_name = {layer.name: layer for layer in report.layers}
    prefix = "" if how == "state_dict" else "rnn."
    for name, w in net.state_dict().items():
        if name.startswith("weight_"):
            _check(by_name, prefix + name, w, gates)
    if how == "torchscript":
        assert report.bound.graph is None and report.bound.blocking
