"""The command line's contract where a review found it broken: a NaN threshold, a report written
over its own model, a pipe as input, formula and control characters in names, growth from zero, a
normalize whose copy cannot be re-read."""

from __future__ import annotations

import hashlib
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "sample_models" / "mlp.onnx"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_nan_threshold_is_a_usage_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("check", str(MLP), "--fail-above", "nan", "--no-lower")
    assert code == 2 and "NaN" in err
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.lipcheck]\nfail-above = nan\n")
    code, _, err = cli("check", str(MLP), "--config", str(config), "--no-lower")
    assert code == 2 and "NaN" in err


def test_a_report_is_never_written_over_its_model(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    victim = tmp_path / "m.onnx"
    shutil.copy(MLP, victim)
    before = _digest(victim)
    code, _, err = cli("check", str(victim), "--fail-above", "10", "-f", "json", "-o", str(victim), "--no-lower")
    assert code == 2 and "itself" in err and _digest(victim) == before


def test_a_pipe_is_refused_in_one_line(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    code, out, err = run_cli("inspect", str(fifo))
    assert (code, out) == (2, "") and len(err.splitlines()) == 1 and "not a regular file" in err


def _weird_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "weird.pt"
    torch.manual_seed(0)
    torch.save({"=cmd|' /C calc'!A0.weight": torch.randn(3, 3), "a\x1bb\x07.weight": torch.randn(3, 3)}, path)
    return path


def test_csv_cells_are_never_formulas_and_junit_is_well_formed(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = _weird_checkpoint(tmp_path)
    code, out, _ = cli("check", str(path), "--fail-layer-above", "0.5", "-f", "csv", "--no-lower")
    assert code == 1
    cells = [cell for line in out.splitlines()[1:] for cell in line.split(",")]
    assert not any(cell.startswith(("=", "+", "@")) for cell in cells)
    code, out, _ = cli("check", str(path), "--fail-layer-above", "0.5", "-f", "junit", "--no-lower")
    assert code == 1
    ET.fromstring(out.split("\n", 1)[1])


def test_a_layer_growing_from_zero_fails_the_growth_gate(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save({"0.weight": torch.zeros(4, 4)}, old)
    torch.save({"0.weight": torch.eye(4) * 3.0}, new)
    code, _, _ = cli("diff", str(old), str(new), "--fail-if-grows", "1")
    assert code == 1


def test_normalize_keeps_the_old_output_when_its_copy_cannot_be_read(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "mlp.pt"
    torch.save({"0.weight": torch.randn(8, 8) * 3.0}, src)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous output")
    code, _, err = cli("normalize", str(src), "-o", str(out), "--force")
    assert code == 2 and err.startswith("lipcheck: error:")
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.pt", "out.safetensors"]
