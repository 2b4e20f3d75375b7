"""Control flow and recurrence: If by its branches; Loop, Scan and recurrent layers are not followed.

An If whose condition is constant is bounded by its worst branch (or the branch a stored
condition picks), each branch walked with the enclosing graph's bounds for the values it reads; a
condition that depends on the input can switch branches, a jump no constant bounds. Loop and Scan
bodies are not followed: they are unbounded unless nothing they read depends on the input.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lipcheck.graph.rules import rule

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk


@rule("If")
def branches(walk: Walk, node: Node, ins: list[float]) -> tuple[float, ...] | float:
    """Per output, the worst bound over the branches the condition can take."""
    from lipcheck.graph.walk import Walk as _Walk

    if ins[0] > 0.0:
        return walk.unbounded(
            node, "its condition depends on the input, so the output can jump from one branch to the other: not continuous, no Lipschitz bound"
        )
    names = ["then_branch", "else_branch"]
    cond = walk.const(node.inputs[0])
    if cond is not None and cond.size == 1:
        names = ["then_branch" if bool(cond.reshape(())) else "else_branch"]
    worst = [0.0] * len(node.outputs)
    for name in names:
        body = node.subgraphs.get(name)
        if body is None or len(body.outputs) != len(node.outputs):
            return walk.unbounded(node, f"a {name} lipcheck could not read")
        found = _Walk(body, walk.uppers, walk.supplied, walk.fuse, parent=walk).walk()
        worst = [max(w, f) for w, f in zip(worst, found)]
    if any(math.isinf(w) for w in worst) and not any(label.startswith(f"{node.label}.") for label in walk.reasons):
        walk.unbounded(node, "a branch output depends on a value lipcheck cannot trace")
    return tuple(worst)


@rule("Loop", "Scan")
def loop(walk: Walk, node: Node, ins: list[float]) -> float:
    """Bodies are not followed; reached only when the node reads something input-dependent."""
    return walk.unbounded(node, f"lipcheck does not bound {node.op} bodies, and this one reads values that depend on the input")


@rule("LSTM", "GRU", "RNN", "com.microsoft.DynamicQuantizeLSTM")
def recurrent(walk: Walk, node: Node, ins: list[float]) -> float:
    """A recurrent layer: its weights are reported as layers, the recursion over time is not bounded."""
    return walk.unbounded(
        node,
        f"a recurrent layer ({node.op}) composes its cell once per time step; lipcheck "
        "reports its weights as layers but does not bound the recursion over time",
    )
