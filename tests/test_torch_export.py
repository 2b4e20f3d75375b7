"""torch.export .pt2 archives: the same numbers as the ONNX and TorchScript files of the same module,
normalize round trips, and hostile archives refused before torch's loader can run their content."""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from lipcheck.api import inspect
from lipcheck.formats import Format, detect
from lipcheck.settings import Settings
from tests.reference import exact_sigma

REL = 1e-5  # σ and bounds are certified to 1e-6 relative; files of one module agree well within this
MARKER = "lipcheck-payload-ran"


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, dilation=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 20), nn.Linear(20, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


SHAPES = {"cnn": (1, 3, 16, 16), "mlp": (2, 12)}


def _module(name: str) -> nn.Module:
    torch.manual_seed(7)
    module = CNN() if name == "cnn" else MLP()
    if name == "cnn":  # non-trivial batch-norm statistics
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
        module.bn.weight.data.uniform_(0.5, 1.5)
    return module.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Each module as .pt2, ONNX (TorchScript exporter, BN kept) and traced TorchScript."""
    folder = tmp_path_factory.mktemp("export")
    out: dict[str, dict[str, Path]] = {}
    for name, shape in SHAPES.items():
        module, x = _module(name), torch.randn(shape)
        paths = {"pt2": folder / f"{name}.pt2", "onnx": folder / f"{name}.onnx", "ts": folder / f"{name}.ts.pt"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.save(torch.export.export(module, (x,)), paths["pt2"])
            torch.onnx.export(module, (x,), str(paths["onnx"]), dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
            torch.jit.save(torch.jit.trace(module, (x,)), str(paths["ts"]))
        out[name] = paths
    return out


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_pt2_matches_onnx_and_torchscript(files: dict[str, dict[str, Path]], name: str) -> None:
    """Per layer σ and upper bound, and the graph bound, agree across the three files of one module."""
    paths = files[name]
    assert detect(paths["pt2"]) is Format.TORCH_EXPORT and detect(paths["ts"]) is Format.TORCHSCRIPT
    pt2 = inspect(paths["pt2"], settings=Settings(lower=False))
    onnx = inspect(paths["onnx"], settings=Settings(lower=False))
    ts = inspect(paths["ts"], settings=Settings(input_shape=(SHAPES[name],), lower=False))
    module = _module(name)
    state = module.state_dict()
    assert [entry.name for entry in pt2.layers] == [k for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]
    for other in (onnx, ts):
        by_name = {entry.name: entry for entry in other.layers}
        for entry in pt2.layers:
            twin = by_name[entry.name]
            assert entry.sigma == pytest.approx(twin.sigma, rel=REL)
            assert entry.lipschitz.upper == pytest.approx(twin.lipschitz.upper, rel=REL)
            assert entry.input_size == twin.input_size
        assert pt2.bound.graph is not None and other.bound.graph is not None
        assert pt2.bound.graph == pytest.approx(other.bound.graph, rel=REL)
        assert pt2.bound.upper is not None and pt2.bound.upper <= pt2.bound.graph
    # σ against an independent SVD of the stored weight.
    for entry in pt2.layers:
        weight = state[entry.name].to(torch.float64)
        assert entry.sigma == pytest.approx(exact_sigma(weight.reshape(weight.shape[0], -1)), rel=REL)
    if name == "cnn":
        conv = pt2.layers[0]
        assert conv.input_size == (16, 16)  # from the export, without --input-shape
        assert conv.lipschitz.upper < math.sqrt(9) * conv.sigma  # the operator norm, not the geometry-free bound
    else:
        # A chain of linear layers and 1-Lipschitz activations: the graph bound is the product.
        assert pt2.bound.graph == pytest.approx(math.prod(e.lipschitz.upper for e in pt2.layers), rel=1e-12)


def test_pt2_lower_bound_from_the_exported_module(files: dict[str, dict[str, Path]]) -> None:
    """The exported program runs as the runnable: its empirical lower bound sits under the certified bound."""
    report = inspect(files["cnn"]["pt2"], settings=Settings(input_shape=(SHAPES["cnn"],)))
    assert report.bound.lower is not None and 0.0 < report.bound.lower <= report.bound.upper


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_cli_json_matches_api(cli, files: dict[str, dict[str, Path]], name: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("inspect", str(files[name]["pt2"]), "-f", "json")
    assert code == 0, err
    data = json.loads(out)
    onnx = inspect(files[name]["onnx"], settings=Settings(lower=False))
    assert data["model"]["format"] == "torch_export"
    assert [layer["name"] for layer in data["layers"]] == [entry.name for entry in onnx.layers]
    for layer, twin in zip(data["layers"], onnx.layers):
        assert layer["sigma"] == pytest.approx(twin.sigma, rel=REL)
    assert data["bound"]["graph"] == pytest.approx(onnx.bound.graph, rel=REL)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_normalize_round_trip(cli, files: dict[str, dict[str, Path]], tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    """The written .pt2 loads, each layer is at most the target, and the program runs with the new weights."""
    src, dst = files[name]["pt2"], tmp_path / "out.pt2"
    before = src.read_bytes()
    code, out, err = cli("normalize", str(src), "-o", str(dst))
    assert code == 0, err
    assert src.read_bytes() == before
    report = inspect(dst, settings=Settings(lower=False))
    assert report.layers and all(entry.lipschitz.upper <= 1.0 * (1 + 1e-6) for entry in report.layers)
    assert all(entry.lipschitz.upper >= 0.99 for entry in report.layers)  # divided to the target, not below it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.load(dst)
    # Reference: the original module with the written weights loaded into it.
    module = _module(name)
    module.load_state_dict({k: v.detach() for k, v in ep.state_dict.items()})
    x = torch.randn(SHAPES[name], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ep.module()(x), module(x), rtol=1e-5, atol=1e-6)
    original = _module(name).state_dict()
    for key, value in ep.state_dict.items():  # only weights of layers changed
        if not key.endswith("weight") or value.dim() < 2:
            torch.testing.assert_close(value, original[key], rtol=0, atol=0)


# -- hostile archives -------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _rewrite(
    src: Path, dst: Path, change: Callable[[str, bytes], bytes | None], extra: dict[str, bytes] | None = None, compress: int = zipfile.ZIP_STORED
) -> Path:
    """Copy a .pt2 member by member through ``change`` (None drops a member), adding ``extra``."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w", compress) as out:
        root = archive.namelist()[0].split("/")[0]
        for info in archive.infolist():
            data = change(info.filename.split("/", 1)[1], archive.read(info))
            if data is not None:
                out.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            out.writestr(f"{root}/{name}", data)
    return dst


def _graph_edit(edit: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        if name != "models/model.json":
            return data
        graph = json.loads(data)
        edit(graph["graph_module"])
        return json.dumps(graph).encode()

    return change


def sample_inputs_pickle(src: Path, tmp: Path) -> tuple[Path, str]:
    payload = pickle.dumps(_Payload(tmp / MARKER))

    def change(name: str, data: bytes) -> bytes:
        return payload if name == "data/sample_inputs/model.pt" else data

    return _rewrite(src, tmp / "sample.pt2", change), "sample inputs"


def pickled_weight(src: Path, tmp: Path) -> tuple[Path, str]:
    payload = pickle.dumps(_Payload(tmp / MARKER))

    def change(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            for meta in config["config"].values():
                meta["use_pickle"] = True
            return json.dumps(config).encode()
        return payload if name.startswith("data/weights/weight_") else data

    return _rewrite(src, tmp / "weights.pt2", change), "pickle"


def opaque_constant(src: Path, tmp: Path) -> tuple[Path, str]:
    def change(name: str, data: bytes) -> bytes:
        if name == "data/constants/model_constants_config.json":
            return json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": None}}}).encode()
        return data

    return _rewrite(src, tmp / "opaque.pt2", change, {"data/constants/opaque_obj_0": pickle.dumps(_Payload(tmp / MARKER))}), "opaque_obj_0"


def injected_node_name(src: Path, tmp: Path) -> tuple[Path, str]:
    def edit(gm: dict) -> None:
        gm["graph"]["nodes"][0]["outputs"][0]["as_tensor"]["name"] = f"x=__import__('os').system('touch {tmp / MARKER}')"

    return _rewrite(src, tmp / "name.pt2", _graph_edit(edit)), "not a Python identifier"


def injected_call(src: Path, tmp: Path) -> tuple[Path, str]:
    def edit(gm: dict) -> None:
        gm["graph"]["nodes"][0]["target"] = "torch.ops.load_library"

    return _rewrite(src, tmp / "call.pt2", _graph_edit(edit)), "not an aten or prims operator"


def injected_attribute(src: Path, tmp: Path) -> tuple[Path, str]:
    def edit(gm: dict) -> None:
        spec = next(s for s in gm["signature"]["input_specs"] if "parameter" in s)
        spec["parameter"]["parameter_name"] = f'w"); __import__("os").system("touch {tmp / MARKER}"); ("'

    return _rewrite(src, tmp / "attr.pt2", _graph_edit(edit)), "not a dotted name"


def injected_comment(src: Path, tmp: Path) -> tuple[Path, str]:
    def edit(gm: dict) -> None:
        gm["graph"]["nodes"][0]["metadata"]["stack_trace"] = f'File "a.py", line 1, in f\r__import__("os").system("touch {tmp / MARKER}")\n    y = f(x)'

    return _rewrite(src, tmp / "comment.pt2", _graph_edit(edit)), "control character"


def compiled_library(src: Path, tmp: Path) -> tuple[Path, str]:
    return _rewrite(src, tmp / "aoti.pt2", lambda name, data: data, {"data/aotinductor/model/model.so": b"\x7fELF"}), "aotinductor"


def zip_bomb(src: Path, tmp: Path) -> tuple[Path, str]:
    return _rewrite(src, tmp / "bomb.pt2", lambda name, data: data, {"extra/bomb": bytes(200 << 20)}, compress=zipfile.ZIP_DEFLATED), "inflate"


def _guards(code: str) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        if name != "models/model.json":
            return data
        program = json.loads(data)
        program["guards_code"] = [code]
        return json.dumps(program).encode()

    return change


def injected_guard(src: Path, tmp: Path) -> tuple[Path, str]:
    code = f"__import__('os').system('touch {tmp / MARKER}') == 0"
    return _rewrite(src, tmp / "guard.pt2", _guards(code)), "shape guard"


def injected_guard_definition(src: Path, tmp: Path) -> tuple[Path, str]:
    # Runs when torch defines the guard function, even if the guard is never called.
    code = f"1 #x\n)\n__import__('os').system('touch {tmp / MARKER}')\ndef f(*a):\n #"
    return _rewrite(src, tmp / "guard_def.pt2", _guards(code)), "shape guard"


HOSTILE = [
    injected_guard,
    injected_guard_definition,
    sample_inputs_pickle,
    pickled_weight,
    opaque_constant,
    injected_node_name,
    injected_call,
    injected_attribute,
    injected_comment,
    compiled_library,
    zip_bomb,
]


@pytest.mark.parametrize("build", HOSTILE, ids=lambda f: f.__name__)
def test_hostile_pt2_is_refused_in_one_line(cli, files: dict[str, dict[str, Path]], tmp_path: Path, build) -> None:  # type: ignore[no-untyped-def]
    path, words = build(files["cnn"]["pt2"], tmp_path)
    before = path.read_bytes()
    for args in (["inspect", str(path)], ["normalize", str(path), "-o", str(tmp_path / "out.pt2")]):
        code, out, err = cli(*args)
        assert code == 2, (out, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lipcheck: error: "), err
        assert words.lower() in err.lower(), err
        assert "Traceback" not in err + out
    assert not (tmp_path / MARKER).exists()  # nothing the file carries ran
    assert not (tmp_path / "out.pt2").exists()
    assert path.read_bytes() == before


def test_rewritten_archive_without_changes_still_loads(files: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    """The hostile cases fail because of what they change, not because the rewrite breaks the archive."""
    path = _rewrite(files["cnn"]["pt2"], tmp_path / "same.pt2", lambda name, data: data)
    report = inspect(path, settings=Settings(lower=False))
    assert report.bound.upper == pytest.approx(inspect(files["cnn"]["pt2"], settings=Settings(lower=False)).bound.upper, rel=1e-12)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_decomposed_program_gives_the_same_numbers(files: dict[str, dict[str, Path]], tmp_path: Path, name: str) -> None:
    """After run_decompositions (aten.convolution, addmm of a permuted weight, batch norm with getitem), same σ and bound."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(_module(name), (torch.randn(SHAPES[name]),)).run_decompositions()
        torch.export.save(ep, tmp_path / "d.pt2")
    kinds = {str(node.target) for node in ep.graph.nodes}
    assert "aten.addmm.default" in kinds and ("aten.convolution.default" in kinds) == (name == "cnn")
    decomposed = inspect(tmp_path / "d.pt2", settings=Settings(lower=False))
    plain = inspect(files[name]["pt2"], settings=Settings(lower=False))
    assert [(e.name, e.op, e.input_size) for e in decomposed.layers] == [(e.name, e.op, e.input_size) for e in plain.layers]
    for a, b in zip(decomposed.layers, plain.layers):
        assert a.sigma == pytest.approx(b.sigma, rel=1e-12)
    assert decomposed.bound.upper == pytest.approx(plain.bound.upper, rel=1e-12)


class _Branching(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda t: self.l(t), lambda t: 2 * t, (x,))


def test_a_program_with_data_dependent_control_flow_is_named_as_such(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cond.pt2"
    torch.export.save(torch.export.export(_Branching(), (torch.randn(1, 3),)), str(path))
    code, out, err = cli("inspect", str(path))
    assert code == 2 and out == "" and "control flow" in err and "could run code" not in err


def test_a_program_with_dynamic_shapes_is_named_as_such(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    batch = torch.export.Dim("batch")
    path = tmp_path / "dynamic.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(2, 3),), dynamic_shapes=({0: batch},)), str(path))
    code, out, err = cli("inspect", str(path))
    assert code == 2 and out == "" and "symbolic sizes" in err and "could run code" not in err
