"""A sound Lipschitz bound that follows the graph (AutoLip).

Every value gets a bound on its Lipschitz constant with respect to the model input (the graph
inputs together, each 1-Lipschitz as a projection); constants get 0. Each op's rule lives in
:mod:`lipcheck.graph.rules` (composition multiplies, sums add, concatenation gives
sqrt(sum L^2), ...); this module is the engine that applies them in execution order. A node that
is not globally Lipschitz (a product of two activations, exp, an op lipcheck does not know) makes
every value downstream unbounded, and the graph bound is then None with the nodes named, the first
blocking node first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lipcheck.graph.ir import Graph, Node
from lipcheck.graph.rules import RULES
from lipcheck.graph.rules.shape import RANDOM
from lipcheck.product import root_sum_squares

# (layer index, per-output-channel scale) -> certified upper bound of the layer with its outputs scaled.
Fuse = Callable[[int, np.ndarray], "float | None"]


@dataclass
class GraphBound:
    """The bound per graph output and overall, or the nodes that prevent one."""

    per_output: dict[str, float]
    unbounded: list[str] = field(default_factory=list)
    supplied: list[str] = field(default_factory=list)  # user-supplied node constants that were used
    notes: list[str] = field(default_factory=list)  # what the bound assumes (rounding, loose constants)
    outputs: list[str] = field(default_factory=list)  # the graph's outputs in order, a name listed twice twice

    @property
    def value(self) -> float | None:
        """The bound of all outputs taken together, or None when some output is unbounded.

        ‖f(x) − f(y)‖² is the sum of the outputs' squared changes, so the root of the sum of their
        squared bounds bounds the whole map (one output: its own bound), rounded up.
        """
        if self.unbounded or not self.per_output:
            return None
        values = [self.per_output[name] for name in self.outputs if name in self.per_output] or list(self.per_output.values())
        return values[0] if len(values) == 1 else root_sum_squares(values) * (1 + 2.0**-48)


class Walk:
    """One pass over a graph (or an If branch, with its enclosing walk as ``parent``)."""

    def __init__(
        self,
        graph: Graph,
        layer_uppers: list[float | None],
        supplied: dict[str, float],
        fuse: Fuse | None = None,
        parent: Walk | None = None,
        segments: dict[str, tuple[str, float]] | None = None,
    ) -> None:
        self.graph = graph
        self.segments = segments or {}
        self.fuse = fuse
        self.parent = parent
        self.consumers: dict[str, int] = {}
        for node in graph.nodes:
            for name in (*node.inputs, *node.captures):
                self.consumers[name] = self.consumers.get(name, 0) + 1
        for name in graph.outputs:
            self.consumers[name] = self.consumers.get(name, 0) + 1
        self.uppers = layer_uppers
        self.supplied = supplied
        # A subgraph's walk shares what it finds with the walk of the graph around it.
        self.used: list[str] = parent.used if parent is not None else []
        self.reasons: dict[str, str] = parent.reasons if parent is not None else {}  # node label -> why unbounded
        self.notes: list[str] = parent.notes if parent is not None else []
        self.lip: dict[str, float] = {} if parent is not None else {name: 1.0 for name in graph.inputs}
        self.producer: dict[str, Node] = {out: node for node in graph.nodes for out in node.outputs}

    def of(self, name: str) -> float:
        """The Lipschitz bound of a value (0 for constants, inf for what the walk cannot see)."""
        if not name:
            return 0.0
        if name in self.lip:
            return self.lip[name]
        if name in self.graph.constants:
            return 0.0
        if self.parent is not None:
            return self.parent.of(name)  # a subgraph reads the enclosing graph's value
        return math.inf  # produced somewhere lipcheck cannot see

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant (stored or folded) as float64, or None when it is not one."""
        if name and name in self.graph.constants and self.lip.get(name, 0.0) == 0.0:
            try:
                return np.asarray(self.graph.constants[name](), dtype=np.float64)
            except (ValueError, TypeError):
                return None
        if name and name not in self.lip and self.parent is not None:
            return self.parent.const(name)
        return None

    def find(self, name: str) -> Node | None:
        """The node producing a value, in this graph or an enclosing one."""
        node = self.producer.get(name)
        if node is None and self.parent is not None and name not in self.lip:
            return self.parent.find(name)
        return node

    def find_label(self, label: str) -> Node | None:
        """The node with this label, in this graph or an enclosing one."""
        for node in self.graph.nodes:
            if node.label == label:
                return node
        return self.parent.find_label(label) if self.parent is not None else None

    def unbounded(self, node: Node, why: str) -> float:
        """Record why a node has no Lipschitz bound; return inf."""
        self.reasons[node.label] = f"{node.label} ({node.op}): {why}"
        return math.inf

    def forgive(self, labels: list[str]) -> None:
        """Drop the reasons of nodes whose unbounded values a recognised pattern no longer depends on."""
        for label in labels:
            self.reasons.pop(label, None)

    def note(self, text: str) -> None:
        """Add an assumption the bound depends on (once)."""
        if text not in self.notes:
            self.notes.append(text)

    def walk(self) -> list[float]:
        """Bound every node's outputs in order; return the graph outputs' bounds (inf: unbounded)."""
        for node in self.graph.nodes:
            ins = [self.of(name) for name in node.inputs]
            # Values a body reads from this graph are inputs of the node too: constant only if all are.
            captured = [self.of(name) for name in node.captures]
            value: float | tuple[float, ...]
            if all(v == 0.0 for v in ins + captured) and node.op not in RANDOM:
                value = 0.0
            elif node.label in self.supplied:
                # The user vouches that this node is C-Lipschitz in its inputs taken together.
                value = self.supplied[node.label] * (sum(ins) + sum(captured))
                self.used.append(node.label)
            else:
                value = self.node(node, ins)
            if isinstance(value, tuple):
                values = value
            elif value == 0.0 or not math.isfinite(value) or node.op in SHARED_OUTPUTS:
                values = (value,) * len(node.outputs)
            else:  # a rule bounds the first output: the others (indices, statistics) are not bounded by it
                values = (value,) + (math.inf,) * (len(node.outputs) - 1)
                if any(self.consumers.get(out) or out in self.graph.outputs for out in node.outputs[1:]):
                    self.unbounded(node, f"its output(s) after the first ({', '.join(node.outputs[1:])}) are not bounded by its rule")
            if any(math.isnan(v) for v in values):
                self.unbounded(node, "its bound is not a number (an unbounded input met a zero or an infinity)")
                values = tuple(math.inf if math.isnan(v) else v for v in values)
            for out, lip in zip(node.outputs, values):
                if out in self.segments:  # a chain's own certified constant, where it is smaller
                    start, constant = self.segments[out]
                    lip = min(lip, constant * self.of(start))
                self.lip[out] = lip
        return [self.of(name) for name in self.graph.outputs]

    def node(self, node: Node, ins: list[float]) -> float | tuple[float, ...]:
        """The bound of a node's outputs from its inputs' bounds, by the op's registered rule."""
        if node.label in self.graph.layer_nodes:
            from lipcheck.graph.rules.linear import layer

            return layer(self, node, ins)
        found = RULES.get(node.op)
        if found is None:
            return self.unbounded(node, "an op lipcheck does not know how to bound")
        return found.fn(self, node, ins)

    def run(self) -> GraphBound:
        """Walk the graph; the per-output bounds, or the blocking nodes in graph order."""
        # Every rule takes a few float64 operations per input, each rounding by at most u = 2^-53:
        # widening by 2Ku for K operations keeps the result above the exact value of the same
        # constants (Higham's gamma_K, with room for the rules' square roots and divisions).
        widen = 1.0 + 2.0 * _operations(self.graph) * 2.0**-53
        per_output = {name: value * widen for name, value in zip(self.graph.outputs, self.walk())}
        lost = [name for name, v in per_output.items() if not math.isfinite(v)]
        blocking = list(self.reasons.values()) if lost else []
        if lost and not blocking:
            blocking = ["an output depends on a value lipcheck cannot trace"]
        for name in lost:
            producer = self.producer.get(name)
            if producer is not None and producer.label not in self.reasons:
                blocking.append(f"{producer.label} ({producer.op}): computes output {name}, which depends on the nodes named before it")
        found = GraphBound({k: v for k, v in per_output.items() if math.isfinite(v)}, blocking, notes=list(self.notes), outputs=list(self.graph.outputs))
        found.supplied = [f"{label} ({self.supplied[label]!r}-Lipschitz, supplied by the user, not verified)" for label in self.used]
        return found


# Ops whose rule bounds every output (Split's outputs are all slices of its input).
SHARED_OUTPUTS = frozenset({"Split"})


def _operations(graph: Graph) -> int:
    """A count of the float operations the walk's rules take on this graph (subgraphs included)."""
    return sum(len(node.inputs) + len(node.captures) + 8 + sum(_operations(body) for body in node.subgraphs.values()) for node in graph.nodes)


def graph_bound(
    graph: Graph,
    layer_uppers: list[float | None],
    supplied: dict[str, float] | None = None,
    fuse: Fuse | None = None,
    segments: dict[str, tuple[str, float]] | None = None,
) -> GraphBound:
    """Bound every output's Lipschitz constant by walking the graph once.

    ``supplied`` maps node labels to constants the user vouches for (``--node-constant``);
    ``segments`` maps a chain's end value to its start value and certified constant
    (lipcheck.graph.segments).
    """
    return Walk(graph, layer_uppers, supplied or {}, fuse, segments=segments).run()
