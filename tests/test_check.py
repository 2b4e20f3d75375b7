"""`lipcheck check`: every exit-code path, every report format (golden files), config and
environment precedence, and the GitHub annotation escaping."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lipcheck.gate import Check, GateSpec, Outcome, evaluate, exit_status
from lipcheck.report import github
from lipcheck.report.data import BoundReport, LayerReport, Report
from lipcheck.report.run import FileResult, Run
from lipcheck.spectral.layer import Interval
from tests.conftest import SAMPLES

GOLDEN = Path(__file__).parent / "golden"
CNN, MLP = "sample_models/cnn.onnx", "sample_models/mlp.onnx"
CNN_PRODUCT = 1.1192545878879194  # pinned by the golden files too


def _report(product: float, layer_names: tuple[str, ...] = ("a",), upper: float = 1.0) -> Report:
    layers = [LayerReport(name, "", "linear", (2, 2), "float32", upper, upper, Interval(upper, upper, "m"), 1, 1, True)
              for name in layer_names]
    return Report("0", "m.pt", "state_dict", {}, layers, [], BoundReport(product, None, None, None, []))


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


def test_missing_bound_fails_the_gate() -> None:
    outcome = evaluate(_report(1.0), GateSpec(fail_above=5.0, bound="graph"))
    assert not outcome.passed and outcome.problems


# -- the command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, code", [
    ([CNN, "--fail-above", repr(CNN_PRODUCT)], 0),
    ([CNN, "--fail-above", "1.1"], 1),
    ([CNN, "--fail-above", "1.1", "--exit-zero"], 0),
    ([CNN, "--fail-layer-above", "1.4"], 1),
    ([CNN, "--layer-threshold", "0.*=1.5", "--fail-layer-above", "1.0"], 1),
    ([CNN, "--layer-threshold", "*=1.5"], 0),
    ([CNN, "sample_models/missing.onnx", "--fail-above", "5"], 2),
    ([CNN, "--fail-above", "5", "--bound", "graph"], 0),
    (["sample_models/cnn.pt", "--fail-above", "5", "--bound", "graph"], 1),
    (["sample_models/cnn.pt", "--fail-above", "5", "--bound", "graph", "--strict"], 2),
    (["sample_models/cnn.pt", "--fail-above", "12", "--bound", "product"], 1),
    ([CNN, "--layer-threshold", "nonsense"], 2),
    (["sample_models/*.onnx", "--fail-above", "1.0"], 1),
    (["sample_models/nope*.onnx", "--fail-above", "1.0"], 2),
])
def test_exit_codes(cli, args: list[str], code: int) -> None:  # type: ignore[no-untyped-def]
    got, out, err = cli("check", *args, "-f", "json")
    assert got == code, err
    if code == 2:
        assert err.startswith("lipcheck: error: ") and "Traceback" not in err


def test_failure_message_shows_the_exact_value(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("check", CNN, "--fail-above", "1.11925458788791")
    assert code == 1
    assert "graph bound 1.119254587887917 is above --fail-above 1.11925458788791" in out


def test_strict_turns_skipped_tensors_into_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    path = tmp_path / "m.pt"
    torch.save({"embed.weight": torch.randn(10, 4), "fc.weight": torch.randn(3, 4)}, path)
    code, _, err = cli("check", str(path), "--fail-above", "100")
    assert code == 0 and "lipcheck: warning:" in err and "embed.weight was skipped" in err
    code, _, err = cli("check", str(path), "--fail-above", "100", "--strict")
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
    code, out, err = cli("check", MLP, CNN, "--fail-above", "1.0", "--layer-threshold", "2.*=0.9", "-f", fmt)
    assert code == 1, err
    assert out == (GOLDEN / f"check_{fmt}.{suffix}").read_text()


def test_table_format_shows_the_gate(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("check", CNN, "--fail-above", "1.1")
    assert code == 1
    assert "gate: FAILED" in out and "graph bound 1.119254587887917 is above --fail-above 1.1" in out


def test_junit_is_the_xml_ci_systems_read(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "lipcheck.xml"
    code, out, _ = cli("check", MLP, CNN, "sample_models/missing.onnx", "--fail-above", "1.0",
                           "-f", "junit", "-o", str(target))
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
    proc = subprocess.run([sys.executable, "-m", "lipcheck", "check", CNN, "--fail-above", "1.0", "-f", "github"],
                          capture_output=True, text=True, cwd=SAMPLES.parent,
                          env={"PATH": "/usr/bin:/bin", "GITHUB_STEP_SUMMARY": str(summary)})
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
    first = out.splitlines()[0]
    assert first.startswith("::error file=dir%2Cx/m%251%3A2.pt,title=lipcheck%3A Lipschitz gate failed::")
    message = first.split("::", 2)[2]
    assert "\n" not in message and "%0A" in message  # two failures, one annotation, newline-escaped
    assert "odd%25name,with:colon%0Aand newline" in message  # data: % and newline escaped, , and : kept
    assert len(out.splitlines()) == 2  # the annotation and the summary line


# -- configuration ---------------------------------------------------------------------------------------
def _project(tmp_path: Path, toml: str) -> Path:
    shutil.copy(SAMPLES / "cnn.onnx", tmp_path / "cnn.onnx")
    (tmp_path / "pyproject.toml").write_text(toml)
    return tmp_path


def test_configured_only_by_pyproject(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path, '[tool.lipcheck]\nmodels = ["*.onnx"]\nfail-above = 1.1\nformat = "json"\n')
    code, out, err = cli("check", cwd=project)
    assert code == 1, err
    gate = json.loads(out)["gate"]
    assert gate["fail_above"] == 1.1 and gate["passed"] is False
    (project / "pyproject.toml").write_text('[tool.lipcheck]\nmodels = ["*.onnx"]\nfail_above = 2\n')
    assert cli("check", cwd=project)[0] == 0


def test_precedence_cli_over_environment_over_config(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path, '[tool.lipcheck]\nmodels = ["cnn.onnx"]\nfail-above = 1.1\n')
    assert cli("check", cwd=project)[0] == 1  # config: 1.1
    monkeypatch.setenv("LIPCHECK_FAIL_ABOVE", "2")
    assert cli("check", cwd=project)[0] == 0  # environment beats config
    assert cli("check", "--fail-above", "1.0", cwd=project)[0] == 1  # command line beats environment


def test_unknown_config_key_is_an_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = _project(tmp_path, '[tool.lipcheck]\nfail-abvoe = 1.1\n')
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
    for variable, value, expected in [("LIPCHECK_FAIL_ABOVE", "1.0", 1), ("LIPCHECK_FAIL_LAYER_ABOVE", "1.4", 1)]:
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
        assert "<svg" in text and "fail-layer-above 1.2" in text and "product bound 1.11926" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_plot_needs_a_picture_suffix(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("inspect", MLP, "--plot", str(tmp_path / "x.txt"))
    assert code == 2 and ".png or .svg" in err and err.count("\n") == 1
