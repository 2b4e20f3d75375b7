"""Chains read out of a graph: runs of dense layers and slope-restricted activations, with the
slope range of each activation.

A chain is recognised only where the graph computes, per row of its first layer's input,
x ↦ W_l φ_l(⋯ φ_1(W_0 x + c_0) ⋯) + c_l, up to moves that do not change the constant:

* before the first layer, ops that only reorder entries (Flatten, Reshape, Squeeze, Unsqueeze,
  Identity, Dropout in inference): an isometry of the input;
* between layers, those moves again (without Transpose), and the adding of constants (biases).
  A Reshape that keeps the last dimension keeps each row's entries together, and one that changes
  it is caught by the layer sizes no longer fitting;
* every layer (Gemm, MatMul, a TorchScript linear) reads the previous value as its data input and
  a stored weight, and every value is read by the next op only, with one graph output at the end.

The same map applied to every row of a batch has the per-row constant (‖F(X)−F(Y)‖² is a sum of
per-row terms). One trailing activation multiplies the bound by its largest |slope|.

A whole-graph chain may also start with convolutions of small static maps
(lipcheck.graph.explicit): from the first conv on, the chain's vector is the whole flattened
sample, each conv is its explicit operator, a Transpose that keeps the batch axis permutes the
next layer's columns, a move between layers must keep each sample's entries together, and
two layers with no activation between them are joined by the identity, which is
slope-restricted in [0, 1] like any map with slopes 1.

Slope ranges (a, b) of the activations: ReLU (0, 1); LeakyReLU α (min(α, 1), max(α, 1)); tanh
and softsign (0, 1); sigmoid (0, 1/4); softplus (0, 1); Clip (0, 1); ELU/CELU α ≥ 0
(0, max(1, α)); HardSigmoid α (0, α); HardSwish (−1/2, 3/2) (its slope (2x+3)/6 on [−3, 3]).
GELU: GELU'(x) = Φ(x) + xφ(x), GELU'' = φ(x)(2 − x²), so the extremes are at ±√2:
b = (1 + erf(1))/2 + 1/(e√π) ≈ 1.1289042, and GELU'(x) + GELU'(−x) = 1 gives a = 1 − b ≈
−0.1289042 (−0.17 is GELU's smallest value, not its smallest slope). SiLU: SiLU'(x) + SiLU'(−x) = 1
too, and SiLU'' = 0 where x·tanh(x/2) = 2 (x* ≈ 2.3994), so b = SiLU'(x*) ≈ 1.0998 and a = 1 − b.
The tanh approximation of GELU and Mish have no closed form: their ranges come from a dense grid
refined by Newton steps on the second derivative and are widened by 1e-6 (``_numeric_range``);
every range is then rounded outward to a 2⁻²⁰ grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.ir import Node

if TYPE_CHECKING:
    import torch

    from lipcheck.model import Layer, Model

_MOVES = {"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_MAX_SLOPE = 2.0**64
IDENTITY = "lipcheck.identity"  # the op of the identity joining two layers with no activation between them
LINEAR = {"Gemm", "MatMul"}
_SHAPE_ONLY = {"Shape", "Size"}


@dataclass
class FoundChain:
    """A chain read from a graph: float64 weights (out, in), the ops between them, biases where read."""

    weights: list[torch.Tensor]
    activations: list[Node]
    slopes: list[tuple[float, float]]
    biases: list[np.ndarray | None]
    scale: float  # a trailing activation's largest |slope|, else 1
    tail: Node | None
    input_reordered: bool  # a move before the first layer that is not a plain reshape
    offset: np.ndarray | None = None  # constants added to the input before the first layer (flattened)
    explicit: bool = False  # convs read as explicit operators: the chain maps whole samples


def _gelu_range() -> tuple[float, float]:
    b = 0.5 * (1.0 + math.erf(1.0)) + 1.0 / (math.e * math.sqrt(math.pi))
    return 1.0 - b, b


def _silu_range() -> tuple[float, float]:
    x = 2.4
    for _ in range(60):  # Newton on h(x) = x tanh(x/2) − 2
        th = math.tanh(x / 2.0)
        x -= (x * th - 2.0) / (th + 0.5 * x * (1.0 - th * th))
    s = 1.0 / (1.0 + math.exp(-x))
    b = s * (1.0 + x * (1.0 - s))
    return 1.0 - b, b


def _numeric_range(derivative: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """The range of a smooth activation's slope on a dense grid over [−40, 40] (tails are monotone
    there for the functions used), refined around the extremes, widened by 1e-6."""
    xs = np.linspace(-40.0, 40.0, 800_001)
    d = derivative(xs)
    lo, hi = float(d.min()), float(d.max())
    for index in (int(np.argmin(d)), int(np.argmax(d))):
        fine = np.linspace(xs[max(index - 1, 0)], xs[min(index + 1, xs.size - 1)], 20_001)
        values = derivative(fine)
        lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    return lo - 1e-6, hi + 1e-6


def _gelu_tanh_slope(x: np.ndarray) -> np.ndarray:
    c = math.sqrt(2.0 / math.pi)
    inner = c * (x + 0.044715 * x**3)
    th = np.tanh(inner)
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th**2) * c * (1.0 + 3 * 0.044715 * x**2)


def _mish_slope(x: np.ndarray) -> np.ndarray:
    sp = np.logaddexp(0.0, x)
    th = np.tanh(sp)
    return th + x * (1.0 - th**2) / (1.0 + np.exp(-x))


_RANGES: dict[str, tuple[float, float]] = {}


def slope_range(node: Node, const: Callable[[str], np.ndarray | None]) -> tuple[float, float] | None:
    """The slope range [a, b] of an elementwise activation node, or None when it is not one the
    LipSDP certificate takes (it needs b > a and a + b > 0: a linear or odd-slope map is none)."""
    found = _slope_range(node, const)
    if found is None or not (found[1] > found[0] and found[0] + found[1] > 0.0):
        return None
    if not all(abs(value) <= _MAX_SLOPE for value in found):  # NaN or a slope the certificate's grid cannot hold
        return None
    return found


def _slope_range(node: Node, const: Callable[[str], np.ndarray | None]) -> tuple[float, float] | None:
    op, attrs = node.op, node.attrs
    if op == IDENTITY:
        return 0.0, 1.0
    if op in ("Relu", "Clip"):
        return 0.0, 1.0
    if op in ("Tanh", "Softsign", "Softplus"):
        return 0.0, 1.0
    if op == "Sigmoid":
        return 0.0, 0.25
    if op == "LeakyRelu":
        alpha = float(attrs.get("alpha", 0.01))
        return min(alpha, 1.0), max(alpha, 1.0)
    if op in ("Elu", "Celu"):
        alpha = float(attrs.get("alpha", 1.0))
        return (0.0, max(1.0, alpha)) if alpha >= 0.0 else None
    if op == "HardSigmoid":
        alpha = float(attrs.get("alpha", 0.2))
        return (0.0, alpha) if alpha > 0.0 else None
    if op == "HardSwish":
        return -0.5, 1.5
    if op == "PRelu":
        slope = const(node.inputs[1]) if len(node.inputs) > 1 else None
        if slope is None or slope.size == 0:
            return None
        return min(1.0, float(slope.min())), max(1.0, float(slope.max()))
    if op == "Gelu":
        # The hull of the erf and tanh forms' ranges: a front end that loses the form stays sound.
        if "gelu_tanh" not in _RANGES:
            _RANGES["gelu_tanh"] = _numeric_range(_gelu_tanh_slope)
        erf, tanh = _gelu_range(), _RANGES["gelu_tanh"]
        return min(erf[0], tanh[0]), max(erf[1], tanh[1])
    if op == "Silu":
        return _silu_range()
    if op == "Mish":
        if "mish" not in _RANGES:
            _RANGES["mish"] = _numeric_range(_mish_slope)
        return _RANGES["mish"]
    return None


@dataclass
class Building:
    """A chain being read node by node (see find_chain)."""

    weights: list[torch.Tensor] = field(default_factory=list)
    activations: list[Node] = field(default_factory=list)
    slopes: list[tuple[float, float]] = field(default_factory=list)
    biases: list[np.ndarray | None] = field(default_factory=list)
    pending: Node | None = None  # an activation seen since the last layer
    reordered: bool = False
    offset: np.ndarray | None = None
    sample: tuple[int, ...] | None = None  # the flattened sample's shape, once a conv made the chain whole-sample
    permutation: np.ndarray | None = None  # flat(after) = flat(before)[permutation] for Transposes since the last layer

    def found(self, scale: float = 1.0) -> FoundChain:
        return FoundChain(
            list(self.weights),
            list(self.activations),
            list(self.slopes),
            list(self.biases),
            scale,
            self.pending,
            self.reordered,
            self.offset,
            self.sample is not None,
        )


class ChainReader:
    """What reading chains out of a model's graph needs: who reads each value, which values depend
    on the inputs, and the constants; ``step`` takes one node into a chain."""

    def __init__(self, model: Model, explicit: bool = False) -> None:
        graph = model.graph
        assert graph is not None
        self.model, self.graph, self.explicit = model, graph, explicit
        # Shape and Size read only a value's shape, fixed with the input's: they are not readers of
        # its entries, and what they compute is not data.
        self.consumers: dict[str, list[Node]] = {}
        for node in graph.nodes:
            if node.op not in _SHAPE_ONLY:
                for name in node.inputs:
                    self.consumers.setdefault(name, []).append(node)
        self.live = set(graph.inputs)
        for node in graph.nodes:
            if node.op not in _SHAPE_ONLY and any(name in self.live for name in (*node.inputs, *node.captures)):
                self.live.update(node.outputs)

    def const(self, name: str) -> np.ndarray | None:
        if name in self.live or name not in self.graph.constants:
            return None
        try:
            return np.asarray(self.graph.constants[name](), dtype=np.float64)
        except Exception:  # a constant lipcheck cannot materialize
            return None

    def step(self, chain: Building, node: Node, value: str) -> str:
        """Extend ``chain`` by ``node``, which reads ``value``; "" or why the node does not fit."""
        import torch

        data = [name for name in node.inputs if name in self.live]
        if data != [value] or node.inputs[0] != value:
            return f"{node.label} reads more than the chain's value"
        if any(self.consumers.get(name) for name in node.outputs[1:]):
            return f"{node.label} has a second output in use"
        if node.label in self.graph.layer_nodes:
            layer = self.model.layers[self.graph.layer_nodes[node.label]]
            if node.op == "Conv" and self.explicit:
                made = self._conv(chain, self._with_geometry(node, layer), value, layer.load().to(torch.float64))
                if isinstance(made, str):
                    return made
                w, bias = made
            else:
                made_dense = self._dense(chain, node, value, layer.load().to(torch.float64))
                if isinstance(made_dense, str):
                    return made_dense
                w, bias = made_dense
            if chain.permutation is not None:
                moved = torch.zeros_like(w)
                moved[:, torch.from_numpy(chain.permutation)] = w
                w, chain.permutation = moved, None
            if chain.weights:
                if w.shape[1] != chain.weights[-1].shape[0]:
                    return f"{node.label} does not fit the previous layer"
                if chain.pending is None:
                    if not self.explicit:
                        return f"two layers with no activation between them at {node.label}"
                    chain.pending = Node(IDENTITY, f"{node.label} (its input)", (), ())
                found = slope_range(chain.pending, self.const)
                if found is None:
                    return f"{chain.pending.label}: {chain.pending.op} is not a slope-restricted activation lipcheck knows"
                chain.activations.append(chain.pending)
                chain.slopes.append(found)
                chain.pending = None
            elif chain.pending is not None:
                return "an activation before the first layer"
            chain.weights.append(w)
            chain.biases.append(bias)
        elif node.op in _MOVES or node.op == "Transpose":
            if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2]:
                mode = self.const(node.inputs[2])
                if mode is None or bool(mode.any()):
                    return f"{node.label} is a dropout that may be in training mode"
            if chain.sample is not None:
                return self._move_sample(chain, node)
            if node.op == "Transpose":
                if chain.weights:
                    return f"{node.label} transposes between layers"
                chain.reordered = True
        elif node.op in ("Add", "Sub"):
            other = self.const(node.inputs[1])
            if other is None:
                return f"{node.label} adds something that is not a constant"
            if self._enlarges(value, other.shape):
                return f"{node.label} broadcasts its input to a larger shape"
            if node.op == "Sub":
                other = -other
            if not chain.weights and chain.pending is None:
                return self._translate(chain, node, value, other)
            if chain.pending is not None:
                return f"{node.label} adds outside a layer's bias position"
            if chain.sample is not None:
                if chain.permutation is not None:
                    return f"{node.label} adds a constant after a transpose"
                try:
                    other = np.broadcast_to(other, (1, *chain.sample)).reshape(-1).copy()
                except ValueError:
                    return f"{node.label} adds a constant that is not one per sample entry"
            try:
                chain.biases[-1] = other if chain.biases[-1] is None else chain.biases[-1] + other
            except ValueError:  # two constants on either side of a reshape: no one bias vector
                return f"{node.label} adds a constant that does not line up with the layer's bias"
        else:
            if chain.pending is not None or not chain.weights or slope_range(node, self.const) is None:
                return f"{node.label}: {node.op} does not belong in a plain chain"
            slope = self.const(node.inputs[1]) if node.op == "PRelu" else None
            if slope is not None and self._enlarges(value, slope.shape):
                return f"{node.label} broadcasts its input to a larger shape"
            chain.pending = node
        return ""

    def _dense(self, chain: Building, node: Node, value: str, w: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None] | str:
        """A dense layer's weight (out, in) and bias, or why it does not fit."""
        if node.op not in LINEAR:
            return f"{node.label} is not a dense layer"
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)) != 0:
            return f"{node.label} transposes its input"
        if w.dim() != 2:
            return f"{node.label} has a batched weight"
        alpha = float(node.attrs.get("alpha", 1.0))
        mantissa, _ = math.frexp(abs(alpha))
        if alpha == 0.0 or mantissa != 0.5:
            return f"{node.label} has a Gemm alpha that is not a power of two"
        # The layer's weight already carries alpha (the ONNX reader scales it, exactly for a power of two).
        if chain.sample is not None:  # after convs, a dense layer must read each sample as one row
            shape = self.graph.shapes.get(value)
            if shape is None or len(shape) != 2 or shape[1] != w.shape[1] or math.prod(chain.sample) != w.shape[1]:
                return f"{node.label} does not read each sample as one row"
            chain.sample = (int(w.shape[0]),)
        bias = self.const(node.inputs[2]) if node.op == "Gemm" and len(node.inputs) > 2 else None
        if bias is not None and node.op == "Gemm":
            bias = bias * float(node.attrs.get("beta", 1.0))
        if bias is not None and chain.sample is not None:
            try:
                bias = np.broadcast_to(bias, (1, w.shape[0])).reshape(-1).copy()
            except ValueError:
                return f"{node.label} has a bias that is not one per output"
        return w, bias

    def _conv(self, chain: Building, node: Node, value: str, kernel: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None] | str:
        """A conv's explicit operator on the value's samples and its bias spread over them, or why not."""
        from lipcheck.graph.explicit import channel_vector, conv_matrix

        if chain.weights and chain.sample is None:
            return f"{node.label} is a conv after dense layers"
        if "lipcheck_padding_mode" in node.attrs:
            return f"{node.label} pads with {node.attrs['lipcheck_padding_mode']}, not zeros"
        shape = self.graph.shapes.get(value)
        if shape is None or len(shape) < 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return f"{node.label} reads a value of unknown size"
        sample = tuple(int(d) for d in shape[1:])  # type: ignore[arg-type]
        if chain.sample is not None and sample != chain.sample:
            return f"{node.label} does not read the previous layer's samples"
        made = conv_matrix(node, kernel, sample)
        if isinstance(made, str):
            return made
        w, out = made
        bias = self.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if bias is not None:
            if bias.size != out[0]:
                return f"{node.label} has a bias that is not one per channel"
            bias = channel_vector(bias, out)
        chain.sample = out
        return w, bias

    def _with_geometry(self, node: Node, layer: Layer) -> Node:
        """The conv node with its stride, pads, dilation and groups as ONNX attributes: the torch
        front ends keep them in the layer's geometry instead."""
        geometry = layer.geometry
        if self.model.format == "onnx" or geometry is None:
            return node
        if geometry.padding_mode != "zeros":
            attrs: dict[str, object] = {"lipcheck_padding_mode": geometry.padding_mode}
        else:
            attrs = {
                "strides": list(geometry.stride),
                "pads": list(geometry.padding),
                "dilations": list(geometry.dilation),
                "group": geometry.groups,
                "auto_pad": geometry.auto_pad,
            }
        return Node(node.op, node.label, node.inputs, node.outputs, attrs)

    def _move_sample(self, chain: Building, node: Node) -> str:
        """A move in a whole-sample chain: it must keep each sample's entries together; a
        Transpose that keeps the batch axis permutes them."""
        from lipcheck.graph.explicit import transpose_index

        assert chain.sample is not None
        if node.op in ("Identity", "Dropout"):
            return ""
        shape = self.graph.shapes.get(node.outputs[0])
        if shape is None or len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return f"{node.label} gives a value of unknown size"
        after = tuple(int(d) for d in shape[1:])  # type: ignore[arg-type]
        if node.op == "Transpose":
            perm = tuple(int(p) for p in node.attrs.get("perm", ()))
            moved = transpose_index(chain.sample, perm)
            if moved is None or moved[1] != after:
                return f"{node.label} moves the batch axis"
            index, _ = moved
            chain.permutation = index if chain.permutation is None else chain.permutation[index]
        elif math.prod(after) != math.prod(chain.sample):
            return f"{node.label} does not keep each sample's entries together"
        chain.sample = after
        return ""

    def _enlarges(self, value: str, other: tuple[int, ...]) -> bool:
        """Whether broadcasting against a constant of shape ``other`` can make ``value`` larger (each
        entry then appears several times, and the chain's per-row constant no longer bounds the map)."""
        shape = self.graph.shapes.get(value)
        if shape is None:
            return math.prod(other) != 1
        if len(other) > len(shape):
            return True
        return any(c != 1 and c != d for c, d in zip(reversed(other), reversed(shape)))

    def _translate(self, chain: Building, node: Node, value: str, other: np.ndarray) -> str:
        """Take x + c before the first layer: an isometry (c does not enlarge x, checked by the caller)."""
        shape = self.graph.shapes.get(value)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return f"{node.label} adds a constant to an input of unknown shape"
        dims = tuple(int(d) for d in shape)  # type: ignore[arg-type]
        shift = np.broadcast_to(other, dims).reshape(-1)
        chain.offset = shift.copy() if chain.offset is None else chain.offset + shift
        return ""


def find_chain(model: Model, explicit: bool = True) -> tuple[FoundChain | None, str]:
    """The model's chain, or None and why the graph is not one; ``explicit`` admits convs of small
    maps as explicit operators."""
    graph = model.graph
    if graph is None:
        return None, "no graph"
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        return None, "not one input and one output"
    if any(node.subgraphs for node in graph.nodes):
        return None, "control flow"
    reader = ChainReader(model, explicit)
    chain = Building()
    value = graph.inputs[0]
    while value != graph.outputs[0]:
        readers = reader.consumers.get(value, [])
        if len(readers) != 1:
            return None, "a value read more than once (a branch) or not at all"
        why = reader.step(chain, readers[0], value)
        if why:
            return None, why
        value = readers[0].outputs[0]
    if len(chain.weights) < 2:
        return None, "fewer than two layers"
    if chain.permutation is not None:  # the output reordered: the last layer's rows and bias take the order
        import torch

        index = torch.from_numpy(chain.permutation)
        chain.weights[-1] = chain.weights[-1][index]
        if chain.biases[-1] is not None:
            chain.biases[-1] = chain.biases[-1][chain.permutation]
        chain.permutation = None
    scale = 1.0
    if chain.pending is not None:
        a, b = slope_range(chain.pending, reader.const)  # type: ignore[misc]
        scale = max(abs(a), abs(b))
    return chain.found(scale), ""
