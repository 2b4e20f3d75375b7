"""Weights of extreme size: every interval still contains the truth, and nothing raises.

Operator norms scale exactly with the weight, so one float64 SVD of the operator at scale 1 gives
the truth at every scale; the intervals must contain it (tiny weights once gave [3.7e-106, 3.7e-106]
around a truth of 1.9e-100, and weights of 1e20 an internal error).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lipcheck.api import inspect
from lipcheck.model import ConvGeometry
from lipcheck.settings import Settings
from lipcheck.spectral import conv
from lipcheck.spectral.dense import certify

_GEOMETRY = ConvGeometry(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
_SPATIAL = (6, 6)  # 64 channels: 2304 columns, above the explicit limit, so the Fourier path runs


@pytest.fixture(scope="module")
def conv_case() -> tuple[torch.Tensor, float]:
    weight = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 24.0
    assert 64 * math.prod(_SPATIAL) > conv.EXPLICIT_MAX_SIDE
    matrix = conv.explicit_matrix(weight, _GEOMETRY, _SPATIAL, False)
    return weight, float(torch.linalg.matrix_norm(matrix, ord=2))


@pytest.mark.parametrize("scale", [1e-160, 1e-100, 1e-85, 1e-30, 1.0, 1e12, 1e20, 1e150])
def test_conv_operator_intervals_scale_with_the_weight(conv_case: tuple[torch.Tensor, float], scale: float) -> None:
    weight, truth = conv_case
    found = conv.operator_interval(weight * scale, _GEOMETRY, _SPATIAL, False, tol=1e-3, max_iter=200, seed=0)
    assert found.lower * (1 - 1e-12) <= truth * scale <= found.upper * (1 + 1e-12)
    assert found.lower >= 0.9 * truth * scale  # the lower end is found, not left at 0
    assert conv.operator_upper(weight * scale, _GEOMETRY, _SPATIAL, False, tol=1e-3, max_iter=200, seed=0) >= truth * scale * (1 - 1e-12)


def test_an_operator_that_reads_only_padding_is_bracketed_without_an_error() -> None:
    weight = torch.randn(64, 64, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    geometry = ConvGeometry(stride=(1, 3), padding=(0, 5, 0, 0), dilation=(1, 1), groups=1)
    found = conv.operator_interval(weight, geometry, (40, 1), False, tol=1e-3, max_iter=50, seed=0)
    assert found.lower == 0.0 <= found.upper


@pytest.mark.parametrize("scale", [1e-310, 1e-300, 1e300])
def test_dense_intervals_of_subnormal_and_huge_weights(scale: float) -> None:
    matrix = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    truth = float(torch.linalg.matrix_norm(matrix, ord=2))
    found = certify(matrix * scale, tol=1e-6, max_iter=100, seed=0)
    scaled = float(torch.linalg.matrix_norm(matrix * scale, ord=2)) if scale > 1e-300 else truth * scale
    assert found.sigma <= scaled * (1 + 1e-9) and found.upper >= scaled * (1 - 1e-9)
    assert found.sigma > 0.0


@pytest.mark.parametrize("scale", [1e-30, 1e25])
def test_chains_whose_products_under_or_overflow_fall_back_to_the_graph_bound(tmp_path: Path, scale: float) -> None:
    """Six 3×3 layers with LeakyRelu between: the multipliers' optimization meets 0 or inf; the graph bound stands."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    name = "x"
    for i in range(6):
        inits.append(numpy_helper.from_array((rng.normal(size=(3, 3)) * scale).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [name, f"w{i}"], [f"h{i}"]))
        name = f"h{i}"
        if i < 5:
            nodes.append(helper.make_node("LeakyRelu", [name], [f"a{i}"], alpha=0.1))
            name = f"a{i}"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])], [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3])], inits
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    bound = inspect(path, settings=Settings(lower=False)).bound
    assert bound.upper is not None and bound.upper > 0.0


def test_an_input_too_large_for_memory_gets_the_bound_for_every_size(tmp_path: Path) -> None:
    weight = np.random.default_rng(3).standard_normal((4, 3, 3, 3)).astype(np.float32)
    side = 1_000_000  # 3e12 inputs: no operator at this size fits in memory
    node = helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, side, side])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    (layer,) = inspect(path, settings=Settings(lower=False)).layers
    assert layer.lipschitz is not None and layer.lipschitz.lower is None
    assert "too large" in layer.lipschitz.method
    # The bound holds at every size, so it must hold at a size whose operator float64 SVD can take.
    w = torch.from_numpy(weight).double()
    matrix = conv.explicit_matrix(w, _GEOMETRY, (7, 7), False)
    assert layer.lipschitz.upper >= float(torch.linalg.matrix_norm(matrix, ord=2))
    assert layer.lipschitz.upper <= 3 * float(torch.linalg.matrix_norm(w.reshape(4, -1), ord=2)) * (1 + 1e-5)  # certified sigma to --tol
