"""state_dicts and checkpoints saved by torch.save, spectral-norm-trained ones included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lipcheck.api import inspect
from lipcheck.errors import LipcheckError
from tests.reference import exact_sigma, torch_convention_matrix


def _sd(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Conv1d(1, 4, 3), nn.Embedding(50, 8), nn.LayerNorm(8))
    # A bare state_dict says nothing about module types: embeddings are known by their names.
    sd = {k.replace("3.", "tok_embeddings.", 1) if k.startswith("3.") else k: v for k, v in net.state_dict().items()}
    sd["pos_table"] = torch.randn(10, 8)  # a 2-D buffer that is not a weight
    sd["position_ids"] = torch.arange(10).reshape(1, 10)
    return sd


def _names(report) -> list[str]:  # type: ignore[no-untyped-def]
    return [layer.name for layer in report.layers]


def test_bare_state_dict_layers_and_skips(tmp_path: Path) -> None:
    sd = _sd()
    torch.save(sd, tmp_path / "m.pt")
    report = inspect(tmp_path / "m.pt")
    assert report.model_format == "state_dict"
    assert _names(report) == ["0.weight", "2.weight"]
    assert [layer.op for layer in report.layers] == ["linear", "conv1d"]
    skipped = {s.name: s.reason for s in report.skipped}
    assert set(skipped) == {"tok_embeddings.weight", "pos_table", "position_ids"}
    assert "embedding" in skipped["tok_embeddings.weight"]
    assert report.layers[0].sigma == pytest.approx(exact_sigma(sd["0.weight"]), rel=1e-5)
    assert report.layers[1].sigma == pytest.approx(exact_sigma(torch_convention_matrix(sd["2.weight"])), rel=1e-5)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict", "net", "ema"])
def test_checkpoint_wrappers_ignore_optimizer_and_scalars(tmp_path: Path, wrapper: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 6)).sum().backward()
    opt.step()
    torch.save({wrapper: net.state_dict(), "optimizer": opt.state_dict(), "epoch": 7, "best_acc": 0.91}, tmp_path / "c.pth")
    report = inspect(tmp_path / "c.pth")
    assert report.model_format == "checkpoint"
    assert _names(report) == ["0.weight", "1.weight"]
    assert report.layers[0].sigma == pytest.approx(exact_sigma(net[0].weight), rel=1e-5)


def test_lightning_prefix_and_nested_dicts(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 4))
    torch.save({"state_dict": {"model": {"encoder": net.state_dict()}}, "optimizer_states": [{}], "global_step": 3}, tmp_path / "l.ckpt")
    assert _names(inspect(tmp_path / "l.ckpt")) == ["model.encoder.0.weight"]


def test_several_models_need_a_key(tmp_path: Path) -> None:
    g, d = nn.Linear(3, 4), nn.Linear(4, 1)
    torch.save({"G": g.state_dict(), "D": d.state_dict()}, tmp_path / "gan.pt")
    with pytest.raises(LipcheckError, match="--key"):
        inspect(tmp_path / "gan.pt")
    report = inspect(tmp_path / "gan.pt", key="D")
    assert _names(report) == ["weight"]
    assert report.layers[0].sigma == pytest.approx(exact_sigma(d.weight), rel=1e-5)


def test_ema_next_to_model_is_noted(tmp_path: Path) -> None:
    torch.save({"model": nn.Linear(3, 3).state_dict(), "ema": nn.Linear(3, 3).state_dict()}, tmp_path / "e.pt")
    report = inspect(tmp_path / "e.pt")
    assert any("'ema'" in note for note in report.notes)


def test_a_top_level_counter_does_not_mix_the_model_with_its_ema(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model, ema = nn.Linear(4, 3), nn.Linear(4, 3)
    torch.save({"state_dict": model.state_dict(), "ema": ema.state_dict(), "step": torch.tensor(5)}, tmp_path / "w.pt")
    report = inspect(tmp_path / "w.pt")
    assert _names(report) == ["weight"]
    assert report.layers[0].sigma == pytest.approx(exact_sigma(model.weight), rel=1e-5)
    assert any("'ema'" in note for note in report.notes)


def test_top_level_weights_beside_a_nested_copy_are_the_model_and_normalize_edits_only_them(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    weight, ema = torch.randn(5, 4), torch.randn(5, 4) * 10
    torch.save({"fc.weight": weight, "ema": {"fc.weight": ema}}, tmp_path / "w.pt")
    report = inspect(tmp_path / "w.pt")
    assert _names(report) == ["fc.weight"]
    assert report.layers[0].sigma == pytest.approx(exact_sigma(weight), rel=1e-5)
    code, _, err = cli("normalize", str(tmp_path / "w.pt"), "-o", str(tmp_path / "n.pt"), "--target", "1")
    assert code == 0, err
    out = torch.load(tmp_path / "n.pt", weights_only=True)
    assert exact_sigma(out["fc.weight"]) == pytest.approx(1.0, rel=1e-4)
    assert torch.equal(out["ema"]["fc.weight"], ema)


def test_sparse_weights_are_read_and_normalized_as_their_dense_maps(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(4)
    coo, csr = torch.randn(5, 4), torch.randn(3, 5)
    coo[coo.abs() < 0.5] = 0
    torch.save({"a.weight": coo.to_sparse(), "b.weight": csr.to_sparse_csr()}, tmp_path / "s.pt")
    report = inspect(tmp_path / "s.pt")
    assert [layer.sigma for layer in report.layers] == pytest.approx([exact_sigma(coo), exact_sigma(csr)], rel=1e-5)
    code, _, err = cli("normalize", str(tmp_path / "s.pt"), "-o", str(tmp_path / "n.pt"), "--target", "1")
    assert code == 0 and err == "", err
    out = torch.load(tmp_path / "n.pt", weights_only=True)
    assert out["a.weight"].layout == torch.sparse_coo and out["b.weight"].layout == torch.sparse_csr
    assert exact_sigma(out["a.weight"].to_dense()) == pytest.approx(1.0, rel=1e-4)
    assert exact_sigma(out["b.weight"].to_dense()) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(tmp_path: Path, dtype: torch.dtype) -> None:
    w = torch.randn(16, 12, generator=torch.Generator().manual_seed(2)).to(dtype)
    torch.save({"fc.weight": w}, tmp_path / "h.pt")
    layer = inspect(tmp_path / "h.pt").layers[0]
    assert layer.dtype == str(dtype).removeprefix("torch.")
    assert layer.sigma == pytest.approx(exact_sigma(w.to(torch.float64)), rel=1e-5)
    assert layer.lipschitz is not None and layer.lipschitz.upper >= exact_sigma(w.to(torch.float64))


def _trained(net: nn.Module) -> nn.Module:
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, *((3, 8, 8) if isinstance(net[0], (nn.Conv2d, nn.ConvTranspose2d)) else (10,)))).sum().backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize("api", ["hook", "parametrization"])
@pytest.mark.parametrize("kind", ["linear", "conv", "conv_transpose"])
def test_spectral_norm_checkpoint_reports_the_effective_weight(tmp_path: Path, api: str, kind: str) -> None:
    torch.manual_seed(4)
    sn = nn.utils.spectral_norm if api == "hook" else nn.utils.parametrizations.spectral_norm
    first = {"linear": nn.Linear(10, 12), "conv": nn.Conv2d(3, 5, 3), "conv_transpose": nn.ConvTranspose2d(3, 5, 3)}[kind]
    net = _trained(nn.Sequential(sn(first)))
    torch.save(net.state_dict(), tmp_path / "sn.pt")
    with torch.no_grad():
        net(torch.randn(1, *((3, 8, 8) if kind != "linear" else (10,))))  # the old hook API sets .weight in forward
        effective = net[0].weight.detach()  # what the network computes with in eval mode
    report = inspect(tmp_path / "sn.pt")
    (layer,) = report.layers
    assert layer.op == {"linear": "linear", "conv": "conv2d", "conv_transpose": "conv_transpose2d"}[kind]
    assert "spectral-norm" in (layer.note or "")
    exact = exact_sigma(torch_convention_matrix(effective, transposed=kind == "conv_transpose"))
    assert layer.sigma == pytest.approx(exact, rel=1e-5)
    assert report.skipped == []


def test_a_traced_module_holding_a_conv_it_never_calls_is_read(tmp_path: Path) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.unused = nn.Conv2d(2, 3, 3), nn.Conv2d(3, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.c1(x))

    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(Net().eval(), torch.zeros(1, 2, 5, 5)), str(path))
    report = inspect(path)
    assert {layer.name for layer in report.layers} >= {"c1.weight", "unused.weight"}
