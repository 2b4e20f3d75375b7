"""ONNX graphs as real exporters write them, built by hand so every pattern is pinned down."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lipcheck.api import inspect
from lipcheck.errors import RefusedFileError
from tests.reference import exact_sigma

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _save(tmp_path: Path, nodes, inits, inputs, outputs, name: str = "m.onnx", opset: int = 21, **kw) -> Path:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, str(path), **kw)
    return path


def _io(name: str, shape: list[int]):  # type: ignore[no-untyped-def]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _sigma(path: Path) -> dict[str, float]:
    return {layer.display_name: layer.sigma for layer in inspect(path).layers}  # type: ignore[misc]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_orientation_and_alpha(tmp_path: Path, trans_b: int) -> None:
    b = _w(8, 5) if trans_b else _w(5, 8)
    node = helper.make_node("Gemm", ["x", "B"], ["y"], transB=trans_b, alpha=2.5)
    path = _save(tmp_path, [node], [numpy_helper.from_array(b, "B")], [_io("x", [1, 5])], [_io("y", [1, 8])])
    (layer,) = inspect(path).layers
    assert (layer.op, layer.name) == ("gemm", "B")
    assert layer.sigma == pytest.approx(2.5 * exact_sigma(torch.from_numpy(b)), rel=1e-5)


@pytest.mark.parametrize("weight_first", [False, True])
def test_matmul_with_constant_on_either_side(tmp_path: Path, weight_first: bool) -> None:
    w = _w(6, 9)
    inputs = ["W", "x"] if weight_first else ["x", "W"]
    x_shape = [9, 2] if weight_first else [2, 6]
    path = _save(
        tmp_path,
        [helper.make_node("MatMul", inputs, ["y"])],
        [numpy_helper.from_array(w, "W")],
        [_io("x", x_shape)],
        [_io("y", [6, 2] if weight_first else [2, 9])],
    )
    (layer,) = inspect(path).layers
    assert layer.op == "matmul"
    assert layer.sigma == pytest.approx(exact_sigma(torch.from_numpy(w)), rel=1e-5)


def test_constant_node_transpose_cast_chain(tmp_path: Path) -> None:
    w16 = _w(7, 4).astype(np.float16)
    nodes = [
        helper.make_node("Constant", [], ["w_half"], value=numpy_helper.from_array(w16, "w_half")),
        helper.make_node("Cast", ["w_half"], ["w_float"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["w_float"], ["w_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w_t"], ["y"]),
    ]
    path = _save(tmp_path, nodes, [], [_io("x", [1, 4])], [_io("y", [1, 7])])
    report = inspect(path)
    (layer,) = report.layers
    assert layer.name == "w_half" and layer.dtype == "float16"
    assert "Cast→Transpose" in (layer.note or "")
    assert layer.sigma == pytest.approx(exact_sigma(torch.from_numpy(w16.astype(np.float64))), rel=1e-5)
    assert report.skipped == []


def test_dequantize_linear_per_channel(tmp_path: Path) -> None:
    q = RNG.integers(-127, 128, size=(6, 10)).astype(np.int8)
    scale = np.linspace(0.01, 0.05, 6).astype(np.float32)
    zero = np.zeros(6, dtype=np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0), helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(a, n) for a, n in ((q, "q"), (scale, "s"), (zero, "z"))]
    path = _save(tmp_path, nodes, inits, [_io("x", [1, 10])], [_io("y", [1, 6])])
    (layer,) = inspect(path).layers
    assert layer.name == "q" and layer.dtype == "int8"
    expected = exact_sigma(torch.from_numpy(q.astype(np.float64) * scale[:, None]))
    assert layer.sigma == pytest.approx(expected, rel=1e-5)


def test_if_branches_keep_same_named_weights_apart(tmp_path: Path) -> None:
    w_then, w_else = _w(3, 5), 10 * _w(3, 5)

    def branch(w: np.ndarray, label: str):  # type: ignore[no-untyped-def]
        return helper.make_graph(
            [helper.make_node("Gemm", ["x", "W"], ["out"], transB=1)], label, [], [_io("out", [1, 3])], initializer=[numpy_helper.from_array(w, "W")]
        )

    node = helper.make_node("If", ["cond"], ["y"], name="gate", then_branch=branch(w_then, "t"), else_branch=branch(w_else, "e"))
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    path = _save(tmp_path, [node], [], [cond, _io("x", [1, 5])], [_io("y", [1, 3])])
    sig = _sigma(path)
    assert set(sig) == {"gate.then_branch/W", "gate.else_branch/W"}
    assert sig["gate.then_branch/W"] == pytest.approx(exact_sigma(torch.from_numpy(w_then)), rel=1e-5)
    assert sig["gate.else_branch/W"] == pytest.approx(exact_sigma(torch.from_numpy(w_else)), rel=1e-5)


def test_conv_attributes_and_embedding_skip(tmp_path: Path) -> None:
    w = _w(4, 2, 3, 3)
    table = _w(100, 8)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], strides=[2, 2], pads=[1, 0, 1, 0], group=1), helper.make_node("Gather", ["E", "ids"], ["e"])]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [3])
    path = _save(
        tmp_path,
        nodes,
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(table, "E")],
        [_io("x", [1, 2, 8, 8]), ids],
        [_io("y", [1, 4, 4, 3]), helper.make_tensor_value_info("e", TensorProto.FLOAT, [3, 8])],
    )
    report = inspect(path)
    (layer,) = report.layers
    assert layer.op == "conv2d"
    assert [(s.name, s.reason.split(":")[0]) for s in report.skipped] == [("E", "used by Gather")]


def test_external_data_inside_the_folder_is_read(tmp_path: Path) -> None:
    w = _w(64, 32)
    path = _save(
        tmp_path,
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [numpy_helper.from_array(w, "W")],
        [_io("x", [1, 32])],
        [_io("y", [1, 64])],
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (tmp_path / "weights.bin").exists()
    assert _sigma(path)["W"] == pytest.approx(exact_sigma(torch.from_numpy(w)), rel=1e-5)


def test_the_lower_bound_reads_external_data_and_reuses_a_whole_parsed_file(tmp_path: Path) -> None:
    """A file whose tensors all lie inside it is parsed once and its parse reused; one with external
    data keeps no parse, so the float64 check reads its tensors from beside it. Both get the same
    lower bound of a linear map: its top singular value, within the check's slack."""
    from lipcheck.formats import load

    w = _w(16, 8)
    parts = ([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], [numpy_helper.from_array(w, "W")], [_io("x", [1, 8])], [_io("y", [1, 16])])
    whole = _save(tmp_path, *parts, name="whole.onnx")
    split = _save(tmp_path, *parts, name="split.onnx", save_as_external_data=True, location="split.bin", size_threshold=0)
    assert load(whole).source is not None
    assert load(split).source is None
    exact = exact_sigma(torch.from_numpy(w))
    lowers = [inspect(path).bound.lower for path in (whole, split)]
    for lower in lowers:
        assert lower is not None
        assert exact * (1 - 1e-3) <= lower <= exact * (1 + 1e-9)
    assert lowers[0] == pytest.approx(lowers[1], rel=1e-12)


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    inner = tmp_path / "model"
    inner.mkdir()
    w = _w(4, 4)
    path = _save(
        inner,
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [numpy_helper.from_array(w, "W")],
        [_io("x", [1, 4])],
        [_io("y", [1, 4])],
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )
    os.replace(inner / "w.bin", tmp_path / "secret.bin")
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    onnx.save(proto, str(path))
    with pytest.raises(RefusedFileError, match="outside the model's folder"):
        inspect(path)


def test_bfloat16_initializer(tmp_path: Path) -> None:
    w = _w(5, 5)
    tensor = helper.make_tensor("W", TensorProto.BFLOAT16, [5, 5], w.flatten().tolist())
    nodes = [helper.make_node("Cast", ["W"], ["Wf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "Wf"], ["y"])]
    path = _save(tmp_path, nodes, [tensor], [_io("x", [1, 5])], [_io("y", [1, 5])])
    layer = inspect(path).layers[0]
    stored = numpy_helper.to_array(tensor).astype(np.float64)
    assert layer.dtype == "bfloat16"
    assert layer.sigma == pytest.approx(exact_sigma(torch.from_numpy(stored)), rel=1e-5)


def test_exported_model_runs_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    path = tmp_path / "exported.onnx"
    torch.onnx.export(net, (torch.randn(1, 12),), str(path), dynamo=False)
    ort.InferenceSession(str(path))  # the file is valid for the runtime too
    sig = _sigma(path)
    assert sig["0.weight"] == pytest.approx(exact_sigma(net[0].weight), rel=1e-5)
    assert sig["2.weight"] == pytest.approx(exact_sigma(net[2].weight), rel=1e-5)


def test_loop_body_and_scaled_initializer(tmp_path: Path) -> None:
    w, outer = _w(4, 4), _w(3, 6)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "Wb"], ["h_out"]), helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, []), _io("h_in", [1, 4])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), _io("h_out", [1, 4])],
        initializer=[numpy_helper.from_array(w, "Wb")],
    )
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    nodes = [
        helper.make_node("Loop", ["n", "", "x"], ["h"], name="loop", body=body),
        helper.make_node("Mul", ["Wo", "half"], ["Wo_scaled"]),
        helper.make_node("Gemm", ["h", "Wo_scaled"], ["y"], transB=1),
    ]
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [])
    path = _save(tmp_path, nodes, [numpy_helper.from_array(outer[:, :4].copy(), "Wo"), half], [n, _io("x", [1, 4])], [_io("y", [1, 3])])
    sig = _sigma(path)
    assert sig["loop.body/Wb"] == pytest.approx(exact_sigma(torch.from_numpy(w)), rel=1e-5)
    assert sig["Wo"] == pytest.approx(0.5 * exact_sigma(torch.from_numpy(outer[:, :4])), rel=1e-5)


def test_conv_weight_behind_transpose_and_reshape_uses_the_layout_the_conv_sees(tmp_path: Path) -> None:
    """tf2onnx stores conv kernels HWIO behind a Transpose; others store them flat behind a Reshape."""
    w = _w(8, 2, 3, 3)  # OIHW, what Conv consumes
    hwio = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    flat = w.reshape(8, 18).copy()
    nodes = [
        helper.make_node("Transpose", ["K_hwio"], ["K1"], perm=[3, 2, 0, 1]),
        helper.make_node("Conv", ["x", "K1"], ["y1"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["K_flat", "shape"], ["K2"]),
        helper.make_node("Conv", ["x", "K2"], ["y2"], pads=[1, 1, 1, 1]),
    ]
    inits = [
        numpy_helper.from_array(hwio, "K_hwio"),
        numpy_helper.from_array(flat, "K_flat"),
        numpy_helper.from_array(np.array([8, 2, 3, 3], dtype=np.int64), "shape"),
    ]
    path = _save(tmp_path, nodes, inits, [_io("x", [1, 2, 8, 8])], [_io("y1", [1, 8, 8, 8]), _io("y2", [1, 8, 8, 8])])
    report = inspect(path)
    assert [(layer.name, layer.op, layer.shape) for layer in report.layers] == [("K_hwio", "conv2d", (3, 3, 2, 8)), ("K_flat", "conv2d", (8, 18))]
    sigma = exact_sigma(torch.from_numpy(w.reshape(8, -1)))
    kernel = torch.from_numpy(w).double()
    jac = torch.autograd.functional.jacobian(lambda x: torch.nn.functional.conv2d(x, kernel, padding=1), torch.zeros(1, 2, 8, 8, dtype=torch.float64))
    operator = exact_sigma(jac.reshape(8 * 64, -1))
    for layer in report.layers:
        assert layer.sigma == pytest.approx(sigma, rel=1e-5)
        assert layer.input_size == (8, 8)
        assert layer.lipschitz is not None and layer.lipschitz.lower is not None
        assert layer.lipschitz.lower <= operator * (1 + 1e-9) <= layer.lipschitz.upper * (1 + 1e-9)
        assert layer.lipschitz.upper <= operator * (1 + 1e-5)
    assert report.skipped == []


def _conv_norm_at_runtime_size(path: Path, model: onnx.ModelProto, conv: onnx.NodeProto, weight: np.ndarray) -> float:
    """The conv's operator norm at the input size onnxruntime gives it: its columns from basis vectors."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(conv.input[0], TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros([d for d in i.shape], np.float32) for i in session.get_inputs()}
    shape = session.run([conv.input[0]], feed)[0].shape
    alone = helper.make_model(
        helper.make_graph(
            [conv],
            "c",
            [helper.make_tensor_value_info(conv.input[0], TensorProto.FLOAT, list(shape))],
            [helper.make_tensor_value_info(conv.output[0], TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weight, conv.input[1])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    alone.ir_version = 8
    run = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"])
    size = int(np.prod(shape))
    basis = np.eye(size, dtype=np.float32).reshape(size, *shape)
    columns = [run.run(None, {conv.input[0]: basis[i]})[0].reshape(-1) for i in range(size)]
    return float(np.linalg.svd(np.stack(columns, axis=1).astype(np.float64), compute_uv=False)[0])


@pytest.mark.parametrize(
    "first",
    [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2], strides=[2], pads=[1, 1], ceil_mode=1),
        helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2], strides=[3], pads=[0, 1], ceil_mode=1),
        helper.make_node("ConvTranspose", ["x", "T"], ["p"], strides=[2], output_padding=[1], auto_pad="SAME_UPPER"),
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[1], strides=[2], dilations=[2], auto_pad="SAME_UPPER", ceil_mode=1),
        helper.make_node("ConvTranspose", ["x", "T"], ["p"], kernel_shape=[2], strides=[3], auto_pad="SAME_UPPER"),
        helper.make_node(
            "If",
            ["c"],
            ["p"],
            then_branch=helper.make_graph(
                [helper.make_node("MaxPool", ["x"], ["q"], kernel_shape=[2], strides=[2], pads=[1, 1], ceil_mode=1)],
                "then",
                [],
                [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, 4])],
            ),
            else_branch=helper.make_graph(
                [helper.make_node("MaxPool", ["x"], ["r"], kernel_shape=[2], strides=[2], pads=[1, 1], ceil_mode=1)],
                "else",
                [],
                [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 2, 4])],
            ),
        ),
    ],
    ids=[
        "max pool ceil_mode",
        "average pool ceil_mode",
        "conv transpose SAME with output_padding",
        "dilated max pool SAME with ceil_mode",
        "conv transpose SAME with kernel below stride",
        "ceil_mode pool in an If branch",
    ],
)
def test_conv_input_sizes_are_the_ones_onnxruntime_computes(tmp_path: Path, first: onnx.NodeProto) -> None:
    """ONNX shape inference gives these outputs one cell more than onnxruntime: with SAME padding after
    them, the conv's norm at the inferred size was below its norm at the real one (2.78 against 3.81)."""
    rng = np.random.default_rng(3)
    weight = np.array([[[0.2666, 0.0430, 0.2541], [0.8079, -0.2162, 1.5012]], [[2.1752, -0.1762, 2.5844], [-1.6893, -0.1047, -0.4300]]], np.float32)
    conv = helper.make_node("Conv", ["p", "W"], ["y"], strides=[3], auto_pad="SAME_UPPER")
    inits = [
        numpy_helper.from_array(weight, "W"),
        numpy_helper.from_array(rng.standard_normal((2, 2, 2)).astype(np.float32), "T"),
        numpy_helper.from_array(np.array(True), "c"),
    ]
    graph = helper.make_graph(
        [first, conv],
        "g",
        [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, [1, 2, {"ConvTranspose": 3}.get(first.op_type, 16 if first.attribute[0].name == "auto_pad" else 5)]
            )
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    truth = _conv_norm_at_runtime_size(path, model, conv, weight)
    layer = next(entry for entry in inspect(path).layers if entry.name == "W")
    assert layer.lipschitz is not None
    assert layer.lipschitz.lower <= truth * (1 + 1e-6) and truth <= layer.lipschitz.upper <= truth * (1 + 1e-3)
