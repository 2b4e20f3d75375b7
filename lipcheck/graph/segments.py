"""Tight bounds for the chains inside a graph: runs of dense layers and slope-restricted activations
whose inner values nothing else reads, each bounded by certified LipSDP-Neuron multipliers.

A residual block x + W₂ φ(W₁ x + b₁) + b₂ holds such a run from x to W₂ φ(⋯) + b₂. The run is a
map F of its start value alone, so ‖F(u) − F(v)‖ ≤ L_F ‖u − v‖ and the graph walk may take
L_F · (the start value's bound) for its end value instead of the product of its layers (it keeps
the smaller of the two). The run is read exactly as a whole-graph chain is
(lipcheck.graph.tight.find_chain), except that it starts at any dense layer and ends after the
last layer (and its bias) that the run reaches before a value with several readers, a graph
output or a node that does not fit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lipcheck.graph.chains import LINEAR, Building, ChainReader, FoundChain
from lipcheck.graph.tight import budget_seconds

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.model import Model

# LipSDP's matrices grow with the hidden widths: wider runs stay with the product of their layers.
MAX_WIDTH = 1024
MAX_WEIGHT = 1 << 22
# Seconds for every run of one model together, times --effort.
TOTAL_SECONDS = 10.0


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
    deadline = time.perf_counter() + TOTAL_SECONDS * effort
    for index, segment in enumerate(segments):
        left = deadline - time.perf_counter()
        if left <= 0:
            notes.append(f"chain {segment.first}..{segment.last}: no time left for its tight bound (raise --effort)")
            continue
        budget = min(budget_seconds(segment.chain, effort), left / (len(segments) - index))
        chain = segment.chain
        result = certified_bound(Chain(chain.weights, chain.slopes, chain.scale), budget)
        if result is None:
            notes.append(f"chain {segment.first}..{segment.last}: no multipliers passed the float64 certificate")
            continue
        constants[segment.end] = (segment.start, result.bound)
        notes.append(f"chain {segment.first}..{segment.last} ({len(chain.weights)} layers): LipSDP-Neuron multipliers certify {result.bound:.6g}")
    return constants, notes
