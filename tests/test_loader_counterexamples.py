"""Layers whose interval once missed the operator the model computes: the loader read another one.

Each reference is built without lipcheck's own conv code: onnxruntime (or torch) applied to every
basis vector gives the operator matrix, and float64 SVD its norm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lipcheck.api import inspect
from lipcheck.settings import Settings


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # one every onnxruntime in the supported range loads
    return model


def _ort_norm(path: Path, shape: tuple[int, ...]) -> float:
    """The norm of the bias-free linear map onnxruntime computes, column by column, in float64."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = int(np.prod(shape))
    columns = [session.run(None, {"x": np.eye(size, dtype=np.float64)[i].reshape(shape).astype(np.float32)})[0].reshape(-1) for i in range(size)]
    return float(np.linalg.svd(np.stack(columns, 1).astype(np.float64), compute_uv=False)[0])


@pytest.mark.parametrize(
    ("weight_shape", "n", "output_shape", "auto_pad"),
    [
        ((1, 1, 4), 5, 11, "SAME_LOWER"),
        ((1, 1, 4), 5, 11, "NOTSET"),
        ((1, 1, 4), 5, 6, "NOTSET"),
        ((2, 3, 3), 6, 9, "NOTSET"),
        ((2, 3, 3), 6, 14, "SAME_UPPER"),
    ],
)
def test_conv_transpose_output_shape_sets_its_pads(tmp_path: Path, weight_shape: tuple[int, ...], n: int, output_shape: int, auto_pad: str) -> None:
    weight = np.random.default_rng(n + output_shape).integers(-3, 4, size=weight_shape).astype(np.float32)  # exact in float32
    attrs = {"strides": [2], "output_shape": [output_shape]}
    if auto_pad != "NOTSET":
        attrs["auto_pad"] = auto_pad
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "W"], ["y"], **attrs)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight_shape[0], n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight_shape[1], output_shape])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    path = tmp_path / "t.onnx"
    onnx.save(_model(graph), str(path))
    truth = _ort_norm(path, (1, weight_shape[0], n))
    (layer,) = inspect(path, settings=Settings(lower=False)).layers
    assert layer.lipschitz is not None
    assert layer.lipschitz.upper >= truth and (layer.lipschitz.lower is None or layer.lipschitz.lower <= truth * (1 + 1e-12))


def test_a_float32_weight_chain_is_the_product_onnxruntime_computes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    w, s = rng.standard_normal((6, 5)).astype(np.float32), np.float32(1.1)
    nodes = [helper.make_node("Mul", ["W", "s"], ["Ws"]), helper.make_node("MatMul", ["x", "Ws"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(s), "s")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(_model(graph), str(path))
    truth = float(np.linalg.svd((w * s).astype(np.float64), compute_uv=False)[0])  # one float32 rounding per entry, as onnxruntime
    (layer,) = inspect(path, settings=Settings(lower=False, tol=1e-12)).layers
    assert layer.lipschitz is not None and layer.lipschitz.lower is not None
    assert layer.lipschitz.lower <= truth <= layer.lipschitz.upper


class _PaddedThenConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=0, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (2, 2, 2, 2)))


class _TwoSizes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.down = nn.Conv2d(1, 1, 4, stride=4, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.down(self.conv(x)))


def _conv_norm(weight: torch.Tensor, size: int, pad: int) -> float:
    matrix = torch.autograd.functional.jacobian(lambda v: F.conv2d(v.reshape(1, 1, size, size), weight, padding=pad).reshape(-1), torch.zeros(size * size))
    return float(torch.linalg.matrix_norm(matrix.double(), ord=2))


@pytest.mark.parametrize("archive", ["trace", "script", "module"])
def test_a_conv_is_certified_at_every_size_it_sees(tmp_path: Path, archive: str) -> None:
    for make, shape, truths in ((_PaddedThenConv, (1, 1, 3, 3), [(7, 0)]), (_TwoSizes, (1, 1, 8, 8), [(8, 1), (2, 1)])):
        module = make().eval()
        source: object = module
        if archive != "module":
            source = tmp_path / f"{make.__name__}.pt"
            (torch.jit.script(module) if archive == "script" else torch.jit.trace(module, torch.zeros(shape))).save(str(source))
        report = inspect(source, settings=Settings(lower=False, input_shape=(shape,)))  # type: ignore[arg-type]
        layer = next(layer for layer in report.layers if layer.name == "conv.weight")
        truth = max(_conv_norm(module.conv.weight.detach(), size, pad) for size, pad in truths)
        assert layer.lipschitz is not None and layer.lipschitz.upper >= truth * (1 - 1e-12), (make.__name__, layer.lipschitz, truth)
        assert layer.lipschitz.lower is None or layer.lipschitz.lower <= truth * (1 + 1e-12)
