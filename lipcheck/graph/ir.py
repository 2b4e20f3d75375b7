"""One internal representation of a computation graph, whatever file it came from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Constant = Callable[[], np.ndarray]


class NoGraph(Exception):
    """A file holds a graph lipcheck cannot read faithfully; the message says why (for the report)."""


class StatefulGraph(NoGraph):
    """A graph that changes its own state (buffers, attributes) when run: no function to bound or to sample."""


STATEFUL_NOTE = "no empirical lower bound: the model changes its own state or draws random numbers on every call, so two calls compare two functions"


@dataclass(frozen=True)
class Node:
    """One operation: its type, value names in and out, attributes, and a unique label.

    A control-flow node (If, Loop, Scan) holds its bodies in ``subgraphs`` (by attribute name);
    ``captures`` are the enclosing graphs' values those bodies read without naming them as
    inputs, nested bodies included: the node depends on them as on its inputs.
    """

    op: str
    label: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    subgraphs: dict[str, Graph] = field(default_factory=dict)
    captures: tuple[str, ...] = ()


@dataclass
class Graph:
    """Nodes in execution order, the model inputs and outputs, constant values and static shapes.

    For a subgraph, ``inputs`` are its formal parameters (a loop body's iteration number, state
    and scanned slices; none for an If branch), and names it does not define belong to an
    enclosing graph.
    """

    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    constants: dict[str, Constant]
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    layer_nodes: dict[str, int] = field(default_factory=dict)  # node label -> index into Model.layers
    # Labels of nodes that multiply an integer product back by scales already folded into a layer's weight.
    dequantize: set[str] = field(default_factory=set)
    # Whether values can lie beyond float32's range (a double anywhere in the file, or types unknown).
    wide: bool = True
