"""The Python API for test suites (bound, check, live modules) and `lipcheck diff`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcheck
from lipcheck.errors import LipcheckError
from tests.conftest import SAMPLES
from tests.reference import exact_sigma


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, stride=2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5)).double()


def test_bound_of_a_live_module_is_certified_at_its_input_size() -> None:
    net = _net()
    conv, linear = net[0], net[3]
    jac = torch.autograd.functional.jacobian(
        lambda x: torch.nn.functional.conv2d(x, conv.weight, stride=2, padding=1), torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    )
    exact_conv = exact_sigma(jac.reshape(64, -1))
    exact_linear = exact_sigma(linear.weight)
    sized = lipcheck.bound(net, input_shape=(1, 3, 8, 8), kind="graph")
    assert exact_conv * exact_linear <= sized <= exact_conv * exact_linear * (1 + 1e-5)
    free = lipcheck.bound(net, kind="product")  # no size: the product for every input size, looser
    assert free >= sized
    # the default bound: the conv as an explicit operator in a LipSDP chain, between an attained
    # Jacobian norm and the graph's product
    tight = lipcheck.bound(net, input_shape=(1, 3, 8, 8))
    rng = np.random.default_rng(0)
    attained = max(exact_sigma(torch.autograd.functional.jacobian(net, torch.from_numpy(rng.standard_normal((1, 3, 8, 8)))).reshape(5, -1)) for _ in range(50))
    assert attained <= tight < sized
    with pytest.raises(LipcheckError, match="no upper bound.*no graph"):
        lipcheck.bound(net)  # without an input shape there is no graph to follow: no network bound
    report = lipcheck.inspect(net)
    assert [layer.name for layer in report.layers] == ["0.weight", "3.weight"]


def test_check_is_truthy_and_explains_failures() -> None:
    net = _net()
    assert lipcheck.check(net, fail_above=100.0, input_shape=(1, 3, 8, 8))
    unbounded = lipcheck.check(net, fail_above=100.0)  # no input shape, no graph: no network bound to judge
    assert not unbounded and unbounded.errors and "no graph" in unbounded.errors[0]
    failed = lipcheck.check(net, fail_above=1e-3, input_shape=(1, 3, 8, 8))
    assert not failed and "is above --fail-above 0.001" in repr(failed)
    assert not lipcheck.check(SAMPLES / "cnn.onnx", layer_thresholds={"0.*": 1.0})


def test_bound_kinds() -> None:
    assert lipcheck.bound(SAMPLES / "mlp.onnx", kind="product") == lipcheck.inspect(SAMPLES / "mlp.onnx").bound.product
    assert lipcheck.bound(SAMPLES / "mlp.onnx", kind="graph") == lipcheck.inspect(SAMPLES / "mlp.onnx").bound.graph
    with pytest.raises(LipcheckError, match="no graph bound"):
        lipcheck.bound(SAMPLES / "mlp.pt", kind="graph")  # a state_dict has no graph


def test_wrong_input_shape_for_a_module_is_a_lipcheck_error() -> None:
    with pytest.raises(LipcheckError, match="did not accept input_shape"):
        lipcheck.bound(_net(), input_shape=(1, 5, 8, 8))


def test_diff_reports_growth_and_gates_it(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = torch.load(SAMPLES / "mlp.pt", weights_only=True)
    grown = {k: v * 1.05 if k == "2.weight" else v for k, v in state.items()}
    new = tmp_path / "new.pt"
    torch.save(grown, new)
    code, out, err = cli("diff", str(SAMPLES / "mlp.pt"), str(new), "--fail-if-grows", "2", "-f", "json")
    assert code == 1, err
    body = json.loads(out)
    changed = {layer["name"]: layer["growth_percent"] for layer in body["layers"]}
    assert changed["2.weight"] == pytest.approx(5.0, rel=1e-4) and changed["0.weight"] == pytest.approx(0.0, abs=1e-6)
    assert body["product_growth_percent"] == pytest.approx(5.0, rel=1e-4)
    assert len(body["failures"]) == 2 and not body["passed"]
    assert cli("diff", str(SAMPLES / "mlp.pt"), str(new), "--fail-if-grows", "6")[0] == 0
    code, out, _ = cli("diff", str(SAMPLES / "mlp.pt"), str(new))
    assert code == 0 and "+5.000%" in out
    code, _, err = cli("diff", str(SAMPLES / "mlp.pt"), str(tmp_path / "missing.pt"))
    assert code == 2 and err.startswith("lipcheck: error:")


def test_the_api_leaves_the_modules_training_flag_as_it_found_it() -> None:
    for training in (True, False):
        net = _net().train(training)
        lipcheck.inspect(net, settings=lipcheck.Settings(input_shape=((1, 3, 8, 8),)))
        assert net.training is training
        assert all(sub.training is training for sub in net.modules())


def test_diff_says_when_a_layer_changed_shape(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = torch.load(SAMPLES / "mlp.pt", weights_only=True)
    wider = dict(state)
    wider["2.weight"] = torch.cat([state["2.weight"], state["2.weight"][:1]])
    new = tmp_path / "new.pt"
    torch.save(wider, new)
    code, out, err = cli("diff", str(SAMPLES / "mlp.pt"), str(new), "-f", "json")
    assert code == 0, err
    rows, cols = state["2.weight"].shape
    assert f"2.weight ({rows}x{cols} -> {rows + 1}x{cols})" in err + out
