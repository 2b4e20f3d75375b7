"""The same hand-built models give the same graph bound through every front end: ONNX (legacy and
dynamo exporters), TorchScript and torch.export, each with the input shape given."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lipcheck.api import inspect
from lipcheck.settings import Settings


class _Cnn(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act, self.pool, self.fc = act, nn.MaxPool2d(2), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.act(self.bn1(self.conv1(x))))
        y = y + self.act(self.bn2(self.conv2(y)))
        return self.fc(y.mean(dim=(2, 3)))


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    out: dict[str, tuple[nn.Module, tuple[int, ...]]] = {"mlp": (mlp, (1, 6))}
    for name, act in (("relu", nn.ReLU()), ("gelu", nn.GELU()), ("silu", nn.SiLU()), ("hardswish", nn.Hardswish())):
        out[f"cnn_{name}"] = (_Cnn(act), (1, 3, 8, 8))
    return out


def _save(net: nn.Module, shape: tuple[int, ...], how: str, folder: Path) -> Path:
    x = torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "onnx_legacy":
            torch.onnx.export(net, (x,), str(folder / "m.onnx"), dynamo=False, opset_version=17)
            return folder / "m.onnx"
        if how == "onnx_dynamo":
            torch.onnx.export(net, (x,), str(folder / "m.onnx"), dynamo=True, opset_version=18, external_data=False)
            return folder / "m.onnx"
        if how == "torchscript":
            torch.jit.trace(net, x).save(str(folder / "m.ts"))
            return folder / "m.ts"
        torch.export.save(torch.export.export(net, (x,)), str(folder / "m.pt2"))
        return folder / "m.pt2"


@pytest.mark.parametrize("name", sorted(_models()))
def test_front_ends_agree(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    net, shape = _models()[name]
    net.eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics that are not the identity
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    found = {}
    for how in ("onnx_legacy", "onnx_dynamo", "torchscript", "export"):
        folder = tmp_path / how
        folder.mkdir()
        report = inspect(_save(net, shape, how, folder), settings=Settings(input_shape=(shape,)))
        assert report.bound.graph is not None, (how, report.bound.blocking)
        found[how] = report.bound.graph
    reference = found["onnx_legacy"]
    assert all(value == pytest.approx(reference, rel=1e-5) for value in found.values()), found
