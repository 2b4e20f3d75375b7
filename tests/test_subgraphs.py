"""The graph bound through If/Loop/Scan: subgraph bodies read outer values without naming them.

An If whose branches read a value computed from the input is not constant; its bound is the worst
branch's, each branch bounded with its own weights. The references are float64: exact singular
values of the weights, and the Jacobian of the model itself (run by onnxruntime in float64) by
central differences at sampled inputs, a lower bound on the true Lipschitz constant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcheck.api import inspect

D_IN, D_HID, D_OUT = 5, 7, 3
# Each layer's certified upper end is within the default tolerance (1e-6) of its exact sigma;
# the bounds below are products of three of them at most.
REL = 1e-5


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.standard_normal((D_HID, D_IN)),
        "b1": rng.standard_normal(D_HID),
        "W2": rng.standard_normal((D_HID, D_OUT)),
        "W3": 2.0 * rng.standard_normal((D_HID, D_OUT)),
        "W4": 0.5 * rng.standard_normal((D_HID, D_OUT)),
    }


def _sigma(matrix: np.ndarray) -> float:
    return float(np.linalg.svd(matrix.astype(np.float64), compute_uv=False)[0])


def _branch(name: str, reads: str, weight: str, w: dict[str, np.ndarray]) -> onnx.GraphProto:
    """A branch y = reads @ W that reads ``reads`` from the enclosing graph."""
    return helper.make_graph(
        [helper.make_node("MatMul", [reads, f"{name}_{weight}"], [f"{name}_y"], name=f"{name}_mm")],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_y", TensorProto.DOUBLE, [1, D_OUT])],
        [numpy_helper.from_array(w[weight], f"{name}_{weight}")],
    )


def _model(
    path: Path,
    cond_nodes: list[onnx.NodeProto],
    then_g: onnx.GraphProto,
    else_g: onnx.GraphProto,
    w: dict[str, np.ndarray],
    extra_inits: tuple[onnx.TensorProto, ...] = (),
    batch: int | str = 1,
) -> Path:
    """x -> Gemm(W1, b1) -> Relu -> r; y = If(cond, then_g, else_g), whose branches read r."""
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        *cond_nodes,
        helper.make_node("If", ["cond"], ["y"], name="gate", then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [batch, D_IN])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, D_OUT])],
        [numpy_helper.from_array(w["W1"], "W1"), numpy_helper.from_array(w["b1"], "b1"), *extra_inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _shape_condition() -> list[onnx.NodeProto]:
    """cond = (Shape(x)[0] == 1): constant for every input; known only where the batch size is."""
    return [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Constant", [], ["first"], name="first", value=numpy_helper.from_array(np.array(0, dtype=np.int64))),
        helper.make_node("Gather", ["shape", "first"], ["batch"], name="batch"),
        helper.make_node("Constant", [], ["one"], name="one", value=numpy_helper.from_array(np.array(1, dtype=np.int64))),
        helper.make_node("Equal", ["batch", "one"], ["cond"], name="eq"),
    ]


def _model_lower(path: Path, samples: int = 24, h: float = 1e-6) -> float:
    """max over sampled x of ||J(x)||_2, J by float64 central differences of the model itself."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)

    def f(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": x.reshape(1, D_IN)})[0].reshape(-1)

    best = 0.0
    for _ in range(samples):
        x = rng.standard_normal(D_IN)
        jac = np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(D_IN)], axis=1)
        best = max(best, _sigma(jac))
    return best


def _bool_cond(value: bool) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value), "cond")


def test_if_branches_reading_the_input_get_the_worst_branch_bound(tmp_path: Path) -> None:
    w = _weights(0)
    path = _model(tmp_path / "if.onnx", _shape_condition(), _branch("then", "r", "W2", w), _branch("else", "r", "W3", w), w, batch="N")
    report = inspect(path)
    graph = report.bound.graph
    assert graph is not None and graph > 0.0
    expected = _sigma(w["W1"]) * max(_sigma(w["W2"]), _sigma(w["W3"]))  # Relu is 1-Lipschitz
    assert expected <= graph <= expected * (1 + REL)
    # The model takes the then-branch (its condition holds); the bound covers its true constant.
    lower = _model_lower(path)
    assert lower > 0.0
    assert graph >= lower * (1 - 1e-6)
    inner = {entry.name: entry for entry in report.layers}
    assert inner["then_W2"].scope.endswith("then_branch") and inner["else_W3"].scope.endswith("else_branch")


def test_if_on_a_known_shape_takes_its_branch(tmp_path: Path) -> None:
    w = _weights(0)
    path = _model(tmp_path / "if.onnx", _shape_condition(), _branch("then", "r", "W2", w), _branch("else", "r", "W3", w), w)
    graph = inspect(path).bound.graph
    expected = _sigma(w["W1"]) * _sigma(w["W2"])  # the batch is 1: the then-branch, always
    assert graph is not None and expected <= graph <= expected * (1 + REL)
    assert graph >= _model_lower(path) * (1 - 1e-6)


def test_if_with_a_stored_condition_takes_its_branch(tmp_path: Path) -> None:
    w = _weights(1)
    path = _model(tmp_path / "if_const.onnx", [], _branch("then", "r", "W4", w), _branch("else", "r", "W3", w), w, extra_inits=(_bool_cond(True),))
    report = inspect(path)
    expected = _sigma(w["W1"]) * _sigma(w["W4"])
    graph = report.bound.graph
    assert graph is not None
    assert expected <= graph <= expected * (1 + REL)
    assert graph >= _model_lower(path) * (1 - 1e-6)


def test_nested_if_reads_an_outer_value_two_levels_up(tmp_path: Path) -> None:
    w = _weights(2)
    inner = helper.make_node("If", ["cond"], ["then_y"], name="inner", then_branch=_branch("t2", "r", "W2", w), else_branch=_branch("e2", "r", "W3", w))
    then_g = helper.make_graph([inner], "then", [], [helper.make_tensor_value_info("then_y", TensorProto.DOUBLE, [1, D_OUT])])
    path = _model(tmp_path / "nested.onnx", _shape_condition(), then_g, _branch("else", "r", "W4", w), w, batch="N")
    report = inspect(path)
    expected = _sigma(w["W1"]) * max(_sigma(w["W2"]), _sigma(w["W3"]), _sigma(w["W4"]))
    graph = report.bound.graph
    assert graph is not None
    assert expected <= graph <= expected * (1 + REL)
    assert graph >= _model_lower(path) * (1 - 1e-6)


def test_if_on_a_condition_from_the_input_is_unbounded_and_named(tmp_path: Path) -> None:
    w = _weights(3)
    cond = [
        helper.make_node("ReduceSum", ["r"], ["total"], name="total", keepdims=0),
        helper.make_node("Constant", [], ["zero"], name="zero", value=numpy_helper.from_array(np.array(0.0))),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="positive"),
    ]
    path = _model(tmp_path / "switch.onnx", cond, _branch("then", "r", "W2", w), _branch("else", "r", "W3", w), w)
    report = inspect(path)
    assert report.bound.graph is None
    reasons = [text for text in report.bound.assumptions if "gate (If)" in text]
    assert reasons and "condition" in reasons[0]


def test_if_whose_branches_read_only_constants_is_constant(tmp_path: Path) -> None:
    w = _weights(4)
    const = numpy_helper.from_array(np.ones((1, D_HID)), "k")
    then_g = _branch("then", "k", "W2", w)
    else_g = _branch("else", "k", "W3", w)
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("If", ["cond"], ["c"], name="gate", then_branch=then_g, else_branch=else_g),
        helper.make_node("MatMul", ["h", "P"], ["hp"], name="proj"),
        helper.make_node("Add", ["hp", "c"], ["y"], name="add"),
    ]
    proj = np.random.default_rng(5).standard_normal((D_HID, D_OUT))
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, D_IN])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, D_OUT])],
        [numpy_helper.from_array(w["W1"], "W1"), numpy_helper.from_array(w["b1"], "b1"), const, _bool_cond(False), numpy_helper.from_array(proj, "P")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "const.onnx"))
    report = inspect(tmp_path / "const.onnx")
    expected = _sigma(w["W1"]) * _sigma(proj)  # the If adds a constant
    assert report.bound.graph is not None
    assert expected <= report.bound.graph <= expected * (1 + REL)


@pytest.mark.parametrize("op", ["Loop", "Scan"])
def test_loop_and_scan_reading_the_input_are_unbounded_and_named(tmp_path: Path, op: str) -> None:
    if op == "Loop":
        body = helper.make_graph(
            [helper.make_node("Identity", ["c_in"], ["c_out"], name="keep"), helper.make_node("Relu", ["x"], ["step"], name="body_relu")],
            "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), helper.make_tensor_value_info("step", TensorProto.DOUBLE, [1, D_IN])],
        )
        node = helper.make_node("Loop", ["trips", "go"], ["y"], name="repeat", body=body)
        inits = [numpy_helper.from_array(np.array(3, dtype=np.int64), "trips"), numpy_helper.from_array(np.array(True), "go")]
        out = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3, 1, D_IN])
    else:
        inits = [numpy_helper.from_array(np.zeros((1, D_IN)), "s0"), numpy_helper.from_array(np.zeros((3, 1)), "seq")]
        body = helper.make_graph(
            [helper.make_node("Add", ["s_in", "x"], ["s_out"], name="acc"), helper.make_node("Identity", ["e"], ["e_out"], name="pass")],
            "body",
            [helper.make_tensor_value_info("s_in", TensorProto.DOUBLE, [1, D_IN]), helper.make_tensor_value_info("e", TensorProto.DOUBLE, [1])],
            [helper.make_tensor_value_info("s_out", TensorProto.DOUBLE, [1, D_IN]), helper.make_tensor_value_info("e_out", TensorProto.DOUBLE, [1])],
        )
        node = helper.make_node("Scan", ["s0", "seq"], ["y", "ys"], name="repeat", body=body, num_scan_inputs=1)
        out = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, D_IN])
    graph = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, D_IN])], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / f"{op}.onnx"))
    report = inspect(tmp_path / f"{op}.onnx")
    assert report.bound.graph is None
    assert any(f"repeat ({op})" in text for text in report.bound.assumptions)
