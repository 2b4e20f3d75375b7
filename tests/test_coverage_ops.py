"""Op rules checked against float64 references: gates x·g(x), normalization constants, folding,
quantized layers and the registry itself."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcheck.api import inspect
from lipcheck.graph.rules import RULES, rule
from lipcheck.graph.rules.activations import GELU, MISH, SILU


def _model(path: Path, nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], n: int = 4) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _sup_slope(f, lo: float = -20.0, hi: float = 20.0) -> float:  # type: ignore[no-untyped-def]
    x = np.linspace(lo, hi, 4_000_001)
    return float(np.abs(np.gradient(f(x), x)).max())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


GATES = {
    "silu": ([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], {}, lambda x: x * _sigmoid(x), SILU),
    "silu_beta": (
        [helper.make_node("Mul", ["x", "b"], ["bx"]), helper.make_node("Sigmoid", ["bx"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])],
        {"b": np.array(1.702)},
        lambda x: x * _sigmoid(1.702 * x),
        SILU,
    ),
    "hardswish_hs": (
        [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5), helper.make_node("Mul", ["x", "h"], ["y"])],
        {},
        lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
        1.5,
    ),
    "hardswish_clip": (
        [
            helper.make_node("Add", ["x", "three"], ["a"]),
            helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
            helper.make_node("Mul", ["x", "c"], ["m"]),
            helper.make_node("Div", ["m", "six"], ["y"]),
        ],
        {"three": np.array(3.0), "zero": np.array(0.0), "six": np.array(6.0)},
        lambda x: x * np.clip(x + 3, 0, 6) / 6,
        1.5,
    ),
    "gelu_erf": (
        [
            helper.make_node("Div", ["x", "r2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]),
            helper.make_node("Mul", ["x", "a"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["y"]),
        ],
        {"r2": np.array(math.sqrt(2)), "one": np.array(1.0), "half": np.array(0.5)},
        lambda x: 0.5 * x * (1 + __import__("scipy.special").special.erf(x / math.sqrt(2))),
        GELU,
    ),
    "gelu_tanh": (
        [
            helper.make_node("Pow", ["x", "three"], ["p"]),
            helper.make_node("Mul", ["p", "k"], ["pk"]),
            helper.make_node("Add", ["x", "pk"], ["u"]),
            helper.make_node("Mul", ["u", "c"], ["uc"]),
            helper.make_node("Tanh", ["uc"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["a"]),
            helper.make_node("Mul", ["a", "half"], ["h"]),
            helper.make_node("Mul", ["x", "h"], ["y"]),
        ],
        {"three": np.array(3.0), "k": np.array(0.044715), "c": np.array(math.sqrt(2 / math.pi)), "one": np.array(1.0), "half": np.array(0.5)},
        lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        GELU,
    ),
    "mish": (
        [helper.make_node("Softplus", ["x"], ["sp"]), helper.make_node("Tanh", ["sp"], ["t"]), helper.make_node("Mul", ["x", "t"], ["y"])],
        {},
        lambda x: x * np.tanh(np.logaddexp(0, x)),
        MISH,
    ),
}


@pytest.mark.parametrize("name", sorted(GATES))
def test_gates_are_recognised_with_a_constant_at_least_the_true_slope(tmp_path: Path, name: str) -> None:
    nodes, inits, f, documented = GATES[name]
    report = inspect(_model(tmp_path / f"{name}.onnx", nodes, inits))
    truth = _sup_slope(f)
    assert report.bound.graph is not None, report.bound.blocking
    assert truth <= report.bound.graph <= truth * (1 + 5e-4)
    assert truth <= documented <= truth * (1 + 1e-4)


def test_a_square_is_not_a_gate(tmp_path: Path) -> None:
    nodes = [helper.make_node("Add", ["x", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["y"])]
    report = inspect(_model(tmp_path / "sq.onnx", nodes, {"one": np.array(1.0)}))
    assert report.bound.graph is None and "product of two activations" in report.bound.blocking[0]


def _jacobian_norm(f, x: np.ndarray, h: float = 1e-7) -> float:  # type: ignore[no-untyped-def]
    cols = [(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.size)]
    return float(np.linalg.norm(np.stack(cols, 1), 2))


@pytest.mark.parametrize("decomposed", [False, True])
def test_layer_norm_is_bounded_by_max_gamma_over_sqrt_eps(tmp_path: Path, decomposed: bool) -> None:
    eps, gamma, n = 1e-3, np.array([0.5, -2.0, 1.0, 1.5]), 4
    if decomposed:
        nodes = [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
            helper.make_node("Sub", ["x", "m"], ["d"]),
            helper.make_node("Pow", ["d", "two"], ["p"]),
            helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1]),
            helper.make_node("Add", ["v", "eps"], ["ve"]),
            helper.make_node("Sqrt", ["ve"], ["s"]),
            helper.make_node("Div", ["d", "s"], ["nd"]),
            helper.make_node("Mul", ["nd", "g"], ["y"]),
        ]
        inits = {"two": np.array(2.0), "eps": np.array(eps), "g": gamma}
    else:
        nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=eps)]
        inits = {"g": gamma, "b": np.zeros(n)}
    report = inspect(_model(tmp_path / "ln.onnx", nodes, inits, n))
    bound = report.bound.graph
    assert bound is not None and bound == pytest.approx(2.0 / math.sqrt(np.float32(eps)), rel=1e-6)

    def ln(x: np.ndarray, g: np.ndarray = gamma) -> np.ndarray:
        d = x - x.mean()
        return g * d / np.sqrt((d * d).mean() + eps)

    # Without γ the worst case is an input constant over the axis, where the Jacobian norm is 1/√ε exactly.
    plain = _jacobian_norm(lambda x: ln(x, np.ones(n)), np.full(n, 0.3))
    assert plain == pytest.approx(1.0 / math.sqrt(eps), rel=1e-6)
    assert _jacobian_norm(ln, np.full(n, 0.3)) <= bound
    rng = np.random.default_rng(0)
    assert all(_jacobian_norm(ln, rng.normal(size=n)) <= bound for _ in range(20))


def test_values_computed_from_constants_are_folded(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("Transpose", ["c"], ["t"]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Mul", ["x", "r"], ["y"]),
    ]
    inits = {"a": np.array([[8.0, 16.0]]), "b": np.array([[32.0, 4.0]]), "shape": np.array([1, 4])}
    model = _model(tmp_path / "fold.onnx", nodes, inits)
    m = onnx.load(str(model))
    m.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape"))
    onnx.save(m, str(model))
    assert inspect(model).bound.graph == pytest.approx(32.0)


def test_dynamically_quantized_linear_layers_are_dequantized(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    quantization = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    torch.onnx.export(net, torch.randn(1, 16), str(tmp_path / "f.onnx"), dynamo=False, opset_version=17)
    quantization.quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=quantization.QuantType.QInt8)
    q = inspect(tmp_path / "q.onnx")
    assert len(q.layers) == 2 and q.bound.graph is not None
    qm = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in qm.graph.initializer}
    for layer in q.layers:
        w = inits[layer.name]
        scale, zero = inits[layer.name.replace("_quantized", "_scale")], inits[layer.name.replace("_quantized", "_zero_point")]
        sigma = np.linalg.norm(scale * (w - zero), 2)
        assert sigma <= layer.lipschitz.upper <= sigma * (1 + 1e-3)


def test_a_rule_is_one_registered_function() -> None:
    @rule("LipcheckTestDouble", constant=2.0)
    def double(walk, node, ins):  # type: ignore[no-untyped-def]
        """Doubles its input."""
        return RULES[node.op].constant * ins[0]

    try:
        assert RULES["LipcheckTestDouble"].fn is double and RULES["LipcheckTestDouble"].constant == 2.0
        with pytest.raises(ValueError):
            rule("LipcheckTestDouble")(double)
    finally:
        del RULES["LipcheckTestDouble"]


def _graph_model(path: Path, nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], shape_in: list[int], shape_out: list[int], opset: int = 18) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def _float64_jacobian_norm(path: Path, x: np.ndarray, h: float = 1e-6) -> float:
    from lipcheck.graph.evaluate import Float64Model

    model = Float64Model(onnx.load(str(path)))
    f = lambda v: model([v.reshape(x.shape)])[0].ravel()  # noqa: E731
    flat = x.ravel()
    cols = [(f(flat + h * e) - f(flat - h * e)) / (2 * h) for e in np.eye(flat.size)]
    return float(np.linalg.norm(np.stack(cols, 1), 2))


@pytest.mark.parametrize("mode,pads", [("reflect", [0, 3, 0, 2]), ("reflect", [0, 1, 0, 1]), ("edge", [0, 2, 0, 3]), ("wrap", [0, 4, 0, 1])])
def test_copying_pads_are_bounded_by_the_most_copies_of_one_entry(tmp_path: Path, mode: str, pads: list[int]) -> None:
    n = 4
    out = n + pads[1] + pads[3]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode)]
    path = _graph_model(tmp_path / "pad.onnx", nodes, {"pads": np.array(pads, dtype=np.int64)}, [1, n], [1, out], 19)
    report = inspect(path)
    truth = _float64_jacobian_norm(path, np.random.default_rng(0).normal(size=(1, n)))
    # The Jacobian copies entries: its columns have disjoint supports, so its norm is sqrt(max copies) exactly.
    assert report.bound.graph == pytest.approx(truth, rel=1e-6)
    assert report.bound.graph >= truth * (1 - 1e-9)


def test_an_input_dependent_comparison_feeding_a_where_is_a_jump(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["c"]),
        helper.make_node("Where", ["c", "x", "zero"], ["w"]),
        helper.make_node("Not", ["c"], ["nc"]),
        helper.make_node("Where", ["nc", "w", "one"], ["y"]),
    ]
    inits = {"zero": np.zeros((1, 4), np.float32), "one": np.ones((1, 4), np.float32)}
    report = inspect(_graph_model(tmp_path / "cmp.onnx", nodes, inits, [1, 4], [1, 4]))
    assert report.bound.graph is None
    assert report.bound.blocking[0].startswith("Greater_0 (Greater): compares values that depend on the input")


def test_where_with_a_constant_condition_counts_broadcast_copies(tmp_path: Path) -> None:
    cond = np.array([[True, False, True, True]])
    nodes = [helper.make_node("Equal", ["a", "b"], ["c"]), helper.make_node("Where", ["c", "x", "zero"], ["y"])]
    inits = {"a": cond.astype(np.int64), "b": np.ones((1, 4), np.int64), "zero": np.zeros((1, 4), np.float32)}
    path = _graph_model(tmp_path / "where.onnx", nodes, inits, [1, 1], [1, 4])
    truth = _float64_jacobian_norm(path, np.ones((1, 1)))
    assert truth == pytest.approx(math.sqrt(3))
    assert truth <= inspect(path).bound.graph == pytest.approx(2.0)  # sqrt(4 copies), the condition aside


@pytest.mark.parametrize("op", ["Add", "Mul", "Max"])
def test_broadcasting_an_activation_counts_its_copies(tmp_path: Path, op: str) -> None:
    nodes = [helper.make_node(op, ["x", "c"], ["y"])]
    path = _graph_model(tmp_path / "bc.onnx", nodes, {"c": np.full((3, 4), -2.0, np.float32)}, [1, 4], [3, 4])
    truth = _float64_jacobian_norm(path, np.ones((1, 4)))
    assert truth == pytest.approx(math.sqrt(3) * (2.0 if op == "Mul" else 1.0))
    assert truth * (1 - 1e-9) <= inspect(path).bound.graph <= truth * (1 + 1e-9)


def test_a_squeeze_excitation_gate_is_named_as_one(tmp_path: Path) -> None:
    w = np.full((4, 4, 1, 1), 0.5, np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Conv", ["p", "w"], ["q"]),
        helper.make_node("HardSigmoid", ["q"], ["g"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    report = inspect(_graph_model(tmp_path / "se.onnx", nodes, {"w": w}, [1, 4, 3, 3], [1, 4, 3, 3]))
    assert report.bound.graph is None and "squeeze-excitation" in report.bound.blocking[0]
    # Not globally Lipschitz indeed: with zero mean and large entries the Jacobian grows with the input.
    x = np.zeros((1, 4, 3, 3))
    x[0, :, 0, 0], x[0, :, 0, 1] = 1.0, -1.0
    small, large = (_float64_jacobian_norm(tmp_path / "se.onnx", s * x) for s in (1.0, 100.0))
    assert large > 20 * small


def test_torchscript_dilated_max_pool_counts_overlapping_windows(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pool = torch.nn.MaxPool1d(2, stride=2, dilation=2)
    scripted = torch.jit.script(torch.nn.Sequential(pool))
    scripted.save(str(tmp_path / "pool.pt"))
    report = inspect(tmp_path / "pool.pt")
    # Windows {0,2}, {2,4}: entry 2 is the max of both when it is the largest, so the true constant is sqrt(2).
    x = torch.tensor([[[0.0, 9.0, 1.0, 9.0, 0.0, 9.0]]], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: pool(v), x).reshape(2, 6)
    assert float(torch.linalg.matrix_norm(jac, 2)) == pytest.approx(math.sqrt(2))
    assert report.bound.graph is not None and report.bound.graph >= math.sqrt(2) * (1 - 1e-9)


def _decode_model(path: Path) -> Path:
    """A YOLO-style box decode: (anchor − x[:, 0]) · stride, anchors and strides built from Shape(x)."""
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "two"], ["h"], axis=0),
        helper.make_node("Gather", ["s", "three"], ["w"], axis=0),
        helper.make_node("Mul", ["h", "w"], ["hw"]),
        helper.make_node("Unsqueeze", ["hw", "zero"], ["hw1"]),
        helper.make_node("Concat", ["one", "hw1"], ["flat"], axis=0),
        helper.make_node("ConstantOfShape", ["flat"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("Mul", ["ones", "eight"], ["stride"]),
        helper.make_node("Range", ["zero_s", "w", "one_s"], ["r"]),
        helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["rf", "half"], ["ax"]),
        helper.make_node("Unsqueeze", ["h", "zero"], ["h1"]),
        helper.make_node("Unsqueeze", ["w", "zero"], ["w1"]),
        helper.make_node("Concat", ["h1", "w1"], ["hw_shape"], axis=0),
        helper.make_node("Expand", ["ax", "hw_shape"], ["grid"]),
        helper.make_node("Reshape", ["grid", "flat"], ["anchor"]),
        helper.make_node("Reshape", ["x", "flat3"], ["f"]),
        helper.make_node("Slice", ["f", "zero", "one", "one"], ["first"]),
        helper.make_node("Reshape", ["first", "flat"], ["d"]),
        helper.make_node("Sub", ["anchor", "d"], ["box"]),
        helper.make_node("Mul", ["box", "stride"], ["y"]),
    ]
    inits = {
        "two": np.array(2, np.int64),
        "three": np.array(3, np.int64),
        "zero": i64(0),
        "one": i64(1),
        "zero_s": np.array(0, np.int64),
        "one_s": np.array(1, np.int64),
        "flat3": i64(1, 4, -1),
        "eight": np.array(8.0, np.float32),
        "half": np.array(0.5, np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_strides_and_anchors_computed_from_shapes_are_constants(tmp_path: Path) -> None:
    from lipcheck.settings import Settings

    path = _decode_model(tmp_path / "decode.onnx")
    report = inspect(path, settings=Settings(input_shape=((1, 4, 2, 3),)))
    truth = _float64_jacobian_norm(path, np.random.default_rng(0).normal(size=(1, 4, 2, 3)))
    assert truth == pytest.approx(8.0)
    assert report.bound.graph is not None, report.bound.blocking
    assert truth * (1 - 1e-9) <= report.bound.graph <= truth * (1 + 1e-9)
    # Without the input size the stride's value is unknown: named as such, not as a product of activations.
    open_size = inspect(path).bound
    assert open_size.graph is None and "could not evaluate (computed from shapes" in open_size.blocking[0]


def test_dynamic_quantization_with_a_quantized_bias_is_bounded_like_its_float_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's quantize_dynamic writes floor(b / (s_x·s_w)) for a conv bias: the constant b, rounding noted."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from lipcheck.api import inspect
    from lipcheck.graph import segments
    from lipcheck.settings import Settings

    # Both walks with each conv's own bound: the float file's conv run would get a joint certificate.
    monkeypatch.setattr(segments, "find_conv_runs", lambda model, reader=None: [])

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1)).eval()
    plain, quantized = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False, opset_version=17)
    quantize_dynamic(str(plain), str(quantized), weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    float_bound = inspect(plain, settings=Settings(lower=False)).bound.graph
    report = inspect(quantized, settings=Settings(lower=False))
    assert float_bound is not None and report.bound.graph is not None, report.bound.blocking
    assert report.bound.graph == pytest.approx(float_bound, rel=0.05)  # the same network, weights on an int8 grid
    assert any("rounding" in a for a in report.bound.assumptions)


def test_atan_and_asinh_are_one_lipschitz(tmp_path: Path) -> None:
    # DAVE-2's steering head ends in atan; both slopes are at most 1 (at 0), reached there.
    w = np.diag([3.0, 0.5]).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Atan", ["m"], ["a"]), helper.make_node("Asinh", ["a"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "atan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    bound = inspect(path).bound
    assert bound.graph is not None and math.isclose(bound.graph, 3.0, rel_tol=1e-6)
    # The slope of asinh(atan(3x)) is 3 at 0 only: the IR evaluates both ops for an attained ratio.
    assert bound.lower is not None and 0.0 < bound.lower <= bound.graph


def test_a_cast_to_float16_is_named_as_an_assumption(tmp_path: Path) -> None:
    """Rounding to float16 is a step function at fine scales: the bound says it treats the cast as exact."""
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
    report = inspect(_model(tmp_path / "half.onnx", nodes, {}))
    assert report.bound.graph == pytest.approx(1.0, rel=1e-12)
    assert any("low precision" in text for text in report.bound.assumptions)
    plain = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)]
    assert not any("low precision" in text for text in inspect(_model(tmp_path / "single.onnx", plain, {})).bound.assumptions)
