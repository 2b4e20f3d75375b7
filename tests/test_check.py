"""`lipcheck check`: every exit-code path, every report format (golden files), config and
environment precedence, and the GitHub annotation escaping."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from lipcheck.gate import Check, GateSpec, Outcome, evaluate, exit_status
from lipcheck.model import Interval
from lipcheck.report import github
from lipcheck.report.data import BoundReport, LayerReport, Report
from lipcheck.report.run import FileResult, Run
from tests.conftest import SAMPLES
from tests.golden_text import assert_matches_golden

GOLDEN = Path(__file__).parent / "golden"
CNN, MLP = "sample_models/cnn.onnx", "sample_models/mlp.onnx"
CNN_UPPER = 0.46575384  # the sample CNN's network bound (tight); the exact value of a run is what messages show


def _report(
    network: float | None, layer_names: tuple[str, ...] = ("a",), upper: float = 1.0, product: float | None = None, lower: float | None = None
) -> Report:
    layers = [LayerReport(name, "", "linear", (2, 2), "float32", upper, upper, Interval(upper, upper, "m"), 1, 1, True) for name in layer_names]
    bound = BoundReport(
        network,
        "graph" if network is not None else None,
        product,
        None,
        network,
        lower,
        [],
        [] if network is not None else ["Foo_3 (Foo): an op lipcheck does not know how to bound"],
    )
    return Report("0", "m.onnx", "onnx", {}, layers, [], bound)


def _network_bound(cli, model: str = CNN) -> float:  # type: ignore[no-untyped-def]
    code, out, err = cli("inspect", model, "-f", "json")
    assert code == 0, err
    value = json.loads(out)["bound"]["upper"]
    assert value == pytest.approx(CNN_UPPER, rel=1e-5) or model != CNN  # within the certificate tolerance
    return float(value)


# -- the rule itself ---------------------------------------------------------------------------------
def test_exit_status_table() -> None:
    assert exit_status(errors=0, failed=0, problems=0, exit_zero=False, strict=False) == 0
    assert exit_status(errors=0, failed=1, problems=0, exit_zero=False, strict=False) == 1
    assert exit_status(errors=0, failed=1, problems=0, exit_zero=True, strict=False) == 0
    assert exit_status(errors=1, failed=1, problems=0, exit_zero=True, strict=False) == 2
    assert exit_status(errors=0, failed=0, problems=1, exit_zero=False, strict=False) == 0
    assert exit_status(errors=0, failed=0, problems=1, exit_zero=False, strict=True) == 2


def test_exact_comparison_and_exact_message() -> None:
    at = evaluate(_report(10.0), GateSpec(fail_above=10.0))
    assert at.passed
    above = evaluate(_report(10.000000000000002), GateSpec(fail_above=10.0))
    assert not above.passed
    assert "10.000000000000002" in above.failures[0].message  # never shown as 10.0


def test_layer_patterns_first_match_wins_over_the_global_layer_threshold() -> None:
    report = _report(1.0, ("enc.0", "enc.1", "head"), upper=2.0)
    spec = GateSpec(fail_layer_above=1.0, layer_thresholds=(("enc.*", 3.0),))
    outcome = evaluate(report, spec)
    assert [(c.subject, c.passed) for c in outcome.checks] == [("enc.0", True), ("enc.1", True), ("head", False)]


def test_missing_network_bound_is_an_error_naming_the_node() -> None:
    outcome = evaluate(_report(None, product=0.5), GateSpec(fail_above=5.0))
    assert not outcome.passed and len(outcome.errors) == 1
    assert "Foo_3 (Foo)" in outcome.errors[0] and "--bound product" in outcome.errors[0]
    assert exit_status(errors=len(outcome.errors), failed=1, problems=0, exit_zero=True, strict=False) == 2


def test_the_product_is_never_judged_silently_in_place_of_a_missing_bound() -> None:
    """A product far below the threshold must not pass a network with no bound."""
    outcome = evaluate(_report(None, product=0.931, lower=1.405), GateSpec(fail_above=1.2))
    assert not outcome.passed and outcome.errors
    assert all(check.value != 0.931 for check in outcome.checks)


def test_a_lower_bound_above_the_threshold_fails_whatever_is_judged() -> None:
    """--bound product below the threshold, yet an attained ratio above it: the network provably exceeds it."""
    outcome = evaluate(_report(None, product=0.931, lower=1.405), GateSpec(fail_above=1.2, bound="product"))
    assert not outcome.passed and not outcome.errors
    (check,) = outcome.failures
    assert check.value == 1.405 and "lower bound 1.405 is above --fail-above 1.2" in check.message
    within = evaluate(_report(None, product=0.931, lower=0.5), GateSpec(fail_above=1.2, bound="product"))
    assert within.passed and "not a network bound" not in within.checks[0].message
    assert "only for a plain chain" in within.checks[0].message


# -- the command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, code",
    [
        ([CNN, "--fail-above", "0.47"], 0),  # the tight bound, 0.4658 (0.4654 with a longer optimization)
        ([CNN, "--fail-above", "0.46"], 1),
        ([CNN, "--fail-above", "0.46", "--exit-zero"], 0),
        ([CNN, "--fail-layer-above", "1.4"], 1),
        ([CNN, "--layer-threshold", "0.*=1.5", "--fail-layer-above", "1.0"], 1),
        ([CNN, "--layer-threshold", "*=1.5"], 0),
        ([CNN, "sample_models/missing.onnx", "--fail-above", "5"], 2),
        ([CNN, "--fail-above", "5", "--bound", "graph"], 0),
        (["sample_models/cnn.pt", "--fail-above", "100"], 2),
        (["sample_models/cnn.pt", "--fail-above", "100", "--exit-zero"], 2),
        (["sample_models/cnn.pt", "--fail-above", "5", "--bound", "graph"], 2),
        (["sample_models/cnn.pt", "--fail-above", "12", "--bound", "product"], 1),
        (["sample_models/cnn.pt", "--fail-above", "13", "--bound", "product"], 0),
        ([CNN, "--layer-threshold", "nonsense"], 2),
        (["sample_models/*.onnx", "--fail-above", "0.4"], 1),
        (["sample_models/nope*.onnx", "--fail-above", "1.0"], 2),
    ],
)
def test_exit_codes(cli, args: list[str], code: int) -> None:  # type: ignore[no-untyped-def]
    got, out, err = cli("check", *args, "-f", "json")
    assert got == code, err
    if code == 2:
        assert err.startswith("lipcheck: error: ") and "Traceback" not in err


def test_failure_message_shows_the_exact_value(cli) -> None:  # type: ignore[no-untyped-def]
    value = _network_bound(cli)
    threshold = value * (1 - 1e-14)  # below the bound by a few ulps: still a failure, shown in full
    code, out, err = cli("check", CNN, "--fail-above", repr(threshold))
    assert code == 1, err
    assert f"network bound (tight (LipSDP-Neuron multipliers, certified)) {value!r} is above --fail-above {threshold!r}" in out
    assert cli("check", CNN, "--fail-above", repr(value))[0] == 0  # at the bound: passes (value > threshold fails)


def test_no_network_bound_exits_2_with_one_line_naming_the_file(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("check", "sample_models/cnn.pt", "--fail-above", "100", "-f", "json")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lipcheck: error: no network bound") and "has no graph" in err
    report = json.loads(out)
    assert report["bound"]["upper"] is None and report["gate"]["passed"] is False


def test_strict_turns_skipped_tensors_into_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    path = tmp_path / "m.pt"
    torch.save({"embed.weight": torch.randn(10, 4), "fc.weight": torch.randn(3, 4)}, path)
    code, _, err = cli("check", str(path), "--fail-layer-above", "100")
    assert code == 0 and "lipcheck: warning:" in err and "embed.weight was skipped" in err
    code, _, err = cli("check", str(path), "--fail-layer-above", "100", "--strict")
    assert code == 2 and "--strict makes this an error" in err


def test_non_finite_weights_exit_2(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    path = tmp_path / "nan.pt"
    torch.save({"fc.weight": torch.full((3, 4), float("nan"))}, path)
    code, out, err = cli("check", str(path), "--fail-above", "100", "-f", "json")
    assert code == 2 and "non-finite" in err
    assert json.loads(out)["gate"]["passed"] is False


@pytest.mark.parametrize("fmt, suffix", [("markdown", "md"), ("github", "txt"), ("junit", "xml"), ("csv", "csv")])
def test_formats_match_golden(cli, fmt: str, suffix: str) -> None:  # type: ignore[no-untyped-def]
    # The lower-bound search runs within a time budget, so golden files are made without it.
    code, out, err = cli("check", MLP, CNN, "--fail-above", "1.0", "--layer-threshold", "2.*=0.9", "--no-lower", "-f", fmt)
    assert code == 1, err
    assert_matches_golden(out, (GOLDEN / f"check_{fmt}.{suffix}").read_text())


def test_table_format_shows_the_gate(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("check", CNN, "--fail-above", "0.46")
    assert code == 1
    assert "gate: FAILED" in out and f"network bound (tight (LipSDP-Neuron multipliers, certified)) {_network_bound(cli)!r} is above --fail-above 0.46" in out


def test_junit_is_the_xml_ci_systems_read(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "lipcheck.xml"
    code, out, _ = cli("check", MLP, CNN, "sample_models/missing.onnx", "--fail-above", "0.4", "-f", "junit", "-o", str(target))
    assert code == 2 and out == ""
    root = ET.parse(target).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests", -1)) == len(cases) == 3
    assert int(suite.get("failures", -1)) == len([c for c in cases if c.find("failure") is not None]) == 1
    assert int(suite.get("errors", -1)) == len([c for c in cases if c.find("error") is not None]) == 1
    for case in cases:
        assert case.get("classname", "").startswith("lipcheck.") and case.get("name")
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_output_into_missing_folder_is_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("check", CNN, "--fail-above", "5", "-o", str(tmp_path / "no" / "r.json"))
    assert code == 2 and out == "" and err.count("\n") == 1 and "does not exist" in err


def test_github_step_summary_is_appended(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    summary = tmp_path / "summary.md"
    summary.write_text("before\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lipcheck", "check", CNN, "--fail-above", "0.4", "-f", "github"],
        capture_output=True,
        text=True,
        cwd=SAMPLES.parent,
        env={"PATH": "/usr/bin:/bin", "GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert proc.returncode == 1
    assert proc.stdout.startswith("::error file=sample_models/cnn.onnx,title=lipcheck%3A Lipschitz gate failed::")
    text = summary.read_text()
    assert text.startswith("before\n## lipcheck") and "❌ failed" in text


def test_github_annotation_escaping() -> None:
    name = "odd%name,with:colon\nand newline"
    report = _report(3.0, (name,), upper=2.0)
    spec = GateSpec(fail_above=1.0, fail_layer_above=1.0)
    result = FileResult("dir,x/m%1:2.pt", report=report, outcome=evaluate(report, spec))
    out = github.render(Run([result], spec))
    lines = out.splitlines()
    assert len(lines) == 3  # one annotation per failing check (network, layer), then the summary line
    assert lines[0].startswith("::error file=dir%2Cx/m%251%3A2.pt,title=lipcheck%3A Lipschitz gate failed::")
    assert lines[1].startswith("::error file=dir%2Cx/m%251%3A2.pt,title=lipcheck%3A layer above its threshold::")
    message = lines[1].split("::", 2)[2]
    assert "\n" not in message and "odd%25name,with:colon%0Aand newline" in message  # % and newline escaped


# -- configuration ---------------------------------------------------------------------------------------
def _project(tmp_path: Path, toml: str) -> Path:
    shutil.copy(SAMPLES / "cnn.onnx", tmp_path / "cnn.onnx")
    (tmp_path / "pyproject.toml").write_text(toml)
    return tmp_path


def test_configured_only_by_pyproject(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path, '[tool.lipcheck]\nmodels = ["*.onnx"]\nfail-above = 0.46\nformat = "json"\n')
    code, out, err = cli("check", cwd=project)
    assert code == 1, err
    gate = json.loads(out)["gate"]
    assert gate["fail_above"] == 0.46 and gate["passed"] is False
    (project / "pyproject.toml").write_text('[tool.lipcheck]\nmodels = ["*.onnx"]\nfail_above = 2\n')
    assert cli("check", cwd=project)[0] == 0


def test_precedence_cli_over_environment_over_config(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path, '[tool.lipcheck]\nmodels = ["cnn.onnx"]\nfail-above = 0.46\n')
    assert cli("check", cwd=project)[0] == 1  # config: 0.46
    monkeypatch.setenv("LIPCHECK_FAIL_ABOVE", "2")
    assert cli("check", cwd=project)[0] == 0  # environment beats config
    assert cli("check", "--fail-above", "0.4", cwd=project)[0] == 1  # command line beats environment


def test_unknown_config_key_is_an_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path, "[tool.lipcheck]\nfail-abvoe = 1.1\n")
    code, out, err = cli("check", "cnn.onnx", cwd=project)
    assert code == 2 and "unknown key 'fail-abvoe'" in err and err.count("\n") == 1


def test_explicit_config_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path, "")
    (project / "lipcheck.toml").write_text("fail-layer-above = 1.0\n")
    code, _, err = cli("check", "cnn.onnx", "--config", "lipcheck.toml", cwd=project)
    assert code == 1, err
    code, _, err = cli("check", "cnn.onnx", "--config", "missing.toml", cwd=project)
    assert code == 2 and "does not exist" in err


def test_outcome_for_unused_check_type_is_constructible() -> None:
    # The Check/Outcome types are the Python API's gate result; passed is all checks passed.
    outcome = Outcome([Check("bound", "product", 2.0, 1.0, False, "m")])
    assert not outcome.passed and outcome.failures


def test_action_and_pre_commit_definitions_match_the_cli(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """action.yml passes thresholds through LIPCHECK_* variables; the hook runs `lipcheck check`."""
    root = SAMPLES.parent
    action = (root / "action.yml").read_text()
    hook = (root / ".pre-commit-hooks.yaml").read_text()
    assert "entry: lipcheck check" in hook and "lipcheck check ${{ inputs.models }} --format github" in action
    for variable, value, expected in [("LIPCHECK_FAIL_ABOVE", "0.4", 1), ("LIPCHECK_FAIL_LAYER_ABOVE", "1.4", 1)]:
        assert f"{variable}:" in action
        monkeypatch.setenv(variable, value)
        assert cli("check", CNN, "--format", "github")[0] == expected
        monkeypatch.delenv(variable)
    assert cli("check", CNN, "--format", "github")[0] == 0


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_plot_draws_every_model(cli, tmp_path: Path, suffix: str) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    target = tmp_path / f"lipschitz.{suffix}"
    code, _, err = cli("check", MLP, CNN, "--fail-layer-above", "1.2", "--plot", str(target), "-f", "json")
    assert code == 1, err
    data = target.read_bytes()
    if suffix == "png":
        assert data.startswith(b"\x89PNG")
    else:
        text = data.decode()
        assert "<svg" in text and "fail-layer-above 1.2" in text and "network bound 0.465754" in text
        assert "above its threshold" in text and "Lipschitz constant" in text  # failing layers marked, axis labelled
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_plot_needs_a_picture_suffix(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("inspect", MLP, "--plot", str(tmp_path / "x.txt"))
    assert code == 2 and ".png or .svg" in err and err.count("\n") == 1


def test_gate_never_passes_on_a_number_that_is_not_a_bound(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Linear-GELU-Linear-GELU-LayerNorm-Linear: its product is far below the truth; the gate must not pass on it."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)
    ).eval()
    path = tmp_path / "ln.onnx"
    torch.onnx.export(net, (torch.zeros(1, 8),), str(path), dynamo=False, opset_version=17)
    code, out, err = cli("inspect", str(path), "-f", "json")
    assert code == 0, err
    bound = json.loads(out)["bound"]
    assert bound["lower"] is not None and bound["product"] < bound["lower"]  # the product is no bound here
    threshold = (bound["product"] + bound["lower"]) / 2
    code, out, err = cli("check", str(path), "--fail-above", repr(threshold), "-f", "json")
    assert code in (1, 2) and json.loads(out)["gate"]["passed"] is False
    code, out, err = cli("check", str(path), "--fail-above", repr(threshold), "--bound", "product", "-f", "json")
    gate = json.loads(out)["gate"]
    assert code == 1 and gate["passed"] is False and "provably exceeds" in gate["failures"][0]["message"]


def test_gate_on_a_network_with_no_bound_exits_2_naming_the_node(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """x * tanh(Wx) is not globally Lipschitz: no network bound, so check exits 2 and names the node."""
    import torch

    class Gated(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.gate, self.out = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.inner(x) * torch.tanh(self.gate(x)))

    torch.manual_seed(0)
    path = tmp_path / "gated.onnx"
    torch.onnx.export(Gated().eval(), (torch.zeros(1, 8),), str(path), dynamo=False, opset_version=17)
    code, out, err = cli("inspect", str(path), "-f", "json")
    assert code == 0, err
    bound = json.loads(out)["bound"]
    assert bound["upper"] is None and bound["product"] is not None and bound["blocking"]
    threshold = bound["product"] * 10  # far above the product: a gate judging the product would pass
    code, out, err = cli("check", str(path), "--fail-above", repr(threshold))
    assert code == 2 and err.count("\n") == 1 and err.startswith("lipcheck: error: no network bound")
    assert bound["blocking"][0].split(" ")[0] in err and "gate: passed" not in out  # names the first blocking node
    # Judging the product alone (no search: the attained ratios of x * tanh(Wx) grow past any threshold).
    code, out, err = cli("check", str(path), "--fail-above", repr(threshold), "--bound", "product", "--no-lower", "-f", "json")
    gate = json.loads(out)["gate"]
    assert code == 0 and gate["passed"] is True and "only for a plain chain" in err + json.dumps(gate) + out


def test_a_file_without_layers_has_no_product_to_pass_a_gate(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Weight-norm halves and an integer table: nothing lipcheck bounds, so no product (it once printed 1).
    torch.save({"a.weight_g": torch.randn(4, 1), "a.weight_v": torch.randn(4, 3), "b.weight": torch.randint(0, 3, (3, 3))}, tmp_path / "none.pt")
    code, out, _ = cli("check", str(tmp_path / "none.pt"), "--bound", "product", "--fail-above", "2")
    assert code == 1 and "no layer weights found" in out
