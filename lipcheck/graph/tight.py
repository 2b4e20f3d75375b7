"""A tighter certified network bound for plain chains (lipcheck.graph.chains reads them out of the
graph): certified LipSDP-Neuron multipliers (lipcheck.graph.lipsdp), and lower bounds from a search
over the chain's own Jacobian (lipcheck.graph.lower_chain).
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.errors import first_line
from lipcheck.graph.chains import IDENTITY, ChainReader, FoundChain, find_chain
from lipcheck.graph.ir import Node

if TYPE_CHECKING:
    import torch

    from lipcheck.model import Model
    from lipcheck.report.data import BoundReport, Report
    from lipcheck.settings import Settings

METHOD = "tight (LipSDP-Neuron multipliers, certified)"
# Seconds of optimization per million multiply-adds of one pass through the chain, and the floor and cap.
_SECONDS_PER_MFLOP = 8.0
_MIN_SECONDS, _MAX_SECONDS = 1.0, 9.0  # the cap leaves the certificate inside 10 s
# Chains with explicit conv operators: one step costs seconds and gains little over the closed-form
# start, so at the default effort they keep the start (the same numbers on every run) and search
# for no chain lower bound; above it they get this many seconds per unit of effort beyond 1.
_EXPLICIT_SECONDS = 3.0

# (fraction of the budget spent, best bound so far): set by the CLI to draw the bound falling
TightProgress = Callable[[float, float], None]
_progress: contextvars.ContextVar[TightProgress | None] = contextvars.ContextVar("lipcheck_tight_progress", default=None)
# (chain segments done, how many, the one being certified): set by the CLI to draw them
SegmentProgress = Callable[[int, int, str], None]
segment_progress: contextvars.ContextVar[SegmentProgress | None] = contextvars.ContextVar("lipcheck_segment_progress", default=None)


@contextmanager
def reporting(callback: TightProgress, segments: SegmentProgress | None = None) -> Iterator[None]:
    """Send the tight bound's progress to ``callback``, and the chain segments' to ``segments``, within the block."""
    token = _progress.set(callback)
    segment_token = segment_progress.set(segments)
    try:
        yield
    finally:
        segment_progress.reset(segment_token)
        _progress.reset(token)


def budget_seconds(chain: FoundChain, effort: float = 1.0) -> float:
    """Optimization time for a chain: proportional to its size, within [1, 9] s, times ``effort``
    (for chains with explicit conv operators, none at the default effort)."""
    if chain.explicit:
        return max(0.0, effort - 1.0) * _EXPLICIT_SECONDS
    flops = sum(w.shape[0] * w.shape[1] for w in chain.weights) + sum(w.shape[0] ** 3 for w in chain.weights[:-1])
    return effort * min(_MAX_SECONDS, max(_MIN_SECONDS, _SECONDS_PER_MFLOP * flops / 1e6))


def tight_bound(model: Model, settings: Settings) -> tuple[float | None, str]:
    """The certified LipSDP-Neuron bound of a plain chain, or None with the reason there is none."""
    value, why, _ = _tight(model, settings)
    return value, why


def _tight(model: Model, settings: Settings) -> tuple[float | None, str, bool]:
    """tight_bound, and whether the graph is a chain at all (a chain without a bound is worth a note)."""
    try:
        found, why = find_chain(model)
    except Exception as exc:  # the tight bound only improves on the graph's: without it the report stands
        return None, f"the chain could not be read ({first_line(exc)})", True
    if found is None:
        return None, why, False
    try:
        value, why = _certified(model, settings, found)
    except Exception as exc:  # as above
        return None, f"the chain's bound failed ({first_line(exc)})", True
    return value, why, True


def _certified(model: Model, settings: Settings, found: FoundChain) -> tuple[float | None, str]:
    from lipcheck.graph.lipsdp import Chain, certified_bound

    if not all(bool(w.isfinite().all()) for w in found.weights):
        return None, "non-finite weights"
    if found.explicit or any(node.op == IDENTITY for node in found.activations):
        from lipcheck.graph.chain_check import reproduces

        const = ChainReader(model).const
        why = reproduces(model, found, lambda node: _torch_activation(node, const), settings.seed)  # type: ignore[arg-type]
        if why:
            return None, why
    effort = settings.effort
    started = time.perf_counter()
    result = certified_bound(Chain(found.weights, found.slopes, found.scale), budget_seconds(found, effort), _progress.get())
    if result is None:
        return None, f"no multipliers passed the float64 certificate ({time.perf_counter() - started:.1f} s)"
    return result.bound, ""


def apply_tight(model: Model, settings: Settings, bound: BoundReport) -> None:
    """Set ``bound.tight`` for a plain chain, and make it the network bound where it is below the graph's."""
    if bound.graph is None:
        return
    value, why, chained = _tight(model, settings)
    if value is None:
        if chained:
            bound.assumptions.append(f"tight: no LipSDP bound for this chain: {why}")
        return
    bound.tight = value
    if value < bound.graph:
        bound.upper, bound.method = value, METHOD
        bound.assumptions.append(
            "tight: the graph is a plain chain of linear layers (dense, or convs as explicit operators at their input size) and "
            "slope-restricted activations; LipSDP-Neuron multipliers certified in float64"
        )


def _torch_activation(node: Node, const: Callable[[str], np.ndarray | None]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The activation as a torch function, for the lower bound's search only."""
    import torch
    import torch.nn.functional as F

    a = node.attrs
    simple = {
        "Relu": torch.relu,
        "Tanh": torch.tanh,
        "Sigmoid": torch.sigmoid,
        "Softplus": F.softplus,
        "Softsign": F.softsign,
        "Silu": F.silu,
        "Mish": F.mish,
        "HardSwish": F.hardswish,
    }
    if node.op in simple:
        return simple[node.op]
    if node.op == IDENTITY:
        return lambda z: z
    if node.op == "LeakyRelu":
        return lambda z: F.leaky_relu(z, float(a.get("alpha", 0.01)))
    if node.op in ("Elu", "Celu"):
        return lambda z: F.elu(z, float(a.get("alpha", 1.0))) if node.op == "Elu" else F.celu(z, float(a.get("alpha", 1.0)))
    if node.op == "Gelu":
        approximate = a.get("approximate", "none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
        return lambda z: F.gelu(z, approximate=approximate)
    if node.op == "HardSigmoid":
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        return lambda z: torch.clamp(alpha * z + beta, 0.0, 1.0)
    if node.op == "PRelu":
        slope = const(node.inputs[1])
        return (lambda z: torch.where(z >= 0, z, z * torch.as_tensor(slope).reshape(-1))) if slope is not None else None
    if node.op == "Clip":
        lo = const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        hi = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        low = float(lo) if lo is not None else float(a.get("min", -math.inf))
        high = float(hi) if hi is not None else float(a.get("max", math.inf))
        return lambda z: torch.clamp(z, low, high)
    return None


def improve_lower(model: Model, path: object, report: Report, settings: Settings) -> None:
    """Raise ``report.bound.lower`` by a search over a plain chain's Jacobian, each ratio evaluated on
    the file's own function in float64 (lipcheck.graph.lower); leaves it as it is otherwise."""
    from pathlib import Path

    import torch

    from lipcheck.graph import lower, lower_chain

    graph = model.graph
    if graph is None:
        return
    # A chain through convs searches only above the default effort (budget_seconds): below it, its
    # explicit operators are not built a second time just to find there is nothing to do.
    convs = any(node.op == "Conv" and node.label in graph.layer_nodes for node in graph.nodes)
    found, _ = find_chain(model, explicit=settings.effort > 1.0 or not convs)
    if found is None or found.input_reordered:
        return
    declared = settings.input_shape[0] if settings.input_shape else graph.shapes.get(graph.inputs[0])
    if declared is None or not all(declared):
        return
    shape = tuple(int(d) for d in declared if d is not None)
    if math.prod(shape) != found.weights[0].shape[1]:
        return
    const = ChainReader(model).const
    maybe = [_torch_activation(node, const) for node in found.activations]
    funcs = [f for f in maybe if f is not None]
    if len(funcs) != len(maybe):
        return
    kinked = [node.op in ("Relu", "LeakyRelu", "PRelu") for node in found.activations]
    budget = 0.5 * budget_seconds(found, settings.effort)
    try:
        candidates = lower_chain.chain_directions(found.weights, found.biases[: len(found.weights)], funcs, settings.seed, budget, kinked=kinked)
    except (RuntimeError, ValueError):  # the search is optional: the generic lower bound stands
        return
    if not candidates:
        return
    if model.format == "onnx" and isinstance(path, (str, Path)):
        import onnx

        from lipcheck.graph.evaluate import Float64Model, node_count

        proto = model.source if model.source is not None else onnx.load(str(path))
        exact = Float64Model(proto, graph)  # graphs onnxruntime cannot run in double go to the IR in torch
        nodes = node_count(proto)

        def ratio(x: np.ndarray, y: np.ndarray) -> float:
            return lower.certified(exact, None, [x.reshape(shape)], [y.reshape(shape)], nodes)
    elif model.runnable is not None:
        outputs, nodes = lower.float64_outputs(model.runnable)

        def ratio(x: np.ndarray, y: np.ndarray) -> float:
            with torch.no_grad():
                return lower.certified_torch(outputs, (torch.from_numpy(x).reshape(shape),), (torch.from_numpy(y).reshape(shape),), nodes)
    else:
        return
    if found.offset is not None:  # the chain reads the input plus constants: search points move back
        offset, chain_ratio = found.offset, ratio

        def ratio(x: np.ndarray, y: np.ndarray) -> float:
            return chain_ratio(x - offset, y - offset)

    value = lower_chain.certified_pairs(ratio, candidates)
    if value > 0.0 and (report.bound.lower is None or value > report.bound.lower):
        report.bound.lower = value
