"""Networks on which a reported upper bound once sat below a ratio the file attains.

Each case builds a small model, inspects it without the lower bound, and checks the result against
a ratio ‖f(x) − f(y)‖ / ‖x − y‖ that onnxruntime (or the float64 torch module) attains on it: either
the graph is blocked with a reason naming the node, or the bound is at least that ratio. Every case
failed on the rules as they were (the attained ratio was 1.4 to 10⁵ times the bound).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lipcheck.api import inspect
from lipcheck.report.data import Report
from lipcheck.settings import Settings

F, D = TensorProto.FLOAT, TensorProto.DOUBLE
# Ratios are evaluated in the file's float type: allow its rounding, far below every gap found.
_ROUNDING = 1e-5


def _save(tmp: Path, nodes: list, inputs: list, outputs: list, inits: tuple = (), opset: int = 18) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp / "m.onnx"
    onnx.save(model, str(path))
    return path


def _in(name: str, shape: list[int], kind: int = D) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, kind, shape)


def _out(name: str, shape: list[int] | None, kind: int = D) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, kind, shape)


def _c(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _ratio(path: Path, xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(values: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.ravel(o).astype(np.float64) for o in session.run(None, dict(zip(names, values)))])

    dx = np.sqrt(sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)) for a, b in zip(xs, ys)))
    return float(np.linalg.norm(run(xs) - run(ys)) / dx)


def _report(path: Path, input_shape: tuple[tuple[int, ...], ...] | None = None) -> Report:
    return inspect(path, settings=Settings(lower=False, input_shape=input_shape))


def _holds(report: Report, attained: float) -> None:
    bound = report.bound
    if bound.upper is None:
        assert bound.blocking and all("(" in reason for reason in bound.blocking), bound.blocking
        return
    assert bound.upper >= attained * (1 - _ROUNDING), (bound.upper, attained, bound.method)


def _z(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


def _e(shape: tuple[int, ...], index: tuple[int, ...]) -> np.ndarray:
    a = np.zeros(shape, np.float32)
    a[index] = 1.0
    return a


Case = Callable[[Path], tuple[Path, list[np.ndarray], list[np.ndarray]]]


def _clip_min_input(tmp: Path):  # type: ignore[no-untyped-def]
    p = _save(tmp, [helper.make_node("Clip", ["z", "s", ""], ["y"])], [_in("s", [])], [_out("y", [8])], [_c("z", np.zeros(8))])
    return p, [np.array(1.0)], [np.array(2.0)]


def _gather_negative(tmp: Path):  # type: ignore[no-untyped-def]
    p = _save(tmp, [helper.make_node("Gather", ["x", "i"], ["y"], axis=0)], [_in("x", [4])], [_out("y", [2])], [_c("i", np.array([0, -4], np.int64))])
    return p, [np.array([1.0, 0, 0, 0])], [np.zeros(4)]


def _gather_nd_negative(tmp: Path):  # type: ignore[no-untyped-def]
    p = _save(tmp, [helper.make_node("GatherND", ["x", "i"], ["y"])], [_in("x", [4])], [_out("y", [2])], [_c("i", np.array([[1], [-3]], np.int64))])
    return p, [np.array([0, 1.0, 0, 0])], [np.zeros(4)]


def _lp_pool_1(tmp: Path):  # type: ignore[no-untyped-def]
    p = _save(tmp, [helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[4], strides=[4], p=1)], [_in("x", [1, 1, 4], F)], [_out("y", [1, 1, 1], F)])
    return p, [np.ones((1, 1, 4), np.float32)], [_z(1, 1, 4) + 0.5]


def _avg_pool_same(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[3], auto_pad="SAME_UPPER")
    p = _save(tmp, [node], [_in("x", [1, 1, 1], F)], [_out("y", [1, 1, 1], F)])
    return p, [np.ones((1, 1, 1), np.float32)], [_z(1, 1, 1)]


def _avg_pool_ceil(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2], strides=[2], ceil_mode=1, count_include_pad=1)
    p = _save(tmp, [node], [_in("x", [1, 1, 3], F)], [_out("y", [1, 1, 2], F)])
    return p, [_e((1, 1, 3), (0, 0, 2))], [_z(1, 1, 3)]


def _pad_value_input(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("Pad", ["x", "pads", "s"], ["y"], mode="constant")
    p = _save(tmp, [node], [_in("x", [1]), _in("s", [])], [_out("y", [9])], [_c("pads", np.array([0, 8], np.int64))])
    return p, [np.array([0.0]), np.array(1.0)], [np.array([0.0]), np.array(0.0)]


def _bn_bias_input(tmp: Path):  # type: ignore[no-untyped-def]
    consts = [_c("X", _z(1, 2, 4, 4)), _c("g", np.ones(2, np.float32)), _c("m", _z(2)), _c("v", np.ones(2, np.float32))]
    p = _save(tmp, [helper.make_node("BatchNormalization", ["X", "g", "b", "m", "v"], ["y"])], [_in("b", [2], F)], [_out("y", [1, 2, 4, 4], F)], consts)
    return p, [np.array([1, 0], np.float32)], [_z(2)]


def _ln_bias_input(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("LayerNormalization", ["X", "g", "b"], ["y"], axis=-1)
    p = _save(tmp, [node], [_in("b", [4], F)], [_out("y", [3, 4], F)], [_c("X", _z(3, 4)), _c("g", np.ones(4, np.float32))])
    return p, [_e((4,), (0,))], [_z(4)]


def _range_input(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("Add", ["s", "four"], ["lim"]), helper.make_node("Range", ["s", "lim", "one"], ["y"])]
    p = _save(tmp, nodes, [_in("s", [])], [_out("y", [4])], [_c("four", np.array(4.0)), _c("one", np.array(1.0))])
    return p, [np.array(0.25)], [np.array(0.0)]


def _nonzero(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("NonZero", ["x"], ["i"]), helper.make_node("Cast", ["i"], ["y"], to=F)]
    p = _save(tmp, nodes, [_in("x", [2], F)], [_out("y", [1, 1], F)])
    return p, [np.array([1e-3, 0.0], np.float32)], [np.array([0.0, 1e-3], np.float32)]


def _offset_gate(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("Sub", ["x", "c"], ["t"]), helper.make_node("Sigmoid", ["t"], ["g"]), helper.make_node("Mul", ["x", "g"], ["y"])]
    p = _save(tmp, nodes, [_in("x", [1])], [_out("y", [1])], [_c("c", np.array(200.0))])
    return p, [np.array([200.001])], [np.array([199.999])]


def _slow_offset_gate(tmp: Path):  # type: ignore[no-untyped-def]
    """x·σ(0.01x − 2): its slope peaks (1.25) near x = 440, far outside a grid scaled by the constants ≥ 1."""
    nodes = [
        helper.make_node("Mul", ["x", "a"], ["u"]),
        helper.make_node("Sub", ["u", "b"], ["t"]),
        helper.make_node("Sigmoid", ["t"], ["g"]),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    p = _save(tmp, nodes, [_in("x", [1])], [_out("y", [1])], [_c("a", np.array(0.01)), _c("b", np.array(2.0))])
    return p, [np.array([440.01])], [np.array([439.99])]


def _gate_with_a_pole(tmp: Path):  # type: ignore[no-untyped-def]
    """x · 1/(x − 200): a pole at 200, so not Lipschitz; a slope grid would see only a large number."""
    nodes = [helper.make_node("Sub", ["x", "c"], ["t"]), helper.make_node("Div", ["one", "t"], ["g"]), helper.make_node("Mul", ["x", "g"], ["y"])]
    p = _save(tmp, nodes, [_in("x", [1])], [_out("y", [1])], [_c("c", np.array(200.0)), _c("one", np.array(1.0))])
    return p, [np.array([200.0 + 1e-9])], [np.array([200.0 + 2e-9])]


def _steep_hard_sigmoid_gate(tmp: Path):  # type: ignore[no-untyped-def]
    """x·HardSigmoid(1e4 x + 0.5): the slope reaches 2 − β = 1.5 inside a kink 1e-4 wide."""
    nodes = [helper.make_node("HardSigmoid", ["x"], ["g"], alpha=1e4, beta=0.5), helper.make_node("Mul", ["x", "g"], ["y"])]
    p = _save(tmp, nodes, [_in("x", [1])], [_out("y", [1])])
    return p, [np.array([4.9e-5])], [np.array([5e-5])]


def _nested_multiplier_gate(tmp: Path):  # type: ignore[no-untyped-def]
    """x·Clip(100·100·x + 0.5, 0, 1): nested multipliers make the kink narrower than either alone."""
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["u"]),
        helper.make_node("Mul", ["u", "k"], ["v"]),
        helper.make_node("Add", ["v", "half"], ["t"]),
        helper.make_node("Clip", ["t", "zero", "one"], ["g"]),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    consts = [_c("k", np.array(100.0)), _c("half", np.array(0.5)), _c("zero", np.array(0.0)), _c("one", np.array(1.0))]
    p = _save(tmp, nodes, [_in("x", [1])], [_out("y", [1])], consts)
    return p, [np.array([4.999e-5])], [np.array([5e-5])]


def _far_kink_gate(tmp: Path):  # type: ignore[no-untyped-def]
    """x·Clip(100(x − 50), 0, 1): slope about 5000 at x = 50, outside a grid shrunk by the multiplier."""
    nodes = [
        helper.make_node("Sub", ["x", "c"], ["s"]),
        helper.make_node("Mul", ["s", "k"], ["t"]),
        helper.make_node("Clip", ["t", "zero", "one"], ["g"]),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    consts = [_c("c", np.array(50.0)), _c("k", np.array(100.0)), _c("zero", np.array(0.0)), _c("one", np.array(1.0))]
    p = _save(tmp, nodes, [_in("x", [1])], [_out("y", [1])], consts)
    return p, [np.array([50.0])], [np.array([50.01])]


def _gate_clipped_by_the_input(tmp: Path):  # type: ignore[no-untyped-def]
    """x·Clip(σ(x), min = −x − 10, max = 1): the lower bound moves with x, slope −2x − 10 near x = −11."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Neg", ["x"], ["n"]),
        helper.make_node("Sub", ["n", "ten"], ["lo"]),
        helper.make_node("Clip", ["s", "lo", "one"], ["g"]),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    p = _save(tmp, nodes, [_in("x", [1])], [_out("y", [1])], [_c("ten", np.array(10.0)), _c("one", np.array(1.0))])
    return p, [np.array([-11.0])], [np.array([-10.9])]


def _gate_past_float32_range(tmp: Path):  # type: ignore[no-untyped-def]
    """A double gate x·(σ(x) + Relu(1e-30·x − 1e9)): its slope grows only beyond 1e39."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Mul", ["x", "tiny"], ["t"]),
        helper.make_node("Sub", ["t", "big"], ["u"]),
        helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("Add", ["s", "r"], ["g"]),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    p = _save(tmp, nodes, [_in("x", [1])], [_out("y", [1])], [_c("tiny", np.array(1e-30)), _c("big", np.array(1e9))])
    return p, [np.array([2e39])], [np.array([3e39])]


def _half_precision_weight_chain(tmp: Path):  # type: ignore[no-untyped-def]
    """Cast<float>(Mul(a, b)) of float16 constants: onnxruntime computes the product in float32."""
    nodes = [
        helper.make_node("Mul", ["a", "b"], ["ab"]),
        helper.make_node("Cast", ["ab"], ["w"], to=F),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    consts = [_c("a", np.array([[1.09375]], np.float16)), _c("b", np.array([[1.8330078]], np.float16))]
    p = _save(tmp, nodes, [_in("x", [1, 1], F)], [_out("y", [1, 1], F)], consts)
    return p, [np.array([[1.0]], np.float32)], [np.array([[0.0]], np.float32)]


def _decomposed_rms(square: onnx.NodeProto, keepdims: int) -> list[onnx.NodeProto]:
    """x / sqrt(mean(x²) + eps) over axis 1, the square given."""
    return [
        square,
        helper.make_node("ReduceMean", ["sq", "ax"], ["ms"], keepdims=keepdims),
        helper.make_node("Add", ["ms", "eps"], ["v"]),
        helper.make_node("Sqrt", ["v"], ["r"]),
        helper.make_node("Div", ["x", "r"], ["y"]),
    ]


def _rms_keepdims_0(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = _decomposed_rms(helper.make_node("Mul", ["x", "x"], ["sq"]), keepdims=0)
    p = _save(tmp, nodes, [_in("x", [2, 2])], [_out("y", [2, 2])], [_c("ax", np.array([1], np.int64)), _c("eps", np.array(1e-5))])
    a = np.array([[1e4, 1e4], [2.2e-3, 2.2e-3]])
    b = a.copy()
    b[1] += 1e-6
    return p, [a], [b]


def _rms_vector_power(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = _decomposed_rms(helper.make_node("Pow", ["x", "two"], ["sq"]), keepdims=1)
    consts = [_c("two", np.array([2.0, 1.0])), _c("ax", np.array([1], np.int64)), _c("eps", np.array(1e-5))]
    p = _save(tmp, nodes, [_in("x", [1, 2])], [_out("y", [1, 2])], consts)
    return p, [np.array([[1.0, -1.0]])], [np.array([[1.0, -1.0 - 1.9e-5]])]


def _resize_sizes_with_roi(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("Resize", ["x", "roi", "", "sz"], ["y"], mode="nearest")
    consts = [_c("roi", np.array([0, 0, 0, 1, 1, 1], np.float32)), _c("sz", np.array([1, 1, 32], np.int64))]
    p = _save(tmp, [node], [_in("x", [1, 1, 4], F)], [_out("y", [1, 1, 32], F)], consts)
    return p, [_e((1, 1, 4), (0, 0, 0))], [_z(1, 1, 4)]


def _crop_and_resize(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("Resize", ["x", "roi", "sc"], ["y"], mode="nearest", coordinate_transformation_mode="tf_crop_and_resize")
    consts = [_c("roi", np.array([0, 0, 0, 1, 1, 0], np.float32)), _c("sc", np.array([1, 1, 2], np.float32))]
    p = _save(tmp, [node], [_in("x", [1, 1, 4], F)], [_out("y", [1, 1, 8], F)], consts)
    return p, [_e((1, 1, 4), (0, 0, 0))], [_z(1, 1, 4)]


def _cubic_steep(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="cubic", cubic_coeff_a=-100.0)
    p = _save(tmp, [node], [_in("x", [1, 4], F)], [_out("y", [1, 8], F)], [_c("sc", np.array([1, 2], np.float32))])
    session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    matrix = np.stack([session.run(None, {"x": np.eye(4, dtype=np.float32)[i].reshape(1, 4)})[0].ravel() for i in range(4)], 1)
    top = np.linalg.svd(matrix)[2][0].astype(np.float32).reshape(1, 4)
    return p, [top], [_z(1, 4)]


def _resize_not_smaller(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="nearest", keep_aspect_ratio_policy="not_smaller")
    p = _save(tmp, [node], [_in("x", [1, 1, 4, 4], F)], [_out("y", [1, 1, 32, 32], F)], [_c("sz", np.array([1, 1, 32, 2], np.int64))])
    return p, [_e((1, 1, 4, 4), (0, 0, 0, 0))], [_z(1, 1, 4, 4)]


def _gemm_beta_input(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("Gemm", ["a", "B", "c"], ["y"], beta=10.0)
    p = _save(tmp, [node], [_in("a", [3, 2], F), _in("c", [2], F)], [_out("y", [3, 2], F)], [_c("B", np.eye(2, dtype=np.float32))])
    return p, [_z(3, 2), _e((2,), (0,))], [_z(3, 2), _z(2)]


def _conv_bias_input(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("Conv", ["x", "W", "b"], ["y"])
    p = _save(tmp, [node], [_in("x", [1, 1, 4, 4], F), _in("b", [1], F)], [_out("y", [1, 1, 4, 4], F)], [_c("W", np.ones((1, 1, 1, 1), np.float32))])
    return p, [_z(1, 1, 4, 4), _e((1,), (0,))], [_z(1, 1, 4, 4), _z(1)]


def _cast_like_int(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("CastLike", ["x", "t"], ["i"]), helper.make_node("Cast", ["i"], ["y"], to=F)]
    p = _save(tmp, nodes, [_in("x", [1], F)], [_out("y", [1], F)], [_c("t", np.array([0], np.int64))])
    return p, [np.array([1.0001], np.float32)], [np.array([0.9999], np.float32)]


def _bn_training(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1)
    consts = [_c("g", np.ones(1, np.float32)), _c("b", _z(1)), _c("m", _z(1)), _c("v", np.ones(1, np.float32))]
    p = _save(tmp, [node], [_in("x", [2, 1], F)], [_out("y", [2, 1], F)], consts)
    return p, [np.array([[1e-3], [0]], np.float32)], [_z(2, 1)]


def _dropout_training(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("Dropout", ["x", "r", "tm"], ["y"], seed=0)
    p = _save(tmp, [node], [_in("x", [64], F)], [_out("y", [64], F)], [_c("r", np.array(0.9, np.float32)), _c("tm", np.array(True))])
    kept = int(np.flatnonzero(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": np.ones(64, np.float32)})[0])[0])
    return p, [_e((64,), (kept,))], [_z(64)]


def _reduce_sum_runtime_axes(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("ReduceSum", ["x", "ax"], ["y"], keepdims=0, noop_with_empty_axes=1)
    p = _save(tmp, [node], [_in("x", [4], F), _in("ax", [1], TensorProto.INT64)], [_out("y", [], F)])
    axes = np.array([0], np.int64)
    return p, [np.ones(4, np.float32), axes], [_z(4), axes]


def _reduce_mean_repeated_axis(tmp: Path):  # type: ignore[no-untyped-def]
    # Axes 3 and -1 are one axis of a 4-D input: the mean is over 6 entries, not 18.
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3, -1], keepdims=0)
    p = _save(tmp, [node], [_in("x", [1, 1, 2, 3], F)], [_out("y", [1, 1], F)], opset=13)
    return p, [np.ones((1, 1, 2, 3), np.float32)], [_z(1, 1, 2, 3)]


def _reduce_mean_axes_input_repeated(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=1)
    p = _save(tmp, [node], [_in("x", [1, 6], F)], [_out("y", [1, 1], F)], [_c("ax", np.array([1, -1], np.int64))])
    return p, [np.ones((1, 6), np.float32)], [_z(1, 6)]


def _zero_weight_of_unbounded(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Gemm", ["e", "Z", "c"], ["g"]), helper.make_node("Add", ["g", "zero"], ["y"])]
    p = _save(tmp, nodes, [_in("x", [1, 2], F), _in("c", [1, 2], F)], [_out("y", [1, 2], F)], [_c("Z", _z(2, 2)), _c("zero", _z(1, 2))])
    return p, [_z(1, 2), np.ones((1, 2), np.float32)], [_z(1, 2), _z(1, 2)]


def _gemm_alpha_chain(tmp: Path):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    w1, w2 = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1, alpha=0.5, name="g1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "W2"], ["y"], transB=1, alpha=0.5, name="g2"),
    ]
    p = _save(tmp, nodes, [_in("x", [1, 4], F)], [_out("y", [1, 3], F)], [_c("W1", w1), _c("W2", w2)], opset=17)
    return p, *_worst_pair(p, (1, 4))


def _duplicate_names(tmp: Path):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    w1, w2 = (10 * rng.normal(size=(4, 4))).astype(np.float32), (0.1 * rng.normal(size=(4, 4))).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc"),
    ]
    p = _save(tmp, nodes, [_in("x", [1, 4])], [_out("y", [1, 4])], [_c("W1", w1.astype(np.float64)), _c("W2", w2.astype(np.float64))], opset=17)
    # onnxruntime refuses two nodes of one name: the same function with distinct names gives the ratio.
    twin = onnx.load(str(p))
    twin.graph.node[2].name = "fc2"
    other = tmp / "twin.onnx"
    onnx.save(twin, str(other))
    return p, *_worst_pair(other, (1, 4), dtype=np.float64)


def _worst_pair(path: Path, shape: tuple[int, ...], dtype: type = np.float32) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A pair along the top singular vector of a finite-difference Jacobian, best of a few random points."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    best: tuple[float, np.ndarray, np.ndarray] = (0.0, np.zeros(shape, dtype), np.zeros(shape, dtype))
    for _ in range(40):
        x = rng.normal(size=shape).astype(dtype)
        base = session.run(None, {name: x})[0].ravel().astype(np.float64)
        columns = []
        for i in range(x.size):
            bumped = x.copy().ravel()
            bumped[i] += 1e-2
            columns.append((session.run(None, {name: bumped.reshape(shape)})[0].ravel() - base) / 1e-2)
        v = np.linalg.svd(np.stack(columns, 1))[2][0].reshape(shape)
        y = (x + 1e-2 * v).astype(dtype)
        value = _ratio(path, [x], [y])
        if value > best[0]:
            best = (value, x, y)
    return [best[1]], [best[2]]


def _i8(v: object) -> np.ndarray:
    return np.asarray(v, np.int8)


def _f32(v: object) -> np.ndarray:
    return np.asarray(v, np.float32)


def _qdq_scales(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s2", "z"], ["y"])]
    p = _save(tmp, nodes, [_in("x", [2], F)], [_out("y", [2], F)], [_c("s1", _f32(1.0)), _c("s2", _f32(100.0)), _c("z", _i8(0))])
    return p, [_f32([1, 0])], [_f32([0, 0])]


def _quantized_output(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("QuantizeLinear", ["x", "s1", "z"], ["q"])
    p = _save(tmp, [node], [_in("x", [2], F)], [_out("q", [2], TensorProto.INT8)], [_c("s1", _f32(0.01)), _c("z", _i8(0))])
    return p, [_f32([1, 0])], [_f32([0, 0])]


def _qlinear_output_scale(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "z"], ["q"]),
        helper.make_node("QLinearMatMul", ["q", "one", "z", "W", "one", "z", "ys", "z"], ["qy"]),
        helper.make_node("DequantizeLinear", ["qy", "one", "z"], ["y"]),
    ]
    consts = [_c("one", _f32(1.0)), _c("ys", _f32(0.05)), _c("z", _i8(0)), _c("W", _i8(np.eye(2)))]
    p = _save(tmp, nodes, [_in("x", [1, 2], F)], [_out("y", [1, 2], F)], consts)
    return p, [_f32([[1, 0]])], [_f32([[0, 0]])]


def _integer_product(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s1", "z"], ["q"]),
        helper.make_node("MatMulInteger", ["q", "W"], ["p"]),
        helper.make_node("Cast", ["p"], ["y"], to=F),
    ]
    p = _save(tmp, nodes, [_in("x", [1, 2], F)], [_out("y", [1, 2], F)], [_c("s1", _f32(0.01)), _c("z", _i8(0)), _c("W", _i8(np.eye(2)))])
    return p, [_f32([[1, 0]])], [_f32([[0, 0]])]


def _dynamic_then_constant_scale(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "zp"]), helper.make_node("DequantizeLinear", ["q", "one", "zu"], ["y"])]
    p = _save(tmp, nodes, [_in("x", [2], F)], [_out("y", [2], F)], [_c("one", _f32(1.0)), _c("zu", np.asarray(0, np.uint8))])
    return p, [_f32([1, 0.5])], [_f32([1, 0.25])]


def _constant_over_dynamic_scale(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "zp"]), helper.make_node("Div", ["b", "s"], ["y"])]
    p = _save(tmp, nodes, [_in("x", [2], F)], [_out("y", [1], F)], [_c("b", _f32([1.0]))])
    return p, [_f32([1, 0])], [_f32([2, 0])]


def _norm_statistics_output(tmp: Path):  # type: ignore[no-untyped-def]
    node = helper.make_node("LayerNormalization", ["x", "g"], ["y", "mu", "isd"], axis=-1, epsilon=1e-2)
    p = _save(tmp, [node], [_in("x", [1, 2], F)], [_out("isd", [1, 1], F)], [_c("g", _f32([1, 1]))])
    a = np.sqrt(1e-2 / 2)
    return p, [_f32([[a, -a]])], [_f32([[1.01 * a, -1.01 * a]])]


def _pool_indices_output(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2], strides=[2]), helper.make_node("Cast", ["idx"], ["f"], to=F)]
    p = _save(tmp, nodes, [_in("x", [1, 1, 2], F)], [_out("f", [1, 1, 1], F)])
    return p, [_f32([[[1e-3, 0]]])], [_f32([[[0, 1e-3]]])]


def _slice_start_input(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("Add", ["st", "two"], ["en"]), helper.make_node("Slice", ["x", "st", "en"], ["y"])]
    p = _save(tmp, nodes, [_in("x", [4], F), _in("st", [1], TensorProto.INT64)], [_out("y", [2], F)], [_c("two", np.array([2], np.int64))])
    x = _f32([0, 0, 0, 100])
    return p, [x, np.array([1], np.int64)], [x, np.array([2], np.int64)]


def _bn(src: str, dst: str) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [src, "g", "b", "m", "v"], [dst], epsilon=0.0)


def _bn_consts() -> list[onnx.TensorProto]:
    return [_c("g", _f32([0.1, 10.0])), _c("b", _f32([0, 0])), _c("m", _f32([0, 0])), _c("v", _f32([1, 1]))]


def _bn_after_weight_as_a(tmp: Path):  # type: ignore[no-untyped-def]
    """Gemm(W, x) then batch norm: the norm scales the product's columns, not W's rows."""
    nodes = [helper.make_node("Gemm", ["W", "x"], ["y"]), _bn("y", "z")]
    p = _save(tmp, nodes, [_in("x", [2, 2], F)], [_out("z", [2, 2], F)], [_c("W", _f32(np.diag([10.0, 0.1]))), *_bn_consts()])
    return p, *_worst_pair(p, (2, 2))


def _bn_after_input_bias(tmp: Path):  # type: ignore[no-untyped-def]
    nodes = [helper.make_node("Gemm", ["x", "W", "x"], ["y"]), _bn("y", "z")]
    p = _save(tmp, nodes, [_in("x", [2, 2], F)], [_out("z", [2, 2], F)], [_c("W", _z(2, 2)), *_bn_consts()])
    return p, *_worst_pair(p, (2, 2))


def _nearest_resize_edges(tmp: Path):  # type: ignore[no-untyped-def]
    """Nearest, half_pixel, floor, scale 2.6: the edge row takes 4 outputs, more than ceil(2.6)."""
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", nearest_mode="floor")
    p = _save(tmp, [node], [_in("x", [1, 1, 3, 4], F)], [_out("y", [1, 1, 7, 2], F)], [_c("sc", _f32([1, 1, 2.6, 0.7]))], opset=13)
    return p, *_worst_pair(p, (1, 1, 3, 4))


CASES: dict[str, Case] = {
    "batch norm after gemm with the weight first": _bn_after_weight_as_a,
    "batch norm after gemm with an input bias": _bn_after_input_bias,
    "nearest resize with edge copies": _nearest_resize_edges,
    "quantize and dequantize with other scales": _qdq_scales,
    "quantized output": _quantized_output,
    "qlinear output scale": _qlinear_output_scale,
    "integer product of a static quantization": _integer_product,
    "dynamic quantization dequantized by a constant": _dynamic_then_constant_scale,
    "constant over a dynamic scale": _constant_over_dynamic_scale,
    "normalization statistics output": _norm_statistics_output,
    "pool indices output": _pool_indices_output,
    "slice start from an integer input": _slice_start_input,
    "clip with a min from the input": _clip_min_input,
    "gather with a negative index": _gather_negative,
    "gather_nd with a negative index": _gather_nd_negative,
    "lp pool with p = 1": _lp_pool_1,
    "average pool with auto_pad": _avg_pool_same,
    "average pool with ceil_mode": _avg_pool_ceil,
    "pad value from the input": _pad_value_input,
    "batch norm bias from the input": _bn_bias_input,
    "layer norm bias from the input": _ln_bias_input,
    "range from the input": _range_input,
    "nonzero of the input": _nonzero,
    "gate with an offset": _offset_gate,
    "gate with a small slope and an offset": _slow_offset_gate,
    "gate with a pole": _gate_with_a_pole,
    "gate with a steep hard sigmoid": _steep_hard_sigmoid_gate,
    "gate with nested multipliers": _nested_multiplier_gate,
    "gate with a kink far from zero": _far_kink_gate,
    "gate clipped by a bound from the input": _gate_clipped_by_the_input,
    "double gate growing past float32's range": _gate_past_float32_range,
    "float16 weight chain": _half_precision_weight_chain,
    "rms norm without kept axes": _rms_keepdims_0,
    "rms norm with a vector power": _rms_vector_power,
    "resize by sizes with a roi": _resize_sizes_with_roi,
    "crop and resize": _crop_and_resize,
    "steep cubic resize": _cubic_steep,
    "resize keeping the aspect ratio": _resize_not_smaller,
    "gemm beta times an input": _gemm_beta_input,
    "conv bias from the input": _conv_bias_input,
    "castlike to an integer": _cast_like_int,
    "batch norm in training mode": _bn_training,
    "dropout in training mode": _dropout_training,
    "reduce sum over run-time axes": _reduce_sum_runtime_axes,
    "reduce mean naming an axis twice": _reduce_mean_repeated_axis,
    "reduce mean with axes input naming an axis twice": _reduce_mean_axes_input_repeated,
    "zero weight after an unbounded value": _zero_weight_of_unbounded,
    "gemm alpha in a tight chain": _gemm_alpha_chain,
    "two nodes of one name": _duplicate_names,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_bound_holds_or_the_graph_is_blocked(tmp_path: Path, case: str) -> None:
    path, xs, ys = CASES[case](tmp_path)
    attained = _ratio(path, xs, ys) if case != "two nodes of one name" else _ratio(tmp_path / "twin.onnx", xs, ys)
    assert attained > 0.0
    _holds(_report(path), attained)


def test_gemm_alpha_inside_a_residual_block_keeps_the_segment_sound(tmp_path: Path) -> None:
    """y = x + ½W₂ relu(½W₁ x): the certified chain segment counts alpha once."""
    rng = np.random.default_rng(4)
    w1, w2 = (3 * rng.normal(size=(6, 4))).astype(np.float32), (3 * rng.normal(size=(4, 6))).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1, alpha=0.5, name="g1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "W2"], ["z"], transB=1, alpha=0.5, name="g2"),
        helper.make_node("Add", ["x", "z"], ["y"], name="res"),
    ]
    path = _save(tmp_path, nodes, [_in("x", [1, 4], F)], [_out("y", [1, 4], F)], [_c("W1", w1), _c("W2", w2)], opset=17)
    xs, ys = _worst_pair(path, (1, 4))
    _holds(_report(path), _ratio(path, xs, ys))


@pytest.mark.parametrize("alpha", [1.0, -1.0, -2.0, 3.0])
def test_leaky_relu_slopes_the_certificate_cannot_take_end_the_chain_without_an_error(tmp_path: Path, alpha: float) -> None:
    rng = np.random.default_rng(3)
    w1, w2 = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("LeakyRelu", ["h"], ["r"], alpha=alpha),
        helper.make_node("MatMul", ["r", "W2"], ["y"]),
    ]
    path = _save(tmp_path, nodes, [_in("x", [1, 4], F)], [_out("y", [1, 3], F)], [_c("W1", w1), _c("W2", w2)], opset=17)
    xs, ys = _worst_pair(path, (1, 4))
    _holds(_report(path), _ratio(path, xs, ys))


class _TorchCase(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.l1, self.l2 = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x)
        if self.kind == "elu":
            h = torch._C._nn.elu(h, 0.1, 3.0, 1.0)  # scale 3: slope 3 where h > 0
        elif self.kind == "softplus":
            h = torch.nn.functional.softplus(h, 1.0, 0.0)  # threshold 0: a jump of log 2 at 0
        elif self.kind == "clamp":
            h = torch.clamp(h, min=100.0 * torch.cat([x, x[:, :2]], dim=1))  # the min is computed from x
        elif self.kind == "selu":
            h = torch.nn.functional.selu(h)
        return self.l2(h)


def _torch_ratio(module: torch.nn.Module) -> float:
    twin = _TorchCase(module.kind).double().eval()  # type: ignore[arg-type]
    twin.load_state_dict(module.state_dict())
    rng = np.random.default_rng(0)
    best = 0.0
    with torch.no_grad():
        for _ in range(400):
            x = torch.tensor(rng.normal(size=(1, 4)) * 2)
            d = torch.tensor(rng.normal(size=(1, 4)))
            for step in (1e-6, 1e-3, 1e-1):
                y = x + step * d / d.norm()
                best = max(best, float((twin(y) - twin(x)).norm() / (y - x).norm()))
    return best


@pytest.mark.parametrize("kind", ["elu", "softplus", "clamp", "selu"])
@pytest.mark.parametrize("archive", ["torchscript", "export"])
def test_torch_front_ends_keep_every_argument_that_changes_the_function(tmp_path: Path, kind: str, archive: str) -> None:
    """Scaled elu, softplus's threshold jump, clamp to a tensor computed from the input, selu's constants."""
    module = _TorchCase(kind).eval()
    if archive == "torchscript":
        path = tmp_path / "m.pt"
        torch.jit.script(module).save(str(path))
        report = _report(path, ((1, 4),))
    else:
        path = tmp_path / "m.pt2"
        torch.export.save(torch.export.export(module, (torch.randn(1, 4),)), str(path))
        report = _report(path)
    _holds(report, _torch_ratio(module))
    if kind in ("softplus", "clamp"):  # not Lipschitz (a jump) or not bounded by these rules: blocked
        assert report.bound.upper is None
