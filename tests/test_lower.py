"""The empirical lower bound is a ratio the float64 function attains, so it never exceeds the true
Lipschitz constant: checked on chains whose constant is known exactly (24), with biases large
enough that float32 differences of their outputs overshoot, and on live torch modules, whose
training flag and dtype lipcheck must leave as it found them."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lipcheck.api import inspect
from lipcheck.graph.evaluate import Float64Model, float64_twin
from lipcheck.settings import Settings


class Chain(nn.Module):
    """x -> 4 relu(3 relu(2 <a, x> + b1) + b2) + b3 with ‖a‖ = 1: Lipschitz constant exactly 24
    (every weight is a power of two times 1 or 3, so float32 holds them exactly)."""

    def __init__(self, width: int, biases: tuple[float, float, float]) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(width, 1), nn.Linear(1, 1), nn.Linear(1, 1)
        self.drop = nn.Dropout(0.5)
        with torch.no_grad():
            self.a.weight.fill_(2.0 / width**0.5)  # width 1 or 4: 2 * a with ‖a‖ = 1, exact in float32
            self.b.weight.fill_(3.0)
            self.c.weight.fill_(4.0)
            for layer, bias in zip((self.a, self.b, self.c), biases):
                layer.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(self.drop(torch.relu(self.a(x))))))


def _export(module: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(shape), str(path), dynamo=False, opset_version=17)
    return path


# Biases up to 1e4: the outputs are large, so float32 rounding of f(x) - f(y) is large too.
@pytest.mark.parametrize("biases", [(10.0, 100.0, 1000.0), (1000.0, 1.0, 1.0), (0.5, 1.0, 0.25)])
def test_onnx_lower_bound_of_a_constant_24_chain_stays_at_or_below_24(tmp_path: Path, biases: tuple[float, float, float]) -> None:
    report = inspect(_export(Chain(1, biases), (1, 1), tmp_path / "chain.onnx"))
    assert report.bound.lower is not None
    assert 23.0 <= report.bound.lower <= 24.0


def test_onnx_lower_bound_of_a_linear_cnn_reaches_its_operator_norm(tmp_path: Path) -> None:
    # Two strided convs and a linear head with nothing between them: the constant is the norm of
    # one matrix, its Jacobian, taken here in float64. Random pairs land far below it; the
    # Jacobian search of the IR in torch reaches it, and the certified float64 ratio stays at or below it.
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 1, 1), nn.Flatten(), nn.Linear(4 * 24 * 24, 3)).double()
    with torch.no_grad():
        net[3].weight[0] *= 4.0  # a clear top singular value: power iteration settles in a few steps
    shape = (1, 2, 48, 48)  # more inputs than a finite-difference Jacobian is built for
    jacobian = torch.autograd.functional.jacobian(net, torch.zeros(shape, dtype=torch.float64)).reshape(3, -1)
    exact = float(torch.linalg.svdvals(jacobian)[0])
    report = inspect(_export(net.float(), shape, tmp_path / "linear_cnn.onnx"))
    assert report.bound.lower is not None and report.bound.upper is not None
    assert 0.99 * exact <= report.bound.lower <= exact * (1 + 1e-9)
    assert report.bound.upper >= exact * (1 - 1e-9)


def test_torch_lower_bound_leaves_the_module_as_it_was() -> None:
    net = Chain(4, (5.0, 1.0, 0.0)).train()
    flags = [m.training for m in net.modules()]
    before = {name: p.detach().clone() for name, p in net.state_dict().items()}
    report = inspect(net, settings=Settings(input_shape=((1, 4),)))
    assert [m.training for m in net.modules()] == flags
    assert all(p.dtype == torch.float32 and torch.equal(p, before[name]) for name, p in net.state_dict().items())
    # Dropout is off in the evaluation (eval mode), so the chain's constant is exactly 24.
    assert report.bound.lower is not None and 23.0 <= report.bound.lower <= 24.0


def test_float64_twin_evaluates_conv_resize_and_constants_in_double() -> None:
    """Conv (the reference evaluator's torch path), Resize with float32-only scales, Constant
    value_floats and a Cast to float: the twin's outputs match a float64 torch computation."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 0, 1, 2], strides=[1, 2]),
        helper.make_node("Cast", ["c"], ["c32"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["k"], value_floats=[0.1, -0.3]),
        helper.make_node("Constant", [], ["shape"], value_ints=[1, 2, 1, 1]),
        helper.make_node("Reshape", ["k", "shape"], ["k4"]),
        helper.make_node("Add", ["c32", "k4"], ["s"]),
        helper.make_node("Resize", ["s", "", "scales"], ["y"], mode="nearest"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 10, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    twin = float64_twin(model)
    assert all(init.data_type in (TensorProto.DOUBLE, TensorProto.INT64) or init.name.startswith("scales") for init in twin.graph.initializer)
    x = rng.standard_normal((1, 1, 5, 6)).astype(np.float32)
    (y,) = Float64Model(model)([x])

    xt = torch.nn.functional.pad(torch.from_numpy(x).double(), (0, 2, 1, 1))
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(w).double(), torch.from_numpy(bias).double(), stride=(1, 2))
    ref = ref + torch.tensor([0.1, -0.3], dtype=torch.float32).double().reshape(1, 2, 1, 1)
    ref = ref.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert y.dtype == np.float64 and y.shape == tuple(ref.shape)
    # Both sides are float64 sums of 9 products: they agree to a few ulps of the largest term.
    assert np.max(np.abs(y - ref.numpy())) <= 1e-13 * max(1.0, float(np.max(np.abs(ref.numpy()))))


def test_no_float64_evaluation_gives_no_lower_bound_and_says_why(tmp_path: Path) -> None:
    """A contrib op onnxruntime runs in float32 only, unknown to the reference evaluator: no number."""
    w = np.full((3, 3), 0.5, dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gelu", ["h"], ["y"], domain="com.microsoft")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "gelu.onnx"
    onnx.save(model, str(path))
    report = inspect(path)
    assert report.bound.lower is None
    assert any("no empirical lower bound" in note and "float64" in note for note in report.notes)


def _patterns_norm(w1: np.ndarray, w2: np.ndarray, patterns: np.ndarray) -> float:
    return float(np.linalg.norm(np.einsum("om,pm,mi->poi", w2, patterns, w1), 2, axis=(1, 2)).max())


def _chain_lower(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> float:
    from lipcheck.graph.lower_chain import certified_pairs, chain_directions

    found = chain_directions([torch.from_numpy(w1), torch.from_numpy(w2)], [b1, None], [torch.relu], 0, budget_s=5.0, starts=48, kinked=[True])

    def ratio(x: np.ndarray, y: np.ndarray) -> float:
        f = lambda z: np.maximum(w1 @ z + b1, 0.0) @ w2.T  # noqa: E731
        return float(np.linalg.norm(f(x) - f(y)) / np.linalg.norm(x - y))

    return certified_pairs(ratio, found)


@pytest.mark.parametrize(("n0", "m", "out", "seed"), [(16, 12, 3, 0), (20, 12, 1, 1), (14, 10, 5, 2)])
def test_chain_lower_bound_finds_the_exact_constant_of_one_hidden_layer(n0: int, m: int, out: int, seed: int) -> None:
    """With at least as many inputs as neurons every activation pattern D is some region's, so the
    constant is the largest ‖W2 D W1‖ over all 2^m patterns."""
    import itertools

    rng = np.random.default_rng(seed)
    w1, b1, w2 = rng.standard_normal((m, n0)), rng.standard_normal(m), rng.standard_normal((out, m))
    exact = _patterns_norm(w1, w2, np.array(list(itertools.product([0.0, 1.0], repeat=m))))
    lower = _chain_lower(w1, b1, w2)
    assert 0.995 * exact <= lower <= exact * (1 + 1e-6)


def test_chain_lower_bound_on_a_plane_reaches_the_best_realizable_region() -> None:
    """Two inputs, twenty neurons: the regions are the cells of twenty lines, and every cell touches a
    vertex where two lines cross, so the four points around each vertex name every realizable pattern.
    The search reaches 99% of it here, not 99.5%: the best pattern for the top singular pair is often
    not realizable in two dimensions, and the walk stops at a neighbour."""
    rng = np.random.default_rng(3)
    m = 20
    w1, b1, w2 = rng.standard_normal((m, 2)), rng.standard_normal(m), rng.standard_normal((2, m))
    points = []
    for i in range(m):
        for j in range(i + 1, m):
            vertex = np.linalg.solve(w1[[i, j]], -b1[[i, j]])
            for si in (-1, 1):
                for sj in (-1, 1):
                    step = np.linalg.solve(w1[[i, j]], np.array([si, sj], dtype=float)) * 1e-7
                    points.append(vertex + step)
    patterns = np.unique((np.array(points) @ w1.T + b1 > 0).astype(float), axis=0)
    exact = _patterns_norm(w1, w2, patterns)
    lower = _chain_lower(w1, b1, w2)
    assert 0.985 * exact <= lower <= exact * (1 + 1e-6)


def test_pair_checks_stop_once_the_next_pair_cannot_win_and_go_on_past_an_untrusted_float32_ratio() -> None:
    """Pairs come best first by their float32 ratio; checks stop only when the next cannot beat the best."""
    from lipcheck.graph.lower import best_certified

    def run(pairs: list[tuple[float, float]]) -> tuple[float, int]:
        exact = {index: value for index, (_, value) in enumerate(pairs)}
        calls = []

        def check(xs: int, ys: int) -> float:
            calls.append(xs)
            return exact[xs]

        return best_certified([(searched, index, index) for index, (searched, _) in enumerate(pairs)], check), len(calls)

    # float32 ratios 2% high throughout: the first check shows it, so the second pair cannot win.
    assert run([(1.02, 1.0), (1.015, 0.995), (0.9, 0.88)]) == (1.0, 1)
    # The first float32 ratio is far off (an artifact of float32 rounding): the next pair is checked and wins.
    assert run([(1.0, 0.5), (0.99, 0.98), (0.4, 0.39)]) == (0.98, 2)
    # A later pair whose float32 ratio beats the best certified one is checked.
    assert run([(1.0, 0.9), (0.99, 0.97), (0.5, 0.5)]) == (0.97, 2)


class _LinearResidualCnn(nn.Module):
    """x + conv2(conv1(x)): linear, so its Lipschitz constant is its Jacobian's largest singular value."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


def test_torch_lower_bound_of_a_module_that_is_no_chain_reaches_its_exact_norm() -> None:
    """The Jacobian search on a live module (not a dense chain): within 1% of the float64 SVD."""
    net = _LinearResidualCnn()
    twin = _LinearResidualCnn().double()
    jac = torch.autograd.functional.jacobian(twin, torch.zeros(1, 2, 6, 6, dtype=torch.float64)).reshape(72, 72)
    exact = float(torch.linalg.matrix_norm(jac, ord=2))
    report = inspect(net, settings=Settings(input_shape=((1, 2, 6, 6),)))
    assert not any("lower bound" in note for note in report.notes), report.notes
    assert report.bound.lower is not None and 0.99 * exact <= report.bound.lower <= exact * (1 + 1e-9)


def test_lower_bound_never_reports_a_function_onnxruntime_does_not_compute(tmp_path: Path) -> None:
    """A linear Resize with non-integer scales: an evaluator reading the scales as output over input
    size computes another linear map (norm 1.41 against the file's 1.05); its ratio is not reported."""
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 8])],
        [numpy_helper.from_array(np.array([1, 1, 0.6, 2], np.float32), "sc")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "resize.onnx"
    onnx.save(model, str(path))
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    basis = np.eye(12, dtype=np.float32)
    matrix = np.stack([session.run(None, {"x": basis[i].reshape(1, 1, 3, 4)})[0].ravel() for i in range(12)], 1).astype(np.float64)
    truth = float(np.linalg.svd(matrix, compute_uv=False)[0])
    report = inspect(path)
    assert report.bound.lower is None or report.bound.lower <= truth * (1 + 1e-6)
    assert report.bound.upper is not None and report.bound.upper >= truth


def test_a_lower_bound_above_the_upper_bound_is_reported_as_a_contradiction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both numbers stand (the gate fails on either), and a note says one of them cannot be right."""
    import lipcheck.graph.lower as lower

    monkeypatch.setattr(lower, "onnx_lower", lambda *args, **kwargs: 1e6)
    report = inspect(Path(__file__).resolve().parents[1] / "sample_models" / "mlp.onnx")
    assert report.bound.upper is not None and report.bound.lower == 1e6
    assert any("above the certified upper bound" in note for note in report.notes)


class Cancel(nn.Module):
    """x ↦ (x + 2^28 through a ReLU) − 2^28: exactly x on x > −2^28, so Lipschitz constant 1, with
    intermediate values whose float64 rounding (2^-25) dwarfs a small step's change."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)
        with torch.no_grad():
            for layer, bias in ((self.a, 2.0**28), (self.b, -(2.0**28))):
                layer.weight.copy_(torch.eye(width))
                layer.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("width", [1, 4])
def test_a_large_value_that_cancels_later_never_lifts_the_lower_bound_above_the_truth(tmp_path: Path, width: int) -> None:
    onnx_report = inspect(_export(Cancel(width), (1, width), tmp_path / "cancel.onnx"))
    module_report = inspect(Cancel(width), settings=Settings(input_shape=((1, width),)))
    for report in (onnx_report, module_report):
        assert report.bound.upper is not None and report.bound.upper >= 1.0
        assert report.bound.lower is None or report.bound.lower <= 1.0


def test_a_weight_the_graph_rounds_to_float16_is_the_rounded_weight_for_the_lower_bound(tmp_path: Path) -> None:
    # y = x · float32(float16(1.00048)) = x: the file's weight is exactly 1
    weight = numpy_helper.from_array(np.array([[1.00048]], dtype=np.float32), "w")
    nodes = [
        helper.make_node("Cast", ["w"], ["w16"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "w32"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [weight]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "cast.onnx"
    onnx.save(model, str(path))
    report = inspect(path)
    assert report.bound.lower is not None and 0.99 <= report.bound.lower <= 1.0
    assert report.bound.upper is not None and report.bound.upper >= 1.0


def test_a_model_run_that_does_not_end_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Loop with 10^15 iterations: the lower-bound search stops the run and says why, the upper bound stands."""
    from lipcheck.graph import ort_run

    def value(name: str, shape: list[int], kind: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, kind, shape)

    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [value("i", [], TensorProto.INT64), value("c_in", [], TensorProto.BOOL), value("v_in", [1, 3])],
        [value("c_out", [], TensorProto.BOOL), value("v_out", [1, 3])],
    )
    inits = [numpy_helper.from_array(2 * np.eye(3, dtype=np.float32), "W"), numpy_helper.from_array(np.array(10**15, dtype=np.int64), "M")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Loop", ["M", "", "h"], ["y"], body=body)]
    model = helper.make_model(helper.make_graph(nodes, "g", [value("x", [1, 3])], [value("y", [1, 3])], inits), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp_path / "loop.onnx"
    onnx.save(model, str(path))
    monkeypatch.setattr(ort_run, "RUN_SECONDS", 1.0)
    report = inspect(path)
    assert report.bound.lower is None
    assert any("was stopped" in note for note in report.notes)


def test_no_certified_pair_gives_no_lower_bound_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lower bound of 0 would read as attained: where every checked pair is rejected, there is none."""
    from lipcheck.graph import lower

    monkeypatch.setattr(lower, "certified", lambda *args, **kwargs: 0.0)
    report = inspect(Path(__file__).resolve().parents[1] / "sample_models" / "mlp.onnx")
    assert report.bound.lower is None
    assert any(note.startswith("no empirical lower bound: no pair the search found could be certified") for note in report.notes)


class _Dormant(nn.Module):
    """A ReLU layer whose units are all off near the origin: J(x) = 0 at typical random inputs, and
    the constant is reached only where the ascent has to climb to."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        with torch.no_grad():
            self.a.weight.copy_(torch.rand(6, 4, generator=g) + 0.1)
            self.a.bias.fill_(-8.0)
            self.b.weight.copy_(torch.randn(3, 6, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_ascent_on_the_input_climbs_to_where_the_jacobian_is_large(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools

    from lipcheck.formats import load
    from lipcheck.graph import lower_ir

    net = _Dormant(seed).eval()
    path = tmp_path / "dormant.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 4),), str(path), dynamo=False, opset_version=17)
    graph = load(path).graph
    assert graph is not None
    w1, w2 = net.a.weight.detach().double(), net.b.weight.detach().double()
    # Every activation pattern's Jacobian norm: their largest is at or above the constant.
    patterns = [
        float(torch.linalg.matrix_norm(w2 @ torch.diag(torch.tensor(p, dtype=torch.float64)) @ w1, ord=2)) for p in itertools.product([0.0, 1.0], repeat=6)
    ]
    everything = float(torch.linalg.matrix_norm(w2 @ w1, ord=2))  # all units on: reached for large positive x
    found = lower_ir.ir_ascent(graph, [(1, 4)], seed, effort=3.0)
    assert found and max(patterns) * (1 + 1e-3) >= found[0][0] >= 0.9 * everything  # float32 ratios, not yet certified
    bound = inspect(path).bound  # the default effort, the pairs certified in float64
    assert bound.lower is not None and bound.upper is not None and 0.8 * everything <= bound.lower <= max(patterns) <= bound.upper
    monkeypatch.setattr(lower_ir, "_ascent", lambda *args: [])  # random points only: the units stay off
    assert max((value for value, _, _ in lower_ir.ir_ascent(graph, [(1, 4)], seed, effort=1.0)), default=0.0) < 0.1 * everything


def test_one_slow_first_pass_does_not_skip_the_ascent_but_a_slow_model_still_does() -> None:
    """The ascent runs where the budget holds enough forward passes; the first passes of a process
    run slow, so a model that looks too slow on its timed pass is timed once more."""
    import time as clock

    from lipcheck.graph import lower_ir

    net = _Dormant(0).eval()

    def pairs(delay: Callable[[int], float]) -> int:
        calls, ascents = [0], [0]

        def run(xs: list[torch.Tensor]) -> list[torch.Tensor]:
            calls[0] += 1
            clock.sleep(delay(calls[0]))
            return [net(xs[0])]

        def smoothed(xs: list[torch.Tensor], sharpness: float) -> list[torch.Tensor]:
            ascents[0] += 1
            return [net(xs[0])]

        assert lower_ir.jacobian_pairs(run, [(1, 4)], 0, 0.2, smoothed)
        return ascents[0]

    assert pairs(lambda call: 0.05 if call == 2 else 0.0) > 0  # the timed pass alone was slow
    assert pairs(lambda call: 0.01) == 0  # every pass: 100 of them would not fit in the 0.2 s budget


def test_the_jacobian_search_takes_every_output_together() -> None:
    """Two outputs y1 = A x, y2 = B x: the network bound takes (y1, y2) as one vector, whose
    constant is sigma([A; B]) = 3 here, above either output's own (sqrt 5); the power iteration
    climbs to the joint one."""
    from lipcheck.graph import lower_ir

    a, b = torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 2.0]])
    joint = float(torch.linalg.matrix_norm(torch.cat([a, b]).double(), ord=2))
    assert joint == pytest.approx(3.0) and float(torch.linalg.matrix_norm(a, ord=2)) < 2.3

    def run(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [xs[0] @ a.T, xs[0] @ b.T]

    found = lower_ir.jacobian_pairs(run, [(1, 2)], 0, 0.2)
    assert found and joint * (1 - 1e-3) <= found[0][0] <= joint * (1 + 1e-3)
