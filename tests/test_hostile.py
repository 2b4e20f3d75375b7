"""A bad-input corpus the suite builds itself. Every case: exit code 2, one line on stderr that
says what to do, no traceback, no code executed, the input unchanged, nothing stray written."""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from lipcheck.api import inspect
from lipcheck.errors import LipcheckError
from lipcheck.settings import Settings
from tests.conftest import SAMPLES

MARKER = "lipcheck-payload-ran"


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _onnx(tmp: Path, name: str, nodes, inits, **save_kw) -> Path:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=inits,
    )
    path = tmp / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path), **save_kw)
    return path


def _matmul_onnx(tmp: Path, name: str = "m.onnx", **save_kw) -> Path:  # type: ignore[no-untyped-def]
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    return _onnx(tmp, name, [helper.make_node("MatMul", ["x", "W"], ["y"])], [w], **save_kw)


# Each builder writes a hostile file under the given folder and returns (path, expected words).
def plain_pickle(tmp: Path) -> tuple[Path, str]:
    path = tmp / "payload.pt"
    path.write_bytes(pickle.dumps({"w": _Payload(tmp / MARKER)}, protocol=2))
    return path, "never runs pickled code"


def torch_zip_pickle(tmp: Path) -> tuple[Path, str]:
    path = tmp / "payload.pth"
    torch.save({"state_dict": {"fc.weight": torch.eye(2)}, "evil": _Payload(tmp / MARKER)}, path)
    return path, "never runs pickled code"


def pickled_module(tmp: Path) -> tuple[Path, str]:
    path = tmp / "module.pt"
    torch.save(torch.nn.Linear(3, 2), path)
    return path, "--allow-global torch.nn.modules.linear.Linear"


def truncated_torch(tmp: Path) -> tuple[Path, str]:
    path = tmp / "cut.pt"
    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.randn(64, 64)}, buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path, "cannot read"


def truncated_onnx(tmp: Path) -> tuple[Path, str]:
    data = (SAMPLES / "cnn.onnx").read_bytes()
    path = tmp / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path, "onnx"


def truncated_safetensors(tmp: Path) -> tuple[Path, str]:
    data = (SAMPLES / "cnn.safetensors").read_bytes()
    path = tmp / "cut.safetensors"
    path.write_bytes(data[: len(data) - 100])
    return path, "safetensors"


def empty(tmp: Path) -> tuple[Path, str]:
    path = tmp / "empty.pt"
    path.write_bytes(b"")
    return path, "is empty"


def random_bytes(tmp: Path) -> tuple[Path, str]:
    path = tmp / "noise.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path, "cannot read"


def random_no_extension(tmp: Path) -> tuple[Path, str]:
    path = tmp / "noise"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path, "cannot tell the format"


def wrong_extension(tmp: Path) -> tuple[Path, str]:
    path = tmp / "model.pt"
    path.write_bytes((SAMPLES / "cnn.onnx").read_bytes())  # ONNX bytes under a torch name
    return path, "cannot read"


def zip_bomb(tmp: Path) -> tuple[Path, str]:
    path = tmp / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as handle:
            chunk = b"\0" * (1 << 20)
            for _ in range(200):  # 200 MiB of zeros, about 200 KiB deflated
                handle.write(chunk)
    return path, "zip bomb"


def _relocated(path: Path, location: str) -> Path:
    """Point the first initializer's external data at ``location``, as a hostile file would."""
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(proto.SerializeToString())
    return path


def external_outside(tmp: Path) -> tuple[Path, str]:
    (tmp / "secret.bin").write_bytes(np.eye(4, dtype=np.float32).tobytes())
    model = tmp / "inner"
    model.mkdir()
    return _relocated(_matmul_onnx(model, save_as_external_data=True, location="w.bin", size_threshold=0), "../secret.bin"), "outside the model's folder"


def external_absolute(tmp: Path) -> tuple[Path, str]:
    return _relocated(_matmul_onnx(tmp, save_as_external_data=True, location="w.bin", size_threshold=0), "/etc/passwd"), "outside the model's folder"


def external_symlink(tmp: Path) -> tuple[Path, str]:
    outside = tmp / "outside.bin"
    outside.write_bytes(np.eye(4, dtype=np.float32).tobytes())
    model = tmp / "inner"
    model.mkdir()
    path = _matmul_onnx(model, save_as_external_data=True, location="w.bin", size_threshold=0)
    (model / "w.bin").unlink()
    (model / "w.bin").symlink_to(outside)
    return path, "outside the model's folder"


def onnx_fails_checker(tmp: Path) -> tuple[Path, str]:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    return _onnx(tmp, "bad.onnx", [helper.make_node("NoSuchOp", ["x", "W"], ["y"])], [w]), "fails the ONNX checker"


def protobuf_garbage(tmp: Path) -> tuple[Path, str]:
    path = tmp / "garbage.onnx"
    path.write_bytes(b"\x08\x07\x12\xff\xff\xff\xff\x0f" + np.random.default_rng(2).bytes(512))
    return path, "onnx"


def safetensors_bad_header(tmp: Path) -> tuple[Path, str]:
    path = tmp / "bad.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]'  # unterminated JSON
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return path, "safetensors"


def safetensors_huge_shape(tmp: Path) -> tuple[Path, str]:
    path = tmp / "huge.safetensors"
    header = b'{"fc.weight": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 16]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return path, "safetensors"


def onnx_huge_shape(tmp: Path) -> tuple[Path, str]:
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000], raw_data=b"\0" * 16)
    return _onnx(tmp, "huge.onnx", [helper.make_node("MatMul", ["x", "W"], ["y"])], [w]), "declared shape"


def nan_weights(tmp: Path) -> tuple[Path, str]:
    path = tmp / "nan.pt"
    torch.save({"fc.weight": torch.tensor([[1.0, float("inf")], [float("nan"), 0.0]])}, path)
    return path, "non-finite weights"


def a_directory(tmp: Path) -> tuple[Path, str]:
    path = tmp / "model_dir"
    path.mkdir()
    return path, "is a directory"


def missing(tmp: Path) -> tuple[Path, str]:
    return tmp / "nothing.pt", "does not exist"


CORPUS: list[Callable[[Path], tuple[Path, str]]] = [
    plain_pickle,
    torch_zip_pickle,
    pickled_module,
    truncated_torch,
    truncated_onnx,
    truncated_safetensors,
    empty,
    random_bytes,
    random_no_extension,
    wrong_extension,
    zip_bomb,
    external_outside,
    external_absolute,
    external_symlink,
    onnx_fails_checker,
    protobuf_garbage,
    safetensors_bad_header,
    safetensors_huge_shape,
    onnx_huge_shape,
    nan_weights,
    a_directory,
    missing,
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("build", CORPUS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("command", ["inspect", "check", "normalize"])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(cli, tmp_path: Path, build, command: str) -> None:  # type: ignore[no-untyped-def]
    path, words = build(tmp_path)
    before = _snapshot(tmp_path)
    args = {
        "inspect": ["inspect", str(path), "-f", "json"],
        "check": ["check", str(path), "--fail-above", "10"],
        "normalize": ["normalize", str(path), "-o", str(tmp_path / "out.pt")],
    }[command]
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lipcheck: error: "), err
    assert words.lower() in err.lower(), err
    assert "Traceback" not in err and "Traceback" not in out
    assert not (tmp_path / MARKER).exists()  # no code ran
    assert _snapshot(tmp_path) == before  # input unchanged, no output, no stray temp file


def test_unreadable_file(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "locked.pt"
    torch.save({"fc.weight": torch.eye(2)}, path)
    real_open = Path.open

    def deny(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    code, _, err = cli("inspect", str(path))
    assert code == 2 and err.startswith("lipcheck: error: ") and "permissions" in err and err.count("\n") == 1


def test_all_zero_and_zero_size_weights_are_handled(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "zeros.pt"
    torch.save({"a.weight": torch.zeros(3, 4), "b.weight": torch.zeros(0, 4)}, path)
    code, out, err = cli("inspect", str(path), "-f", "json")
    assert code == 0, err
    import json

    report = json.loads(out)
    assert [layer["sigma"] for layer in report["layers"]] == [0.0]
    assert report["bound"]["product"] == 0.0
    assert report["skipped"][0]["name"] == "b.weight" and "empty" in report["skipped"][0]["reason"]


@pytest.mark.parametrize("where", ["read-only", "missing"])
def test_output_folder_that_cannot_be_written(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:  # type: ignore[no-untyped-def]
    import tempfile

    target = tmp_path / ("ro" if where == "read-only" else "missing") / "out.onnx"
    if where == "read-only":
        target.parent.mkdir()

        def denied(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", denied)
        monkeypatch.setattr(tempfile, "mkdtemp", denied)
    src = tmp_path / "in.pt"
    torch.save({"fc.weight": torch.eye(3) * 2}, src)
    for args in (
        ["normalize", str(src), "-o", str(target.with_suffix(".pt"))],
        ["check", str(src), "--fail-above", "9", "-f", "json", "-o", str(target.with_suffix(".json"))],
    ):
        code, out, err = cli(*args)
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("lipcheck: error: "), err
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["in.pt"] + (["ro"] if where == "read-only" else []))


def test_interrupted_write_leaves_nothing(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.pt"
    torch.save({"fc.weight": torch.eye(3) * 2}, src)
    digest = _sha(src)
    real_save = torch.save

    def killed(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_save(obj, f, *args, **kwargs)  # the temporary file is fully written...
        raise KeyboardInterrupt  # ...and the process is interrupted before the rename

    monkeypatch.setattr(torch, "save", killed)
    code, _, _ = cli("normalize", str(src), "-o", str(tmp_path / "out.pt"))
    assert code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pt"] and _sha(src) == digest


def test_allow_global_lets_exactly_the_named_objects_through(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"fc.weight": torch.eye(3) * 2}, "args": argparse.Namespace(lr=0.1)}, path)
    code, _, err = cli("inspect", str(path))
    assert code == 2 and "argparse.Namespace" in err and "--allow-global argparse.Namespace" in err
    code, out, err = cli("inspect", str(path), "--allow-global", "argparse.Namespace", "-f", "json")
    assert code == 0, err
    code, _, err = cli("inspect", str(path), "--allow-global", "no.such.Thing")
    assert code == 2 and "no such class" in err


def test_allow_global_for_numpy_scalars_names_each_object_needed(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"fc.weight": torch.eye(3)}, "best_score": np.float64(0.5)}, path)
    allowed: list[str] = []
    for _ in range(5):  # torch names one refused object at a time; each message says which
        args = [arg for name in allowed for arg in ("--allow-global", name)]
        code, _, err = cli("inspect", str(path), "-f", "json", *args)
        if code == 0:
            break
        assert code == 2 and "--allow-global " in err
        allowed.append(err.rsplit("--allow-global ", 1)[1].strip())
    assert code == 0 and any(name.startswith("numpy") for name in allowed)


def test_same_input_same_json_bytes(cli) -> None:  # type: ignore[no-untyped-def]
    for sample in ("cnn.onnx", "sn_generator.pt"):
        first = cli("inspect", str(SAMPLES / sample), "-f", "json")[1]
        second = cli("inspect", str(SAMPLES / sample), "-f", "json")[1]
        assert first == second and first


# -- fuzzing: every loader, bounded time -----------------------------------------------------------------
def _valid_bytes() -> dict[str, bytes]:
    return {name: (SAMPLES / name).read_bytes() for name in ("mlp.pt", "mlp.safetensors", "mlp.onnx", "mlp.torchscript.pt")}


VALID = _valid_bytes()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(VALID)), data=st.data())
def test_fuzzed_files_raise_only_lipcheck_errors(tmp_path_factory: pytest.TempPathFactory, name: str, data) -> None:  # type: ignore[no-untyped-def]
    original = VALID[name]
    mutation = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    blob = bytearray(original)
    if mutation == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    elif mutation == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(bytes(blob))
    try:
        inspect(path, settings=Settings(lower=False, effort=0.01))  # the loaders are under test, not the bounds
    except LipcheckError:
        pass  # a clear, user-facing error is the right answer to a broken file


def test_fuzz_regression_bad_utf8_in_an_onnx_attribute(tmp_path: Path) -> None:
    """Found by the fuzzer: a flipped byte made a parser raise UnicodeDecodeError."""
    blob = bytearray(VALID["mlp.onnx"])
    blob[490] = 128
    path = tmp_path / "mlp.onnx"
    path.write_bytes(bytes(blob))
    with pytest.raises(LipcheckError):
        inspect(path)


class _SetsItself(torch.nn.Module):
    """A leaf whose TorchScript __setstate__ would run at torch.jit.load and change its weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight)

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0] * 1000.0
        self.training = state[1]


def test_torchscript_code_that_runs_at_load_is_refused(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "setstate.pt"
    torch.jit.save(torch.jit.script(_SetsItself()), str(path))
    code, out, err = run_cli("inspect", str(path), "-f", "json", "--no-lower")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "__setstate__" in err


class _Evaluates:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


def test_globals_that_run_code_are_never_allowed(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"
    torch.save({"fc.weight": torch.randn(2, 2), "x": _Evaluates(marker)}, tmp_path / "eval.pt")
    for extra in ((), ("--allow-global", "builtins.eval"), ("--allow-global", "os.system")):
        code, _, err = run_cli("inspect", str(tmp_path / "eval.pt"), "--no-lower", *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and not marker.exists()
        assert "--allow-global eval" not in err


def test_string_weights_and_external_data_through_a_missing_folder_are_one_line_errors(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    strings = helper.make_tensor("W", TensorProto.STRING, [2, 2], [b"x", b"y", b"z", b"w"])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[strings],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "s.onnx"))
    weights = numpy_helper.from_array(np.eye(2, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[weights],
    )
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(folder / "m.onnx"),
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "sub/../w.bin"  # resolves beside the model, but no folder "sub" exists
    onnx.save(model, str(folder / "m.onnx"))
    for path in (tmp_path / "s.onnx", folder / "m.onnx"):
        code, _, err = run_cli("inspect", str(path), "--no-lower")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "internal error" not in err, err


@pytest.mark.parametrize(
    ("attrs", "weight_shape", "message"),
    [
        ({"auto_pad": "FOO"}, (3, 2, 3, 3), "auto_pad 'FOO'"),
        ({"group": 0}, (3, 2, 3, 3), "group 0"),
        ({"strides": [0, 1]}, (3, 2, 3, 3), "at least 1"),
        ({"strides": [-1, 1]}, (3, 2, 3, 3), "at least 1"),
        ({"pads": [1, 1]}, (3, 2, 3, 3), "need 2, 2 and 4 values"),
        ({}, (0, 2, 3, 3), "is empty"),
    ],
)
def test_conv_attributes_no_runtime_can_apply_are_one_line(cli, tmp_path: Path, attrs: dict, weight_shape: tuple[int, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones(weight_shape, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    code, out, err = cli("inspect", str(path))
    assert code == 2 and err.count("\n") == 1 and message in err and "internal error" not in err
