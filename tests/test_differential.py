"""Differential test of the network bound against the function itself, over ONNX's backend-test
models and generated graphs (dense and conv layers, residual adds, concatenation, batch norm,
activations, pools, If nodes with a constant condition whose branches read outer values).

For every graph that gets a number, ‖f(x)−f(y)‖/‖x−y‖ of the float64 function at sampled pairs
(largest over outputs, as the bound is) must not exceed ``report.bound.upper``, and lipcheck's own
lower bound must not either. The ratios are float64 evaluations of a float64 twin (independent of
the walk), allowed a relative 1e-9 for their rounding."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipcheck.api import inspect
from lipcheck.graph.evaluate import Float64Model
from tests.test_third_party_onnx import backend_models

ROUNDING = 1e-9  # relative: float64 outputs of these small graphs are accurate far below this
MAX_INPUT = 65536  # larger inputs make the search slow; the Conv corpus test covers big convs
GENERATED = 64


def _input_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]] | None:
    """Static float32 input shapes, or None when an input is not float32 or has an open dim."""
    stored = {init.name for init in model.graph.initializer}
    shapes = []
    for value in model.graph.input:
        if value.name in stored:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if tensor.elem_type != TensorProto.FLOAT or not all(dims):
            return None
        shapes.append(tuple(dims))
    return shapes or None


def _sampled_ratio(model: onnx.ModelProto, shapes: list[tuple[int, ...]], seed: int) -> float:
    """The largest float64 ratio over near pairs (steps of 1e-2) and far pairs (independent points)."""
    f = Float64Model(model)
    rng = np.random.default_rng(seed)
    best = 0.0
    for scale in (1e-2, 1e-2, 1e-2, 1e-2, None, None):
        xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        ys = [(x + rng.standard_normal(x.shape) * scale if scale else rng.standard_normal(x.shape)).astype(np.float32) for x in xs]
        dx = math.sqrt(sum(float(np.sum((y.astype(np.float64) - x.astype(np.float64)) ** 2)) for x, y in zip(xs, ys)))
        fx, fy = f(xs), f(ys)
        best = max(best, max(float(np.linalg.norm(b - a)) for a, b in zip(fx, fy)) / dx)
    return best


def _check(path: Path, seed: int) -> tuple[bool, str]:
    """(whether the graph got a number, a description); fails the test on a violated bound."""
    model = onnx.load(str(path))
    shapes = _input_shapes(model)
    if shapes is None or sum(math.prod(s) for s in shapes) > MAX_INPUT:
        return False, "skipped"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = inspect(path)
    upper, lower = report.bound.upper, report.bound.lower
    if upper is None:
        return False, "no number"
    ratio = _sampled_ratio(model, shapes, seed)
    assert ratio <= upper * (1 + ROUNDING), f"{path.parent.name}: attained ratio {ratio!r} > upper {upper!r}"
    assert lower is None or lower <= upper, f"{path.parent.name}: lower {lower!r} > upper {upper!r}"
    return True, f"ratio {ratio:.6g} <= upper {upper:.6g}"


# -- generated graphs ----------------------------------------------------------------------------------
class _Builder:
    """A float32 ONNX graph grown block by block from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, array: np.ndarray, stem: str = "c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], nodes: list[onnx.NodeProto] | None = None, **attrs) -> str:  # type: ignore[no-untyped-def]
        out = self.name(op.lower())
        (self.nodes if nodes is None else nodes).append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def weight(self, *shape: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * self.rng.uniform(0.3, 1.5) / math.sqrt(shape[-1])).astype(np.float32)

    def activation(self, x: str, nodes: list[onnx.NodeProto] | None = None) -> str:
        op = ["Relu", "LeakyRelu", "Tanh", "Sigmoid", "Elu", "Softplus"][int(self.rng.integers(6))]
        attrs = {"alpha": float(self.rng.choice([0.1, 0.5, 2.0]))} if op in ("LeakyRelu", "Elu") else {}
        return self.node(op, [x], nodes, **attrs)


def _dense(b: _Builder, x: str, width: int) -> tuple[str, int]:
    kind = int(b.rng.integers(7))
    if kind == 0:  # Gemm, weight stored transposed or not
        out = int(b.rng.integers(3, 9))
        if b.rng.random() < 0.5:
            y = b.node("Gemm", [x, b.const(b.weight(out, width), "w"), b.const(b.weight(out), "bias")], transB=1)
        else:
            y = b.node("Gemm", [x, b.const(b.weight(out, width).T.copy(), "w"), b.const(b.weight(out), "bias")], alpha=float(b.rng.choice([0.5, 1.0, 2.0])))
        return b.activation(y), out
    if kind == 1:  # MatMul + bias
        out = int(b.rng.integers(3, 9))
        y = b.node("Add", [b.node("MatMul", [x, b.const(b.weight(out, width).T.copy(), "w")]), b.const(b.weight(out), "bias")])
        return b.activation(y), out
    if kind == 2:  # residual
        h = b.activation(b.node("Gemm", [x, b.const(b.weight(width, width), "w")], transB=1))
        return b.node("Add", [x, b.node("Gemm", [h, b.const(b.weight(width, width), "w")], transB=1)]), width
    if kind == 3:  # two branches concatenated
        w1, w2 = int(b.rng.integers(2, 6)), int(b.rng.integers(2, 6))
        left = b.node("Gemm", [x, b.const(b.weight(w1, width), "w")], transB=1)
        right = b.activation(b.node("Gemm", [x, b.const(b.weight(w2, width), "w")], transB=1))
        return b.node("Concat", [left, right], axis=1), w1 + w2
    if kind == 4:  # batch norm (eval statistics)
        y = b.node(
            "BatchNormalization",
            [
                x,
                b.const(b.rng.uniform(0.5, 2, width).astype(np.float32)),
                b.const(b.weight(width)),
                b.const(b.weight(width)),
                b.const(b.rng.uniform(0.3, 2, width).astype(np.float32)),
            ],
        )
        return y, width
    if kind == 5:  # If with a constant condition; both branches read outer values
        return _if(b, x, width), width
    return b.activation(x), width


def _if(b: _Builder, x: str, width: int) -> str:
    w = b.const(b.weight(width, width), "w")
    then_nodes: list[onnx.NodeProto] = []
    then_out = b.activation(b.node("Gemm", [x, w], then_nodes, transB=1), then_nodes)
    else_nodes: list[onnx.NodeProto] = []
    else_out = b.node("Mul", [x, b.const(np.float32(b.rng.uniform(0.5, 3.0)), "s")], else_nodes)
    branches = {
        name: helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, width])])
        for name, nodes, out in (("then", then_nodes, then_out), ("else", else_nodes, else_out))
    }
    cond = b.const(np.array(bool(b.rng.random() < 0.5)), "cond")
    return b.node("If", [cond], then_branch=branches["then"], else_branch=branches["else"])


def _conv(b: _Builder, x: str, channels: int, size: int) -> tuple[str, int, int]:
    kind = int(b.rng.integers(7))
    if kind == 0:  # conv, maybe strided or grouped
        out = int(b.rng.integers(2, 5)) * (2 if channels % 2 == 0 else 1)
        groups = 2 if channels % 2 == 0 and out % 2 == 0 and b.rng.random() < 0.3 else 1
        stride = 2 if size >= 4 and b.rng.random() < 0.3 else 1
        w = b.const((b.rng.standard_normal((out, channels // groups, 3, 3)) / 3).astype(np.float32), "w")
        y = b.node("Conv", [x, w, b.const(b.weight(out), "bias")], pads=[1, 1, 1, 1], strides=[stride, stride], group=groups)
        return b.activation(y), out, (size - 1) // stride + 1
    if kind == 1:  # residual conv block with batch norm
        w1 = b.const((b.rng.standard_normal((channels, channels, 3, 3)) / 3).astype(np.float32), "w")
        h = b.node("Conv", [x, w1], pads=[1, 1, 1, 1])
        h = b.node(
            "BatchNormalization",
            [
                h,
                b.const(b.rng.uniform(0.5, 2, channels).astype(np.float32)),
                b.const(b.weight(channels)),
                b.const(b.weight(channels)),
                b.const(b.rng.uniform(0.3, 2, channels).astype(np.float32)),
            ],
        )
        w2 = b.const((b.rng.standard_normal((channels, channels, 1, 1)) / 2).astype(np.float32), "w")
        return b.node("Add", [x, b.node("Conv", [b.activation(h), w2])]), channels, size
    if kind == 2:  # channel concat
        w = b.const((b.rng.standard_normal((2, channels, 3, 3)) / 3).astype(np.float32), "w")
        return b.node("Concat", [x, b.node("Conv", [x, w], pads=[1, 1, 1, 1])], axis=1), channels + 2, size
    if kind in (3, 4) and size >= 4:  # pools
        if kind == 3:
            return b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]), channels, size // 2
        return b.node("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=int(b.rng.integers(2))), channels, size
    if kind == 5:  # If on a conv feature map
        w = b.const((b.rng.standard_normal((channels, channels, 3, 3)) / 3).astype(np.float32), "w")
        then_nodes: list[onnx.NodeProto] = []
        then_out = b.node("Conv", [x, w], then_nodes, pads=[1, 1, 1, 1])
        else_nodes: list[onnx.NodeProto] = []
        else_out = b.activation(x, else_nodes)
        shape = [1, channels, size, size]
        branches = [
            helper.make_graph(n, name, [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape)])
            for name, n, o in (("then", then_nodes, then_out), ("else", else_nodes, else_out))
        ]
        cond = b.const(np.array(bool(b.rng.random() < 0.5)), "cond")
        return b.node("If", [cond], then_branch=branches[0], else_branch=branches[1]), channels, size
    return b.activation(x), channels, size


def _generated(seed: int, path: Path) -> Path:
    b = _Builder(seed)
    if seed % 2 == 0:
        width = int(b.rng.integers(2, 7))
        shape = [1, width]
        x = "x"
        for _ in range(int(b.rng.integers(2, 6))):
            x, width = _dense(b, x, width)
    else:
        channels, size = int(b.rng.integers(1, 4)), 6
        shape = [1, channels, size, size]
        x = "x"
        for _ in range(int(b.rng.integers(2, 5))):
            x, channels, size = _conv(b, x, channels, size)
        pooled = b.node("GlobalAveragePool", [x]) if b.rng.random() < 0.5 else x
        flat = b.node("Flatten", [pooled])
        features = channels if pooled != x else channels * size * size
        x = b.node("Gemm", [flat, b.const(b.weight(3, features), "w")], transB=1)
        width = 3
    graph = helper.make_graph(
        b.nodes,
        f"generated{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, width])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


CORPUS = backend_models("pytorch-converted", "pytorch-operator", "node", "simple")


def test_attained_ratios_never_exceed_the_network_bound(tmp_path: Path) -> None:
    results = []
    for index, path in enumerate(CORPUS):
        results.append(_check(path, index))
    for seed in range(GENERATED):
        folder = tmp_path / f"generated{seed}"
        folder.mkdir()
        results.append(_check(_generated(seed, folder / "model.onnx"), seed))
    checked = [r for r in results if r[1] != "skipped"]
    bounded = [r for r in results if r[0]]
    assert len(checked) >= 100
    assert len(bounded) >= 100
