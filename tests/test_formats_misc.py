"""TorchScript and safetensors loaders, format dispatch, and a dynamo-exported ONNX graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lipcheck.formats as formats
from lipcheck.api import inspect
from tests.reference import exact_sigma, torch_convention_matrix


def test_every_format_is_dispatched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Format member reaches its own loader (the dispatch is exhaustive)."""
    seen = []
    for fmt in formats.Format:
        monkeypatch.setattr(formats, "detect", lambda path, fmt=fmt: fmt)
        try:
            formats.load(tmp_path / "nothing")
        except formats.LipcheckError as exc:
            seen.append((fmt, str(exc)))
        except AssertionError:  # pragma: no cover
            pytest.fail(f"{fmt} has no loader")
    assert len(seen) == len(formats.Format)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.up = nn.ConvTranspose1d(8, 4, 3, stride=2)
        self.head = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        x, _ = self.attn(x, x, x)
        y = self.up(x.transpose(1, 2)).mean(-1)
        return self.head(y)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_modules_give_the_layer_kinds(tmp_path: Path, how: str) -> None:
    torch.manual_seed(0)
    net = _Block().eval()
    ids = torch.randint(0, 20, (1, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, ids, check_trace=False)
    scripted.save(str(tmp_path / "block.pt"))
    report = inspect(tmp_path / "block.pt")
    assert report.model_format == "torchscript"
    ops = {layer.name: layer.op for layer in report.layers}
    assert ops == {"attn.in_proj_weight": "linear", "attn.out_proj.weight": "linear", "up.weight": "conv_transpose1d", "head.weight": "linear"}
    assert [s.name for s in report.skipped] == ["embed.weight"]
    up = next(layer for layer in report.layers if layer.name == "up.weight")
    assert up.sigma == pytest.approx(exact_sigma(torch_convention_matrix(net.up.weight, transposed=True)), rel=1e-5)


def test_safetensors_natural_order_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layers = {f"layers.{i}.weight": torch.randn(4, 4) for i in (0, 2, 10)}
    save_file(layers, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    report = inspect(tmp_path / "m.safetensors")
    assert [layer.name for layer in report.layers] == ["layers.0.weight", "layers.2.weight", "layers.10.weight"]
    for layer in report.layers:
        assert layer.sigma == pytest.approx(exact_sigma(layers[layer.name]), rel=1e-5)


def test_dynamo_exported_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    path = tmp_path / "dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 6, 6),), str(path), dynamo=True, verbose=False)
    report = inspect(path)
    assert [layer.op for layer in report.layers] == ["conv2d", "gemm"]
    assert report.layers[1].sigma == pytest.approx(exact_sigma(net[3].weight), rel=1e-5)


def test_every_format_has_one_handler() -> None:
    from lipcheck.formats.handlers import HANDLERS

    assert set(HANDLERS) == {fmt.value for fmt in formats.Format}


def test_safetensors_float8_complex_and_unsigned_tensors_are_skipped_for_what_they_are(tmp_path: Path) -> None:

    tensors = {
        "a.weight": torch.randn(4, 4).to(torch.float8_e4m3fn),
        "b.weight": torch.randn(3, 3).to(torch.complex64),
        "c.weight": torch.randint(0, 5, (3, 3)).to(torch.uint16),
        "d.weight": torch.randn(3, 3),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    report = inspect(tmp_path / "m.safetensors")
    reasons = {skip.name: skip.reason for skip in report.skipped}
    assert "float8" in reasons["a.weight"] and "complex" in reasons["b.weight"] and reasons["c.weight"].startswith("uint16")
    assert [layer.name for layer in report.layers] == ["d.weight"]
