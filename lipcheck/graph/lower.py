"""An empirical lower bound on the true Lipschitz constant: ratios ‖f(x)−f(y)‖/‖x−y‖ attained by
pairs of inputs, each ratio computed in float64.

Pairs are searched cheaply (onnxruntime in float32 for ONNX files, autograd power iteration for
torch modules), but the value reported is the ratio of the float64 function (lipcheck.graph.evaluate
for ONNX, a float64 copy of a torch module) at the best pairs found, minus a rounding slack. A ratio
of float32 outputs is never reported: float32 rounding of two nearby outputs can push their
difference well past the truth (a constant-24 chain reads 24.6 in float32).

The slack: float64 rounding moves each output by about a few ulps of the magnitudes computed along
the way, per node. The reported value subtracts, per output k,
max(nodes · 2⁻⁴⁰ · max(‖f_k(x)‖, ‖f_k(y)‖), 2⁻¹⁹ · (‖g_k(x)−f_k(x)‖ + ‖g_k(y)−f_k(y)‖)) from
‖f_k(x)−f_k(y)‖, where g is the float32 evaluation where there is one. The first term allows 4096
ulps of the output's size per node (a sum of 4096 terms rounded at worst, with no cancellation);
the second is 1024 times the float32 error scaled to float64 (2⁻²⁹), which grows when intermediate
values are much larger than the outputs. Neither is a proof of the rounding error, but each is
orders of magnitude above the float64 error seen in practice, and the slack is below 1e-9 of the
ratio for ordinary networks.

Several outputs: the change of all outputs together (the root of the sum of their squared
changes, each less its slack), matching the graph bound, which takes the outputs as one vector.
"""

from __future__ import annotations

import copy
import heapq
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lipcheck.graph import ort_run
from lipcheck.graph.ir import Graph
from lipcheck.product import root_sum_squares

if TYPE_CHECKING:
    import onnx
    import torch

_PAIRS = 16
_ATTACK_STEPS = 48
_JACOBIAN_MAX_INPUTS = 4096
_SLOW_JACOBIAN_MAX_INPUTS = 256  # when only the reference evaluator (numpy) runs the graph
_JACOBIAN_POINTS = 1
CHECKED = 4  # best pairs of the float32 search whose float64 ratio is computed
_AGREEMENT = 1e-2  # checks end once the next pair cannot beat the best certified ratio by more than this (relative)
_MAX_EXCESS = 1.05  # float32 search ratios above their float64 ones by more than this are not trusted to rank pairs
_BUDGET_PASSES = 60  # the search's time budget, in forward passes of the model (times --effort)
_MIN_SECONDS = 2.0  # ... but never less than this
_MIN_PAIRS = 4  # pairs tried whatever the budget
_PER_NODE = 2.0**-40
# The float64 evaluation must match the file's float32 run (onnxruntime) this closely, else the pair
# is not certified: an evaluator computing another function would report that function's ratio.
_VALUE_AGREEMENT = 1e-3
_CHANGE_AGREEMENT = 1e-2
_FLOAT32_NOISE = 1e-5
_FLOAT32_ERROR_SCALE = 2.0**-19
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}

Run = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def onnx_lower(path: Path, graph: Graph, seed: int, effort: float = 1.0, proto: onnx.ModelProto | None = None) -> float | None:
    """The largest certified float64 ratio found, or None when the input shapes are not fully known
    or not float.

    The search's cost scales with the model: it stops after about ``effort`` × max(2 s, the time of
    _BUDGET_PASSES forward passes), having tried at least _MIN_PAIRS pairs.

    ``proto``: the file already parsed, with every tensor in it (else the file is read again).

    Raises NoFloat64Evaluation when no runtime evaluates the graph in float64, and onnxruntime's
    errors when it cannot run the graph at all: a float32 ratio is never returned instead.
    """
    import onnx

    from lipcheck.graph.evaluate import Float64Model, node_count

    shapes = [graph.shapes.get(name) for name in graph.inputs]
    if not shapes or any(s is None or not all(s) for s in shapes):
        return None
    model = proto if proto is not None else onnx.load(str(path))
    exact = Float64Model(model, graph)
    search, dtypes = _float32_session(path)
    if search is None:
        search = exact
        dtypes = _declared_types(model, exact.input_names)
    if dtypes is None or any(d is None for d in dtypes):
        return None
    rng = np.random.default_rng(seed)
    nodes = node_count(model)
    float32 = search if search is not exact else None
    from lipcheck.graph.lower_ir import differentiable, ir_ascent

    if differentiable(graph):
        ascent = ir_ascent(graph, shapes, seed, effort)  # type: ignore[arg-type]
        # The ascent runs in float32; a float64 input takes its pairs exactly, in its own type.
        ascent = [(value, [x.astype(d) for x, d in zip(xs, dtypes)], [y.astype(d) for y, d in zip(ys, dtypes)]) for value, xs, ys in ascent]
        if ascent:
            return _attained(best_certified(ascent, lambda xs, ys: certified(exact, float32, xs, ys, nodes)))
    # The search takes a float32 grid wherever the file's inputs are float32.
    grid = [np.dtype(d) for d in dtypes]
    fast = search is not exact or exact.backend == "onnxruntime"
    found = _search(
        search,
        shapes,  # type: ignore[arg-type]
        grid,
        rng,
        _JACOBIAN_MAX_INPUTS if fast else _SLOW_JACOBIAN_MAX_INPUTS,
        effort,
    )
    if not found:
        return None
    return _attained(best_certified(found, lambda xs, ys: certified(exact, float32, xs, ys, nodes)))


class NoCertifiedPair(RuntimeError):
    """The search found pairs, but none keeps a positive ratio once checked in float64."""


def _attained(best: float) -> float:
    """The certified ratio, or an error saying why no pair gave one (a 0 would read as attained)."""
    if best > 0.0:
        return best
    raise NoCertifiedPair(
        "no pair the search found could be certified in float64 (lipcheck's float64 evaluation disagrees with onnxruntime, "
        "or every change was within the rounding slack)"
    )


Pairs = list[tuple[float, list[np.ndarray], list[np.ndarray]]]  # (the search's own ratio, xs, ys), best first


def best_certified(pairs: Sequence[tuple[float, Any, Any]], check: Callable[[Any, Any], float]) -> float:
    """The largest certified ratio ``check(xs, ys)`` over pairs given best first by their search ratio.

    The search's float32 ratios run high by a factor seen on the pairs checked so far (trusted up to
    _MAX_EXCESS); the checks stop once the next pair's search ratio, corrected by that factor, cannot
    beat the best certified ratio by more than _AGREEMENT.
    """
    best, excess = 0.0, 1.0
    for searched, xs, ys in pairs:
        if best > 0.0 and searched / excess <= best * (1.0 + _AGREEMENT):
            break
        value = check(xs, ys)
        if value > 0.0:
            excess = min(_MAX_EXCESS, max(excess, searched / value))
        best = max(best, value)
    return best


def _float32_session(path: Path) -> tuple[Run | None, list[type | None] | None]:
    """onnxruntime on the file itself (the fast search), or None when it refuses the graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # no float32 kernel for some op (old opsets): the float64 twin searches
        return None, None
    feeds = session.get_inputs()

    def run(xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float64) for o in ort_run.run(session, None, {f.name: x for f, x in zip(feeds, xs)})]

    return run, [_FLOAT_TYPES.get(f.type) for f in feeds]


def _declared_types(model: onnx.ModelProto, names: list[str]) -> list[type | None]:
    from onnx import TensorProto

    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
    kinds = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}
    return [kinds.get(declared.get(name, 0)) for name in names]


def _search(run: Run, shapes: list[tuple[int, ...]], grid: list[np.dtype], rng: np.random.Generator, jacobian_limit: int, effort: float = 1.0) -> Pairs:
    """The best pairs (x, y) by the search's own ratio, best first: a Jacobian direction, random pairs, an attack.

    Random pairs and attack steps stop once the time budget is spent (see :func:`onnx_lower`).
    """
    started = time.monotonic()
    deadline: list[float] = []  # set from the first evaluation's cost
    tried = [0]

    def spent() -> bool:
        return tried[0] >= _MIN_PAIRS and bool(deadline) and time.monotonic() > deadline[0]

    best: list[tuple[float, int, list[np.ndarray], list[np.ndarray]]] = []  # a min-heap of the top pairs
    counter = [0]

    def keep(value: float, xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
        counter[0] += 1
        item = (value, counter[0], xs, ys)
        if len(best) < CHECKED:
            heapq.heappush(best, item)
        elif value > best[0][0]:
            heapq.heapreplace(best, item)

    def ratio(xs: list[np.ndarray], us: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        ys = [(x + u).astype(g) for x, u, g in zip(xs, us, grid)]
        dx = _distance(xs, ys)
        if dx == 0.0:
            return 0.0, ys
        fx, fy = run(xs), run(ys)
        tried[0] += 1
        if not deadline:
            per_pass = (time.monotonic() - started) / 2
            deadline.append(started + effort * max(_MIN_SECONDS, _BUDGET_PASSES * per_pass))
        value = math.sqrt(math.fsum(float(np.linalg.norm(b - a)) ** 2 for a, b in zip(fx, fy))) / dx  # the outputs together
        return (value if math.isfinite(value) else 0.0), ys

    def point() -> list[np.ndarray]:
        return [rng.standard_normal(s).astype(g) for s, g in zip(shapes, grid)]

    size = sum(int(np.prod(s)) for s in shapes)
    if size <= jacobian_limit:
        # Small inputs: a finite-difference Jacobian shows the worst direction at a point.
        for _ in range(_JACOBIAN_POINTS):
            xs = point()
            direction = _top_direction(run, xs, grid, size)
            if direction is None:
                continue
            us, offset = [], 0
            for x in xs:
                us.append(direction[offset : offset + x.size].reshape(x.shape) * 1e-2 * np.sqrt(size))
                offset += x.size
            value, ys = ratio(xs, us)
            keep(value, xs, ys)
    for _ in range(_PAIRS):
        if spent():
            break
        xs = point()
        value, ys = ratio(xs, [rng.standard_normal(s) * 1e-2 for s in shapes])
        keep(value, xs, ys)
    if not best:
        return []
    top = max(best)
    xs, us = top[2], [y.astype(np.float64) - x.astype(np.float64) for x, y in zip(top[2], top[3])]
    current = top[0]
    for _ in range(_ATTACK_STEPS):
        if spent():
            break
        trial_x = [(x + rng.standard_normal(x.shape) * 0.1).astype(g) for x, g in zip(xs, grid)]
        trial_u = [u + rng.standard_normal(u.shape) * 3e-3 for u in us]
        value, ys = ratio(trial_x, trial_u)
        keep(value, trial_x, ys)
        if value > current:
            current, xs, us = value, trial_x, trial_u
    return [(value, xs, ys) for value, _, xs, ys in sorted(best, key=lambda item: item[0], reverse=True) if value > 0.0]


def _distance(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum((y.astype(np.float64) - x.astype(np.float64)) ** 2)) for x, y in zip(xs, ys)))


def _top_direction(run: Run, xs: list[np.ndarray], grid: list[np.dtype], size: int) -> np.ndarray | None:
    """The top right singular vector of a forward-difference Jacobian at xs (all outputs stacked)."""
    base = np.concatenate([o.ravel() for o in run(xs)])
    step = 1e-2
    columns = []
    flat = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    for i in range(size):
        bumped = flat.copy()
        bumped[i] += step
        parts, offset = [], 0
        for x, g in zip(xs, grid):
            parts.append(bumped[offset : offset + x.size].reshape(x.shape).astype(g))
            offset += x.size
        actual = float(np.concatenate([p.ravel() for p in parts]).astype(np.float64)[i] - flat[i])
        columns.append((np.concatenate([o.ravel() for o in run(parts)]) - base) / actual if actual else base * 0)
    jac = np.stack(columns, axis=1)
    if not np.all(np.isfinite(jac)):
        return None
    _, _, vh = np.linalg.svd(jac, full_matrices=False)
    return vh[0]


def certified(exact: Run, float32: Run | None, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], nodes: int) -> float:
    """The float64 ratio of the pair (x, y), its outputs taken together, less each output's rounding slack.

    The slack scales with the largest value computed on the way (where lipcheck's IR can evaluate
    the graph), not only with the outputs: a large intermediate value that cancels later leaves
    rounding errors of its own size in the outputs.
    """
    dx = _distance(xs, ys)
    if dx == 0.0:
        return 0.0
    peak = getattr(exact, "peak", None)
    fx = exact(xs)
    inner = peak(xs) if callable(peak) else 0.0
    fy = exact(ys)
    inner = max(inner, peak(ys)) if callable(peak) else 0.0
    gx, gy = (float32(xs), float32(ys)) if float32 is not None else (None, None)
    changes = []  # per output, a certified lower end of its change ‖f_k(y) − f_k(x)‖
    for k, (a, b) in enumerate(zip(fx, fy)):
        slack = nodes * _PER_NODE * max(float(np.linalg.norm(a)), float(np.linalg.norm(b)), inner)
        if gx is not None and gy is not None:
            if _disagree(a, b, gx[k], gy[k]):
                continue  # the float64 evaluation computes another function than the file's runtime: no ratio
            drift = float(np.linalg.norm(gx[k] - a)) + float(np.linalg.norm(gy[k] - b))
            slack = max(slack, _FLOAT32_ERROR_SCALE * drift)
        changes.append(float(np.linalg.norm(b - a)) - slack)
    return _together(changes) / dx * (1.0 - 2.0**-40)  # the norms, the sum and the division, rounded down


def _together(changes: Sequence[float]) -> float:
    """The change of all outputs together, as the network bound takes them (‖f(y) − f(x)‖² is the sum
    of the outputs' squared changes), from certified lower ends of each; non-positive ones add nothing."""
    return root_sum_squares([c for c in changes if math.isfinite(c) and c > 0.0])


def _disagree(a: np.ndarray, b: np.ndarray, ga: np.ndarray, gb: np.ndarray) -> bool:
    """Whether the float64 outputs (a, b) and the file's float32 ones (ga, gb) differ by more than
    float32 rounding explains: values by over _VALUE_AGREEMENT of their size, or the pair's change
    by over _CHANGE_AGREEMENT of itself plus the float32 noise of the values."""
    if a.shape != ga.shape or b.shape != gb.shape:
        return True
    size = float(np.linalg.norm(a)) + float(np.linalg.norm(b))
    if float(np.linalg.norm(ga - a)) + float(np.linalg.norm(gb - b)) > _VALUE_AGREEMENT * size + 1e-300:
        return True
    change = b - a
    noise = _FLOAT32_NOISE * (float(np.linalg.norm(ga)) + float(np.linalg.norm(gb)))
    return float(np.linalg.norm((gb - ga) - change)) > _CHANGE_AGREEMENT * float(np.linalg.norm(change)) + noise


def torch_lower(module: torch.nn.Module, input_shapes: tuple[tuple[int, ...], ...], seed: int, effort: float = 1.0) -> float | None:
    """The largest certified float64 ratio ‖f(x+hv)−f(x)‖/‖hv‖ at the pairs a float32 copy of the
    module finds by power iteration on its Jacobian (lipcheck.graph.lower_ir.jacobian_pairs), or
    None when every ratio is 0.

    The module runs as float32 and float64 copies in eval mode; the caller's module, its dtype and
    its training flag are left as they were. The value is an attained finite-difference ratio of the
    float64 copy less the rounding slack of the module docstring (one node per submodule); the
    checks stop as :func:`best_certified` says.
    """
    import torch

    from lipcheck.graph.lower_ir import jacobian_pairs

    outputs, nodes = float64_outputs(module)
    search, _ = float64_outputs(module, torch.float32)
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")

    def run(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [o.cpu() for o in search(*(x.to(device) for x in xs))]

    def check(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
        return certified_torch(outputs, tuple(x.to(device, torch.float64) for x in xs), tuple(y.to(device, torch.float64) for y in ys), nodes)

    with torch.no_grad():
        best = best_certified(jacobian_pairs(run, input_shapes, seed, effort), check)
    return best if best > 0.0 else None


def float64_outputs(module: torch.nn.Module, dtype: torch.dtype | None = None) -> tuple[Callable[..., list[torch.Tensor]], int]:
    """A float64 (or ``dtype``) copy of the module in eval mode as a function to flat outputs, and
    its node count for the rounding slack; the module itself is left as it is."""
    import torch

    with warnings.catch_warnings():
        # A scripted module's parameters can be non-leaf tensors; copying them warns about .grad, and
        # copying an exported program's module warns about torch's own pytree internals.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        twin = copy.deepcopy(module).to(dtype or torch.float64).eval()
    return ModuleOutputs(twin), max(8, sum(1 for _ in twin.modules()))


class ModuleOutputs:
    """A module's outputs as a flat list, recording the largest 2-norm of any submodule's output
    (``peak``, from the last call) where forward hooks can see them."""

    def __init__(self, twin: torch.nn.Module) -> None:
        self.twin, self.peak = twin, 0.0
        for sub in twin.modules():
            try:
                sub.register_forward_hook(self._record)
            except Exception:  # a scripted submodule takes no hooks: its inner values go unseen
                continue

    def _record(self, _module: object, _inputs: object, out: object) -> None:
        import torch

        for value in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                self.peak = max(self.peak, float(torch.linalg.vector_norm(value.detach())))

    def __call__(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        import torch

        self.peak = max((float(torch.linalg.vector_norm(x.detach())) for x in xs if x.is_floating_point()), default=0.0)
        out = self.twin(*xs)
        flat = list(out) if isinstance(out, (tuple, list)) else [out]
        return [o.reshape(-1) for o in flat if isinstance(o, torch.Tensor)]


def certified_torch(outputs: Callable[..., list[torch.Tensor]], xs: tuple[torch.Tensor, ...], ys: tuple[torch.Tensor, ...], nodes: int) -> float:
    """The float64 ratio of a torch pair, its outputs taken together, less each output's rounding slack
    (scaled, as in :func:`certified`, by the largest value seen on the way where ``outputs`` records one)."""
    dx = math.sqrt(sum(float(((y - x) ** 2).sum()) for x, y in zip(xs, ys)))
    if dx == 0.0:
        return 0.0
    fx = outputs(*xs)
    inner = float(getattr(outputs, "peak", 0.0))
    fy = outputs(*ys)
    inner = max(inner, float(getattr(outputs, "peak", 0.0)))
    changes = [float((b - a).norm()) - nodes * _PER_NODE * max(float(a.norm()), float(b.norm()), inner) for a, b in zip(fx, fy)]
    return _together(changes) / dx * (1.0 - 2.0**-40)  # the norms, the sum and the division, rounded down
