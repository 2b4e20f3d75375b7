"""The tight bound of plain chains: certified LipSDP-Neuron multipliers come within 0.5% of the SDP
optimum (cvxpy with Clarabel as the oracle), never fall below a ratio the network attains, and reach
the report through the graph of an exported model."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lipcheck.api import inspect
from lipcheck.graph.chains import _gelu_range, _mish_slope, _numeric_range, _silu_range
from lipcheck.graph.lipsdp import Chain, Objective, certified_bound, certify, eclipse_fast
from lipcheck.graph.lower_chain import chain_directions
from lipcheck.graph.tight import METHOD
from lipcheck.settings import Settings

_ACTS = {
    "relu": ((0.0, 1.0), torch.relu),
    "tanh": ((0.0, 1.0), torch.tanh),
    "sigmoid": ((0.0, 0.25), torch.sigmoid),
    "leaky": ((0.1, 1.0), lambda z: torch.nn.functional.leaky_relu(z, 0.1)),
    "gelu": (_gelu_range(), torch.nn.functional.gelu),
    "silu": (_silu_range(), torch.nn.functional.silu),
}


def _weights(sizes: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o, i, generator=g, dtype=torch.float64) / math.sqrt(i) for i, o in zip(sizes, sizes[1:])]


def _lipsdp(ws: list[torch.Tensor], slopes: list[tuple[float, float]]) -> float:
    """LipSDP-Neuron's optimum by cvxpy and Clarabel (the first layer reduced to its row space)."""
    cp = pytest.importorskip("cvxpy")
    w = [np.asarray(x, dtype=np.float64) for x in ws]
    if w[0].shape[1] > w[0].shape[0]:
        u, s, _ = np.linalg.svd(w[0], full_matrices=False)
        w[0] = u * s
    sizes = [w[0].shape[1]] + [x.shape[0] for x in w[:-1]]
    rho = cp.Variable(nonneg=True)
    ts = [cp.Variable(n, nonneg=True) for n in sizes[1:]]
    blocks = [[np.zeros((a, b)) for b in sizes] for a in sizes]
    for k in range(len(sizes)):
        d = rho * np.eye(sizes[0]) if k == 0 else 2 * cp.diag(ts[k - 1])
        if k == len(sizes) - 1:
            d = d - w[-1].T @ w[-1]
        if k < len(sizes) - 1:
            a, b = slopes[k]
            if a * b != 0:
                d = d + 2 * a * b * (w[k].T @ cp.diag(ts[k]) @ w[k])
            off = -(a + b) * (cp.diag(ts[k]) @ w[k])
            blocks[k + 1][k], blocks[k][k + 1] = off, off.T
        blocks[k][k] = d
    m = cp.bmat(blocks)
    cp.Problem(cp.Minimize(rho), [0.5 * (m + m.T) >> 0]).solve(solver=cp.CLARABEL)
    return math.sqrt(float(rho.value))


@pytest.mark.parametrize(
    ("sizes", "act", "seed"),
    [((4, 8, 8, 3), "relu", 1), ((6, 10, 10, 4), "tanh", 2), ((5, 12, 6), "relu", 3), ((8, 16, 16, 2), "relu", 4), ((5, 12, 12, 3), "gelu", 5)],
)
def test_certified_bound_is_within_half_a_percent_of_the_sdp_optimum(sizes: tuple[int, ...], act: str, seed: int) -> None:
    ws = _weights(sizes, seed)
    chain = Chain(ws, [_ACTS[act][0]] * (len(ws) - 1))
    sdp = _lipsdp(ws, chain.slopes)
    result = certified_bound(chain, budget_s=60.0)  # stops when converged, well before the budget
    assert result is not None
    assert sdp * (1 - 1e-5) <= result.bound <= 1.005 * sdp


def test_certificate_refuses_rho_below_the_optimum_and_accepts_it_above() -> None:
    ws = _weights((6, 10, 10, 4), 7)
    chain = Chain(ws, [(0.0, 1.0)] * 2)
    result = certified_bound(chain, budget_s=60.0)
    assert result is not None
    assert certify(chain, result.multipliers, result.rho)
    assert not certify(chain, result.multipliers, result.rho_optimized * (1 - 1e-3))
    assert not certify(chain, result.multipliers, result.rho_optimized * 0.5)


def test_tight_bound_beats_the_closed_form_and_the_product_on_a_deeper_net() -> None:
    ws = _weights((10, 30, 30, 30, 5), 0)
    product = math.prod(float(torch.linalg.matrix_norm(w, 2)) for w in ws)
    closed = eclipse_fast(ws)
    start = math.sqrt(Objective(Chain(ws, [(0.0, 1.0)] * 3)).rho(Objective(Chain(ws, [(0.0, 1.0)] * 3)).initial()))
    result = certified_bound(Chain(ws, [(0.0, 1.0)] * 3), budget_s=60.0)
    assert result is not None
    assert result.bound < start <= 1.01 * closed < product
    assert result.bound < closed / 1.3


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 7), min_size=3, max_size=5), st.sampled_from(sorted(_ACTS)), st.integers(0, 10_000), st.floats(0.1, 30.0))
def test_certified_bound_is_never_below_an_attained_ratio(sizes: list[int], act: str, seed: int, gain: float) -> None:
    ws = [w * gain for w in _weights(tuple(sizes), seed)]
    slope, phi = _ACTS[act]
    chain = Chain(ws, [slope] * (len(ws) - 1))
    result = certified_bound(chain, budget_s=0.2)
    assert result is not None
    g = torch.Generator().manual_seed(seed)
    biases = [torch.randn(w.shape[0], generator=g, dtype=torch.float64).numpy() for w in ws]

    def f(x: torch.Tensor) -> torch.Tensor:
        for k, w in enumerate(ws):
            x = x @ w.mT + torch.from_numpy(biases[k])
            if k < len(ws) - 1:
                x = phi(x)
        return x

    found = chain_directions(ws, biases, [phi] * (len(ws) - 1), seed, budget_s=0.2, starts=6, kinked=[act in ("relu", "leaky")] * (len(ws) - 1))
    for x, v, _ in found:
        xt = torch.from_numpy(x)
        for h in (1e-2, 1e-5):
            y = xt + h * torch.from_numpy(v)
            ratio = float((f(y) - f(xt)).norm() / (y - xt).norm())
            assert math.isfinite(ratio)
            assert ratio <= result.bound * (1 + 1e-9)


def test_slope_ranges_contain_every_slope_on_a_fine_grid() -> None:
    xs = torch.linspace(-30, 30, 600_001, dtype=torch.float64, requires_grad=True)
    for name in ("gelu", "silu"):
        (a, b), phi = _ACTS[name]
        (d,) = torch.autograd.grad(phi(xs).sum(), xs)
        assert a <= float(d.min()) <= a + 1e-6 and b - 1e-6 <= float(d.max()) <= b
    lo, hi = _numeric_range(_mish_slope)
    (d,) = torch.autograd.grad(torch.nn.functional.mish(xs).sum(), xs)
    assert lo <= float(d.min()) and float(d.max()) <= hi
    assert abs(_gelu_range()[1] - 1.1289042) < 1e-7 and abs(_gelu_range()[0] + 0.1289042) < 1e-7


def test_an_exported_mlp_reports_the_tight_bound_between_lower_and_graph(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 20), nn.Tanh(), nn.Linear(20, 3))
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.zeros(1, 3, 4), str(path), dynamo=False, opset_version=17)
    bound = inspect(path).bound
    assert bound.tight is not None and bound.graph is not None and bound.lower is not None
    assert bound.method == METHOD and bound.upper == bound.tight < bound.graph
    assert bound.lower <= bound.upper


class _Residual(nn.Module):
    """x + b(relu(a(x))): the branch is a chain of two dense layers inside a graph that is not one."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(torch.relu(self.a(x)))


def _export_residual(net: nn.Module, width: int, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.zeros(1, width), str(path), dynamo=False, opset_version=17)
    return path


@pytest.mark.parametrize("seed", [0, 1])
def test_a_residual_block_takes_its_branch_constant_from_lipsdp(tmp_path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    net = _Residual(6, 10)
    bound = inspect(_export_residual(net, 6, tmp_path / "res.onnx")).bound
    assert bound.tight is None and bound.method == "graph and certified chain segments"
    ws = [net.a.weight.detach().double(), net.b.weight.detach().double()]
    sdp = _lipsdp(ws, [(0.0, 1.0)])
    product = float(torch.linalg.svdvals(ws[0])[0] * torch.linalg.svdvals(ws[1])[0])
    assert bound.graph is not None and bound.upper == bound.graph
    # The walk adds the skip's 1 to the branch's constant: 1 + L_branch, L_branch within 0.5% of the SDP optimum.
    assert 1.0 + sdp * (1 - 1e-6) <= bound.graph <= 1.0 + 1.005 * sdp
    assert bound.graph < 1.0 + product


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_residual_network_with_chain_segments_stays_above_every_attained_ratio(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 12), _Residual(12, 24), nn.Tanh(), _Residual(12, 16), nn.Linear(12, 3)).double().eval()
    path = _export_residual(net.float(), 8, tmp_path / "resnet.onnx")
    with_segments = inspect(path).bound
    from lipcheck.graph import segments

    monkeypatch.setattr(segments, "segment_constants", lambda model, effort=1.0: ({}, []))
    plain = inspect(path).bound
    assert with_segments.graph is not None and plain.graph is not None
    assert with_segments.graph < plain.graph
    net = net.double()
    x = torch.randn(256, 8, dtype=torch.float64, requires_grad=True)
    # Directions from power iteration on each point's Jacobian: ratios near the local maximum.
    v = torch.randn(256, 8, dtype=torch.float64)
    for _ in range(30):
        v = v / v.norm(dim=1, keepdim=True)
        _, jv = torch.autograd.functional.jvp(net, x, v)
        (v,) = torch.autograd.grad(net(x), x, jv)
    v = v / v.norm(dim=1, keepdim=True)
    with torch.no_grad():
        ratios = (net(x + 1e-4 * v) - net(x)).norm(dim=1) / 1e-4
    assert float(ratios.max()) <= with_segments.graph


def _translated_chain(tmp_path: Path, shift: np.ndarray) -> Path:
    """x - shift, then Gemm-Relu-Gemm: ACAS Xu's exporter subtracts the input's mean this way."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    w1, w2 = rng.standard_normal((5, 12)).astype(np.float32), rng.standard_normal((12, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["x", "shift"], ["s"]),
            helper.make_node("MatMul", ["s", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shift.shape[0] if shift.ndim == 2 else 1, 3])],
        [numpy_helper.from_array(shift.astype(np.float32), "shift"), numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    path = tmp_path / "translated.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_translation_before_the_first_layer_keeps_the_chain(tmp_path: Path) -> None:
    bound = inspect(_translated_chain(tmp_path, np.array([[3.0, -2.0, 0.5, 1.0, 4.0]]))).bound
    assert bound.method == METHOD and bound.tight is not None and bound.lower is not None
    # The chain's search runs in the chain's coordinates and moves its points back by the shift,
    # so the attained ratio comes close to the certified bound.
    assert 0.5 * bound.tight <= bound.lower <= bound.tight


def test_a_constant_that_broadcasts_the_input_larger_is_not_a_translation(tmp_path: Path) -> None:
    # x (1x5) - c (3x5) copies x three times: the map is sqrt(3) times the chain's, not a chain.
    bound = inspect(_translated_chain(tmp_path, np.zeros((3, 5)))).bound
    assert bound.tight is None and bound.graph is not None and bound.lower is not None
    assert bound.lower <= bound.graph


def test_a_reshape_computed_from_the_inputs_shape_keeps_the_chain(tmp_path: Path) -> None:
    # x.view(x.size(0), -1) exports as Shape -> Gather -> Concat -> Reshape: the Shape reads only
    # the input's (fixed) shape, so the input still has one reader and the chain stands.
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(12, 16), nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x.view(x.size(0), -1))))

    torch.manual_seed(2)
    path = tmp_path / "flat.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Flat().eval(), torch.zeros(1, 3, 4), str(path), dynamo=False, opset_version=17, dynamic_axes={"x": {0: "batch"}}, input_names=["x"])
    assert "Shape" in {node.op_type for node in onnx.load(str(path)).graph.node}
    bound = inspect(path, settings=Settings(input_shape=((1, 3, 4),))).bound
    assert bound.method == METHOD and bound.tight is not None and bound.graph is not None and bound.tight < bound.graph


def _onnx(tmp_path: Path, name: str, nodes: list, inits: dict, x_shape: list, y: str, y_shape: list) -> Path:  # type: ignore[type-arg]
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _reaching_pair_ratio(w1: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A point inside the activation region where x W1 D W2 has its largest norm, and that norm's top direction."""
    import itertools

    d = max(itertools.product([0, 1], repeat=w1.shape[1]), key=lambda p: np.linalg.norm(w1 @ np.diag(p) @ w2, 2))
    u, _, _ = np.linalg.svd(w1 @ np.diag(d) @ w2)
    x = np.where(np.array(d) == 1, 10.0, -10.0) @ np.linalg.inv(w1)
    return x, u[:, 0]


@pytest.mark.parametrize("where", ["bias", "segment", "prelu"])
def test_a_constant_that_broadcasts_rows_into_copies_is_never_a_chains_bias(tmp_path: Path, where: str) -> None:
    # x (1x4) + b (3x4) has three copies of each row: sqrt(3) times the per-row constant. A chain
    # (whole or inside the graph) reading it as a bias reported 4.06 where the file reaches 7.03.
    from onnx import helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    inits = {"W1": w1, "W2": w2, "b": np.zeros((3, 4), np.float32)}
    if where == "prelu":
        inits["slope"] = np.zeros((3, 4), np.float32)
        nodes = [
            helper.make_node("MatMul", ["x", "W1"], ["a"]),
            helper.make_node("PRelu", ["a", "slope"], ["r"]),
            helper.make_node("MatMul", ["r", "W2"], ["y"]),
        ]
        out = "y"
    else:
        nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "b"], ["ab"])]
        nodes += [helper.make_node("Relu", ["ab"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
        out = "y"
        if where == "segment":
            nodes = [nodes[0], helper.make_node("Relu", ["a"], ["r"]), nodes[3], helper.make_node("Add", ["y", "b2"], ["yb"])]
            nodes += [helper.make_node("Tanh", ["yb"], ["t"]), helper.make_node("Sigmoid", ["yb"], ["s"]), helper.make_node("Add", ["t", "s"], ["z"])]
            inits["b2"] = np.zeros((3, 2), np.float32)
            out = "z"
    path = _onnx(tmp_path, f"{where}.onnx", nodes, inits, [1, 4], out, [3, 2])
    bound = inspect(path, settings=Settings(lower=False)).bound
    x, v = _reaching_pair_ratio(w1.astype(np.float64), w2.astype(np.float64))
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = x[None].astype(np.float32)
    ys = (x + 1e-3 * v)[None].astype(np.float32)
    attained = np.linalg.norm(session.run(None, {"x": ys})[0].astype(np.float64) - session.run(None, {"x": xs})[0]) / np.linalg.norm(ys.astype(np.float64) - xs)
    assert bound.upper is not None and bound.upper >= attained * (1 - 1e-3)


def test_constants_on_either_side_of_a_reshape_end_the_chain_without_a_traceback(tmp_path: Path) -> None:
    from onnx import helper

    rng = np.random.default_rng(0)
    inits = {
        "W1": rng.standard_normal((4, 4)).astype(np.float32),
        "W2": rng.standard_normal((4, 4)).astype(np.float32),
        "c1": np.ones((2, 3, 1), np.float32),
        "s": np.array([6, 4], np.int64),
        "c2": np.ones((6, 1), np.float32),
    }
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "c1"], ["a1"]), helper.make_node("Reshape", ["a1", "s"], ["a2"])]
    nodes += [helper.make_node("Add", ["a2", "c2"], ["a3"]), helper.make_node("Relu", ["a3"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    bound = inspect(_onnx(tmp_path, "reshape.onnx", nodes, inits, [2, 3, 4], "y", [6, 4]), settings=Settings(lower=False)).bound
    assert bound.upper is not None and bound.graph is not None


@pytest.mark.parametrize("batch", [1, "N"])
def test_shapes_the_file_declares_for_computed_values_are_not_trusted(tmp_path: Path, batch: int | str) -> None:
    # The file declares a = x W1 as 3x4, so a (3,4) bias looks like no broadcast; onnxruntime only
    # warns and copies each row 3 times (with batch N the copies happen at N = 1).
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "b"], ["ab"])]
    nodes += [helper.make_node("Relu", ["ab"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(np.zeros((3, 4), np.float32), "b")],
        value_info=[helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4])],
    )
    path = tmp_path / "declared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    settings = Settings(lower=False)
    bound = inspect(path, settings=settings).bound
    x, v = _reaching_pair_ratio(w1.astype(np.float64), w2.astype(np.float64))
    exact = math.sqrt(3) * np.linalg.norm(w1.astype(np.float64)[:, :] @ np.diag((x @ w1.astype(np.float64) > 0).astype(float)) @ w2.astype(np.float64), 2)
    assert bound.upper is not None and bound.upper >= exact * (1 - 1e-9)


@pytest.mark.parametrize("alpha", [1e303, float("inf"), float("nan")])
def test_a_slope_beyond_the_certificates_grid_is_no_chain_activation(alpha: float) -> None:
    from lipcheck.graph.chains import slope_range
    from lipcheck.graph.ir import Node

    assert slope_range(Node("LeakyRelu", "a", ("h",), ("a",), {"alpha": alpha}), lambda name: None) is None
    assert slope_range(Node("LeakyRelu", "a", ("h",), ("a",), {"alpha": 3.0}), lambda name: None) == (1.0, 3.0)
