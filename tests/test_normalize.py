"""`lipcheck normalize` for every format: the output loads with the format's own loader, each
normalized layer's norm meets the target (float64 SVD / explicit conv operator), untouched
tensors are identical, and the input is never changed."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open
from safetensors.torch import save_file

from lipcheck.api import inspect
from lipcheck.errors import LipcheckError
from lipcheck.normalize import normalize
from tests.conftest import SAMPLES
from tests.reference import exact_sigma, torch_convention_matrix


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _conv_norm(weight: torch.Tensor, padding: int, size: int, stride: int = 1) -> float:
    w = weight.to(torch.float64)
    x = torch.zeros(1, w.shape[1], size, size, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: torch.nn.functional.conv2d(t, w, padding=padding, stride=stride), x)
    return exact_sigma(jac.reshape(-1, x.numel()))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)
    ).eval()


def test_state_dict_checkpoint_keeps_everything_else(tmp_path: Path) -> None:
    net = _net()
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    src = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 7, "hparams": {"lr": 0.1}}, src)
    digest = _sha(src)
    result = normalize(src, tmp_path / "out.pt", target=2.0)
    assert _sha(src) == digest
    assert any("optimizer" in w for w in result.warnings)
    before = torch.load(src, weights_only=True)
    after = torch.load(tmp_path / "out.pt", weights_only=True)
    assert after["epoch"] == 7 and after["hparams"] == {"lr": 0.1}
    assert torch.equal(after["optimizer"]["state"][0]["exp_avg"], before["optimizer"]["state"][0]["exp_avg"])
    for name in ("0.bias", "3.bias", "5.bias"):
        assert torch.equal(after["model"][name], before["model"][name])  # untouched: identical
    for name in ("3.weight", "5.weight"):
        sigma = exact_sigma(after["model"][name])
        assert 2.0 * (1 - 1e-4) <= sigma <= 2.0
    # A state_dict has no conv geometry: the conv is divided by its (loose) geometry-free bound.
    assert _conv_norm(after["model"]["0.weight"], 1, 6) <= 2.0
    report = inspect(tmp_path / "out.pt")
    assert report.bound.product is not None and report.bound.product <= 2.0**3


def test_onnx_operator_norms_meet_the_target_and_the_file_runs(tmp_path: Path) -> None:
    src = SAMPLES / "cnn.onnx"
    digest = _sha(src)
    dst = tmp_path / "cnn.onnx"
    normalize(src, dst)
    assert _sha(src) == digest
    onnx.checker.check_model(str(dst))
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 10)
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(str(dst)).graph.initializer}
    originals = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(src)).graph.initializer}
    for name, padding, size, stride in [("0.weight", 1, 16, 1), ("2.weight", 1, 16, 2)]:
        norm = _conv_norm(weights[name], padding, size, stride)
        assert 1.0 - 1e-4 <= norm <= 1.0
    assert 1.0 - 1e-4 <= exact_sigma(weights["7.weight"]) <= 1.0
    for name, array in originals.items():
        if not name.endswith("weight"):
            assert np.array_equal(array, weights[name].numpy())
    assert inspect(dst).bound.product <= 1.0  # type: ignore[operator]


def test_onnx_external_data_and_a_shared_weight(tmp_path: Path) -> None:
    w = np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32) * 3
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src), save_as_external_data=True, location="m.weights", size_threshold=0
    )
    dst = tmp_path / "out" / "n.onnx"
    dst.parent.mkdir()
    normalize(src, dst, target=0.5)
    assert (dst.parent / "n.onnx.data").is_file() and sorted(os.listdir(dst.parent)) == ["n.onnx", "n.onnx.data"]
    onnx.checker.check_model(str(dst))
    ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    (tensor,) = onnx.load(str(dst)).graph.initializer
    sigma = exact_sigma(torch.from_numpy(numpy_helper.to_array(tensor).copy()))
    assert 0.5 * (1 - 1e-4) <= sigma <= 0.5  # divided once, not once per use
    other = tmp_path / "out" / "other.onnx.data"
    other.write_bytes(b"my notes")  # not the output, but where its external data would go
    with pytest.raises(LipcheckError, match="already exists"):
        normalize(src, tmp_path / "out" / "other.onnx", target=0.5)
    assert other.read_bytes() == b"my notes" and not (tmp_path / "out" / "other.onnx").exists()


def test_safetensors_keeps_metadata(tmp_path: Path) -> None:
    torch.manual_seed(1)
    tensors = {"fc.weight": torch.randn(8, 5), "fc.bias": torch.randn(8), "embed.weight": torch.randn(20, 5)}
    src = tmp_path / "m.safetensors"
    save_file(tensors, str(src), metadata={"format": "pt", "who": "test"})
    normalize(src, tmp_path / "n.safetensors", target=3.0)
    with safe_open(str(tmp_path / "n.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "who": "test"}
        assert torch.equal(handle.get_tensor("fc.bias"), tensors["fc.bias"])
        assert torch.equal(handle.get_tensor("embed.weight"), tensors["embed.weight"])  # skipped: untouched
        assert 3.0 * (1 - 1e-4) <= exact_sigma(handle.get_tensor("fc.weight")) <= 3.0


def test_torchscript_with_input_shape_and_torch_convention(tmp_path: Path) -> None:
    from lipcheck.settings import Settings

    src = tmp_path / "m.torchscript.pt"
    torch.jit.script(_net()).save(str(src))
    dst = tmp_path / "n.torchscript.pt"
    normalize(src, dst, settings=Settings(input_shape=((1, 3, 6, 6),)))
    module = torch.jit.load(str(dst))
    conv = dict(module.named_parameters())["0.weight"].detach()
    assert 1.0 - 1e-4 <= _conv_norm(conv, 1, 6) <= 1.0
    original = dict(torch.jit.load(str(src)).named_parameters())
    for name, value in module.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(value, original[name])  # untouched
    normalize(src, dst, convention="torch", force=True)
    conv = dict(torch.jit.load(str(dst)).named_parameters())["0.weight"].detach()
    assert exact_sigma(torch_convention_matrix(conv)) == pytest.approx(1.0, rel=1e-4)


def test_clip_budget_and_layer_selection(tmp_path: Path) -> None:
    state = {"a.weight": torch.eye(4) * 3.0, "b.weight": torch.eye(4) * 0.5, "c.weight": torch.eye(4) * 2.0}
    src = tmp_path / "m.pt"
    torch.save(state, src)
    normalize(src, tmp_path / "clip.pt", clip=True)
    out = torch.load(tmp_path / "clip.pt", weights_only=True)
    assert torch.equal(out["b.weight"], state["b.weight"]) and exact_sigma(out["a.weight"]) <= 1.0
    normalize(src, tmp_path / "budget.pt", budget=8.0)
    out = torch.load(tmp_path / "budget.pt", weights_only=True)
    assert all(exact_sigma(out[k]) == pytest.approx(2.0, rel=1e-4) for k in state)
    normalize(src, tmp_path / "sel.pt", layers=("c.*",))
    out = torch.load(tmp_path / "sel.pt", weights_only=True)
    assert torch.equal(out["a.weight"], state["a.weight"]) and exact_sigma(out["c.weight"]) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(LipcheckError, match="no layer matches"):
        normalize(src, tmp_path / "none.pt", layers=("zzz*",))


def test_zero_layer_is_left_with_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save({"a.weight": torch.zeros(3, 3), "b.weight": torch.eye(3) * 4}, src)
    result = normalize(src, tmp_path / "n.pt")
    assert any("zero weights" in w for w in result.warnings)
    out = torch.load(tmp_path / "n.pt", weights_only=True)
    assert torch.equal(out["a.weight"], torch.zeros(3, 3))


def test_spectral_norm_checkpoint_gets_exact_vectors(tmp_path: Path) -> None:
    src = SAMPLES / "sn_discriminator.pt"
    normalize(src, tmp_path / "sn.pt")
    before = torch.load(src, weights_only=True)
    after = torch.load(tmp_path / "sn.pt", weights_only=True)
    for name, value in after.items():
        if name.endswith("weight_orig"):
            assert torch.equal(value, before[name])  # the scale-free weight itself is untouched
            base = name.removesuffix("weight_orig")
            w = value.to(torch.float64).reshape(value.shape[0], -1)
            u, v = after[f"{base}weight_u"].double(), after[f"{base}weight_v"].double()
            effective = w / torch.dot(u, w @ v)
            assert exact_sigma(effective) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("how", ["same", "link", "hardlink", "exists"])
def test_refuses_to_overwrite(tmp_path: Path, how: str) -> None:
    src = tmp_path / "m.pt"
    torch.save({"a.weight": torch.eye(3) * 2}, src)
    digest = _sha(src)
    dst = tmp_path / "out.pt"
    if how == "same":
        dst = src
    elif how == "link":
        dst.symlink_to(src)
    elif how == "hardlink":
        os.link(src, dst)
    else:
        dst.write_bytes(b"keep me")
    with pytest.raises(LipcheckError):
        normalize(src, dst, force=how != "exists")
    assert _sha(src) == digest
    if how == "exists":
        assert dst.read_bytes() == b"keep me"
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_normalize_prints_before_and_after(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("normalize", str(SAMPLES / "mlp.onnx"), "-o", str(tmp_path / "n.onnx"), "--target", "0.5")
    assert code == 0, err
    assert "σ before" in out and "upper after" in out and "product bound:" in out
    code, out, err = cli("normalize", str(SAMPLES / "mlp.onnx"), "-o", str(tmp_path / "n.onnx"))
    assert code == 2 and "--force" in err and err.count("\n") == 1
    code, out, err = cli("normalize", str(SAMPLES / "mlp.onnx"), "-o", str(tmp_path / "missing" / "n.onnx"))
    assert code == 2 and "does not exist" in err


def test_onnx_constant_node_and_if_branch_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w_const = rng.standard_normal((4, 4)).astype(np.float32)
    w_then, w_else = (rng.standard_normal((4, 4)).astype(np.float32) * 5 for _ in range(2))

    def branch(name: str, w: np.ndarray) -> onnx.GraphProto:
        node = helper.make_node("MatMul", ["h", "Wb"], [f"out_{name}"])
        return helper.make_graph(
            [node], name, [], [helper.make_tensor_value_info(f"out_{name}", TensorProto.FLOAT, [1, 4])], initializer=[numpy_helper.from_array(w, "Wb")]
        )  # same name in both branches

    nodes = [
        helper.make_node("Constant", [], ["Wc"], value=numpy_helper.from_array(w_const, "Wc")),
        helper.make_node("MatMul", ["x", "Wc"], ["h"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", w_then), else_branch=branch("else", w_else)),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    src = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    dst = tmp_path / "out.onnx"
    normalize(src, dst)
    onnx.checker.check_model(str(dst))
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.ones((1, 4), np.float32), "cond": np.array(True)})
    report = inspect(dst)
    assert len(report.layers) == 3
    for layer in report.layers:
        assert layer.sigma is not None and 1 - 1e-4 <= layer.sigma <= 1.0, layer.display_name


class _PooledCNN(torch.nn.Module):
    """Two convs, a stored offset (not a layer), a global average pool and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.register_buffer("offset", torch.randn(16, 8, 8))  # 4 KiB: the exporter stores it externally
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h) + self.offset)
        return self.fc(self.pool(h).flatten(1))


def _stored(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    """Every initializer of an ONNX file: its data location and its values (read from beside the file)."""
    proto = onnx.load(str(path), load_external_data=False)
    out = {}
    for tensor in proto.graph.initializer:
        location = tensor.data_location
        if location == TensorProto.EXTERNAL:
            onnx.external_data_helper.load_external_data_for_tensor(tensor, str(path.parent))
        out[tensor.name] = (location, numpy_helper.to_array(tensor).copy())
    return out


def test_dynamo_export_with_a_global_pool_runs_after_normalize(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    net = _PooledCNN().eval()
    src = tmp_path / "in" / "cnn.onnx"
    src.parent.mkdir()
    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(src), dynamo=True)
    os.chmod(src, 0o640)
    proto = onnx.load(str(src), load_external_data=False)
    assert {"ReduceMean", "GlobalAveragePool"} & {node.op_type for node in proto.graph.node}
    before = _stored(src)
    assert any(location == TensorProto.EXTERNAL for location, _ in before.values())
    assert any(array.dtype == np.int64 and location != TensorProto.EXTERNAL for location, array in before.values())
    digests = {p.name: _sha(p) for p in src.parent.iterdir()}

    dst = tmp_path / "out" / "n.onnx"
    dst.parent.mkdir()
    normalize(src, dst)
    assert {p.name: _sha(p) for p in src.parent.iterdir()} == digests
    assert sorted(os.listdir(dst.parent)) == ["n.onnx", "n.onnx.data"]  # the data stays beside the output
    onnx.checker.check_model(str(dst))
    after = _stored(dst)
    assert after.keys() == before.keys()
    weights = {"conv1.weight", "conv2.weight", "fc.weight"}
    for name, (location, array) in before.items():
        assert after[name][0] == location, name  # inline stays inline, external stays external
        if name not in weights:
            assert after[name][1].dtype == array.dtype and np.array_equal(after[name][1], array), name
    scales = {}
    for name in weights:
        old, new = before[name][1].astype(np.float64), after[name][1].astype(np.float64)
        scales[name] = float(np.abs(new).max() / np.abs(old).max())
        assert abs(scales[name] - 1.0) > 1e-3, name  # rewritten
        np.testing.assert_allclose(new, old * scales[name], rtol=1e-6, atol=1e-7 * np.abs(old).max())

    # The written file runs, and computes the original network with each layer's weight scaled.
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        for name, scale in scales.items():
            net.get_parameter(name).mul_(scale)
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for written in dst.parent.iterdir():
        assert stat.S_IMODE(written.stat().st_mode) == 0o640, written.name  # the input's mode


def test_normalize_keeps_the_input_mode_and_reports_follow_the_umask(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    src = tmp_path / "m.pt"
    torch.save({"a.weight": torch.eye(3) * 2}, src)
    os.chmod(src, 0o640)
    old = os.umask(0o022)
    try:
        for mask in (0o022, 0o077, 0o002):
            os.umask(mask)
            out, report, picture = (tmp_path / f"{mask:o}{name}" for name in ("n.pt", "r.json", "p.png"))
            code, _, err = cli("normalize", str(src), "-o", str(out))
            assert code == 0, err
            code, _, err = cli("inspect", str(src), "-f", "json", "-o", str(report), "--plot", str(picture))
            assert code == 0, err
            assert stat.S_IMODE(out.stat().st_mode) == 0o640  # the input's mode, whatever the umask
            assert stat.S_IMODE(report.stat().st_mode) == 0o666 & ~mask
            assert stat.S_IMODE(picture.stat().st_mode) == 0o666 & ~mask
    finally:
        os.umask(old)


def _external_matmul(folder: Path) -> Path:
    w = np.random.default_rng(5).standard_normal((6, 6)).astype(np.float32) * 3
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    src = folder / "m.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src), save_as_external_data=True, location="m.weights", size_threshold=0
    )
    return src


def test_an_output_onnxruntime_cannot_run_is_not_written(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from lipcheck.formats import onnx_write

    src = _external_matmul(tmp_path)
    dst = tmp_path / "n.onnx"
    dst.write_bytes(b"keep me")
    real = onnx_write.run_error
    checked = []

    def broken_output(path: Path) -> str | None:
        checked.append(path)
        return "simulated load failure" if path.parent.name.startswith(".n.onnx.") else real(path)

    monkeypatch.setattr(onnx_write, "run_error", broken_output)
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    code, out, err = cli("normalize", str(src), "-o", str(dst), "--force")
    assert code == 2 and err.count("\n") == 1 and err.startswith("lipcheck: error: "), err
    assert "onnxruntime" in err and "simulated load failure" in err and "nothing was written" in err
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == before  # no model, no data file, no temporary
    assert checked[-1] == src  # the input was run to tell a broken output from an unrunnable model


def test_a_model_onnxruntime_cannot_run_at_all_is_written_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipcheck.formats import onnx_write

    src = _external_matmul(tmp_path)
    monkeypatch.setattr(onnx_write, "run_error", lambda path: "no kernel for this op")
    result = normalize(src, tmp_path / "n.onnx")
    assert any("cannot run the input either" in w and "no kernel" in w for w in result.warnings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.weights", "n.onnx", "n.onnx.data"]
    monkeypatch.undo()
    assert onnx_write.run_error(tmp_path / "n.onnx") is None  # the output itself does run


def test_onnx_output_data_file_never_overwrites_the_input_data(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 3, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[w],
    )
    src = tmp_path / "m.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src), save_as_external_data=True, location="n.onnx.data", size_threshold=0
    )  # what n.onnx's data would be
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    with pytest.raises(LipcheckError, match="already exists"):
        normalize(src, tmp_path / "n.onnx")
    with pytest.raises(LipcheckError, match="data file .* is one of the input's files"):
        normalize(src, tmp_path / "n.onnx", force=True)
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("kind", ["pt", "safetensors", "onnx"])
def test_recurrent_weights_are_divided_whole_and_their_gate_rows_with_them(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4)
    if kind == "pt":
        src = tmp_path / "lstm.pt"
        torch.save(lstm.state_dict(), src)
    elif kind == "safetensors":
        src = tmp_path / "lstm.safetensors"
        save_file({k: v.contiguous() for k, v in lstm.state_dict().items()}, str(src))
    else:
        src = tmp_path / "lstm.onnx"
        torch.onnx.export(lstm.eval(), (torch.randn(3, 1, 5),), str(src), dynamo=False, opset_version=17)
    result = normalize(src, tmp_path / f"out.{kind}", target=1.0)
    stacked = [(layer, entry) for layer, entry in zip(result.after.layers, result.after.layers) if not layer.name.endswith("]")]
    assert stacked and all(entry.lipschitz is not None and entry.lipschitz.upper <= 1.0 for _, entry in stacked)
    assert any(p.action.startswith("gate rows of") for p in result.plans)
    if kind == "pt":
        out = torch.load(tmp_path / "out.pt", weights_only=True)
        for name in ("weight_ih_l0", "weight_hh_l0"):
            assert exact_sigma(out[name]) <= 1.0 + 1e-6
            ratio = out[name] / lstm.state_dict()[name]
            assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # one divisor for the whole stack


def test_tied_weights_stay_tied_and_a_partial_view_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 20, bias=False)
    torch.save({"lm_head.weight": head.weight.data, "wte.weight": head.weight.data}, tmp_path / "tied.pt")
    normalize(tmp_path / "tied.pt", tmp_path / "out.pt", target=1.0)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["lm_head.weight"].data_ptr() == out["wte.weight"].data_ptr()
    assert exact_sigma(out["lm_head.weight"]) <= 1.0 + 1e-6
    weight = torch.randn(6, 4)
    torch.save({"a.weight": weight, "b.weight": weight[:3]}, tmp_path / "view.pt")
    with pytest.raises(LipcheckError, match="shares its storage"):
        normalize(tmp_path / "view.pt", tmp_path / "view_out.pt", target=1.0)
    assert not (tmp_path / "view_out.pt").exists()


def test_two_layers_sharing_one_weight_are_divided_once(tmp_path: Path) -> None:
    torch.manual_seed(2)
    weight = torch.randn(5, 5)
    torch.save({"a.weight": weight, "b.weight": weight}, tmp_path / "shared.pt")
    normalize(tmp_path / "shared.pt", tmp_path / "out.pt", target=1.0)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["a.weight"].data_ptr() == out["b.weight"].data_ptr()
    assert 1.0 - 1e-4 <= exact_sigma(out["a.weight"]) <= 1.0 + 1e-6


def test_torch_convention_on_weights_without_a_graph_says_which_conv_it_assumes(tmp_path: Path) -> None:
    result = normalize(SAMPLES / "cnn.pt", tmp_path / "out.pt", convention="torch")
    assert any("ConvTranspose" in warning for warning in result.warnings)
    result = normalize(SAMPLES / "cnn.pt", tmp_path / "out2.pt")
    assert not any("ConvTranspose" in warning for warning in result.warnings)


def test_a_zero_layer_is_left_and_the_table_prints_a_zero_product(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[2].weight.zero_()
    src, dst = tmp_path / "zero.pt", tmp_path / "out.pt"
    torch.save(net.state_dict(), src)
    code, out, err = cli("normalize", str(src), "-o", str(dst))
    assert code == 0, err
    assert "zero weights" in err and "Traceback" not in err
    code, out, err = cli("inspect", str(src))
    assert code == 0, err
    assert "product of layer bounds (plain chains only): 0" in out


def test_a_target_that_underflows_the_weights_is_refused_before_writing(tmp_path: Path) -> None:
    src, dst = tmp_path / "mlp.pt", tmp_path / "out.pt"
    torch.save(torch.nn.Linear(4, 4).state_dict(), src)
    with pytest.raises(LipcheckError, match="smallest normal number"):
        normalize(src, dst, target=1e-300)
    assert not dst.exists()


def test_the_torch_convention_divides_by_sigmas_upper_end(tmp_path: Path) -> None:
    from lipcheck.settings import Settings

    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(200, 200), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    state = {"fc.weight": net[0].weight.detach(), "c.weight": net[2].weight.detach()}
    src, dst = tmp_path / "w.pt", tmp_path / "out.pt"
    torch.save(state, src)
    normalize(src, dst, target=1.0, convention="torch", settings=Settings(max_iter=1))
    written = torch.load(dst, weights_only=True)
    for name in state:
        assert exact_sigma(written[name].reshape(written[name].shape[0], -1)) <= 1.0


def test_an_output_that_is_the_inputs_external_data_file_is_refused(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "model.onnx"
    onnx.save(model, str(src), save_as_external_data=True, location="weights.onnx", size_threshold=0)
    data = tmp_path / "weights.onnx"
    before = _sha(data)
    with pytest.raises(LipcheckError, match="external data"):
        normalize(src, data, target=1.0, force=True)
    assert _sha(data) == before
    onnx.checker.check_model(onnx.load(str(src)))


def test_torchscript_tied_weights_and_extra_files(tmp_path: Path) -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    src, dst = tmp_path / "tied.pt", tmp_path / "out.pt"
    torch.jit.save(torch.jit.script(Tied()), str(src), _extra_files={"config.json": '{"labels": 3}'})
    normalize(src, dst, target=1.0)
    extra = {"config.json": ""}
    module = torch.jit.load(str(dst), _extra_files=extra)
    assert extra["config.json"] in (b'{"labels": 3}', '{"labels": 3}')
    assert module.a.weight.data_ptr() == module.b.weight.data_ptr()
    assert exact_sigma(module.a.weight.detach()) <= 1.0


def test_a_bidirectional_onnx_lstm_is_refused_with_what_to_do(tmp_path: Path) -> None:
    import warnings

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.r = torch.nn.LSTM(6, 5, bidirectional=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.r(x)[0]

    src, dst = tmp_path / "bi.onnx", tmp_path / "out.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(3, 1, 6),), str(src), dynamo=False, opset_version=17)
    with pytest.raises(LipcheckError, match="bidirectional recurrent layer.*--layers"):
        normalize(src, dst, target=1.0)
    assert not dst.exists()
