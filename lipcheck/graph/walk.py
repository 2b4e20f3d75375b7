"""A sound Lipschitz bound that follows the graph (AutoLip; design.md §2.5).

Every value gets a bound on its Lipschitz constant with respect to the model input (the graph
inputs together, each 1-Lipschitz as a projection); constants get 0. Composition multiplies, sums
add, concatenation gives sqrt(sum L^2). A node that is not globally Lipschitz (a product of two
activations, LayerNorm, exp, an op lipcheck does not know) makes every value downstream unbounded,
and the graph bound is then None with the nodes named.

Control flow: an If whose condition is constant is bounded by its worst branch (or the branch a
stored condition picks), each branch walked with the enclosing graph's bounds for the values it
reads; a condition that depends on the input can switch branches, a jump no constant bounds.
Loop and Scan bodies are not followed: they are unbounded unless nothing they read (inputs and
captured outer values) depends on the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lipcheck.graph.ir import Graph, Node

# (layer index, per-output-channel scale) -> certified upper bound of the layer with its outputs scaled.
Fuse = Callable[[int, np.ndarray], "float | None"]

# max |f'| of elementwise activations with no parameters (design.md §2.5).
_FIXED = {"Relu": 1.0, "Tanh": 1.0, "Sigmoid": 0.25, "Softplus": 1.0, "Abs": 1.0, "Softsign": 1.0,
          "Gelu": 1.1289, "Silu": 1.0998, "Mish": 1.0885, "HardSwish": 1.5, "Clip": 1.0, "Softmax": 0.5, "Erf": 2 / math.sqrt(math.pi)}
# Ops that move, select or re-shape entries without changing any value (norm <= 1).
_MOVES = {"Identity", "Dropout", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Cast",
          "CastLike", "Split", "GlobalMaxPool", "DepthToSpace", "SpaceToDepth", "Neg", "ReduceMax", "ReduceMin"}
# ONNX TensorProto float types: FLOAT, FLOAT16, DOUBLE, BFLOAT16 (and the float8 kinds).
_FLOAT_TYPES = {1, 10, 11, 16, 17, 18, 19, 20}
# Ops whose outputs do not depend continuously on activations (shapes, sizes): constant, L = 0.
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "EyeLike", "NonZero"}
# Ops that are not globally Lipschitz, with the reason given to the user.
_UNBOUNDED = {
    "LayerNormalization": "LayerNorm is not globally Lipschitz (its constant grows like max|γ|/√eps)",
    "GroupNormalization": "GroupNorm is not globally Lipschitz", "InstanceNormalization": "InstanceNorm is not globally Lipschitz",
    "Exp": "exp is not globally Lipschitz", "Log": "log is not globally Lipschitz", "Sqrt": "sqrt is not globally Lipschitz",
    "Pow": "pow is not globally Lipschitz", "Reciprocal": "1/x is not globally Lipschitz",
    "LpNormalization": "normalization by the input's norm is not globally Lipschitz",
}


@dataclass
class GraphBound:
    """The bound per graph output and overall, or the nodes that prevent one."""

    per_output: dict[str, float]
    unbounded: list[str] = field(default_factory=list)
    supplied: list[str] = field(default_factory=list)  # user-supplied node constants that were used

    @property
    def value(self) -> float | None:
        """The largest output bound, or None when some output is unbounded."""
        if self.unbounded or not self.per_output:
            return None
        return max(self.per_output.values())


class _Walk:
    def __init__(self, graph: Graph, layer_uppers: list[float | None], supplied: dict[str, float],
                 fuse: Fuse | None = None, parent: _Walk | None = None) -> None:
        self.graph = graph
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
        self.lip: dict[str, float] = {} if parent is not None else {name: 1.0 for name in graph.inputs}
        self.producer: dict[str, Node] = {out: node for node in graph.nodes for out in node.outputs}

    def of(self, name: str) -> float:
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
        if name and name in self.graph.constants and self.lip.get(name, 0.0) == 0.0:
            try:
                return np.asarray(self.graph.constants[name](), dtype=np.float64)
            except (ValueError, TypeError):
                return None
        if name and name not in self.lip and self.parent is not None:
            return self.parent.const(name)
        return None

    def unbounded(self, node: Node, why: str) -> float:
        self.reasons[node.label] = f"{node.label} ({node.op}): {why}"
        return math.inf

    def walk(self) -> list[float]:
        """Bound every node's outputs in order; return the graph outputs' bounds (inf: unbounded)."""
        for node in self.graph.nodes:
            ins = [self.of(name) for name in node.inputs]
            # Values a body reads from this graph are inputs of the node too: constant only if all are.
            captured = [self.of(name) for name in node.captures]
            value: float | tuple[float, ...]
            if all(v == 0.0 for v in ins + captured) or node.op in _SHAPE_OPS:
                value = 0.0
            elif node.label in self.supplied:
                # The user vouches that this node is C-Lipschitz in its inputs taken together.
                value = self.supplied[node.label] * (sum(ins) + sum(captured))
                self.used.append(node.label)
            else:
                value = self.node(node, ins)
            values = value if isinstance(value, tuple) else (value,) * len(node.outputs)
            for out, lip in zip(node.outputs, values):
                self.lip[out] = lip
        return [self.of(name) for name in self.graph.outputs]

    def run(self) -> GraphBound:
        per_output = dict(zip(self.graph.outputs, self.walk()))
        blocking = sorted(self.reasons.values()) if any(math.isinf(v) for v in per_output.values()) else []
        if any(math.isinf(v) for v in per_output.values()) and not blocking:
            blocking = ["an output depends on a value lipcheck cannot trace"]
        found = GraphBound({k: v for k, v in per_output.items() if math.isfinite(v)}, blocking)
        found.supplied = [f"{label} ({self.supplied[label]!r}-Lipschitz, supplied by the user, not verified)"
                          for label in self.used]
        return found

    # -- the rules -----------------------------------------------------------------------------------
    def node(self, node: Node, ins: list[float]) -> float | tuple[float, ...]:
        """The bound of a node's outputs (one for all, or one per output) from its inputs' bounds."""
        op, a = node.op, node.attrs
        if node.label in self.graph.layer_nodes:
            upper = self.uppers[self.graph.layer_nodes[node.label]]
            if upper is None:
                return self.unbounded(node, "non-finite weights")
            # The data input(s) go through the weight; a Gemm's C is added after it.
            data = sum(l for i, l in enumerate(ins[:2]) if self.const(node.inputs[i]) is None)
            bias = ins[2] if op == "Gemm" and len(ins) > 2 else 0.0
            return upper * data + bias
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"):
            active = [name for name, l in zip(node.inputs, ins) if l > 0.0]
            if len(active) > 1:
                return self.unbounded(node, "a product of two activations (as in attention) is not globally Lipschitz")
            return self.unbounded(node, "a weight lipcheck could not read")
        if op in _UNBOUNDED:
            return self.unbounded(node, _UNBOUNDED[op])
        if op == "If":
            return self.branches(node, ins)
        if op in ("Loop", "Scan"):
            return self.unbounded(node, f"lipcheck does not bound {op} bodies, and this one reads values that "
                                        "depend on the input")
        if op in _FIXED:
            return _FIXED[op] * ins[0]
        if op == "Cast" and int(a.get("to", 1)) not in _FLOAT_TYPES:
            return self.unbounded(node, "a cast to an integer type rounds, which is not Lipschitz")
        if op in _MOVES:
            return ins[0]
        if op in ("Add", "Sub", "Sum"):
            return sum(ins)
        if op in ("Max", "Min"):
            return math.sqrt(sum(l * l for l in ins))
        if op == "Concat":
            return math.sqrt(sum(l * l for l in ins))
        if op == "Mul":
            return self.mul(node, ins)
        if op == "Div":
            c = self.const(node.inputs[1])
            if ins[1] > 0.0 or c is None or c.size == 0 or float(np.abs(c).min()) == 0.0:
                return self.unbounded(node, "division by an activation (or by zero) is not globally Lipschitz")
            return ins[0] / float(np.abs(c).min())
        if op == "LeakyRelu":
            return max(1.0, abs(float(a.get("alpha", 0.01)))) * ins[0]
        if op == "Elu" or op == "Celu":
            return max(1.0, abs(float(a.get("alpha", 1.0)))) * ins[0]
        if op == "Selu":
            return float(a.get("gamma", 1.0507)) * max(1.0, float(a.get("alpha", 1.67326))) * ins[0]
        if op == "HardSigmoid":
            return abs(float(a.get("alpha", 0.2))) * ins[0]
        if op == "PRelu":
            slope = self.const(node.inputs[1])
            if slope is None:
                return self.unbounded(node, "a PRelu slope lipcheck could not read")
            return max(1.0, float(np.abs(slope).max())) * ins[0]
        if op == "BatchNormalization":
            gamma, var = self.const(node.inputs[1]), self.const(node.inputs[4])
            if gamma is None or var is None:
                return self.unbounded(node, "batch-norm statistics lipcheck could not read")
            scale = np.abs(gamma) / np.sqrt(var + float(a.get("epsilon", 1e-5)))
            separate = float(np.max(scale)) * ins[0]
            return min(separate, self.folded(node, scale))
        if op in ("MaxPool", "AveragePool", "LpPool"):
            return self.pool(node, ins[0])
        if op in ("GlobalAveragePool", "ReduceMean"):
            return self.mean(node, ins[0])
        if op in ("Resize", "Upsample"):
            return self.resize(node, ins[0])
        if op == "Pad":
            mode = a.get("mode", b"constant")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            if mode != "constant":
                return self.unbounded(node, f"{mode} padding repeats entries; lipcheck does not bound it yet")
            return ins[0] + sum(ins[1:])
        if op == "Gather":
            indices = self.const(node.inputs[1])
            if ins[1] > 0.0 or indices is None:
                return self.unbounded(node, "indices that depend on the input")
            _, counts = np.unique(indices.astype(np.int64), return_counts=True)
            return ins[0] * math.sqrt(float(counts.max())) if counts.size else 0.0  # repeated indices copy entries
        return self.unbounded(node, "an op lipcheck does not know how to bound")

    def branches(self, node: Node, ins: list[float]) -> float | tuple[float, ...]:
        """If: per output, the worst bound over the branches the condition can take."""
        if ins[0] > 0.0:
            return self.unbounded(node, "its condition depends on the input, so the output can jump from one "
                                        "branch to the other: not continuous, no Lipschitz bound")
        names = ["then_branch", "else_branch"]
        cond = self.const(node.inputs[0])
        if cond is not None and cond.size == 1:
            names = ["then_branch" if bool(cond.reshape(())) else "else_branch"]
        worst = [0.0] * len(node.outputs)
        for name in names:
            body = node.subgraphs.get(name)
            if body is None or len(body.outputs) != len(node.outputs):
                return self.unbounded(node, f"a {name} lipcheck could not read")
            found = _Walk(body, self.uppers, self.supplied, self.fuse, parent=self).walk()
            worst = [max(w, f) for w, f in zip(worst, found)]
        if any(math.isinf(w) for w in worst) and not any(label.startswith(f"{node.label}.") for label in self.reasons):
            self.unbounded(node, "a branch output depends on a value lipcheck cannot trace")
        return tuple(worst)

    def folded(self, node: Node, scale: np.ndarray) -> float:
        """Batch norm right after a conv/linear used nowhere else: bound the fused layer instead."""
        producer = self.producer.get(node.inputs[0])
        if (self.fuse is None or producer is None or producer.label not in self.graph.layer_nodes
                or producer.op not in ("Conv", "Gemm") or self.consumers.get(node.inputs[0], 0) != 1):
            return math.inf
        fused = self.fuse(self.graph.layer_nodes[producer.label], scale)
        if fused is None:
            return math.inf
        data = sum(self.of(name) for i, name in enumerate(producer.inputs[:2]) if self.const(name) is None)
        return fused * data

    def mul(self, node: Node, ins: list[float]) -> float:
        for i, j in ((0, 1), (1, 0)):
            c = self.const(node.inputs[j])
            if c is not None:
                return float(np.abs(c).max()) * ins[i] if c.size else 0.0
        # x * sigmoid(x) (SiLU/Swish as exporters write it): max |d/dx| = 1.0998.
        for i, j in ((0, 1), (1, 0)):
            other = self.producer.get(node.inputs[j])
            if other is not None and other.op == "Sigmoid" and other.inputs[0] == node.inputs[i]:
                return 1.0998 * ins[i]
        return self.unbounded(node, "a product of two activations is not globally Lipschitz")

    def pool(self, node: Node, lip: float) -> float:
        a = node.attrs
        kernel = [int(k) for k in a.get("kernel_shape", [])]
        strides = [int(s) for s in a.get("strides", [1] * len(kernel))]
        if not kernel:
            return self.unbounded(node, "a pool without kernel_shape")
        copies = math.prod(-(-k // s) for k, s in zip(kernel, strides))
        if node.op == "MaxPool":
            return lip * (1.0 if all(s >= k for k, s in zip(kernel, strides)) else math.sqrt(copies))
        if node.op == "LpPool":
            return lip * math.sqrt(copies)
        pads = [int(p) for p in a.get("pads", [])]
        if any(pads) and not int(a.get("count_include_pad", 0)):
            return lip * math.sqrt(copies)  # border windows average fewer entries
        return lip * math.sqrt(copies / math.prod(kernel))

    def mean(self, node: Node, lip: float) -> float:
        shape = self.graph.shapes.get(node.inputs[0])
        if node.op == "GlobalAveragePool":
            axes = list(range(2, len(shape))) if shape else []
        else:
            axes_const = self.const(node.inputs[1]) if len(node.inputs) > 1 else None
            axes = [int(x) for x in (axes_const.ravel() if axes_const is not None else node.attrs.get("axes", []))]
        if shape and axes and all(shape[ax] for ax in axes):
            return lip / math.sqrt(math.prod(int(shape[ax]) for ax in axes))  # type: ignore[misc]
        return lip  # a mean never increases the norm

    def resize(self, node: Node, lip: float) -> float:
        mode = node.attrs.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        scales = None
        for index in (2, 1):  # Resize: (X, roi, scales, sizes); Upsample: (X, scales)
            if len(node.inputs) > index:
                c = self.const(node.inputs[index])
                if c is not None and c.size:
                    scales = c.ravel()
                    break
        if scales is None and len(node.inputs) > 3:
            sizes, shape = self.const(node.inputs[3]), self.graph.shapes.get(node.inputs[0])
            if sizes is not None and shape and all(shape):
                scales = np.asarray(sizes, dtype=np.float64).ravel() / np.asarray(shape, dtype=np.float64)
        if scales is None:
            return self.unbounded(node, "resize scales lipcheck could not read")
        copies = float(np.prod(np.ceil(np.maximum(scales, 1.0))))
        if mode == "nearest":
            return lip * math.sqrt(copies)
        # Linear interpolation: rows sum to 1; each input feeds at most 2*ceil(s) outputs per axis.
        return lip * math.sqrt(float(np.prod(2.0 * np.ceil(np.maximum(scales, 1.0)))))


def graph_bound(graph: Graph, layer_uppers: list[float | None], supplied: dict[str, float] | None = None,
                fuse: Fuse | None = None) -> GraphBound:
    """Bound every output's Lipschitz constant by walking the graph once.

    ``supplied`` maps node labels to constants the user vouches for (``--node-constant``).
    """
    return _Walk(graph, layer_uppers, supplied or {}, fuse).run()
