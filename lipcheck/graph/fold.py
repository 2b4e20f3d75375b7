"""Constant folding: values no model input reaches are computed once, on demand, and become constants.

Exporters compute some constants in the graph (YOLO's stride and anchor tensors are built from
``Shape`` of feature maps by Gather, ConstantOfShape, Range, Expand, Concat and Transpose); the
walk's rules need their values (a Mul by a constant is max|c| times). ``Shape`` and ``Size`` of a
value whose static shape is fully known are constants (the bound then holds for that input
size, the one shape inference was given). Any other node folds when every input is a stored or
folded constant; it is evaluated by ONNX's reference evaluator the first time a rule asks for its
value, and values above ``MAX_ELEMENTS`` entries (or ops that draw random numbers, or bodies) are
left unfolded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from onnx import AttributeProto, GraphProto, NodeProto

Constant = Callable[[], np.ndarray]
MAX_ELEMENTS = 1 << 22
_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan", "DynamicQuantizeLinear"}


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


def _static_size(node: NodeProto, dims: tuple[int | None, ...]) -> np.ndarray:
    """The value of a Shape (with its start/end attributes) or Size node from a fully known shape."""
    if node.op_type == "Size":
        return np.asarray(math.prod(d or 0 for d in dims), dtype=np.int64)
    attrs = {a.name: a.i for a in node.attribute if a.type == AttributeProto.INT}
    rank = len(dims)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (min(max(k + rank if k < 0 else k, 0), rank) for k in (start, end))
    return np.asarray(dims[start:end], dtype=np.int64)


def fold(
    graph: GraphProto, constants: dict[str, Constant], inputs: set[str], opsets: dict[str, int], shapes: dict[str, tuple[int | None, ...]] | None = None
) -> dict[str, Constant]:
    """Return ``constants`` with every value computed from constants alone added (lazily evaluated).

    ``shapes`` are the static shapes of values (by shape inference): Shape and Size of a value
    whose dimensions are all known fold to those dimensions.
    """
    out = dict(constants)
    for node in graph.node:
        if node.op_type in _NEVER or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if node.op_type in ("Shape", "Size") and node.input and node.output[0] not in out:
            dims = (shapes or {}).get(node.input[0])
            if dims is not None and all(d is not None for d in dims):
                value = _static_size(node, dims)
                out[node.output[0]] = _constant(value)
            continue
        names = [name for name in node.input if name]
        if any(name in inputs or name not in out for name in names) or (not names and node.op_type != "Constant"):
            continue
        if all(name in out for name in node.output):
            continue
        folded = _Folded(node, [out.get(name) if name else None for name in node.input], opsets)
        for index, name in enumerate(node.output):
            if name and name not in out:
                out[name] = _output(folded, index)
    return out


def _constant(value: np.ndarray) -> Constant:
    return lambda: value


def _output(folded: _Folded, index: int) -> Constant:
    return lambda: folded.output(index)
