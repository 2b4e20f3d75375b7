"""Torch modules whose TorchScript or torch.export graph once got an upper bound below what the
module attains: a conv weight reused with another geometry or input size, addmm with alpha or beta,
linear on a 3-D input before a batch norm, layer and group norms whose scale and epsilon were misread.
Each bound must be at least the ratio a float64 copy of the module attains, or the graph blocked."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipcheck.api import inspect
from lipcheck.settings import Settings


class _SharedStride(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 1, 3, stride=3, padding=0, bias=False)
        with torch.no_grad():
            self.c.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.c.weight, None, 1, 1)


class _SharedSizes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.c.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.c(x).flatten(1), self.c(x[:, :, :1]).flatten(1)], 1)


class _ScaledAddmm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w, self.b = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, x, self.w.t(), beta=0.5, alpha=3.0)


class _LinearTokensNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)
        with torch.no_grad():
            self.l.weight.copy_(torch.diag(torch.tensor([10.0, 1, 1, 0.1])))
            self.bn.weight.copy_(torch.tensor([0.1, 1, 1, 10.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.l(x))


class _Norm(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.g, self.b = nn.Parameter(torch.tensor([1.0, 2, 3, 50])), nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return F.layer_norm(x * 2, (4,), self.g, self.b, eps=1e-3)
        return F.group_norm(x.reshape(1, 4, 1) * 2, 2, self.g, None, eps=1e-3)


def _attained(module: nn.Module, shape: tuple[int, ...], at_zero: bool = False) -> float:
    """The top singular value of a float64 finite-difference Jacobian, best over a few points."""
    twin = copy.deepcopy(module).double().eval()
    rng = np.random.default_rng(0)
    points = [np.zeros(shape)] if at_zero else [rng.normal(size=shape) for _ in range(8)]
    best, h = 0.0, 1e-7
    with torch.no_grad():
        for x in points:
            base = twin(torch.tensor(x)).reshape(-1)
            columns = []
            for i in range(x.size):
                bumped = x.copy().reshape(-1)
                bumped[i] += h
                columns.append(((twin(torch.tensor(bumped.reshape(shape))).reshape(-1) - base) / h).numpy())
            best = max(best, float(np.linalg.svd(np.stack(columns, 1), compute_uv=False)[0]))
    return best


class _ClampToBuffer(nn.Module):
    """clamp(x, min=a (3, 4) buffer): x of shape (1, 4) copied 3 times."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lo", torch.full((3, 4), -100.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=self.lo)


CASES = {
    "clamp to a buffer that broadcasts the input": (_ClampToBuffer, (1, 4), ("trace", "torchscript"), False),
    "conv weight reused with another stride": (_SharedStride, (1, 1, 6, 6), ("torchscript",), False),
    "conv weight reused at another input size": (_SharedSizes, (1, 1, 12), ("torchscript",), False),
    "addmm with alpha and beta": (_ScaledAddmm, (2, 4), ("export",), False),
    "linear on tokens then batch norm": (_LinearTokensNorm, (1, 4, 4), ("trace", "export"), False),
    "layer norm scale and epsilon": (lambda: _Norm("layer"), (1, 4), ("trace", "export"), True),
    "group norm scale and epsilon": (lambda: _Norm("group"), (1, 4), ("trace", "export"), True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_graph_bounds_hold(tmp_path: Path, case: str) -> None:
    make, shape, archives, at_zero = CASES[case]
    module = make().eval()  # type: ignore[operator]
    attained = _attained(module, shape, at_zero)
    x = torch.randn(*shape)
    for archive in archives:
        if archive == "export":
            path = tmp_path / "m.pt2"
            torch.export.save(torch.export.export(module, (x,)), str(path))
            settings = Settings(lower=False)
        else:
            path = tmp_path / "m.pt"
            (torch.jit.script(module) if archive == "torchscript" else torch.jit.trace(module, (x,))).save(str(path))
            settings = Settings(lower=False, input_shape=(shape,))
        bound = inspect(path, settings=settings).bound
        assert bound.upper is None or bound.upper >= attained * (1 - 1e-5), (archive, bound.upper, attained, bound.method)


class _AddCorner(nn.Module):
    """y + y[:, :, :1, :1]: the corner entry is broadcast to every position (sqrt(64) copies at 8x8)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        return y + y[:, :, :1, :1]


@pytest.mark.parametrize("archive", ["trace", "torchscript"])
def test_a_broadcast_of_unknown_shape_blocks_the_bound_until_the_shape_is_given(tmp_path: Path, archive: str) -> None:
    torch.manual_seed(0)
    module = _AddCorner().eval()
    shape = (1, 2, 8, 8)
    path = tmp_path / "m.pt"
    (torch.jit.script(module) if archive == "torchscript" else torch.jit.trace(module, (torch.randn(*shape),))).save(str(path))
    unknown = inspect(path, settings=Settings(lower=False)).bound
    assert unknown.graph is None and any("--input-shape" in reason for reason in unknown.blocking)
    sized = inspect(path, settings=Settings(lower=False, input_shape=(shape,))).bound
    attained = _attained(module, shape, False)
    assert sized.upper is not None and sized.upper >= attained * (1 - 1e-5)


class _Gelu(nn.Module):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("archive", ["trace", "torchscript", "export"])
def test_gelu_gets_the_constant_of_its_own_form(tmp_path: Path, approximate: str, archive: str) -> None:
    # sup |GELU'|: 1.1289041 for the erf form, 1.1289931 for the tanh approximation (mpmath, 30 digits).
    truth = {"none": 1.12890414518515, "tanh": 1.12899306865877}[approximate]
    module, x = _Gelu(approximate).eval(), torch.randn(1, 4)
    if archive == "export":
        path = tmp_path / "g.pt2"
        torch.export.save(torch.export.export(module, (x,)), str(path))
    else:
        path = tmp_path / "g.pt"
        (torch.jit.script(module) if archive == "torchscript" else torch.jit.trace(module, (x,))).save(str(path))
    bound = inspect(path, settings=Settings(lower=False, input_shape=((1, 4),))).bound.graph
    assert bound is not None and truth <= bound <= truth * (1 + 1e-5)


class _BranchOnShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(1) > 2:
            y = self.lin(x) * 5.0
        else:
            y = x
        return y


class _BranchOnValues(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            return 10 * x
        return x


class _FloorDivide(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.div(x * 3.0, 0.5, rounding_mode="floor")


def test_control_flow_and_training_mode_never_pass_for_constants(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cases: list[tuple[str, object]] = []
    path = tmp_path / "if.pt"
    torch.jit.script(_BranchOnShape().eval()).save(str(path))  # the If's branches read x: not a constant
    cases.append(("script If", path))
    norm = nn.BatchNorm1d(2)
    norm.running_var.fill_(100.0)
    path = tmp_path / "bn.pt"
    torch.jit.trace(norm.train(), torch.randn(4, 2, 3)).save(str(path))  # batch statistics in the graph
    cases.append(("batch norm traced in training mode", path))
    path = tmp_path / "div.pt"
    torch.jit.script(_FloorDivide()).save(str(path))
    cases.append(("floor division", path))
    cases.append(("live module branching on values", _BranchOnValues()))
    for what, source in cases:
        shape = ((4, 2, 3),) if what.startswith("batch") else ((1, 4),)
        bound = inspect(source, settings=Settings(lower=False, input_shape=shape)).bound  # type: ignore[arg-type]
        assert bound.upper is None, (what, bound.upper, bound.method)


class _PlainBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(2))
        self.register_buffer("var", torch.full((2,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.mean, self.var, training=False)  # no weight: a scale of 1


def test_a_batch_norm_without_weight_has_scale_one(tmp_path: Path) -> None:
    path = tmp_path / "bn.pt"
    torch.jit.trace(_PlainBatchNorm(), torch.randn(3, 2)).save(str(path))
    bound = inspect(path, settings=Settings(lower=False, input_shape=((3, 2),))).bound
    assert bound.upper == pytest.approx(1 / math.sqrt(0.25 + 1e-5), rel=1e-9)


class InPlace(nn.Module):
    """h = l0(x); h.mul_(5); return l1(h) with identity weights: Lipschitz constant exactly 5."""

    def __init__(self) -> None:
        super().__init__()
        self.l0, self.l1 = nn.Linear(2, 2), nn.Linear(2, 2)
        with torch.no_grad():
            for layer in (self.l0, self.l1):
                layer.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l0(x)
        h.mul_(5.0)
        return self.l1(h)


def test_a_scripted_value_changed_in_place_and_read_again_gets_no_graph_bound(tmp_path: Path) -> None:
    path = tmp_path / "inplace.pt"
    torch.jit.save(torch.jit.script(InPlace().eval()), str(path))
    report = inspect(path)
    assert report.bound.upper is None or report.bound.upper >= 5.0
    assert report.bound.upper is None and "changes a value in place" in report.bound.blocking[0]
    traced = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(InPlace().eval(), torch.zeros(1, 2)), str(traced))
    upper = inspect(traced).bound.upper
    assert upper is None or upper >= 5.0


class InPlaceReturned(nn.Module):
    """h = l0(x); h.mul_(5); return h: the value returned is the one changed in place."""

    def __init__(self) -> None:
        super().__init__()
        self.l0 = nn.Linear(2, 2)
        with torch.no_grad():
            self.l0.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l0(x)
        h.mul_(5.0)
        return h


def test_a_scripted_value_changed_in_place_and_returned_gets_no_graph_bound(tmp_path: Path) -> None:
    path = tmp_path / "returned.pt"
    torch.jit.save(torch.jit.script(InPlaceReturned().eval()), str(path))
    upper = inspect(path).bound.upper
    assert upper is None or upper >= 5.0


def _exported(module: nn.Module, path: Path) -> Path:
    """Save the module as a torch.export archive at a 1x3 input and return the path."""
    torch.export.save(torch.export.export(module.eval(), (torch.randn(1, 3),)), str(path))
    return path


class _SetItem(nn.Module):
    """y = x.clone(); y[:, 0] = 7 x[:, 1]: Lipschitz constant sqrt(50)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[:, 0] = x[:, 1] * 7.0
        return y


class _NarrowAdd(nn.Module):
    """y = x * 1; y[:, :1] += 5 x[:, 1:2] through a narrowed view: constant sqrt(27) = 5.196."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1.0
        y.narrow(1, 0, 1).add_(5.0 * x[:, 1:2])
        return y


@pytest.mark.parametrize(("module", "truth"), [(_SetItem(), math.sqrt(50.0)), (_NarrowAdd(), math.sqrt(27.0))])
def test_a_torch_export_program_writing_in_place_gets_no_graph_bound(tmp_path: Path, module: nn.Module, truth: float) -> None:
    """The exported graph keeps copy_ and add_ on views of another value: the walk would miss the write."""
    report = inspect(_exported(module, tmp_path / "inplace.pt2"))
    assert report.bound.upper is None and report.bound.graph is None
    assert "writes into a view of another value" in report.bound.blocking[0]
    assert report.bound.lower is not None and truth * 0.99 <= report.bound.lower <= truth * (1 + 1e-9)


class _ResidualInPlace(nn.Module):
    """relu(inplace=True), out += identity and out *= 5, as real blocks write them: only each op's own result is read."""

    def __init__(self) -> None:
        super().__init__()
        self.l0, self.l1 = nn.Linear(3, 3), nn.Linear(3, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.l0(x))
        out = self.l1(out)
        out += x
        out *= 5.0
        return self.relu(out)


def test_a_torch_export_program_with_harmless_in_place_ops_keeps_its_graph_bound(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _ResidualInPlace().eval()
    report = inspect(_exported(module, tmp_path / "residual.pt2"))
    w0, w1 = (float(torch.linalg.matrix_norm(layer.weight.detach().double(), 2)) for layer in (module.l0, module.l1))
    assert report.bound.upper is not None and report.bound.lower is not None
    assert report.bound.lower <= report.bound.upper <= 5 * (1 + w0 * w1) * (1 + 1e-6)
    # The constant is at least what the Jacobian at a point shows.
    x = torch.randn(1, 3)
    jacobian = torch.autograd.functional.jacobian(lambda t: module(t.clone()), x).reshape(3, 3)
    assert float(torch.linalg.matrix_norm(jacobian.double(), 2)) <= report.bound.upper * (1 + 1e-6)


class _ScaledInPlaceAdd(nn.Module):
    """y = l(x); y.add_(x, alpha=7): the in-place sum scales its second term."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.l(x)
        y.add_(x, alpha=7.0)
        return y


def test_a_torch_export_in_place_add_with_alpha_is_not_read_as_a_plain_sum(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _ScaledInPlaceAdd().eval()
    report = inspect(_exported(module, tmp_path / "alpha.pt2"))
    truth = float(torch.linalg.matrix_norm(module.l.weight.detach().double() + 7 * torch.eye(3, dtype=torch.float64), 2))
    assert report.bound.upper is None or report.bound.upper >= truth
    assert report.bound.lower is not None and report.bound.lower <= truth * (1 + 1e-9)


class _DenseCat(nn.Module):
    """outs = [x]; outs.append(l(x)); cat(outs): the appended entry is part of the output."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)
        with torch.no_grad():
            self.l.weight.copy_(5 * torch.eye(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        outs.append(self.l(x))
        return torch.cat(outs, 1)


class _SelectAtArgmax(nn.Module):
    """x.select(1, argmax(x)): the index jumps with the input, so no constant bounds it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = int(torch.argmax(x[0]))
        return x.select(1, (i + 1) % 4)


class _ViewThenWrite(nn.Module):
    """v = h.view(-1) before h.mul_(100): v shows the write, constant 100."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.l.weight.copy_(torch.eye(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l(x)
        v = h.view(-1)
        h.mul_(100.0)
        return v


@pytest.mark.parametrize(("module", "truth"), [(_DenseCat(), math.sqrt(26.0)), (_SelectAtArgmax(), math.inf), (_ViewThenWrite(), 100.0)])
def test_torchscript_lists_indices_and_views_that_change_are_never_read_as_fixed(tmp_path: Path, module: nn.Module, truth: float) -> None:
    for kind in ("script", "trace"):
        if kind == "trace" and isinstance(module, _SelectAtArgmax):
            continue  # a trace fixes the index it saw: another function, which the tracer warns about
        path = tmp_path / f"{kind}.pt"
        saved = torch.jit.script(module) if kind == "script" else torch.jit.trace(module, torch.randn(1, 4))
        saved.save(str(path))
        bound = inspect(path, settings=Settings(lower=False, input_shape=((1, 4),))).bound
        assert bound.upper is None or bound.upper >= truth * (1 - 1e-9), (kind, bound.upper)


class _Counter(nn.Module):
    """A buffer that grows on every call: each call computes another function."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4, bias=False)
        self.register_buffer("n", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n.add_(1.0)
        return self.l(x) + 1000.0 * self.n


def test_a_module_that_changes_its_own_state_gets_no_bound_and_no_lower_bound(tmp_path: Path) -> None:
    x = torch.randn(1, 4)
    for kind in ("script", "trace", "export"):
        path = tmp_path / (f"{kind}.pt2" if kind == "export" else f"{kind}.pt")
        module = _Counter().eval()
        if kind == "export":
            torch.export.save(torch.export.export(module, (x,)), str(path))
        else:
            (torch.jit.script(module) if kind == "script" else torch.jit.trace(module, x, check_trace=False)).save(str(path))
        report = inspect(path, settings=Settings(input_shape=((1, 4),) if kind != "export" else None))
        assert report.bound.upper is None and report.bound.lower is None, kind
        assert "each call computes another function" in report.bound.blocking[0]


class _NonzeroCount(nn.Module):
    """The number of positive entries picks the column: the output jumps as an entry crosses 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = (x > 0).nonzero().size(0)
        return x.select(1, n % 4)


class _EluSizedAlpha(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, alpha=5.0 * x.size(0))


class _AddSizedAlpha(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, x, alpha=10 * x.size(0))


class _PoolSizedStride(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool1d(x, kernel_size=3, stride=x.size(0))


class _OutArgument(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = torch.zeros(1, 4)
        torch.mul(x, 5.0, out=c)
        return c


class _AliasWrite(nn.Module):
    """ravel and cpu return x itself or a view of it: writing through them writes h."""

    def __init__(self, alias: str) -> None:
        super().__init__()
        self.alias = alias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + 0.0
        (h.ravel() if self.alias == "ravel" else h.cpu()).mul_(5.0)
        return h


@pytest.mark.parametrize(
    ("module", "shape", "truth"),
    [
        (_NonzeroCount(), (1, 4), math.inf),
        (_EluSizedAlpha(), (1, 4), 3.3),
        (_AddSizedAlpha(), (1, 4), 11.0),
        (_PoolSizedStride(), (1, 1, 4), math.sqrt(2.0)),
        (_OutArgument(), (1, 4), 5.0),
        (_AliasWrite("ravel"), (1, 4), 5.0),
        (_AliasWrite("cpu"), (1, 4), 5.0),
    ],
    ids=[
        "nonzero count as index",
        "elu alpha from a size",
        "add alpha from a size",
        "pool stride from a size",
        "out= argument",
        "write through ravel",
        "write through cpu",
    ],
)
def test_torchscript_arguments_and_aliases_the_graph_computes_are_never_read_as_defaults(
    tmp_path: Path, module: nn.Module, shape: tuple[int, ...], truth: float
) -> None:
    """Each once got a bound below what the module attains (1.0 for a jump, for 5x writes, for alpha 11)."""
    path = tmp_path / "m.pt"
    torch.jit.script(module).save(str(path))
    bound = inspect(path, settings=Settings(lower=False, input_shape=(shape,))).bound
    assert bound.upper is None or bound.upper >= truth * (1 - 1e-9), bound.upper


class _AlwaysDropout(nn.Module):
    """Dropout asked for in every call: each call draws another mask, so two calls are two functions."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.l(x), 0.5, True)


def test_a_module_drawing_random_numbers_gets_no_bound_and_no_lower_bound(tmp_path: Path) -> None:
    """Its lower bound compared two masks (about 2000 against 2 per mask)."""
    x = torch.randn(1, 4)
    for kind in ("script", "export"):
        path = tmp_path / (f"{kind}.pt2" if kind == "export" else f"{kind}.pt")
        module = _AlwaysDropout().eval()
        if kind == "export":
            torch.export.save(torch.export.export(module, (x,)), str(path))
        else:
            torch.jit.script(module).save(str(path))
        report = inspect(path, settings=Settings(input_shape=((1, 4),) if kind != "export" else None))
        assert report.bound.upper is None and report.bound.lower is None, kind
        assert "draws random numbers" in report.bound.blocking[0]


def test_instance_norm_with_running_statistics_is_not_read_as_input_statistics(tmp_path: Path) -> None:
    """use_input_stats=False makes it the affine map w / sqrt(running_var + eps): a running variance
    near -eps gave 6.89 against a constant of 68.9."""
    torch.manual_seed(0)
    norm = nn.InstanceNorm1d(4, eps=1e-2, track_running_stats=True)
    with torch.no_grad():
        assert norm.running_var is not None
        norm.running_var.fill_(-0.99e-2)
    module = nn.Sequential(nn.Linear(4, 4), norm).eval()
    truth = float(torch.linalg.matrix_norm(module[0].weight.detach().double(), 2)) / math.sqrt(1e-4)
    path = tmp_path / "norm.pt"
    torch.jit.trace(module, torch.randn(1, 4, 4)).save(str(path))  # Linear on the last axis, the norm over axis 1
    bound = inspect(path, settings=Settings(lower=False, input_shape=((1, 4, 4),))).bound
    assert bound.upper is None or bound.upper >= truth * (1 - 1e-6)
