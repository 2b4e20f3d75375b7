"""Conv operator norms end to end: every geometry, checked against an operator matrix that
onnxruntime or torch.autograd builds independently of lipcheck's own conv code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from lipcheck.api import inspect
from lipcheck.model import ConvGeometry
from lipcheck.settings import Settings
from lipcheck.spectral import conv as conv_module
from lipcheck.spectral import conv_groups
from lipcheck.spectral.conv import any_size_factor
from tests.reference import exact_sigma


def _onnx_conv(tmp_path: Path, op: str, weight: np.ndarray, input_shape: list[int | str], **attrs) -> Path:  # type: ignore[no-untyped-def]
    node = helper.make_node(op, ["x", "W"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(len(input_shape))])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / "conv.onnx"
    onnx.save(model, str(path))
    return path


def _ort_matrix(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The operator as a matrix: onnxruntime applied to every basis vector (batch = basis)."""
    size = math.prod(shape[1:])
    model = onnx.load(str(path))
    x = model.graph.input[0].type.tensor_type.shape
    for index, dim in enumerate(x.dim):  # a free batch (the basis) and free sizes
        dim.Clear()
        dim.dim_param = f"s{index}"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    basis = np.eye(size, dtype=np.float32).reshape(size, *shape[1:])
    (out,) = session.run(None, {"x": basis})
    matrix = out.reshape(size, -1).T.astype(np.float64)
    # One input reaches one output through at most one tap, so every entry is a weight or 0 and the
    # float32 run is exact.
    weight = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    assert np.isin(matrix, np.append(weight.ravel(), 0)).all()
    return matrix


# (op, C_in, C_out, kernel, attributes, spatial): the geometries issue 3 lists, 1-D to 3-D.
CASES = [
    ("Conv", 3, 4, (3, 3), {"pads": [1, 1, 1, 1]}, (16, 16)),
    ("Conv", 3, 4, (3, 3), {}, (16, 16)),
    ("Conv", 2, 4, (3, 3), {"strides": [2, 2], "pads": [0, 1, 2, 0]}, (16, 16)),
    ("Conv", 2, 3, (3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, (16, 16)),
    ("Conv", 4, 4, (3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, (16, 16)),
    ("Conv", 4, 6, (3, 3), {"group": 2, "strides": [2, 1]}, (16, 16)),
    ("Conv", 3, 4, (3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (15, 16)),
    ("Conv", 3, 4, (4, 4), {"auto_pad": "SAME_LOWER"}, (16, 16)),
    ("Conv", 3, 4, (3, 3), {"auto_pad": "VALID"}, (16, 16)),
    ("Conv", 3, 5, (5,), {"pads": [2, 1], "strides": [3]}, (40,)),
    ("Conv", 2, 3, (3, 3, 3), {"pads": [1, 1, 1, 1, 1, 1]}, (8, 8, 8)),
    ("Conv", 3, 4, (3, 3), {"pads": [1, 1, 1, 1]}, (8, 8)),
    ("Conv", 3, 4, (3, 3), {"strides": [2, 2], "dilations": [2, 1]}, (8, 8)),
    ("ConvTranspose", 4, 3, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, (8, 8)),
    ("ConvTranspose", 4, 2, (4, 4), {"strides": [2, 2], "pads": [1, 0, 1, 0]}, (16, 16)),
    ("ConvTranspose", 4, 4, (3, 3), {"group": 2, "dilations": [2, 2]}, (8, 8)),
    ("ConvTranspose", 3, 2, (3,), {"auto_pad": "SAME_UPPER", "strides": [2]}, (20,)),
    ("ConvTranspose", 2, 2, (2, 2, 2), {"strides": [2, 2, 2], "pads": [0, 1, 0, 0, 1, 0]}, (5, 5, 5)),
]


def _case_model(tmp_path: Path, case) -> tuple[Path, float]:  # type: ignore[no-untyped-def]
    """The case's ONNX file and its exact operator norm (from onnxruntime's operator matrix)."""
    op, c_in, c_out, kernel, attrs, spatial = case
    groups = attrs.get("group", 1)
    shape = (c_in, c_out // groups, *kernel) if op == "ConvTranspose" else (c_out, c_in // groups, *kernel)
    weight = np.random.default_rng(len(str(case))).standard_normal(shape).astype(np.float32)
    path = _onnx_conv(tmp_path, op, weight, [1, c_in, *spatial], **attrs)
    return path, exact_sigma(torch.from_numpy(_ort_matrix(path, (1, c_in, *spatial))))


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[3]}-{c[4]}-{c[5]}" for c in CASES])
def test_interval_contains_the_operator_norm_and_is_narrow(tmp_path: Path, case) -> None:  # type: ignore[no-untyped-def]
    spatial = case[5]
    path, exact = _case_model(tmp_path, case)
    (layer,) = inspect(path).layers
    assert layer.input_size == spatial
    lip = layer.lipschitz
    assert lip is not None and lip.lower is not None
    assert lip.lower <= exact * (1 + 1e-9) and exact <= lip.upper
    assert (lip.upper - lip.lower) / lip.upper <= (0.01 if min(spatial) >= 16 else 0.03)


@pytest.mark.parametrize("case", [c for c in CASES if min(c[5]) >= 8 and len(c[5]) == 2], ids=lambda c: f"{c[0]}-{c[4]}-{c[5]}")
def test_fft_path_contains_the_operator_norm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case) -> None:  # type: ignore[no-untyped-def]
    """Large operators skip the explicit matrix; force that path on small ones and check it too."""
    monkeypatch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)
    monkeypatch.setattr(conv_groups, "MAX_SIDE", 0)
    path, exact = _case_model(tmp_path, case)
    (layer,) = inspect(path, settings=Settings(tol=1e-6)).layers
    lip = layer.lipschitz
    assert lip is not None and lip.lower is not None
    assert lip.method == conv_module.METHOD_OPERATOR
    assert lip.lower <= exact * (1 + 1e-9) and exact <= lip.upper


def test_dynamic_input_needs_input_shape(tmp_path: Path) -> None:
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    path = _onnx_conv(tmp_path, "Conv", weight, ["N", 3, "H", "W"], pads=[1, 1, 1, 1])
    report = inspect(path)
    (layer,) = report.layers
    assert layer.input_size is None and layer.lipschitz is not None and layer.lipschitz.lower is None
    assert layer.lipschitz.method.startswith("input size unknown")
    assert any("--input-shape" in note for note in report.notes)
    # Valid for every size: above the exact norm at several sizes.
    for n in (3, 5, 9, 12):
        matrix = _ort_matrix(path, (1, 3, n, n))
        assert exact_sigma(torch.from_numpy(matrix)) <= layer.lipschitz.upper
    (fixed,) = inspect(path, settings=Settings(input_shape=((1, 3, 12, 12),))).layers
    exact = exact_sigma(torch.from_numpy(_ort_matrix(path, (1, 3, 12, 12))))
    assert fixed.input_size == (12, 12)
    assert fixed.lipschitz is not None and fixed.lipschitz.lower is not None
    assert fixed.lipschitz.lower <= exact <= fixed.lipschitz.upper < layer.lipschitz.upper


def test_one_by_one_conv_is_exact_at_any_size(tmp_path: Path) -> None:
    weight = np.random.default_rng(1).standard_normal((6, 5, 1, 1)).astype(np.float32)
    path = _onnx_conv(tmp_path, "Conv", weight, ["N", 5, "H", "W"], strides=[2, 2])
    (layer,) = inspect(path).layers
    exact = exact_sigma(torch.from_numpy(weight.reshape(6, 5)))
    assert layer.lipschitz is not None and layer.lipschitz.lower is not None
    assert layer.lipschitz.lower <= exact <= layer.lipschitz.upper <= exact * (1 + 1e-6)


# -- torch modules: TorchScript (scripted and traced), padding modes, the size-free bound ------------------


def _module_norm(module: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """The exact operator norm: the module's Jacobian (it is linear without bias) as a matrix."""
    x = torch.zeros(shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(module, x)
    return exact_sigma(jac.reshape(module(x).numel(), -1))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("trace", [False, True])
def test_torchscript_padding_modes(tmp_path: Path, mode: str, trace: bool) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(
        3,
        4,
        3,
        padding=2,
        stride=1,
        padding_mode=mode,  # type: ignore[arg-type]
        bias=False,
    ).double()
    net = torch.nn.Sequential(conv)
    x = torch.zeros(1, 3, 10, 10, dtype=torch.float64)
    scripted = torch.jit.trace(net, x) if trace else torch.jit.script(net)
    path = tmp_path / "m.torchscript.pt"
    scripted.save(str(path))
    exact = _module_norm(net, (1, 3, 10, 10))
    (free,) = inspect(path).layers
    assert free.lipschitz is not None and exact <= free.lipschitz.upper
    (sized,) = inspect(path, settings=Settings(input_shape=((1, 3, 10, 10),))).layers
    lip = sized.lipschitz
    assert lip is not None
    assert exact <= lip.upper
    if not (trace and mode != "zeros"):  # a traced non-zero pad hides the geometry: only the loose bound
        assert sized.input_size == (10, 10)
        assert lip.lower is not None and lip.lower <= exact * (1 + 1e-9)
        assert lip.upper - lip.lower <= 1e-5 * lip.upper


@st.composite
def torch_convs(draw):  # type: ignore[no-untyped-def]
    dims = draw(st.integers(1, 2))
    k, stride, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 2]))
    transposed = draw(st.booleans())
    mode = "zeros" if transposed else draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    pad = draw(st.integers(0, k))
    n = draw(st.integers(max(pad + 1, (k - 1) * dilation + 1), 9))
    cls = {(1, False): torch.nn.Conv1d, (2, False): torch.nn.Conv2d, (1, True): torch.nn.ConvTranspose1d, (2, True): torch.nn.ConvTranspose2d}[
        (dims, transposed)
    ]
    kwargs = {"padding_mode": mode} if not transposed else {}
    torch.manual_seed(draw(st.integers(0, 1000)))
    module = cls(2 * groups, 2 * groups, k, stride=stride, padding=pad, dilation=dilation, groups=groups, bias=False, **kwargs).double()
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
    with torch.no_grad():
        module.weight.copy_(module.weight.to(dtype).to(torch.float64))
    return module, (1, 2 * groups, *(n,) * dims)


@settings(max_examples=60, deadline=None)
@given(torch_convs())
def test_size_free_bound_is_above_the_norm_at_every_size(case) -> None:  # type: ignore[no-untyped-def]
    module, shape = case
    transposed = isinstance(module, torch.nn.modules.conv._ConvTransposeNd)
    try:
        exact = _module_norm(module, shape)
    except RuntimeError:  # torch refuses the geometry at this size (empty output, pad too large)
        return
    weight = module.weight.detach()
    n = weight.dim() - 2
    pads = tuple(module.padding) * 2
    geometry = ConvGeometry(tuple(module.stride), pads, tuple(module.dilation), module.groups, padding_mode=getattr(module, "padding_mode", "zeros"))
    reshaped = weight.reshape(weight.shape[0], -1)  # dim 0 for both: a ConvTranspose is the adjoint conv
    bound = any_size_factor(tuple(weight.shape[2:]), geometry) * exact_sigma(reshaped)
    assert exact <= bound * (1 + 1e-9), (n, transposed)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 2),
    st.integers(0, 2),
    st.integers(0, 3),
    st.integers(3, 7),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_adjoint_is_the_explicit_matrix_transpose(
    dims: int, k: int, stride: int, dilation: int, groups: int, begin: int, end: int, n: int, transposed: bool, seed: int
) -> None:
    if transposed:
        end = begin
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(2 * groups, 2, *(k,) * dims, generator=gen, dtype=torch.float64)
    geometry = ConvGeometry((stride,) * dims, (begin,) * dims + (end,) * dims, (dilation,) * dims, groups)
    spatial = (n,) * dims
    try:
        matrix = conv_module.explicit_matrix(weight, geometry, spatial, transposed)
    except RuntimeError:  # no output: torch refuses the geometry
        return
    y = torch.randn(matrix.shape[0], generator=gen, dtype=torch.float64)
    out = conv_module._conv_fn(weight, geometry, transposed)(
        torch.zeros(1, conv_module.input_channels(weight, geometry, transposed), *spatial, dtype=torch.float64)
    )
    z = conv_module._adjoint_fn(weight, geometry, spatial, transposed)(y.reshape(out.shape))
    assert torch.allclose(z.reshape(-1), matrix.T @ y)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 2),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(1, 8),
    st.booleans(),
)
def test_output_size_matches_the_operator(dims: int, k: int, stride: int, dilation: int, groups: int, begin: int, end: int, n: int, transposed: bool) -> None:
    weight = torch.zeros(2 * groups, 2, *(k,) * dims, dtype=torch.float64)
    geometry = ConvGeometry((stride,) * dims, (begin,) * dims + (end,) * dims, (dilation,) * dims, groups, output_padding=(0,) * dims)
    spatial = (n,) * dims
    x = torch.zeros(1, conv_module.input_channels(weight, geometry, transposed), *spatial, dtype=torch.float64)
    try:
        expected = conv_module._conv_fn(weight, geometry, transposed)(x).numel()
    except RuntimeError:  # torch refuses the geometry at this size
        return
    assert conv_module._output_size(weight, geometry, spatial, transposed) == expected


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 2),
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(2, 6),
    st.sampled_from(["zeros", "reflect", "circular"]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_row_scaled_uppers_bound_the_scaled_operator(
    dims: int, k: int, stride: int, dilation: int, groups: int, begin: int, end: int, n: int, mode: str, transposed: bool, explicit: bool, seed: int
) -> None:
    """A conv's interval with per-output-channel scales: each scaled upper end (the explicit
    operator's, or the circular certificate's when explicit operators are turned off) bounds the
    float64 SVD of the scaled operator (torch's conv on every basis vector, rows scaled), or is left out."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(2 * groups, 3, *(k,) * dims, generator=gen, dtype=torch.float64)
    if transposed:
        mode, end = "zeros", begin
    geometry = ConvGeometry((stride,) * dims, (begin,) * dims + (end,) * dims, (dilation,) * dims, groups, padding_mode=mode)
    spatial = (n,) * dims
    channels = conv_module.input_channels(weight, geometry, transposed)
    size = channels * n**dims
    try:
        columns = conv_module._conv_fn(weight, geometry, transposed)(torch.eye(size, dtype=torch.float64).reshape(size, channels, *spatial))
    except RuntimeError:  # torch refuses the geometry at this size
        return
    out_channels = columns.shape[1]
    scales = [torch.exp(torch.empty(out_channels, dtype=torch.float64).uniform_(-3.0, 3.0, generator=gen)), torch.zeros(out_channels, dtype=torch.float64)]
    scales[1][0] = 2.0
    with pytest.MonkeyPatch.context() as patch:
        if not explicit:
            patch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)
            patch.setattr(conv_groups, "MAX_SIDE", 0)
        found = conv_module.operator_interval(weight, geometry, spatial, transposed, tol=1e-6, max_iter=10_000, seed=0, row_scales=scales)
    exact = exact_sigma(columns.reshape(size, -1).T)
    assert found.lower <= exact * (1 + 1e-9) and found.upper >= exact
    assert len(found.scaled_uppers) == 2
    if not transposed and not explicit:
        assert all(upper is not None for upper in found.scaled_uppers)  # 2 outputs per group: the Gram's "out" side
    for scale, upper in zip(scales, found.scaled_uppers):
        if upper is None:
            continue
        assert not transposed and (columns[0].numel() <= size or not explicit)  # an explicit operator carries them only when wide
        scaled = columns * scale.reshape(1, -1, *([1] * dims))
        assert upper >= exact_sigma(scaled.reshape(size, -1).T)


@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("case", ["underflow", "huge", "tiny"])
def test_row_scales_at_the_edges_of_float64_never_give_a_false_upper(case: str, explicit: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scales that kill the dominant channel and blow up one whose products underflowed, scales
    past float32's range, and scales that shrink everything: each scaled upper is left out (None)
    or bounds the float64 SVD of the scaled operator, and the raw interval is never lost."""
    if not explicit:
        monkeypatch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)
    x = math.sqrt(1.45) * 2.0**-537  # x * x rounds to the smallest subnormal
    weight = torch.zeros(2, 3, 2, dtype=torch.float64)
    weight[0] = torch.tensor([[1.0, 0.5], [0.25, -0.5], [0.3, 0.1]], dtype=torch.float64)
    weight[1, 0, 0] = x if case == "underflow" else 0.7
    scale = {
        "underflow": torch.tensor([0.0, 2.0**190], dtype=torch.float64),
        "huge": torch.tensor([1e21, 3e20], dtype=torch.float64),
        "tiny": torch.tensor([2.0**-180, 2.0**-190], dtype=torch.float64),
    }[case]
    geometry = ConvGeometry((1,), (0, 0), (1,), 1)
    basis = torch.eye(12, dtype=torch.float64).reshape(12, 3, 4)
    operator = torch.nn.functional.conv1d(basis, weight).reshape(12, -1).T
    found = conv_module.operator_interval(weight, geometry, (4,), False, tol=1e-6, max_iter=500, seed=0, row_scales=[scale])
    assert found.lower <= exact_sigma(operator) <= found.upper
    upper = found.scaled_uppers[0]
    truth = exact_sigma((scale.repeat_interleave(3).reshape(-1, 1)) * operator)
    assert upper is None or upper >= truth
    if case != "underflow":  # in range after its power of two: worked out, not left out
        assert upper is not None and upper <= truth * (1.01 if explicit else 1.1)  # the circular embedding sits above at 4 px


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.sampled_from([3, 5]), st.integers(1, 2), st.integers(1, 6), st.integers(3, 9), st.booleans(), st.integers(0, 2**16))
def test_depthwise_circular_intervals_contain_the_operator_norm(dims: int, k: int, stride: int, channels: int, n: int, multiplier: bool, seed: int) -> None:
    """A depthwise conv (one input channel per group) has 1x1 Gram blocks on the circular path,
    which take their own screen and batched factorizations: its interval still holds the float64
    SVD of the operator (torch's conv applied to every basis vector)."""
    gen = torch.Generator().manual_seed(seed)
    out_per_group = 2 if multiplier else 1
    weight = torch.randn(channels * out_per_group, 1, *(k,) * dims, generator=gen, dtype=torch.float64)
    geometry = ConvGeometry((stride,) * dims, (k // 2,) * (2 * dims), (1,) * dims, channels)
    spatial = (n,) * dims
    size = channels * n**dims
    columns = conv_module._conv_fn(weight, geometry, False)(torch.eye(size, dtype=torch.float64).reshape(size, channels, *spatial))
    exact = exact_sigma(columns.reshape(size, -1).T)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 0)
        patch.setattr(conv_groups, "MAX_SIDE", 0)
        found = conv_module.operator_interval(weight, geometry, spatial, False, tol=1e-6, max_iter=10_000, seed=0)
    assert found.method == conv_module.METHOD_OPERATOR
    assert found.lower <= exact * (1 + 1e-9) and found.upper >= exact
