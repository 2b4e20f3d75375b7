"""The graph bound on exported ONNX graphs: residual CNNs with batch norm, U-Net-like graphs,
MLPs with various activations, and a transformer encoder (no number, nodes named).

Each bound is compared with the same AutoLip formula written out by hand from exact float64
norms (explicit conv operator matrices, SVDs), and with lower bounds: lipcheck's own and an
independent one from torch autograd (largest ‖J(x)‖₂ at sampled inputs)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lipcheck.api import inspect
from tests.reference import exact_sigma


def _export(module: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    module.eval()
    torch.onnx.export(module, torch.randn(*shape), str(path), dynamo=False, opset_version=17)
    return path


def _conv_norm(conv: nn.Conv2d, size: int) -> float:
    w = conv.weight.detach().double()
    x = torch.zeros(1, w.shape[1], size, size, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: nn.functional.conv2d(t, w, stride=conv.stride, padding=conv.padding), x)
    return exact_sigma(jac.reshape(-1, x.numel()))


def _bn_scale(bn: nn.BatchNorm2d) -> float:
    return float((bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)).max())


def _autograd_lower(module: nn.Module, shape: tuple[int, ...], samples: int = 8) -> float:
    module = module.double().eval()
    best = 0.0
    for seed in range(samples):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(module, x)
        best = max(best, exact_sigma(jac.reshape(module(x).numel(), -1)))
    return best


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 5)
        with torch.no_grad():
            self.bn1.running_var.uniform_(0.5, 2.0)
            self.bn1.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.conv2(torch.relu(self.bn1(self.conv1(x))))
        h = nn.functional.avg_pool2d(torch.relu(h), 2)
        return self.head(h.flatten(1))


def test_residual_cnn_with_batch_norm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipcheck.graph import segments

    net = Residual()
    path = _export(net, (1, 3, 8, 8), tmp_path / "res.onnx")
    report = inspect(path)
    tight, separate = _residual_bounds(net)
    with monkeypatch.context() as patch:  # the walk alone, each conv with its own operator norm
        patch.setattr(segments, "find_conv_runs", lambda model, reader=None: [])
        walked = inspect(path).bound.graph
    assert walked is not None and tight <= walked <= tight * (1 + 1e-5) and walked <= separate
    graph = report.bound.graph  # the branch's conv, relu, conv certified as one run
    assert graph is not None and graph < walked
    lower = max(report.bound.lower or 0.0, _autograd_lower(net, (1, 3, 8, 8)))
    assert 0 < lower <= graph


def _residual_bounds(net: Residual) -> tuple[float, float]:
    """AutoLip by hand: with batch norm folded into conv1 (tight), and every node separately."""
    c1, c2 = _conv_norm(net.conv1, 8), _conv_norm(net.conv2, 8)
    head = exact_sigma(net.head.weight)
    w = net.conv1.weight.detach().double()
    scale = (net.bn1.weight / torch.sqrt(net.bn1.running_var + net.bn1.eps)).detach().double()
    bn_conv = nn.functional.conv2d
    jac = torch.autograd.functional.jacobian(lambda t: bn_conv(t, w, padding=1) * scale.view(1, -1, 1, 1), torch.zeros(1, 3, 8, 8, dtype=torch.float64))
    folded = exact_sigma(jac.reshape(-1, 3 * 64))
    tight = (1 + c2 * folded) * 0.5 * head  # avg pool 2x2: 1/2
    separate = (1 + c2 * _bn_scale(net.bn1) * c1) * 0.5 * head  # every node's constant taken separately
    return tight, separate


class UNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.down, self.mid, self.out = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.relu(self.down(x))
        m = torch.relu(self.mid(nn.functional.max_pool2d(d, 2)))
        up = nn.functional.interpolate(m, scale_factor=2.0, mode="nearest")
        return self.out(torch.cat([up, x], dim=1))


def test_unet_like_concat_and_upsample(tmp_path: Path) -> None:
    net = UNetish()
    report = inspect(_export(net, (1, 2, 8, 8), tmp_path / "unet.onnx"))
    d, m = _conv_norm(net.down, 8), _conv_norm(net.mid, 4)
    out = exact_sigma(net.out.weight.reshape(1, -1))  # a 1x1 conv: its norm is sigma(W)
    up_branch = 2.0 * m * 1.0 * d  # nearest x2 in 2-D: sqrt(4) = 2; max pool 2/2: 1
    by_hand = out * math.sqrt(up_branch**2 + 1.0)
    graph = report.bound.graph
    assert graph is not None and by_hand <= graph <= by_hand * (1 + 1e-5)
    assert max(report.bound.lower or 0.0, _autograd_lower(net, (1, 2, 8, 8))) <= graph


@pytest.mark.parametrize(
    "act, constant",
    [
        (nn.LeakyReLU(3.0), 3.0),
        (nn.ELU(alpha=2.0), 2.0),
        (nn.Sigmoid(), 0.25),
        (nn.Tanh(), 1.0),
        (nn.SiLU(), 1.09984),
        (nn.Softplus(), 1.0),
        (nn.ReLU(), 1.0),
    ],
)
def test_mlp_activations(tmp_path: Path, act: nn.Module, constant: float) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 8), act, nn.Linear(8, 3))
    report = inspect(_export(net, (1, 6), tmp_path / "mlp.onnx"))
    by_hand = exact_sigma(net[0].weight) * constant * exact_sigma(net[2].weight)
    graph = report.bound.graph
    assert graph is not None and by_hand <= graph <= by_hand * (1 + 1e-5)
    assert max(report.bound.lower or 0.0, _autograd_lower(net, (1, 6))) <= graph


class Encoder(nn.Module):
    """One transformer encoder block written out (the exporter's fused attention path is avoided)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
        self.norm1, self.ff1, self.ff2, self.norm2 = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8), nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(8)
        h = self.norm1(x + self.o(torch.softmax(scores, dim=-1) @ self.v(x)))
        return self.norm2(h + self.ff2(torch.relu(self.ff1(h))))


def test_transformer_encoder_has_no_number_and_names_the_nodes(tmp_path: Path) -> None:
    report = inspect(_export(Encoder(), (1, 5, 8), tmp_path / "enc.onnx"))
    assert report.bound.graph is None
    text = " ".join(report.bound.assumptions)
    assert "graph: no bound" in text
    assert "LayerNormalization" in text or "Sqrt" in text  # LayerNorm, fused or written out
    assert "MatMul): a product of two activations" in text  # the attention scores, named


def test_state_dict_has_no_graph_bound() -> None:
    from tests.conftest import SAMPLES

    report = inspect(SAMPLES / "cnn.pt")
    assert report.bound.graph is None and report.bound.lower is None
    assert any("file order" in a for a in report.bound.assumptions)


def test_user_supplied_constants_are_opt_in_and_recorded(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from lipcheck.settings import Settings

    path = _export(Encoder(), (1, 5, 8), tmp_path / "enc.onnx")
    report = inspect(path)
    labels = [a.removeprefix("graph: no bound, ").split(" (")[0] for a in report.bound.assumptions if a.startswith("graph: no bound, ")]
    assert labels
    supplied = inspect(path, settings=Settings(node_constants=tuple((label, 3.0) for label in labels)))
    assert supplied.bound.graph is not None
    recorded = [a for a in supplied.bound.assumptions if "supplied by the user" in a]
    assert len(recorded) == len(labels)
    code, _, err = cli("inspect", str(path), "--node-constant", "no-such-node=2")
    assert code == 2 and "names no node" in err and err.count("\n") == 1


@pytest.mark.parametrize("how", ["script", "trace", "module"])
def test_torchscript_and_module_front_ends(tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipcheck.graph import segments
    from lipcheck.settings import Settings

    shape = (1, 3, 8, 8)
    net = Residual().eval()
    settings = Settings(input_shape=(shape,))
    if how == "module":
        source: nn.Module | Path = net
    else:
        scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, torch.zeros(shape))
        scripted.save(str(tmp_path / "m.pt"))
        source = tmp_path / "m.pt"
    report = inspect(source, settings=settings)
    with monkeypatch.context() as patch:  # the walk alone, each conv with its own operator norm
        patch.setattr(segments, "find_conv_runs", lambda model, reader=None: [])
        walked = inspect(source, settings=settings).bound.graph
    tight, separate = _residual_bounds(net)
    # Batch norm is a separate node in these graphs; lipcheck folds it into conv1 (the tight value).
    assert walked is not None and tight <= walked <= tight * (1 + 1e-5) and walked <= separate
    graph = report.bound.graph  # the block's conv, batch norm, relu, conv and skip certified as one run
    assert graph is not None and graph < walked
    assert report.bound.lower is not None and 0 < report.bound.lower <= graph
    assert _autograd_lower(net, shape) <= graph


def test_module_and_onnx_front_ends_agree(tmp_path: Path) -> None:
    from lipcheck.settings import Settings

    net = UNetish().eval()
    onnx_graph = inspect(_export(net, (1, 2, 8, 8), tmp_path / "u.onnx")).bound.graph
    module_graph = inspect(net, settings=Settings(input_shape=((1, 2, 8, 8),))).bound.graph
    assert onnx_graph is not None and module_graph == pytest.approx(onnx_graph, rel=1e-6)


def test_torch_transformer_encoder_layer_exported_by_dynamo(tmp_path: Path) -> None:
    """torch's own nn.TransformerEncoderLayer, exported with torch.onnx.export(dynamo=True)."""
    import warnings

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True).eval()
    path = tmp_path / "enc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.randn(1, 5, 8),), str(path), dynamo=True)
    report = inspect(path)
    assert report.bound.graph is None
    text = " ".join(report.bound.assumptions)
    # LayerNorm is globally Lipschitz (max|γ|/√ε): it is named only as the node computing the lost output.
    assert "(LayerNormalization): computes output" in text and "LayerNorm is not globally Lipschitz" not in text
    assert "(MatMul): a product of two activations" in text


@pytest.mark.parametrize(
    ("pool", "side"), [(torch.nn.AdaptiveAvgPool2d(1), 6), (torch.nn.AdaptiveAvgPool2d((3, 2)), 7), (torch.nn.AdaptiveMaxPool2d((3, 3)), 7)]
)
def test_adaptive_pools_in_torchscript_are_bounded_by_their_operator(tmp_path: Path, pool: torch.nn.Module, side: int) -> None:
    # An average pool is linear: its constant is the norm of its matrix (1/sqrt(36) for a global
    # mean over 6x6), read here from the Jacobian; a max pool's is at most sqrt(windows per entry).
    net = torch.nn.Sequential(pool, torch.nn.Flatten()).eval()
    shape = (1, 2, side, side)
    torch.jit.trace(net, torch.zeros(shape)).save(str(tmp_path / "pool.pt"))
    from lipcheck.settings import Settings

    bound = inspect(tmp_path / "pool.pt", settings=Settings(input_shape=(shape,), lower=False)).bound
    x = torch.randn(shape, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(net.double(), x).reshape(-1, x.numel())
    exact = float(torch.linalg.svdvals(jacobian)[0])
    assert bound.graph is not None and exact * (1 - 1e-12) <= bound.graph
    if isinstance(pool, torch.nn.AdaptiveAvgPool2d):
        assert bound.graph <= exact * (2.5 if side % 3 else 1 + 1e-9)


def test_the_walks_own_rounding_never_takes_the_bound_below_the_exact_product(tmp_path: Path) -> None:
    # 300 multiplications by float32 constants: the exact constant is their product, computed here
    # in exact fractions; float64 products rounded to nearest drift below it about half the time.
    import fractions

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    scales = rng.uniform(0.9, 1.1, 300).astype(np.float32)
    nodes = [helper.make_node("Mul", [f"v{i}", f"c{i}"], [f"v{i + 1}"]) for i in range(300)]
    inits = [numpy_helper.from_array(np.array(c, dtype=np.float32), f"c{i}") for i, c in enumerate(scales)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("v300", TensorProto.FLOAT, [1, 4])], inits
    )
    path = tmp_path / "muls.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    from lipcheck.settings import Settings

    bound = inspect(path, settings=Settings(lower=False)).bound
    exact = fractions.Fraction(1)
    for c in scales:
        exact *= fractions.Fraction(float(c))
    assert bound.graph is not None and fractions.Fraction(bound.graph) >= exact
    assert bound.graph <= float(exact) * (1 + 1e-9)


class _TwoHeads(nn.Module):
    """Two outputs read the same linear map: together, the map x -> (Wx, Wx) has constant sqrt(2) sigma(W)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(x), self.head(x) * 1.0


@pytest.mark.parametrize(("dtype", "kind"), [(torch.float32, "onnx"), (torch.float64, "onnx"), (torch.float32, "torchscript")])
def test_several_outputs_are_bounded_together(tmp_path: Path, dtype: torch.dtype, kind: str) -> None:
    from lipcheck.settings import Settings

    torch.manual_seed(0)
    net = _TwoHeads().to(dtype).eval()
    path = tmp_path / ("heads.onnx" if kind == "onnx" else "heads.pt")
    if kind == "onnx":
        torch.onnx.export(net, (torch.randn(1, 3, dtype=dtype),), str(path), dynamo=False)
    else:
        torch.jit.trace(net, torch.randn(1, 3, dtype=dtype)).save(str(path))
    sigma = exact_sigma(net.head.weight.detach())
    bound = inspect(path, settings=Settings(input_shape=((1, 3),))).bound
    assert bound.upper is not None and bound.lower is not None
    # Each head alone is sigma-Lipschitz; the pair of outputs as one vector is sqrt(2) sigma.
    assert math.sqrt(2) * sigma <= bound.upper <= math.sqrt(2) * sigma * (1 + 1e-6)
    assert math.sqrt(2) * sigma * (1 - 1e-3) <= bound.lower <= math.sqrt(2) * sigma * (1 + 1e-9)
    assert any("2 outputs taken together" in text for text in bound.assumptions)


class _ConvBnStack(nn.Module):
    """conv, BN, relu, strided conv, BN, linear: at 10x10 and with explicit operators up to 200 on a
    side, the first conv takes the circular certificate (600 inputs, 400 outputs), the second the
    explicit operator, wider than tall (200 outputs, 400 inputs)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv1, self.bn1 = nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(200, 3)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.weight.uniform_(-2.0, 2.0)
                bn.running_var.uniform_(0.05, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return self.head(self.bn2(self.conv2(h)).flatten(1))


def test_batch_norms_folded_while_their_convs_are_certified_bound_the_folded_operators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folded uppers worked out alongside each conv (one Gram product for the explicit one,
    the conv pool for the other) are certified: at least the float64 SVD of the folded operator
    (torch's conv applied to every basis vector), and within the tolerance of the uppers certified on their own."""
    from lipcheck import api
    from lipcheck.formats import load
    from lipcheck.settings import Settings
    from lipcheck.spectral import conv as conv_module
    from lipcheck.spectral import conv_fourier
    from lipcheck.spectral import layer as layer_module

    monkeypatch.setattr(conv_module, "EXPLICIT_MAX_SIDE", 200)
    net = _ConvBnStack().eval()
    shape = (1, 6, 10, 10)
    path = tmp_path / "stack.pt"
    torch.jit.trace(net, torch.zeros(shape)).save(str(path))
    settings = Settings(lower=False, input_shape=(shape,))
    model = load(path, input_shapes=settings.input_shape)
    folds = api._by_layer(api._fold_requests(model, settings))
    assert sorted(model.layers[i].shape for i in folds) == [(4, 6, 3, 3), (8, 4, 3, 3)]

    def folded_uppers(with_folds: bool) -> dict[int, float]:
        layer_module._conv_cache.clear()
        list(layer_module.estimate_all(model.layers, settings, folds if with_folds else None))
        fuse = api._fuser(model, settings)
        found = {index: fuse(index, scales[0]) for index, scales in folds.items()}
        assert all(value is not None for value in found.values())
        return found  # type: ignore[return-value]

    shared: list[str] = []
    real_dense, real_taps = conv_module.certify_row_scaled, conv_fourier.scaled_taps

    def dense_spy(*args: object, **kwargs: object) -> object:
        raw, scaled = real_dense(*args, **kwargs)  # type: ignore[arg-type]
        shared.extend("explicit" for found in scaled if found is not None)
        return raw, scaled

    def taps_spy(*args: object) -> object:
        found = real_taps(*args)  # type: ignore[arg-type]
        shared.extend(["circular"] if found is not None else [])
        return found

    with monkeypatch.context() as patch:
        patch.setattr(conv_module, "certify_row_scaled", dense_spy)
        patch.setattr(conv_fourier, "scaled_taps", taps_spy)
        along = folded_uppers(True)
    alone = folded_uppers(False)
    assert sorted(shared) == ["circular", "explicit"]  # each folded upper came from its conv's own Gram products
    for index, scales in folds.items():
        conv = net.conv1 if model.layers[index].shape[1] == 6 else net.conv2
        w = layer_module.folded_weight(conv.weight.detach(), scales[0])
        inputs = w.shape[1] * 100
        basis = torch.eye(inputs, dtype=torch.float64).reshape(inputs, w.shape[1], 10, 10)
        columns = nn.functional.conv2d(basis, w, stride=conv.stride, padding=conv.padding)  # the operator, one input at a time
        truth = exact_sigma(columns.reshape(inputs, -1).T)
        assert truth <= along[index] <= truth * 1.1  # the circular embedding sits a few percent above at 10x10
        assert along[index] == pytest.approx(alone[index], rel=1e-5)
