"""The command line in a user's hands: one-line errors, help as written, tables at 80 and 140
columns, config relative to its file with shapes per model, and warnings for mistakes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import SAMPLES
from tests.golden_text import assert_matches_golden

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["check", "sample_models/cnn.onnx", "--fail-above", "abc"], "'abc' is not a number"),
        (["check", "sample_models/cnn.onnx", "--max-iter", "1.5"], "'1.5' is not a whole number"),
        (["inspect", "--nope", "x"], "No such option: --nope"),
        (["inspect", "sample_models/mlp.onnx", "-f", "junit"], "inspect writes table, json, markdown, csv, not junit"),
        (["normalize", "sample_models/mlp.onnx", "-o", "x.onnx", "-f", "csv"], "normalize writes table, json, not csv"),
        (["diff", "sample_models/mlp.pt", "sample_models/mlp.pt", "-f", "junit"], "diff writes table, json, markdown"),
        (["check", "sample_models/cnn.onnx", "--tol", "2"], "--tol must be between 0 and 1"),
        (["check", "sample_models/cnn.onnx", "--bound", "best"], "Invalid value for '--bound'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(cli, args: list[str], fragment: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lipcheck: error: "), err
    assert fragment in err and "╭" not in err and "Input should be" not in err


def test_help_renders_as_written(run_cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli("check", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "lipcheck[plot]" in text and "[tool.lipcheck]" in text  # brackets are not eaten as markup
    assert "<bool>" not in out and "--fail-above X" in text and "--input-shape 1x3x224x224" in text


def _state_dict_with_long_names(path: Path) -> None:
    torch.manual_seed(0)
    prefix = "encoder.layer.{}.attention.output.dense.weight"
    torch.save(
        {prefix.format(i): torch.randn(16, 16) for i in range(3)}
        | {"encoder.layer.0.intermediate.dense_with_a_very_long_descriptive_name.weight": torch.randn(8, 16)},
        path,
    )


@pytest.mark.parametrize("columns", [80, 140])
def test_table_fits_the_terminal_with_one_line_per_layer(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, columns: int) -> None:
    path = tmp_path / "long.pt"
    _state_dict_with_long_names(path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = cli("inspect", "long.pt", cwd=tmp_path)
    assert code == 0, err
    table = [line for line in out.splitlines() if line.startswith("│")]
    assert len(table) == 4 and all(len(line) <= columns for line in out.splitlines()[:8])  # one line per layer
    names = [line.split("│")[2].strip() for line in table]
    assert len(set(names)) == 4  # names stay distinct
    assert "layer names below follow encoder.layer." in out  # the shared prefix is folded into the title
    assert any("…" in name for name in names) and "0.attention.output.dense.weight" in names  # ellipsis only where needed
    assert ("0 ┄ " in out) == (columns >= 120)  # wide terminals add a bar column with its scale


@pytest.mark.parametrize("columns", [80, 140])
def test_inspect_table_golden(cli, monkeypatch: pytest.MonkeyPatch, columns: int) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = cli("inspect", "sample_models/cnn.onnx", "--no-lower")
    assert code == 0, err
    monkeypatch.setenv("COLUMNS", "200")
    assert_matches_golden(out, (GOLDEN / f"inspect_cnn_onnx_{columns}.txt").read_text())


def test_config_paths_are_relative_to_the_config_and_shapes_are_per_model(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    shutil.copy(SAMPLES / "cnn.torchscript.pt", project / "models" / "cnn.torchscript.pt")
    shutil.copy(SAMPLES / "mlp.torchscript.pt", project / "models" / "mlp.torchscript.pt")
    (project / "pyproject.toml").write_text(
        '[tool.lipcheck]\nmodels = ["models/*.pt"]\nfail-above = 100\noutput = "reports/out.json"\nformat = "json"\n'
        '[tool.lipcheck.input-shape]\n"models/cnn*" = "1x3x16x16"\n"models/mlp*" = ["1x784"]\n'
    )
    (project / "reports").mkdir()
    work = project / "models"  # run from a subfolder: paths still resolve from the config's folder
    code, out, err = cli("check", "--config", str(project / "pyproject.toml"), cwd=work)
    assert code == 0, err
    body = json.loads((project / "reports" / "out.json").read_text())
    by_name = {Path(r["model"]["path"]).name: r for r in body["reports"]}
    assert by_name["cnn.torchscript.pt"]["settings"]["input_shape"] == [[1, 3, 16, 16]]
    assert by_name["mlp.torchscript.pt"]["settings"]["input_shape"] == [[1, 784]]
    assert all(layer["input_size"] for layer in by_name["cnn.torchscript.pt"]["layers"] if layer["op"] == "conv2d")


def test_input_shape_on_a_file_without_graph_warns(cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("inspect", "sample_models/mlp.pt", "--input-shape", "1x784", "-f", "json")
    assert code == 0 and "lipcheck: warning:" in err and "--input-shape applies to files with a graph" in err


def test_input_shape_on_a_torchscript_file_named_pt_is_used_without_a_warning(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("inspect", "sample_models/cnn.torchscript.pt", "--input-shape", "1x3x16x16", "-f", "json", "--no-lower")
    assert code == 0 and "warning" not in err
    assert all(layer["input_size"] for layer in json.loads(out)["layers"] if layer["op"] == "conv2d")


def test_diff_of_unrelated_models_warns(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other.pt"
    torch.save({"head.weight": torch.randn(3, 4)}, other)
    code, _, err = cli("diff", str(SAMPLES / "mlp.pt"), str(other))
    assert code == 0 and "no layer names match" in err
    grown = tmp_path / "grown.pt"
    torch.save(torch.load(SAMPLES / "mlp.pt", weights_only=True) | {"extra.weight": torch.randn(3, 4)}, grown)
    code, _, err = cli("diff", str(SAMPLES / "mlp.pt"), str(grown))
    assert code == 0 and "1 layer(s) only in the new file: extra.weight" in err


def test_a_missing_file_among_several_is_named_once(cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("check", "sample_models/mlp.onnx", "nope.onnx", "--fail-layer-above", "5", "-f", "json")
    assert code == 2 and "lipcheck: error: nope.onnx does not exist" in err and "nope.onnx: nope.onnx" not in err


def test_a_damaged_checkpoint_is_explained_without_torchs_internals(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name, data in (("fake.pt", b"garbage"), ("zip.pt", b"PK\x03\x04garbage")):
        (tmp_path / name).write_bytes(data)
        code, _, err = cli("inspect", str(tmp_path / name))
        assert code == 2 and err.count("\n") == 1 and "re-save or re-download" in err
        assert "weights_only" not in err and "Weights only" not in err and "miniz" not in err and "(101)" not in err


def test_sigma_is_printed_with_the_same_precision_as_the_bounds(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("inspect", "sample_models/cnn.onnx", "--no-lower")
    assert code == 0 and "1.18629" in out and "1.1863 " not in out  # six digits, rounded down like a lower end
