"""Constant folding: values no model input reaches are computed once, on demand, and become constants.

Exporters compute some constants in the graph (YOLO's stride tensor is ``Transpose(Concat(...))``
of stored values); the walk's rules need their values (a Mul by a constant is max|c| times). A
node folds when every input is a stored or folded constant; it is evaluated by ONNX's reference
evaluator the first time a rule asks for its value, and values above ``MAX_ELEMENTS`` entries
(or ops that draw random numbers, or bodies) are left unfolded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import AttributeProto, GraphProto, NodeProto

Constant = Callable[[], np.ndarray]
MAX_ELEMENTS = 1 << 22
_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
          "If", "Loop", "Scan", "DynamicQuantizeLinear"}


class _Folded:
    """One node's outputs, evaluated together the first time any is read."""

    def __init__(self, node: NodeProto, inputs: list[Constant | None], opsets: dict[str, int]) -> None:
        self.node, self.inputs, self.opsets = node, inputs, opsets
        self.values: list[np.ndarray] | None = None
        self.error: str | None = None

    def output(self, index: int) -> np.ndarray:
        if self.values is None and self.error is None:
            try:
                self.values = self._run()
            except Exception as exc:  # an op the reference evaluator cannot run: not folded
                self.error = f"{type(exc).__name__}: {exc}"
        if self.values is None:
            raise ValueError(f"cannot fold {self.node.op_type}: {self.error}")
        return self.values[index]

    def _run(self) -> list[np.ndarray]:
        from onnx.reference import ReferenceEvaluator

        args = []
        for get in self.inputs:
            value = get() if get is not None else None
            if value is not None and np.asarray(value).size > MAX_ELEMENTS:
                raise ValueError("input too large to fold")
            args.append(value)
        feeds = {name: np.asarray(a) for name, a in zip(self.node.input, args) if name and a is not None}
        evaluator = ReferenceEvaluator(self.node, opsets=self.opsets or None)
        values = [np.asarray(v) for v in evaluator.run(None, feeds)]
        if any(v.size > MAX_ELEMENTS for v in values):
            raise ValueError("output too large to fold")
        return values


def fold(graph: GraphProto, constants: dict[str, Constant], inputs: set[str], opsets: dict[str, int]) -> dict[str, Constant]:
    """Return ``constants`` with every value computed from constants alone added (lazily evaluated)."""
    out = dict(constants)
    for node in graph.node:
        if node.op_type in _NEVER or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            continue
        names = [name for name in node.input if name]
        if any(name in inputs or name not in out for name in names) or (not names and node.op_type != "Constant"):
            continue
        if all(name in out for name in node.output):
            continue
        folded = _Folded(node, [out.get(name) if name else None for name in node.input], opsets)
        for index, name in enumerate(node.output):
            if name and name not in out:
                out[name] = (lambda f=folded, i=index: f.output(i))
    return out
