"""One internal representation of a computation graph, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

Constant = Callable[[], np.ndarray]


@dataclass(frozen=True)
class Node:
    """One operation: its type, value names in and out, attributes, and a unique label."""

    op: str
    label: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """Nodes in execution order, the model inputs and outputs, constant values and static shapes."""

    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    constants: dict[str, Constant]
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    layer_nodes: dict[str, int] = field(default_factory=dict)  # node label -> index into Model.layers
