"""The command line as a user runs it: reports, golden output, exit codes and streams."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from tests.golden_text import assert_matches_golden

GOLDEN = Path(__file__).parent / "golden"
CONTRACT_KEYS = {"schema_version", "tool_version", "model", "settings", "layers", "skipped", "bound", "gate"}
LAYER_KEYS = {"name", "op", "shape", "sigma", "lipschitz", "iterations", "converged"}


@pytest.mark.parametrize("sample", ["cnn.onnx", "cnn.pt"])
def test_table_matches_golden(run_cli, sample: str) -> None:  # type: ignore[no-untyped-def]
    """ONNX: conv operator norms at the graph's sizes; a state_dict: the labelled loose bound."""
    code, out, err = run_cli("inspect", f"sample_models/{sample}", "--no-lower")  # the search is time-budgeted
    assert code == 0, err
    assert_matches_golden(out, (GOLDEN / f"inspect_{sample.replace('.', '_')}.txt").read_text())


def test_json_follows_the_contract_and_is_deterministic(run_cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli("inspect", "sample_models/lightning.ckpt", "--format", "json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert CONTRACT_KEYS <= set(report)
    assert report["schema_version"] == 1
    assert report["model"] == {"path": "sample_models/lightning.ckpt", "format": "checkpoint"}
    assert set(report["settings"]) >= {"seed", "tol", "max_iter", "input_shape"}
    assert set(report["bound"]) >= {"upper", "method", "product", "graph", "lower", "assumptions"}
    for layer in report["layers"]:
        assert LAYER_KEYS <= set(layer)
        assert set(layer["lipschitz"]) == {"lower", "upper", "method"}
    uppers = [layer["lipschitz"]["upper"] for layer in report["layers"]]
    assert np.prod(uppers) <= report["bound"]["product"] <= np.prod(uppers) * (1 + 1e-14)  # rounded up
    assert run_cli("inspect", "sample_models/lightning.ckpt", "--format", "json")[1] == out


def test_missing_file_is_one_line_and_exit_2(run_cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli("inspect", "no/such/model.pt")
    assert (code, out) == (2, "")
    assert err.splitlines() == ["lipcheck: error: no/such/model.pt does not exist; check the path"]


def test_garbage_file_is_one_line_and_exit_2(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name, data in [
        ("m.pt", b"\x80\x02garbage"),
        ("m.onnx", b"\x08\x07\xff\xff\xff"),
        ("m.safetensors", b"\x10" + b"\x00" * 7 + b"{bad json"),
        ("m.bin", b""),
    ]:
        (tmp_path / name).write_bytes(data)
        code, out, err = run_cli("inspect", str(tmp_path / name))
        assert (code, out) == (2, ""), name
        assert len(err.splitlines()) == 1 and err.startswith("lipcheck: error: "), (name, err)


def test_pickled_code_is_refused_and_never_runs(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    torch.save({"w": torch.eye(2), "x": Payload()}, tmp_path / "evil.pt")
    code, out, err = run_cli("inspect", str(tmp_path / "evil.pt"))
    assert code == 2 and out == ""
    assert "weights-only loading refuses" in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_non_finite_weights_exit_2_with_the_layer_named(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w = torch.eye(3)
    w[0, 1] = float("nan")
    torch.save({"a.weight": torch.eye(3), "b.weight": w}, tmp_path / "nan.pt")
    code, out, err = run_cli("inspect", str(tmp_path / "nan.pt"), "--format", "json")
    assert code == 2
    report = json.loads(out)
    assert report["bound"]["product"] is None
    assert report["layers"][1]["sigma"] is None
    assert "b.weight" in err and len(err.splitlines()) == 1


def test_version_and_module_entry_point(run_cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("lipcheck ")


def test_readme_first_commands_name_a_bundled_sample() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "sample_models/" in readme.split("\n\n")[1] + readme.split("\n\n")[2]


def test_input_shape_gives_operator_norms_and_rejects_bad_values(run_cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli("inspect", "sample_models/cnn.torchscript.pt", "--input-shape", "1x3x16x16", "-f", "json")
    assert code == 0, err
    convs = [layer for layer in json.loads(out)["layers"] if layer["op"] == "conv2d"]
    assert [layer["input_size"] for layer in convs] == [[16, 16], [16, 16], [8, 8]]
    assert all(layer["lipschitz"]["lower"] is not None for layer in convs)
    for args, needle in [
        (["--input-shape", "1x3xabc"], "positive sizes joined by x"),
        (["--input-shape", "1x3x17x16"], "contradicts it"),
        (["--input-shape", "1x3x16x16", "--input-shape", "1x3x16x16"], "2 --input-shape value(s)"),
        (["--input-shape", "1x3x16"], "has 4 dimensions"),
    ]:
        code, out, err = run_cli("inspect", "sample_models/cnn.onnx", *args)
        assert code == 2 and out == ""
        assert err.startswith("lipcheck: error: ") and needle in err and err.count("\n") == 1, err


def test_device_option(cli) -> None:  # type: ignore[no-untyped-def]
    import torch

    code, out, err = cli("inspect", "sample_models/mlp.onnx", "--device", "auto", "-f", "json")
    assert code == 0, err
    assert json.loads(out)["settings"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    code, _, err = cli("inspect", "sample_models/mlp.onnx", "--device", "tpu")
    assert code == 2 and err.startswith("lipcheck: error: --device 'tpu'") and err.count("\n") == 1
    if not torch.cuda.is_available():
        code, _, err = cli("inspect", "sample_models/mlp.onnx", "--device", "cuda")
        assert code == 2 and "no CUDA GPU; use --device cpu" in err and "Traceback" not in err
