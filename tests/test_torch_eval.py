"""lipcheck's IR evaluates itself in torch (float64): it agrees with onnxruntime on ONNX's backend
test models, generated graphs with If branches, and the bundled samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lipcheck.formats import onnx_graph
from lipcheck.graph.torch_eval import Unsupported, evaluate, supported
from tests.conftest import SAMPLES
from tests.test_differential import _input_shapes
from tests.test_third_party_onnx import backend_models

REL = 1e-4  # onnxruntime computes in float32; the IR in float64
MODELS = backend_models("pytorch-converted", "pytorch-operator", "simple")


def _float_inputs(path: Path) -> list[np.ndarray] | None:
    shapes = _input_shapes(onnx.load(str(path), load_external_data=False))
    if shapes is None or any(not shape or np.prod(shape) > 200_000 for shape in shapes):
        return None
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def _agrees(path: Path) -> bool | None:
    """True when the float64 IR matches onnxruntime; None when the model is out of scope here."""
    inputs = _float_inputs(path)
    if inputs is None:
        return None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception:
        return None
    graph = onnx_graph.load(path).graph
    if graph is None or supported(graph):
        return None
    expected = session.run(None, {f.name: x for f, x in zip(session.get_inputs(), inputs)})
    try:
        got = evaluate(graph, [torch.from_numpy(x) for x in inputs])
    except Unsupported:
        return None
    for want, have in zip(expected, got):
        want = np.asarray(want, dtype=np.float64)
        have = have.detach().numpy().astype(np.float64)
        scale = max(1.0, float(np.nanmax(np.abs(want))) if want.size and not np.isnan(want).all() else 1.0)
        if want.shape != have.shape or not np.allclose(have, want, rtol=REL, atol=REL * scale, equal_nan=True):
            return False
    return True


@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no backend test data")
def test_the_ir_matches_onnxruntime_on_backend_test_models() -> None:
    results = {path.parent.name: _agrees(path) for path in MODELS}
    wrong = sorted(name for name, ok in results.items() if ok is False)
    checked = [name for name, ok in results.items() if ok]
    assert not wrong, wrong
    assert len(checked) >= 60, len(checked)


@pytest.mark.parametrize("name", ["mlp.onnx", "cnn.onnx"])
def test_the_ir_matches_onnxruntime_on_the_samples(name: str) -> None:
    assert _agrees(SAMPLES / name) is True


def test_if_branches_read_outer_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w1, w2, w3 = (rng.standard_normal((4, 4)).astype(np.float32) for _ in range(3))
    then = helper.make_graph([helper.make_node("MatMul", ["h", "w2"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("MatMul", ["h", "w3"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["m"]),
            helper.make_node("Relu", ["m"], ["h"]),
            helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(w3, "w3"),
            numpy_helper.from_array(np.array(False), "cond"),
        ],
    )
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((1, 4))
    (y,) = evaluate(onnx_graph.load(path).graph, [torch.from_numpy(x)])  # type: ignore[arg-type]
    expected = np.maximum(x @ w1.astype(np.float64), 0) @ w3.astype(np.float64)
    assert y.dtype == torch.float64 and np.allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_an_op_it_cannot_run_is_named(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["y"], name="odd")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "h.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    ir = onnx_graph.load(path).graph
    assert ir is not None and supported(ir) == ["odd (Hardmax)"]
    with pytest.raises(Unsupported, match="odd"):
        evaluate(ir, [torch.zeros(1, 4)])


def test_a_contrib_op_never_borrows_a_standard_ops_semantics(tmp_path: Path) -> None:
    """com.microsoft's Gelu is not ONNX's: it is named with its domain, unknown to the rules and the evaluator."""
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], name="contrib", domain="com.microsoft")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "c.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]), str(path))
    ir = onnx_graph.load(path).graph
    assert ir is not None and supported(ir) == ["contrib (com.microsoft.Gelu)"]
    from lipcheck.api import inspect

    assert inspect(path).bound.graph is None


def test_gather_of_one_element_gives_a_scalar(tmp_path: Path) -> None:
    # A box decoder's stride reads one element of a 1-D tensor with a scalar index: a 0-d result.
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Reshape", ["s", "one"], ["v"]),
            helper.make_node("Gather", ["v", "zero"], ["g"], axis=0),
            helper.make_node("Mul", ["x", "g"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "one"), numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")],
    )
    path = tmp_path / "gather.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert _agrees(path) is True


_RESIZES = [
    ("nearest", transform, rounding, scale)
    for transform in ("half_pixel", "asymmetric", "pytorch_half_pixel", "align_corners", "tf_half_pixel_for_nn")
    for rounding in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
    for scale in (2.0, 1.3, 0.6)
] + [("linear", transform, "floor", scale) for transform in ("half_pixel", "pytorch_half_pixel", "align_corners") for scale in (2.0, 1.5, 0.5)]


@pytest.mark.parametrize(("mode", "transform", "rounding", "scale"), _RESIZES)
def test_resize_reads_the_inputs_onnxruntime_reads(tmp_path: Path, mode: str, transform: str, rounding: str, scale: float) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, None, None])
    scales = numpy_helper.from_array(np.array([1.0, 1.0, scale, scale], dtype=np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, coordinate_transformation_mode=transform, nearest_mode=rounding)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [scales]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "resize.onnx"
    onnx.save(model, str(path))
    assert _agrees(path) in (True, None)
    graph = onnx_graph.load(path).graph
    assert graph is not None
    values = np.random.default_rng(1).standard_normal((1, 2, 5, 7)).astype(np.float32)
    try:
        got = evaluate(graph, [torch.from_numpy(values)])[0].numpy()
    except Unsupported:
        return  # a mode the IR declines: no lower bound rests on it
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": values})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("n", "m", "transform"),
    [(3, 5, "half_pixel"), (3, 10, "pytorch_half_pixel"), (7, 18, "pytorch_half_pixel"), (4, 1, "half_pixel"), (4, 1, "pytorch_half_pixel")],
)
def test_linear_resize_to_given_sizes_matches_onnxruntime(tmp_path: Path, n: int, m: int, transform: str) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, m, m])
    sizes = numpy_helper.from_array(np.array([1, 1, m, m], dtype=np.int64), "sizes")
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode=transform)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [sizes]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "resize.onnx"
    onnx.save(model, str(path))
    graph = onnx_graph.load(path).graph
    assert graph is not None
    values = np.random.default_rng(2).standard_normal((1, 1, n, n)).astype(np.float32)
    try:
        got = evaluate(graph, [torch.from_numpy(values)])[0].numpy()
    except Unsupported:
        assert (m, transform) == (1, "pytorch_half_pixel")  # torch has no such transform for a size of 1
        return
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": values})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_constant_too_large_to_fold_is_computed_by_the_ir(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1 << 22 | 1], np.int64), "n"),
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([8], np.int64), "s1"),
        numpy_helper.from_array(np.array([1, 2, 2, 2], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("ConstantOfShape", ["n"], ["big"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Slice", ["big", "s0", "s1"], ["part"]),
        helper.make_node("Reshape", ["part", "shape"], ["b"]),
        helper.make_node("Add", ["c", "b"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "big.onnx"
    onnx.save(model, str(path))
    assert _agrees(path) is True


def test_the_float64_twin_of_an_old_file_runs_in_onnxruntime(tmp_path: Path) -> None:
    from lipcheck.graph.evaluate import Float64Model

    c = numpy_helper.from_array(np.array([1.0, 2.0, 3.0, 4.0], np.float32), "c")
    nodes = [
        helper.make_node("Add", ["c", "c"], ["s"]),
        helper.make_node("Cast", ["s"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "f"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]), helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])]
    graph_proto = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [c])
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    exact = Float64Model(onnx.load(str(path)), onnx_graph.load(path).graph)
    assert exact.backend == "onnxruntime"
    np.testing.assert_allclose(exact([np.ones((1, 4), np.float32)])[0], [[2.0, 4.0, 6.0, 8.0]])
