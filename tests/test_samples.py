"""The bundled samples: every sigma against a float64 SVD, and the same numbers in every format."""

from __future__ import annotations

import pytest
import torch

from lipcheck.api import inspect
from lipcheck.formats import Format, detect
from lipcheck.settings import Settings
from tests.conftest import SAMPLES
from tests.reference import exact_sigma, torch_convention_matrix

FORMATS = ["pt", "torchscript.pt", "safetensors", "onnx"]


# Formats that know the same things give the same numbers: the weights alone (state_dict,
# safetensors), or the weights with the graph at the sample's input size (TorchScript, ONNX).
KNOWS_THE_SAME = {"pt": "pt", "safetensors": "pt", "torchscript.pt": "onnx", "onnx": "onnx"}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_same_numbers_in_every_format(name: str) -> None:
    shape = Settings(input_shape=((1, 3, 16, 16),) if name == "cnn" else ((1, 784),))
    reports = {ext: inspect(SAMPLES / f"{name}.{ext}", settings=shape) for ext in FORMATS}
    state = torch.load(SAMPLES / f"{name}.pt", weights_only=True)
    for ext, report in reports.items():
        base = reports[KNOWS_THE_SAME[ext]]
        assert [layer.name for layer in report.layers] == [layer.name for layer in base.layers], ext
        for layer, ref, loose in zip(report.layers, base.layers, reports["pt"].layers):
            exact = exact_sigma(torch_convention_matrix(state[layer.name]))
            assert layer.sigma == pytest.approx(exact, rel=1e-5), (ext, layer.name)
            assert layer.lipschitz is not None and ref.lipschitz is not None and loose.lipschitz is not None
            assert layer.lipschitz.upper == pytest.approx(ref.lipschitz.upper, rel=1e-9)
            if ref.lipschitz.lower is None:
                assert layer.lipschitz.lower is None
            else:
                assert layer.lipschitz.lower == pytest.approx(ref.lipschitz.lower, rel=1e-9)
            assert layer.lipschitz.upper <= loose.lipschitz.upper * (1 + 1e-12)
            assert layer.lipschitz.upper >= (exact if layer.op in ("linear", "gemm", "matmul") else 0.0)
        assert report.bound.product == pytest.approx(base.bound.product, rel=1e-9), ext


@pytest.mark.parametrize("path", sorted(p.name for p in SAMPLES.iterdir() if p.suffix != ".py"))
def test_every_sample_loads_with_certified_intervals(path: str) -> None:
    report = inspect(SAMPLES / path)
    assert report.layers
    for layer in report.layers:
        assert layer.converged
        assert layer.lipschitz is not None and layer.sigma is not None and layer.sigma_upper is not None
        assert layer.sigma <= layer.sigma_upper <= layer.sigma * (1 + 1e-6)
    assert report.bound.product is not None and report.bound.product > 0


def test_sample_formats_are_detected() -> None:
    assert detect(SAMPLES / "mlp.pt") is Format.TORCH
    assert detect(SAMPLES / "mlp.torchscript.pt") is Format.TORCHSCRIPT
    assert detect(SAMPLES / "mlp.safetensors") is Format.SAFETENSORS
    assert detect(SAMPLES / "mlp.onnx") is Format.ONNX
    assert detect(SAMPLES / "lightning.ckpt") is Format.TORCH
