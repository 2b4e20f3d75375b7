"""Files lipcheck did not write: the Conv/ConvTranspose models PyTorch exported for ONNX's own
backend test suite (shipped inside the onnx wheel). Each interval must contain the operator norm
onnxruntime computes on basis vectors; normalize must leave a runnable file at the target."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lipcheck.api import inspect
from lipcheck.normalize import normalize
from tests.reference import exact_sigma

BACKEND_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
DATA = BACKEND_DATA / "pytorch-converted"
MODELS = sorted(p for p in DATA.glob("test_Conv*/model.onnx")) if DATA.is_dir() else []


def backend_models(*kinds: str) -> list[Path]:
    """The model.onnx files of ONNX's backend test data in the given folders (pytorch-converted,
    pytorch-operator, node, simple), sorted; folders this onnx wheel lacks give none."""
    return sorted(p for kind in kinds for p in (BACKEND_DATA / kind).glob("*/model.onnx"))


def _operator_norm(path: Path) -> float:
    """Largest singular value of the (bias-free) map x -> f(x) - f(0), built column by column by onnxruntime."""
    model = onnx.load(str(path))
    x = model.graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    for dim in x.type.tensor_type.shape.dim[:1]:
        dim.Clear()
        dim.dim_param = "batch"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    size = math.prod(shape[1:])
    basis = np.concatenate([np.zeros((1, size)), np.eye(size)]).astype(np.float32).reshape(size + 1, *shape[1:])
    (out,) = session.run(None, {x.name: basis})
    out = out.reshape(size + 1, -1).astype(np.float64)
    return exact_sigma(torch.from_numpy((out[1:] - out[:1]).T))


@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no backend test data")
@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.parent.name)
def test_conv_models_exported_by_pytorch(path: Path, tmp_path: Path) -> None:
    (layer,) = inspect(path).layers
    exact = _operator_norm(path)
    lip = layer.lipschitz
    assert lip is not None and lip.lower is not None and layer.input_size is not None
    # float32 bias subtraction in the reference: allow its rounding, not more.
    assert lip.lower <= exact * (1 + 1e-5) and exact <= lip.upper * (1 + 1e-5)
    assert (lip.upper - lip.lower) / lip.upper <= 1e-5
    out = tmp_path / "n.onnx"
    normalize(path, out)
    onnx.checker.check_model(str(out))
    assert 1 - 1e-4 <= _operator_norm(out) <= 1 + 1e-5


def test_the_third_party_corpus_is_there() -> None:
    assert len(MODELS) >= 20  # Conv1d/2d/3d, groups, depthwise, dilated, strided, padded, ConvTranspose2d


ALL_MODELS = backend_models("pytorch-converted")


@pytest.mark.skipif(not ALL_MODELS, reason="this onnx wheel ships no backend test data")
def test_graph_bound_is_never_below_the_lower_bound_on_pytorch_exports() -> None:
    """All 82 PyTorch-exported models of ONNX's backend tests: every network bound lipcheck gives is
    at least the lower bound it attains; the rest are unbounded with the reason named."""
    bounded = 0
    for path in ALL_MODELS:
        report = inspect(path)
        upper, lower = report.bound.upper, report.bound.lower
        if upper is None:
            assert report.bound.blocking, path
            continue
        bounded += 1
        if lower is not None:
            assert lower <= upper, path
    assert bounded >= len(ALL_MODELS) * 3 // 4
