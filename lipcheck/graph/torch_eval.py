"""Run lipcheck's graph IR in torch, in float64 by default, with ONNX operator semantics.

The IR of an ONNX file evaluates itself here without onnxruntime: lower bounds and tight bounds
need the network's values at chosen inputs in a precision where rounding cannot move an
attained ratio. Constants (initializers, folded values) come from the IR; nothing from the file
is executed as code. An op this module does not implement raises :class:`Unsupported` naming
the node, so a caller can fall back or say why it has no number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from lipcheck.graph.ir import Graph, Node

Op = Callable[["Run", Node, list[Any]], Any]
_OPS: dict[str, Op] = {}


class Unsupported(Exception):
    """The graph holds an op (or an attribute value) this evaluator does not implement."""


def _load_ops() -> None:
    """Register the op implementations (they live in modules of their own)."""
    from lipcheck.graph import torch_ops, torch_ops_shape  # noqa: F401

    del torch_ops, torch_ops_shape


def op(*names: str) -> Callable[[Op], Op]:
    """Register an implementation of one or more ONNX ops."""

    def register(fn: Op) -> Op:
        for name in names:
            _OPS[name] = fn
        return fn

    return register


def supported(graph: Graph) -> list[str]:
    """The labels of nodes (subgraphs included) whose op this evaluator does not implement."""
    _load_ops()
    missing = []
    for node in graph.nodes:
        if node.op not in _OPS:
            missing.append(f"{node.label} ({node.op})")
        for body in node.subgraphs.values():
            missing.extend(supported(body))
    return missing


def evaluate(
    graph: Graph,
    inputs: Sequence[torch.Tensor],
    dtype: torch.dtype = torch.float64,
    cache: dict[str, Any] | None = None,
    peak: list[float] | None = None,
    smooth: float | None = None,
) -> list[torch.Tensor]:
    """The graph's outputs for ``inputs`` (one per graph input, in order), computed in ``dtype``.

    ``cache`` keeps the graph's constants as tensors between calls with the same graph and dtype;
    ``peak`` (one number) is raised to the largest 2-norm of any value the main graph computes;
    ``smooth`` (a sharpness β) computes a smoothed stand-in instead, every ReLU softplus(β x)/β
    (for a search that needs gradients of the Jacobian; never for a number reported).
    """
    _load_ops()
    run = Run(graph, dtype, {}, cache)
    run.smooth = smooth
    run.track = peak is not None
    for name, value in zip(graph.inputs, inputs):
        run.values[name] = value.to(dtype) if value.is_floating_point() else value
    outputs = run.outputs()
    if peak is not None:
        peak[0] = max(peak[0], run.peak)
    return outputs


class Run:
    def __init__(self, graph: Graph, dtype: torch.dtype, outer: dict[str, Any], cache: dict[str, Any] | None = None) -> None:
        self.graph, self.dtype = graph, dtype
        self.values: dict[str, Any] = dict(outer)
        self.cache = cache
        self.track, self.peak = False, 0.0
        self.smooth: float | None = None

    def _folded(self, node: Node) -> bool:
        """Whether every output of ``node`` is a constant lipcheck could fold (it is then read, not computed)."""
        try:
            for name in node.outputs:
                if name:
                    self.value(name)
        except Exception:  # too large to fold, or a constant folding cannot compute: the node computes it
            return False
        return True

    def value(self, name: str) -> Any:
        if not name:
            return None
        if name not in self.values:
            if name not in self.graph.constants:
                raise Unsupported(f"value {name!r} is neither computed nor stored")
            if self.cache is None:
                self.values[name] = self.tensor(self.graph.constants[name]())
            else:
                if name not in self.cache:
                    self.cache[name] = self.tensor(self.graph.constants[name]())
                self.values[name] = self.cache[name]
        return self.values[name]

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        array = np.asarray(array)
        if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
            # Straight into torch's memory: numpy's own large arrays ask for huge pages, whose first
            # touch can stall for a second on a model's worth of weights.
            out = torch.empty(array.shape, dtype=self.dtype)
            with np.errstate(over="ignore"):  # a double past float32's range becomes inf, as torch's cast makes it
                np.copyto(out.numpy(), array, casting="unsafe")
            return out
        if array.dtype.kind == "b":
            return torch.from_numpy(array.copy())
        return torch.from_numpy(array.astype(np.int64))

    def outputs(self) -> list[torch.Tensor]:
        for node in self.graph.nodes:
            if node.outputs and all(not name or name in self.graph.constants for name in node.outputs) and self._folded(node):
                continue  # folded as the file computes it (a cast to float16, a dequantized weight)
            fn = _OPS.get(node.op)
            if fn is None:
                raise Unsupported(f"{node.label} ({node.op}): lipcheck cannot evaluate this op")
            result = fn(self, node, [self.value(name) for name in node.inputs])
            results = result if isinstance(result, tuple) else (result,)
            for name, out in zip(node.outputs, results):
                if name:
                    self.values[name] = out
                    if self.track and isinstance(out, torch.Tensor) and out.is_floating_point():
                        self.peak = max(self.peak, float(torch.linalg.vector_norm(out)))
        return [self.value(name) for name in self.graph.outputs]


def ints(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def axis_of(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
