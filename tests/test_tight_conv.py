"""The tight bound of small CNNs: convs read as explicit operators join the LipSDP chain. The
certified bound must sit above every ratio the network attains, come within 0.5% of the SDP
optimum over operators built independently (the Jacobian of torch's own conv), and be refused
where the chain read out of the graph does not compute the file's function."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lipcheck.api import inspect
from lipcheck.formats import load
from lipcheck.graph import explicit
from lipcheck.graph.chains import find_chain
from lipcheck.graph.lipsdp import Chain, certified_bound
from lipcheck.graph.tight import METHOD, tight_bound
from lipcheck.settings import Settings
from tests.test_tight import _lipsdp


class Nhwc(nn.Module):
    """conv → ReLU → strided conv → ReLU → channels-last flatten (as ERAN's nets) → dense → ReLU → dense."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1, self.c2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2)
        self.f1, self.f2 = nn.Linear(4 * 2 * 2, 12), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.f2(torch.relu(self.f1(h.permute(0, 2, 3, 1).reshape(x.shape[0], -1))))


def _export(module: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(shape), str(path), dynamo=False, opset_version=17)
    return path


def _jacobian_chain(net: Nhwc) -> list[torch.Tensor]:
    """The net's linear maps as matrices from torch's own modules (autograd Jacobians, float64)."""
    net = net.double()
    x0 = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    j1 = torch.autograd.functional.jacobian(lambda x: net.c1(x) - net.c1.bias.view(1, -1, 1, 1), x0).reshape(3 * 25, 25)
    h0 = torch.zeros(1, 3, 5, 5, dtype=torch.float64)

    def second(h: torch.Tensor) -> torch.Tensor:
        return (net.c2(h) - net.c2.bias.view(1, -1, 1, 1)).permute(0, 2, 3, 1).reshape(-1)

    j2 = torch.autograd.functional.jacobian(second, h0).reshape(16, 75)
    return [j1, j2, net.f1.weight.detach(), net.f2.weight.detach()]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_small_cnn_is_certified_within_half_a_percent_of_the_sdp_over_its_operators(tmp_path: Path, seed: int) -> None:
    net = Nhwc(seed)
    path = _export(net, (1, 1, 5, 5), tmp_path / "cnn.onnx")
    found, why = find_chain(load(path))
    assert found is not None, why
    reference = _jacobian_chain(Nhwc(seed))
    assert [tuple(w.shape) for w in found.weights] == [tuple(w.shape) for w in reference]
    # lipcheck moves the channels-last permutation into the dense layer's columns, the reference
    # into the conv's rows: the same map between the same hidden layers either way
    torch.testing.assert_close(found.weights[0], reference[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(found.weights[2] @ found.weights[1], reference[2].double() @ reference[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(found.weights[3], reference[3].double(), rtol=0, atol=1e-7)
    sdp = _lipsdp(reference, [(0.0, 1.0)] * 3)
    result = certified_bound(Chain(found.weights, found.slopes), budget_s=30.0)
    assert result is not None
    assert sdp * (1 - 1e-5) <= result.bound <= 1.005 * sdp

    report = inspect(path)
    assert report.bound.method == METHOD
    assert report.bound.upper is not None and report.bound.graph is not None and report.bound.lower is not None
    assert report.bound.lower <= report.bound.upper < report.bound.graph


def test_the_certified_cnn_bound_is_never_below_an_attained_ratio(tmp_path: Path) -> None:
    net = Nhwc(3)
    with torch.no_grad():
        for layer in (net.c1, net.c2, net.f1, net.f2):
            layer.weight.mul_(3.0)
    path = _export(net, (1, 1, 5, 5), tmp_path / "cnn.onnx")
    bound, why = tight_bound(load(path), Settings())
    assert bound is not None, why
    twin = Nhwc(3).double()
    twin.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    rng = np.random.default_rng(0)
    best = 0.0
    for _ in range(300):
        x = torch.from_numpy(rng.standard_normal((1, 1, 5, 5)))
        jac = torch.autograd.functional.jacobian(twin, x).reshape(3, 25)
        best = max(best, float(torch.linalg.matrix_norm(jac, 2)))
    assert 0.0 < best <= bound
    assert bound < 0.9 * math.prod(float(torch.linalg.matrix_norm(w, 2)) for w in _jacobian_chain(twin))


def test_a_chain_that_does_not_reproduce_the_file_gets_no_tight_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _export(Nhwc(4), (1, 1, 5, 5), tmp_path / "cnn.onnx")
    real = explicit.conv_matrix

    def flipped(node, weight, sample):  # type: ignore[no-untyped-def]
        made = real(node, weight, sample)
        return made if isinstance(made, str) else (made[0].flip(0), made[1])

    monkeypatch.setattr(explicit, "conv_matrix", flipped)
    bound, why = tight_bound(load(path), Settings())
    assert bound is None
    assert "does not reproduce" in why


def test_a_conv_too_large_for_an_explicit_operator_leaves_the_graph_bound(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 2))
    path = _export(net, (1, 3, 32, 32), tmp_path / "wide.onnx")
    found, why = find_chain(load(path))
    assert found is None and "explicit operator" in why
    report = inspect(path, settings=Settings(lower=False))
    assert report.bound.method == "graph"


def test_explicit_operators_hold_the_kernel_taps_exactly() -> None:
    from lipcheck.graph.ir import Node

    torch.manual_seed(0)
    weight = torch.randn(4, 2, 3, 2, dtype=torch.float64)
    node = Node("Conv", "c", ("x", "w"), ("y",), {"strides": [2, 1], "pads": [1, 0, 0, 1], "dilations": [1, 2]})
    made = explicit.conv_matrix(node, weight, (2, 5, 6))
    assert not isinstance(made, str)
    matrix, out = made
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(x[None], (0, 1, 1, 0)), weight, stride=(2, 1), dilation=(1, 2))
    assert tuple(y.shape[1:]) == out
    torch.testing.assert_close(matrix @ x.reshape(-1), y.reshape(-1), rtol=1e-12, atol=1e-12)
    taps = set(weight.reshape(-1).tolist()) | {0.0}
    assert set(matrix.reshape(-1).tolist()) <= taps


def test_torchscript_with_its_input_shape_gets_the_onnx_files_tight_bound() -> None:
    from tests.conftest import SAMPLES

    shape = ((1, 3, 16, 16),)
    onnx_bound, _ = tight_bound(load(SAMPLES / "cnn.onnx"), Settings())
    script_bound, why = tight_bound(load(SAMPLES / "cnn.torchscript.pt", input_shapes=shape), Settings(input_shape=shape))
    assert onnx_bound is not None and script_bound is not None, why
    assert script_bound == pytest.approx(onnx_bound, rel=1e-9)


def test_two_convs_with_no_activation_between_them_are_joined_by_the_identity(tmp_path: Path) -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.fill_(3.0)  # a normalization layer in front, as ERAN's nets have
    path = _export(net, (1, 1, 5, 5), tmp_path / "joined.onnx")
    found, why = find_chain(load(path))
    assert found is not None, why
    assert [node.op for node in found.activations][0] == "lipcheck.identity"
    bound, why = tight_bound(load(path), Settings())
    assert bound is not None, why
    twin = net.double()
    rng = np.random.default_rng(0)
    best = max(
        float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(twin, torch.from_numpy(rng.standard_normal((1, 1, 5, 5)))).reshape(2, 25), 2))
        for _ in range(300)
    )
    assert 0.0 < best <= bound


class Centered(nn.Module):
    """x − mean before a conv → ReLU6 → conv, with the batch fixed at 2 in the exported file."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.c1, self.c2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 3)
        self.register_buffer("mean", torch.randn(1, 2, 5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.nn.functional.relu6(self.c1(x - self.mean)))


def test_a_constant_before_the_first_conv_with_a_batch_of_two_is_certified(tmp_path: Path) -> None:
    net = Centered()
    path = _export(net, (2, 2, 5, 5), tmp_path / "centered.onnx")
    report = inspect(path)
    assert report.bound.method == METHOD and report.bound.upper is not None and report.bound.graph is not None
    twin = Centered().double()
    rng = np.random.default_rng(1)
    attained = max(
        float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(twin, torch.from_numpy(rng.standard_normal((1, 2, 5, 5)))).reshape(18, 50), 2))
        for _ in range(200)
    )
    assert attained <= report.bound.upper < report.bound.graph


def test_dense_layers_on_each_row_joined_by_the_identity_after_a_translation(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c, w0, w1 = rng.standard_normal((1, 4, 8)), rng.standard_normal((8, 8)), rng.standard_normal((8, 3))
    nodes = [helper.make_node("Sub", ["x", "c"], ["s"]), helper.make_node("MatMul", ["s", "w0"], ["h"]), helper.make_node("MatMul", ["h", "w1"], ["y"])]
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for a, name in ((c, "c"), (w0, "w0"), (w1, "w1"))]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "rows.onnx"
    import onnx

    onnx.save(model, str(path))
    report = inspect(path)
    exact = float(np.linalg.norm(w0.astype(np.float32).astype(np.float64) @ w1.astype(np.float32).astype(np.float64), 2))
    product = float(np.linalg.norm(w0, 2) * np.linalg.norm(w1, 2))
    assert report.bound.upper is not None and exact <= report.bound.upper <= product * (1 + 1e-5)


def test_a_conv_too_large_for_an_explicit_operator_is_refused_before_its_basis_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from lipcheck.graph.ir import Node

    def no_basis(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the identity basis was built")

    monkeypatch.setattr(torch, "eye", no_basis)
    node = Node("Conv", "c", ("x", "w"), ("y",), {"pads": [1, 1, 1, 1]})
    made = explicit.conv_matrix(node, torch.randn(64, 3, 3, 3, dtype=torch.float64), (3, 32, 32))
    assert isinstance(made, str) and "writes 65536 values" in made


def test_a_chain_that_cannot_be_read_leaves_the_graph_bound_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _export(Nhwc(7), (1, 1, 5, 5), tmp_path / "cnn.onnx")

    def broken(node, weight, sample):  # type: ignore[no-untyped-def]
        raise TypeError("an attribute of an unexpected type")

    monkeypatch.setattr(explicit, "conv_matrix", broken)
    report = inspect(path, settings=Settings(lower=False))
    assert report.bound.method is not None and report.bound.method.startswith("graph") and report.bound.upper == report.bound.graph
    assert any(text.startswith("tight: no LipSDP bound for this chain") and "unexpected type" in text for text in report.bound.assumptions)
