"""The command line's contract where a review found it broken: a NaN threshold, a report written
over its own model, a pipe as input, formula and control characters in names, growth from zero, a
normalize whose copy cannot be re-read."""

from __future__ import annotations

import hashlib
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
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


def test_printed_bounds_round_outward_exactly() -> None:
    """6 significant digits rounded from the exact binary value: 74.96640000000001 prints 74.9665."""
    import random
    from decimal import Decimal

    from lipcheck.report.numbers import down, up

    assert up(74.96640000000001) == "74.9665" and down(6.3694499999999994e-15) == "6.36944e-15"
    assert Decimal(up(1e-320)) >= Decimal(1e-320) > 0
    rng = random.Random(0)
    for _ in range(5000):
        x = rng.choice([1.0, -1.0]) * 10 ** rng.uniform(-320, 300)
        assert Decimal(down(x)) <= Decimal(x) <= Decimal(up(x))
        near = float(up(abs(x))) * (1 + 2.0**-52)  # an ulp above a short decimal
        assert Decimal(up(near)) >= Decimal(near)


def test_the_product_is_never_below_the_exact_product() -> None:
    from fractions import Fraction

    from lipcheck.product import product_upper

    for factors in ([1e-30, 1e-300], [8.61e-150, 1.61e-250, 7.79e250, 9.58e150], [0.1] * 300, [3.0, 1.0 / 3.0]):
        exact = Fraction(1)
        for f in factors:
            exact *= Fraction(f)
        found = product_upper(factors)
        assert found is not None and Fraction(found) >= exact > 0


def test_spectral_norm_weights_of_unknown_orientation_are_skipped_and_packed_quantized_weights_reported(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(2)
    sn = torch.nn.utils.spectral_norm(torch.nn.ConvTranspose2d(6, 6, 1)).eval()
    torch.save(sn.state_dict(), tmp_path / "sn.pt")
    code, out, _ = cli("inspect", str(tmp_path / "sn.pt"), "-f", "json", "--no-lower")
    import json

    report = json.loads(out)
    assert code == 0 and not report["layers"] and "both a conv and a transposed conv" in report["skipped"][0]["reason"]
    quantized = torch.ao.nn.quantized.Linear(4, 3)
    torch.save(torch.nn.Sequential(quantized).state_dict(), tmp_path / "q.pt")
    code, out, _ = cli("inspect", str(tmp_path / "q.pt"), "-f", "json", "--no-lower")
    assert code == 0 and json.loads(out)["skipped"]


def test_embedding_tables_are_skipped_but_layers_named_embed_are_not(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    weights = {
        "model.embed_tokens.weight": torch.randn(50, 8),
        "patch_embed.proj.weight": torch.randn(8, 3, 4, 4),
        "embed_out.weight": torch.randn(50, 8),
    }
    torch.save(weights, tmp_path / "m.pt")
    code, out, _ = cli("inspect", str(tmp_path / "m.pt"), "-f", "json", "--no-lower")
    report = json.loads(out)
    assert code == 0
    assert sorted(layer["name"] for layer in report["layers"]) == ["embed_out.weight", "patch_embed.proj.weight"]
    assert [s["name"] for s in report["skipped"]] == ["model.embed_tokens.weight"]


def test_float8_weights_are_skipped_with_a_reason(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    torch.save({"0.weight": torch.randn(4, 4).to(torch.float8_e4m3fn), "1.weight": torch.randn(3, 4)}, tmp_path / "f8.pt")
    code, out, _ = cli("inspect", str(tmp_path / "f8.pt"), "-f", "json", "--no-lower")
    report = json.loads(out)
    assert code == 0 and [s["name"] for s in report["skipped"]] == ["0.weight"] and "float8" in report["skipped"][0]["reason"]


def test_every_option_names_its_flags() -> None:
    # Deriving a flag from the parameter's name differs across typer and click releases
    # (typer 0.27 with click 8.5 printed --DEVICE and refused --device): every option names its own.
    import typing

    import typer.models

    from lipcheck import cli

    commands = [info.callback for info in cli.app.registered_commands] + [cli.app.registered_callback.callback if cli.app.registered_callback else None]
    checked = 0
    for function in commands:
        assert function is not None
        for name, hint in typing.get_type_hints(function, include_extras=True).items():
            for meta in getattr(hint, "__metadata__", ()):
                if isinstance(meta, typer.models.OptionInfo):
                    checked += 1
                    # Under Annotated, typer reads a string first argument as the first flag.
                    flags = [meta.default, *meta.param_decls] if isinstance(meta.default, str) else list(meta.param_decls)
                    assert flags and all(flag.startswith("-") for flag in flags), (function.__name__, name)
    assert checked >= 20


@pytest.mark.parametrize("sample", ["mlp.torchscript.pt", "mlp.pt", "mlp.safetensors", "mlp.onnx"])
def test_a_write_that_fails_part_way_is_one_line_and_leaves_nothing(tmp_path: Path, sample: str) -> None:
    import resource
    import subprocess
    import sys

    from tests.conftest import SAMPLES

    def small_files() -> None:  # a file-size limit stands in for a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    existing = tmp_path / "keep" / f"out{Path(sample).suffix}"
    existing.parent.mkdir()
    existing.write_bytes(b"x" * 40_000)  # larger than the limit: it cannot even be copied aside
    for out in (tmp_path / f"new{''.join(Path(sample).suffixes)}", existing):
        done = subprocess.run(
            [sys.executable, "-m", "lipcheck", "normalize", str(SAMPLES / sample), "-o", str(out), "--force"],
            capture_output=True,
            text=True,
            preexec_fn=small_files,
        )
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "internal error" not in done.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep", existing.name]
    assert existing.read_bytes() == b"x" * 40_000


def test_diff_and_plot_never_write_over_a_model_read(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import SAMPLES

    for name in ("a.pt", "b.pt", "m.png"):
        shutil.copy(SAMPLES / "mlp.pt", tmp_path / name)
    before = _digest(tmp_path / "a.pt")
    code, _, err = cli("diff", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "-f", "json", "-o", str(tmp_path / "a.pt"))
    assert code == 2 and "itself" in err and _digest(tmp_path / "a.pt") == before
    code, _, err = cli("inspect", str(tmp_path / "m.png"), "--no-lower", "--plot", str(tmp_path / "m.png"))  # read by content
    assert code == 2 and "--plot" in err and _digest(tmp_path / "m.png") == before


def test_diff_refuses_non_finite_weights_and_sees_growth_beyond_float_range(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.save({"0.weight": torch.tensor([[1.0, float("nan")], [0.0, 1.0]])}, tmp_path / "nan.pt")
    torch.save({"0.weight": torch.eye(2)}, tmp_path / "one.pt")
    code, _, err = cli("diff", str(tmp_path / "one.pt"), str(tmp_path / "nan.pt"), "--fail-if-grows", "5")
    assert code == 2 and "non-finite" in err
    # 80 layers: products of 7000^80 and 7200^80 are beyond float range; the product grew about 9.5 times.
    torch.save({f"{i}.weight": 7000.0 * torch.eye(2, dtype=torch.float64) for i in range(80)}, tmp_path / "old.pt")
    torch.save({f"{i}.weight": 7200.0 * torch.eye(2, dtype=torch.float64) for i in range(80)}, tmp_path / "new.pt")
    code, _, _ = cli("diff", str(tmp_path / "old.pt"), str(tmp_path / "new.pt"), "--fail-if-grows", "50")
    assert code == 1


def test_a_product_printed_as_a_power_of_ten_is_rounded_up(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.save({f"{i}.weight": 9.99 * torch.eye(3, dtype=torch.float64) for i in range(9)}, tmp_path / "p.pt")
    code, out, _ = cli("inspect", str(tmp_path / "p.pt"), "--no-lower")
    printed = float(out.split("10^")[1].split()[0])
    assert code == 0 and 10.0**printed >= 9.99**9


def test_normalize_refuses_a_copy_whose_weights_would_not_be_finite(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import SAMPLES

    for target in ("1e40", "1e-320"):
        code, _, err = cli("normalize", str(SAMPLES / "mlp.pt"), "-o", str(tmp_path / "o.pt"), "--target", target)
        assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "o.pt").exists()


def test_errors_naming_a_path_with_a_line_break_stay_on_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("inspect", str(tmp_path / "missing\nfile.onnx"))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_config_takes_effort_and_lower_and_refuses_a_pipe(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import SAMPLES

    (tmp_path / "lipcheck.toml").write_text("effort = 2.0\nlower = false\n")
    code, out, err = cli("inspect", str(SAMPLES / "mlp.onnx"), "-f", "json", "--config", str(tmp_path / "lipcheck.toml"))
    assert code == 0, err
    import json

    settings = json.loads(out)["settings"] if "settings" in json.loads(out) else json.loads(out)["results"][0]["report"]["settings"]
    assert settings["effort"] == 2.0 and settings["lower"] is False
    os.mkfifo(tmp_path / "pipe.toml")
    code, _, err = cli("inspect", str(SAMPLES / "mlp.onnx"), "--config", str(tmp_path / "pipe.toml"))
    assert code == 2 and "regular file" in err


def test_a_config_input_shape_of_the_wrong_type_is_a_usage_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import SAMPLES

    (tmp_path / "lipcheck.toml").write_text('input-shape = {"*" = 5}\n')
    code, _, err = cli("inspect", str(SAMPLES / "mlp.onnx"), "--config", str(tmp_path / "lipcheck.toml"))
    assert code == 2 and "internal error" not in err and "input-shape" in err


def test_a_nan_in_the_config_is_named_where_it_is(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import SAMPLES

    (tmp_path / "lipcheck.toml").write_text("fail-above = nan\n")
    code, _, err = cli("check", str(SAMPLES / "mlp.onnx"), "--config", str(tmp_path / "lipcheck.toml"))
    assert code == 2 and "lipcheck.toml" in err and "env var" not in err


def test_a_report_goes_into_a_pipe_or_through_a_link_and_never_replaces_them(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import stat
    import threading

    fifo = tmp_path / "report.pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    code, _, err = cli("inspect", str(MLP), "--no-lower", "-f", "json", "-o", str(fifo))
    reader.join(timeout=60)
    assert code == 0, err
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still a pipe, not a file put in its place
    assert json.loads(received[0])["model"]["format"] == "onnx"
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("{}")
    link.symlink_to(real.name)
    code, _, err = cli("inspect", str(MLP), "--no-lower", "-f", "json", "-o", str(link))
    assert code == 0, err
    assert link.is_symlink() and json.loads(real.read_text())["model"]["format"] == "onnx"


def test_report_and_plot_paths_are_refused_before_any_work(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    same = tmp_path / "same.png"
    code, out, err = cli("check", str(MLP), "--fail-above", "100", "--no-lower", "-f", "json", "-o", str(same), "--plot", str(same))
    assert code == 2 and "both name" in err and out == "" and not same.exists()
    report = tmp_path / "r.json"
    code, out, err = cli("inspect", str(MLP), "--no-lower", "-f", "json", "-o", str(report), "--plot", str(tmp_path / "p.txt"))
    assert code == 2 and ".png or .svg" in err and out == "" and not report.exists()


class _Chatty(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("debug: forward called")
        return self.l(x)


def test_what_a_model_prints_while_it_runs_stays_out_of_the_report(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    path = tmp_path / "chatty.pt"
    torch.jit.script(_Chatty()).save(str(path))
    code, out, err = run_cli("inspect", str(path), "--input-shape", "1x3", "-f", "json")
    assert code == 0, err
    assert json.loads(out)["bound"]["lower"] is not None  # the search ran the forward, printing each time
    assert "debug: forward called" in err


def test_names_from_the_file_cannot_steer_a_terminal_or_break_markdown(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "names.pt"
    torch.manual_seed(0)
    names = ["a\x1b[31mb", "x\ry", "<script>&", "t`ick", "p\u202eq", "\ud800lone"]
    torch.save({f"{name}.weight": torch.randn(3, 3) * 3 for name in names}, path)
    for fmt in ("table", "markdown", "github"):
        code, out, err = cli("check", str(path), "--bound", "product", "--fail-above", "1e9", "--fail-layer-above", "1", "-f", fmt, "--no-lower")
        assert code == 1, err  # the gate's verdict, not an encoding error
        for raw in ("\x1b", "\r", "\u202e", "\ud800"):
            assert raw not in out + err, (fmt, raw)
    code, out, _ = cli("check", str(path), "--bound", "product", "--fail-above", "1e9", "--fail-layer-above", "1", "-f", "markdown", "--no-lower")
    bullets = [line for line in out.splitlines() if line.startswith("- layer ")]
    assert bullets and not any("<" in line for line in bullets) and any("&lt;script&gt;&amp;" in line for line in bullets)
    assert "| `<script>&.weight` |" in out and "| ``t`ick.weight`` |" in out  # code spans: shown literally


def test_options_that_would_hang_or_crash_are_usage_errors(cli, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for args in (["--effort", "inf"], ["--effort", "1e9"], ["--seed", "99999999999999999999999"], ["--seed", "-1"]):
        code, out, err = cli("inspect", str(MLP), *args)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and "internal error" not in err, (args, err)
    code, _, err = cli("normalize", str(ROOT / "sample_models" / "mlp.pt"), "-o", str(tmp_path / "m.safetensors"))
    assert code == 2 and "normalize writes the input's format" in err and not (tmp_path / "m.safetensors").exists()


def test_an_empty_threshold_variable_does_not_switch_the_gate_off(cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from lipcheck.cli import main

    monkeypatch.setenv("LIPCHECK_FAIL_ABOVE", "")
    with pytest.raises(SystemExit) as exited:
        main(["check", str(MLP), "--no-lower"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:  # a threshold on the command line still counts
        main(["check", str(MLP), "--no-lower", "--fail-above", "1e6", "-f", "json"])
    assert exited.value.code == 0


def test_csv_keeps_each_verdict_of_one_weight_used_twice(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import csv

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([[[1.0, 2.0, 1.0]]], np.float32)  # one conv weight applied at two input sizes
    nodes = [helper.make_node("Conv", ["a", "W"], ["ya"], pads=[1, 1]), helper.make_node("Conv", ["b", "W"], ["yb"], pads=[1, 1])]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1, 1]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1, 9])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, None]) for n in ("ya", "yb")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(weight, "W")]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path = tmp_path / "twice.onnx"
    onnx.save(model, str(path))
    # At 1 cell the conv is multiplication by 2; at 9 cells its norm is near 4.
    code, out, err = cli("check", str(path), "--fail-layer-above", "3", "-f", "csv", "--no-lower")
    assert code == 1, err
    rows = [row for row in csv.DictReader(out.splitlines()) if row["layer"] == "W"]
    assert sorted(row["passed"] for row in rows) == ["false", "true"]
