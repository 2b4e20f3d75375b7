"""Tight bounds for the chains inside a graph: runs of dense layers and slope-restricted activations
whose inner values nothing else reads, each bounded by certified LipSDP-Neuron multipliers.

A residual block x + W₂ φ(W₁ x + b₁) + b₂ holds such a run from x to W₂ φ(⋯) + b₂. The run is a
map F of its start value alone, so ‖F(u) − F(v)‖ ≤ L_F ‖u − v‖ and the graph walk may take
L_F · (the start value's bound) for its end value instead of the product of its layers (it keeps
the smaller of the two). The run is read exactly as a whole-graph chain is
(lipcheck.graph.tight.find_chain), except that it starts at any dense layer and ends after the
last layer (and its bias) that the run reaches before a value with several readers, a graph
output or a node that does not fit.

Runs of convs (conv, activation, conv, …) whose maps are too large for explicit operators are
bounded the same way with one multiplier per channel and one inequality per frequency of a
circular embedding (lipcheck.graph.lipsdp_fourier). lipcheck's reading of each conv of such a run
(its geometry, the padding made explicit) must give what the graph's own evaluator computes for
that node on a random input. At the default effort each conv run takes the closed-form
multipliers and the conv runs certified are chosen by counting their work, not by the clock, so
every run of lipcheck prints the same conv-run numbers; above it the optimizer takes a fixed number
of steps per --effort within an even share of the time left. (Runs of dense layers optimize within
a time budget.) A run of two
convs whose output is added to its own input (a residual block's identity skip) or to a conv of
it (a downsampling block's skip) is bounded together with the skip, as the map x ↦ S x + F(x)
from the run's start to the sum.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from lipcheck.graph.chains import LINEAR, Building, ChainReader, FoundChain, slope_range
from lipcheck.graph.tight import budget_seconds, segment_progress

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.lipsdp_fourier import ConvLink
    from lipcheck.model import Model

# LipSDP's matrices grow with the hidden widths: wider runs stay with the product of their layers.
MAX_WIDTH = 1024
# Complex entries of a conv run's symbols (every conv, half the frequencies).
MAX_SYMBOL_ENTRIES = 1 << 24
MAX_WEIGHT = 1 << 22
# Seconds for every run of one model together, times --effort.
TOTAL_SECONDS = 10.0
# Optimizer steps per frequency round of a conv run, times --effort above 1 (the default takes the
# closed-form multipliers).
CONV_STEPS = 10
# Float operations a conv run's certificate may take, times --effort (about two seconds on one core).
CONV_FLOPS = 2e10
# Work the conv runs' certificates of one model may take together, times --effort (about ten
# seconds; the cheapest runs first): counted, not timed, so that the runs certified are the same on
# every machine. A run's work is its factorizations' float operations plus ENTRY_WORK per complex
# entry of its symbols (building, screening and checking each frequency's blocks).
TOTAL_CONV_WORK = 1.8e11
ENTRY_WORK = 2500.0


@dataclass
class Segment:
    """A run from the value ``start`` to the value ``end`` (node labels ``first``..``last``)."""

    start: str
    end: str
    first: str
    last: str
    chain: FoundChain


def find_segments(model: Model) -> list[Segment]:
    """Every maximal run of two or more dense layers in the graph, in graph order, none overlapping."""
    graph = model.graph
    if graph is None:
        return []
    reader = ChainReader(model)
    taken: set[str] = set()
    found: list[Segment] = []
    for node in graph.nodes:
        if node.label in taken or node.label not in graph.layer_nodes or node.op not in LINEAR:
            continue
        data = [name for name in node.inputs if name in reader.live]
        if len(data) != 1 or node.inputs[0] != data[0]:
            continue
        chain, value, current = Building(), data[0], node
        labels: list[str] = []
        best: tuple[FoundChain, str, list[str]] | None = None
        while not _too_large(model, current) and not reader.step(chain, current, value):
            labels.append(current.label)
            value = current.outputs[0]
            if chain.pending is None and len(chain.weights) >= 2:
                best = (chain.found(), value, list(labels))
            readers = reader.consumers.get(value, [])
            if len(readers) != 1 or value in graph.outputs or readers[0].subgraphs:
                break
            current = readers[0]
        if best is not None:
            run, end, inside = best
            found.append(Segment(data[0], end, inside[0], inside[-1], run))
            taken.update(inside)
    return found


@dataclass
class ConvRun:
    """A run of convs from the value ``start`` to the value ``end`` (node labels ``first``..``last``).

    Its links carry each conv's weight shape only (on torch's meta device) until ``load_run``.
    """

    start: str
    end: str
    first: str
    last: str
    nodes: list[Node]
    links: list[ConvLink]
    slopes: list[tuple[float, float]]
    skip: bool = False  # ``end`` is start + the last conv's output: the run is x + F(x)
    skip_node: Node | None = None  # or ``end`` is this conv of start (then a batch norm, maybe) + F(start)
    skip_link: ConvLink | None = None


def find_conv_runs(model: Model, reader: ChainReader | None = None) -> list[ConvRun]:
    """Every maximal run of two or more convs joined by slope-restricted activations, in graph
    order, read from the graph's shapes (no weight is loaded)."""
    graph = model.graph
    if graph is None:
        return []
    reader = reader or ChainReader(model)
    producers = {out: node for node in graph.nodes for out in node.outputs}
    taken: set[str] = set()
    found: list[ConvRun] = []
    for node in graph.nodes:
        if node.label in taken or node.op != "Conv" or node.label not in graph.layer_nodes:
            continue
        data = [name for name in node.inputs if name in reader.live]
        if len(data) != 1 or node.inputs[0] != data[0]:
            continue
        nodes: list[Node] = []
        links: list[ConvLink] = []
        slopes: list[tuple[float, float]] = []
        best: ConvRun | None = None
        value, current = data[0], node
        while True:
            link = _shaped_link(model, reader, current, value)
            if link is None or (links and any(s != 1 for s in link.geometry.stride)):
                break
            nodes.append(current)
            value = current.outputs[0]
            norm = _only_reader(reader, value)
            folded = _batch_norm_scale(reader, norm, value) if norm is not None and norm.op == "BatchNormalization" else None
            if folded is not None and len(folded) == link.weight.shape[0]:
                assert norm is not None
                link = replace(link, scale=folded)
                value, last = norm.outputs[0], norm.label
            else:
                last = current.label
            links.append(link)
            if len(links) >= 2:
                best = ConvRun(data[0], value, nodes[0].label, last, list(nodes), list(links), list(slopes))
            step = _activation(reader, value)
            if step is None:
                break
            slope, activated = step
            following = _only_reader(reader, activated)
            if following is None or following.op != "Conv" or following.label not in graph.layer_nodes:
                break
            slopes.append(slope)
            value, current = activated, following
        if best is not None:
            found.append(_with_skip(model, reader, producers, best))
            taken.update(n.label for n in best.nodes)
    return found


def _with_skip(model: Model, reader: ChainReader, producers: dict[str, Node], run: ConvRun) -> ConvRun:
    """The run extended to the Add that sums it with its own input (a residual block's identity
    skip) or with a conv of its input (a downsampling block's skip, a batch norm after it folded),
    where there is one: the sum is then bounded as one map of the run's input."""
    from lipcheck.graph.lipsdp_fourier import conv_skip, identity_skip

    add = _only_reader(reader, run.end)
    if add is None or add.op != "Add" or len(add.inputs) != 2 or run.end not in add.inputs or run.start == run.end:
        return run
    other = add.inputs[1] if add.inputs[0] == run.end else add.inputs[0]
    shapes = reader.graph.shapes
    shape = shapes.get(run.end)
    if other == run.end or shape is None or shapes.get(other) != shape or shapes.get(add.outputs[0]) != shape:
        return run
    if other == run.start:
        return replace(run, end=add.outputs[0], last=add.label, skip=True) if identity_skip(run.links) else run
    conv, scale = producers.get(other), None
    if conv is not None and conv.op == "BatchNormalization" and conv.inputs and _only_reader(reader, conv.inputs[0]) is conv:
        scale = _batch_norm_scale(reader, conv, conv.inputs[0])
        conv = producers.get(conv.inputs[0]) if scale is not None else None
    if conv is None or conv.op != "Conv" or conv.label not in reader.graph.layer_nodes or len(conv.outputs) != 1:
        return run
    link = _shaped_link(model, reader, conv, run.start)
    if link is None or (scale is not None and len(scale) != link.weight.shape[0]):
        return run
    link = replace(link, scale=scale)
    if not conv_skip(run.links, link):
        return run
    return replace(run, end=add.outputs[0], last=add.label, skip_node=conv, skip_link=link)


def _batch_norm_scale(reader: ChainReader, node: Node, value: str) -> tuple[float, ...] | None:
    """scale / sqrt(var + eps) per channel of an inference-mode batch norm of ``value`` with stored
    parameters (it then scales the conv before it), or None."""
    import numpy as np

    if len(node.inputs) != 5 or node.inputs[0] != value or int(node.attrs.get("training_mode", 0)) != 0:
        return None
    scale, var = reader.const(node.inputs[1]), reader.const(node.inputs[4])
    if scale is None or var is None or scale.ndim != 1 or scale.shape != var.shape:
        return None
    if reader.const(node.inputs[2]) is None or reader.const(node.inputs[3]) is None:
        return None
    eps = float(node.attrs.get("epsilon", 1e-5))
    with np.errstate(all="ignore"):
        shifted = np.asarray(var + eps)
        factor = scale / np.sqrt(shifted)
    if not bool(np.isfinite(factor).all()) or not bool(np.all(shifted > 0)):
        return None
    return tuple(float(f) for f in factor)


def _activation(reader: ChainReader, value: str) -> tuple[tuple[float, float], str] | None:
    """The slope range and output of the activation applied to ``value``: one node, or SiLU
    written as value * Sigmoid(value) (two nodes); None where ``value`` has no such reader alone."""
    from lipcheck.graph.chains import _silu_range

    single = _only_reader(reader, value)
    if single is not None:
        if single.label in reader.graph.layer_nodes or single.op == "PRelu":
            return None
        slope = slope_range(single, reader.const)
        if slope is None or [n for n in single.inputs if n in reader.live] != [value] or single.inputs[0] != value:
            return None
        return slope, single.outputs[0]
    readers = reader.consumers.get(value, [])
    if len(readers) != 2 or value in reader.graph.outputs:
        return None
    gate = next((node for node in readers if node.op == "Sigmoid"), None)
    product = next((node for node in readers if node.op == "Mul"), None)
    if gate is None or product is None or list(gate.inputs) != [value] or len(gate.outputs) != 1:
        return None
    if _only_reader(reader, gate.outputs[0]) is not product or sorted(product.inputs) != sorted([value, gate.outputs[0]]):
        return None
    if len(product.outputs) != 1 or product.subgraphs or gate.subgraphs:
        return None
    return _silu_range(), product.outputs[0]


def _only_reader(reader: ChainReader, value: str) -> Node | None:
    """The one node reading ``value`` (and none of its other outputs in use), or None."""
    readers = reader.consumers.get(value, [])
    if len(readers) != 1 or value in reader.graph.outputs or readers[0].subgraphs:
        return None
    node = readers[0]
    if any(reader.consumers.get(name) or name in reader.graph.outputs for name in node.outputs[1:]):
        return None
    return node


def _shaped_link(model: Model, reader: ChainReader, node: Node, value: str) -> ConvLink | None:
    """The conv ``node`` reading ``value`` as a link of a run, with its weight's shape only; None
    where it does not fit."""
    import torch

    from lipcheck.graph.lipsdp_fourier import ConvLink
    from lipcheck.spectral.conv import resolve

    graph = reader.graph
    data = [name for name in node.inputs if name in reader.live]
    if data != [value] or node.inputs[0] != value:
        return None
    layer = model.layers[graph.layer_nodes[node.label]]
    shape = graph.shapes.get(value)
    if not layer.is_conv or layer.is_transposed or layer.geometry is None or shape is None or len(shape) < 3:
        return None
    if not all(isinstance(d, int) and d > 0 for d in shape[1:]) or len(layer.shape) != len(shape) or _too_large(model, node):
        return None
    spatial = tuple(int(d) for d in shape[2:])  # type: ignore[arg-type]
    shaped = torch.empty(layer.shape, device="meta")
    try:
        geometry = resolve(shaped, layer.geometry, spatial, False)
    except ValueError:
        return None
    if geometry.padding_mode != "zeros" or shape[1] != layer.shape[1] * geometry.groups:
        return None
    return ConvLink(shaped, geometry, spatial)


def load_run(model: Model, run: ConvRun, reader: ChainReader | None = None) -> tuple[list[ConvLink], ConvLink | None] | str:
    """The run's links and its skip conv's with their weights in float64, or why not: each conv's
    geometry as read must give what the graph's evaluator computes for its node (the same weight),
    on a random sample of its input's size."""
    reader = reader or ChainReader(model)
    links = []
    for node, link in zip(run.nodes, run.links):
        loaded = _loaded(model, reader, node, link)
        if isinstance(loaded, str):
            return loaded
        links.append(loaded)
    if run.skip_node is None or run.skip_link is None:
        return links, None
    skip = _loaded(model, reader, run.skip_node, run.skip_link)
    return skip if isinstance(skip, str) else (links, skip)


def _loaded(model: Model, reader: ChainReader, node: Node, link: ConvLink) -> ConvLink | str:
    """``link`` with the conv node's weight, checked against the node (see load_run)."""
    import torch

    from lipcheck.graph.torch_eval import Unsupported
    from lipcheck.graph.torch_ops import _conv
    from lipcheck.spectral.conv import _conv_fn

    graph = model.graph
    assert graph is not None
    layer = model.layers[graph.layer_nodes[node.label]]
    weight = layer.load().to(torch.float64)
    if tuple(weight.shape) != tuple(link.weight.shape) or not bool(weight.isfinite().all()):
        return f"{node.label}: its weight is not finite"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, weight.shape[1] * link.geometry.groups, *link.spatial, generator=generator, dtype=torch.float64)
    try:
        with torch.no_grad():
            mine = _conv_fn(weight, link.geometry, False)(x)
            theirs = _conv(None, reader._with_geometry(node, layer), [x, weight])  # type: ignore[arg-type]
    except (RuntimeError, ValueError, Unsupported) as exc:
        return f"{node.label} could not be applied to a sample ({exc})"
    size = float(theirs.abs().max()) if theirs.numel() else 0.0
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-9, atol=1e-12 * size):
        return f"{node.label}: lipcheck's reading of this conv does not reproduce the file's"
    return replace(link, weight=weight)


def _too_large(model: Model, node: Node) -> bool:
    """A layer whose weight LipSDP could not take in its budget (it is not even loaded)."""
    graph = model.graph
    assert graph is not None
    index = graph.layer_nodes.get(node.label)
    return index is not None and math.prod(model.layers[index].shape) > MAX_WEIGHT


def segment_constants(model: Model, effort: float = 1.0) -> tuple[dict[str, tuple[str, float]], list[str]]:
    """Certified constants of the graph's runs: {end value: (start value, L)}, and one note per run."""
    from lipcheck.graph.lipsdp import Chain, certified_bound

    constants: dict[str, tuple[str, float]] = {}
    notes: list[str] = []
    segments = [s for s in find_segments(model) if max(w.shape[0] for w in s.chain.weights[:-1]) <= MAX_WIDTH]
    segments = [s for s in segments if all(bool(w.isfinite().all()) for w in s.chain.weights)]
    reader = ChainReader(model)
    runs = find_conv_runs(model, reader)
    deadline = time.perf_counter() + TOTAL_SECONDS * effort
    report = segment_progress.get()
    total = len(segments) + len(runs)
    for index, segment in enumerate(segments):
        if report is not None:
            report(index, total, f"{segment.first}..{segment.last}")
        left = deadline - time.perf_counter()
        if left <= 0:
            notes.append(f"chain {segment.first}..{segment.last}: no time left for its tight bound (raise --effort)")
            continue
        budget = min(budget_seconds(segment.chain, effort), left / (len(segments) + len(runs) - index))
        chain = segment.chain
        result = certified_bound(Chain(chain.weights, chain.slopes, chain.scale), budget)
        if result is None:
            notes.append(f"chain {segment.first}..{segment.last}: no multipliers passed the float64 certificate")
            continue
        constants[segment.end] = (segment.start, result.bound)
        notes.append(f"chain {segment.first}..{segment.last} ({len(chain.weights)} layers): LipSDP-Neuron multipliers certify {result.bound:.6g}")
    work = [_work(run, effort) for run in runs]
    funded = _funded_runs(work, effort)
    untried = [run for run, w in zip(runs, work) if w == math.inf]
    if untried:
        notes.append(_untried_note(untried, effort))
    for index, run in enumerate(runs):
        if report is not None:
            report(len(segments) + index, total, f"{run.first}..{run.last}")
        # An even share of the time left, so that every run gets its optimizer steps, not only the first.
        share = max(0.0, deadline - time.perf_counter()) / (len(runs) - index)
        note = "" if work[index] == math.inf else _conv_run(model, reader, run, effort, index in funded, share, constants)
        if note:
            notes.append(note)
    return constants, notes


def _work(run: ConvRun, effort: float) -> float:
    """A run's certificate work (float operations of its factorizations plus ENTRY_WORK per symbol
    entry), or inf where it is not tried at this effort (no symbol, too large, too costly)."""
    from lipcheck.graph.lipsdp_fourier import cost

    entries, flops = cost(run.links, run.skip_link)
    if not _symbols_fit(entries) or flops > CONV_FLOPS * effort:
        return math.inf
    return flops + ENTRY_WORK * entries


def _symbols_fit(entries: int) -> bool:
    """Whether a run with this many symbol entries can be certified at all (it has a circular
    symbol, within MAX_SYMBOL_ENTRIES)."""
    return 0 < entries <= MAX_SYMBOL_ENTRIES


def needed_effort(run: ConvRun) -> float | None:
    """The --effort at which the run's certificate fits a run's and the model's budgets, or None
    where no effort does (no circular symbol, or symbols past MAX_SYMBOL_ENTRIES)."""
    from lipcheck.graph.lipsdp_fourier import cost

    entries, flops = cost(run.links, run.skip_link)
    return max(flops / CONV_FLOPS, (flops + ENTRY_WORK * entries) / TOTAL_CONV_WORK) if _symbols_fit(entries) else None


def _untried_note(untried: list[ConvRun], effort: float) -> str:
    """One note for the conv runs no certificate is tried on at this effort: which, and what would change that."""
    from lipcheck.graph.lipsdp_fourier import cost

    efforts = [e for e in (needed_effort(run) for run in untried) if e is not None]
    named = f"{untried[0].first}..{untried[0].last}" + (f" and {len(untried) - 1} more" if len(untried) > 1 else "")
    what = "conv chain" if len(untried) == 1 else f"{len(untried)} conv chains"
    if efforts:
        why = f"too costly at --effort {effort:g} (the cheapest needs --effort {math.ceil(min(efforts) * 10) / 10:g} or more)"
    else:
        # No effort helps any of them: each has no symbol at all or one too large.
        flat = sum(cost(run.links, run.skip_link)[0] == 0 for run in untried)
        reasons = []
        if flat:
            reasons.append(
                "no circular embedding to certify them on" if flat == len(untried) else f"{flat} {'has' if flat == 1 else 'have'} no circular embedding"
            )
        if flat < len(untried):
            reasons.append("their per-frequency symbols are larger than a tight bound may hold in memory at any effort")
        why = "; ".join(reasons)
    return f"{what} ({named}): no tight bound, the graph's per-layer bounds stand; {why}"


def _funded_runs(work: list[float], effort: float) -> set[int]:
    """The runs whose work fits this effort's budget together, cheapest first (counted, not timed:
    the same runs on every machine)."""
    funded, spent = set(), 0.0
    for index in sorted(range(len(work)), key=lambda i: work[i]):
        if spent + work[index] <= TOTAL_CONV_WORK * effort:
            funded.add(index)
            spent += work[index]
    return funded


def _conv_run(model: Model, reader: ChainReader, run: ConvRun, effort: float, funded: bool, share: float, constants: dict[str, tuple[str, float]]) -> str:
    """Certify one conv run into ``constants`` (its optimizer within ``share`` seconds); the note that
    says what it got."""
    from lipcheck.graph.lipsdp_fourier import certified_run_bound

    name = f"conv chain {run.first}..{run.last}"
    if not funded:
        return f"{name}: past this effort's budget for conv chains (raise --effort)"
    loaded = load_run(model, run, reader)
    if isinstance(loaded, str):
        return f"{name}: no tight bound ({loaded})"
    links, skip_conv = loaded
    try:
        steps = round(CONV_STEPS * max(0.0, effort - 1.0))
        result = certified_run_bound(links, run.slopes, max_iter=steps, budget_s=share, skip=run.skip, skip_conv=skip_conv)
    except (ArithmeticError, RuntimeError, ValueError) as exc:
        return f"{name}: no tight bound ({exc})"
    if result is None:
        return f"{name}: no multipliers passed the float64 certificate"
    constants[run.end] = (run.start, result.bound)
    what = f"{len(links)} convs"
    if run.skip:
        what += " and the identity skip around them"
    elif run.skip_node is not None:
        what += f" and the skip conv {run.skip_node.label} beside them"
    return (
        f"{name} ({what}): LipSDP-Neuron with one multiplier per channel, certified at each of "
        f"{result.frequencies} frequencies of a circular embedding, gives {result.bound:.6g}"
    )
