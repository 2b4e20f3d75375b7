"""ONNX graphs: layer weights from initializers and Constant nodes, through the chains exporters
put in front of them (Transpose, Cast, Mul, DequantizeLinear, ...), inside If/Loop/Scan bodies,
and from external data files that must stay inside the model's folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, helper, numpy_helper

from lipcheck.errors import CorruptFileError, RefusedFileError, first_line
from lipcheck.formats import onnx_quant, onnx_shapes, recurrent
from lipcheck.formats.onnx_consts import all_tensors
from lipcheck.formats.onnx_consts import fold_chain as _fold
from lipcheck.formats.onnx_consts import folded_shape as _folded_shape
from lipcheck.formats.onnx_consts import payload_fits as _check_payload
from lipcheck.formats.onnx_consts import to_torch as _to_torch
from lipcheck.formats.onnx_labels import node_labels
from lipcheck.graph import onnx_front
from lipcheck.graph.fold import MAX_ELEMENTS, fold
from lipcheck.model import ConvGeometry, Layer, Model, Skipped

Array = Callable[[], np.ndarray]
# Ops that turn one constant into another without mixing in an activation.
_PASS_THROUGH = {"Transpose", "Cast", "CastLike", "Identity", "DequantizeLinear", "Mul", "Div", "Reshape", "Squeeze", "Unsqueeze", "Neg"}
_CONV_NDIM = {3: "1d", 4: "2d", 5: "3d"}


@dataclass
class _Const:
    """A constant value: how to compute it, and the stored tensor it comes from.

    ``shape`` and ``dtype`` are the stored tensor's; ``value_shape`` is what the consumer sees
    after the chain (a Transpose or Reshape changes it).
    """

    array: Array
    source: str
    shape: tuple[int, ...]
    dtype: str
    value_shape: tuple[int, ...]
    chain: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()  # for a value computed from constants: the stored tensors it is made from


@dataclass
class _Scope:
    """One graph (the main graph or a subgraph) and the constants visible in it."""

    path: str
    consts: dict[str, _Const]
    producers: dict[str, NodeProto]
    parent: _Scope | None = None
    stored: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def lookup(self, name: str) -> _Const | None:
        return self.find(name, "consts")

    def find(self, name: str, table: str) -> Any:
        """The entry for ``name`` in this scope's ``table`` (consts or producers), or the nearest enclosing one's."""
        scope: _Scope | None = self
        while scope is not None:
            entries = getattr(scope, table)
            if name in entries:
                return entries[name]
            scope = scope.parent
        return None


class _Reader:
    """Finds the layers of an ONNX graph and the constants of each scope, without running the model."""

    def __init__(
        self, path: Path, shapes: dict[str, onnx_shapes.Dims] | None = None, inputs: set[str] | None = None, opsets: dict[str, int] | None = None
    ) -> None:
        self.path = path
        self.shapes = shapes or {}
        self.inputs = inputs or set()
        self.opsets = opsets or {}
        self.folded: dict[str, Array] = {}  # the main graph's values computed from constants alone
        self.base = os.path.realpath(path.parent)
        self.layers: list[Layer] = []
        self.uses: dict[tuple[str, str], list[str]] = {}  # (scope, stored name) -> consumer ops
        self.layer_sources: set[tuple[str, str]] = set()
        self.scopes: list[_Scope] = []
        self.dequantize: set[str] = set()  # Mul nodes whose weight scale a layer's weight already includes
        self._label = ""
        self.index: dict[int, int] = {}
        self.labels: dict[int, str] = {}  # node_labels of each node, by id

    # -- stored tensors -------------------------------------------------------------------
    def tensor_array(self, tensor: TensorProto) -> Array:
        if tensor.data_location == TensorProto.EXTERNAL:
            self._check_external(tensor)

        def load() -> np.ndarray:
            _check_payload(tensor, self.base)
            t = tensor
            if t.data_location == TensorProto.EXTERNAL:
                t = TensorProto()
                t.CopyFrom(tensor)
                try:
                    onnx.external_data_helper.load_external_data_for_tensor(t, self.base)
                except (OSError, ValueError) as exc:
                    raise CorruptFileError(f"cannot read external data of tensor '{tensor.name}' ({exc})") from None
            return numpy_helper.to_array(t)

        return load

    def _check_external(self, tensor: TensorProto) -> None:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = os.path.realpath(os.path.join(self.base, location))
        if not location or os.path.isabs(location) or os.path.commonpath([self.base, target]) != self.base:
            raise RefusedFileError(
                f"tensor '{tensor.name}' points to external data '{location}' outside the model's folder; "
                "lipcheck only reads external data beside the model: move the data file next to it"
            )
        # The readers open the location as written, so it must reach the file as written too.
        if not os.path.isfile(target) or not os.path.isfile(os.path.join(self.base, location)):
            raise CorruptFileError(f"external data file '{location}' of tensor '{tensor.name}' is missing; copy it next to {self.path.name}")

    # -- constants and chains ---------------------------------------------------------------
    def stored_const(self, scope: _Scope, name: str, tensor: TensorProto) -> None:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type).name if tensor.data_type else "undefined"
        dims = tuple(tensor.dims)
        scope.consts[name] = _Const(self.tensor_array(tensor), name, dims, dtype, dims)
        scope.stored[name] = dims

    def resolve(self, scope: _Scope, name: str, depth: int = 0) -> _Const | None:
        """Return the constant behind a value name, following pass-through chains."""
        found = scope.lookup(name)
        if found is not None or depth > 16:
            return found
        node = self.producer(scope, name)
        if node is None or node.op_type not in _PASS_THROUGH or not node.input:
            return None
        inputs = [self.resolve(scope, i, depth + 1) if i else None for i in node.input]
        if any(c is None for i, c in zip(node.input, inputs) if i):
            return None
        main = max((c for c in inputs if c is not None), key=lambda c: int(np.prod(c.shape)))
        fold = _fold(node, inputs)
        const = _Const(fold, main.source, main.shape, main.dtype, _folded_shape(node, inputs, fold), (*main.chain, node.op_type))
        scope.consts[name] = const
        return const

    def computed(self, scope: _Scope, name: str) -> _Const | None:
        """A weight the main graph computes from constants with ops beyond pass-throughs: its folded value.

        It is evaluated now (each folding step capped at ``MAX_ELEMENTS`` entries), so a value that
        cannot be folded is no layer; the stored tensors it is computed from count as that layer's.
        """
        if scope.parent is not None or name not in self.folded or scope.lookup(name) is not None:
            return None
        try:
            value = np.asarray(self.folded[name]())
        except (ValueError, TypeError, CorruptFileError):
            return None
        node = self.producer(scope, name)
        if value.dtype.kind != "f" or value.size > MAX_ELEMENTS or node is None:
            return None
        shape = tuple(int(d) for d in value.shape)
        const = _Const(_fixed(value), name, shape, value.dtype.name, shape, (f"{node.op_type} of constants",), parts=self._stored_inputs(scope, name))
        scope.consts[name] = const
        return const

    def _stored_inputs(self, scope: _Scope, name: str) -> tuple[str, ...]:
        """The stored tensors a computed value is made from."""
        found: list[str] = []
        todo, seen = [name], set()
        while todo:
            current = todo.pop()
            if current in seen or not current:
                continue
            seen.add(current)
            if current in scope.stored:
                found.append(current)
                continue
            node = scope.producers.get(current)
            if node is not None:
                todo.extend(node.input)
        return tuple(sorted(found))

    @staticmethod
    def producer(scope: _Scope, name: str) -> NodeProto | None:
        found: NodeProto | None = scope.find(name, "producers")
        return found

    @staticmethod
    def owner(scope: _Scope, source: str) -> str:
        """The path of the scope that stores ``source`` (an outer one, for a subgraph's capture)."""
        owner = scope
        while owner.parent is not None and source not in owner.stored:
            owner = owner.parent
        return owner.path

    def _use(self, scope: _Scope, const: _Const, op: str) -> None:
        """Record that ``op`` consumes ``const``."""
        self.uses.setdefault((self.owner(scope, const.source), const.source), []).append(op)

    # -- graph walk -------------------------------------------------------------------------
    def walk(self, graph: GraphProto, path: str, parent: _Scope | None) -> _Scope:
        scope = _Scope(path, {}, {}, parent)
        self.scopes.append(scope)
        for init in graph.initializer:
            self.stored_const(scope, init.name, init)
        for node in graph.node:
            for out in node.output:
                scope.producers[out] = node
            if node.op_type == "Constant" and node.output:
                self._constant_node(scope, node)
        labels = node_labels(graph.node)
        for index, node in enumerate(graph.node):
            self.index[id(node)] = index
            self.labels[id(node)] = labels[index]
        if parent is None:  # a body's values may depend on its formal inputs each iteration: the main graph only
            self.folded = fold(graph, {name: c.array for name, c in scope.consts.items()}, self.inputs, self.opsets, self.shapes)
        for index, node in enumerate(graph.node):
            self._node(scope, node, index, labels[index])
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    label = f"{labels[index]}.{attr.name}"
                    self.walk(attr.g, f"{path}/{label}" if path else label, scope)
        return scope

    def _constant_node(self, scope: _Scope, node: NodeProto) -> None:
        for attr in node.attribute:
            if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                self.stored_const(scope, node.output[0], attr.t)
            elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                value = np.asarray(helper.get_attribute_value(attr))
                scope.consts[node.output[0]] = _Const(_fixed(value), node.output[0], value.shape, value.dtype.name, value.shape)

    def _node(self, scope: _Scope, node: NodeProto, index: int, label: str) -> None:
        op = node.op_type
        consts = [self.resolve(scope, name) if name else None for name in node.input]
        for const in consts:
            if const is not None:
                self._use(scope, const, op)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self._label = label
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(consts) > 1 and consts[0] is None and consts[1] is None:
            slots = (1,) if op in ("Conv", "ConvTranspose") else (0, 1)
            found = {i: self.computed(scope, node.input[i]) for i in slots}
            if sum(c is not None for c in found.values()) == 1:  # two computed inputs: the node is a constant
                consts = [found.get(i) or c for i, c in enumerate(consts)]
        if op in ("Conv", "ConvTranspose") and len(consts) > 1 and consts[1] is not None and consts[0] is None:
            self.conv(scope, node, label, consts[1], attrs)
        elif op == "Gemm" and len(consts) >= 2 and (consts[0] is None) != (consts[1] is None):
            self._gemm(scope, label, consts, attrs)
        elif op in onnx_quant.QUANTIZED:
            onnx_quant.quantized_layer(self, scope, node, label, consts, attrs)
        elif op in recurrent.ONNX_GATES and consts[0] is None:
            onnx_quant.recurrent_layers(self, scope, node, label, consts)
        elif op == "MatMul" and len(consts) == 2 and (consts[0] is None) != (consts[1] is None):
            weight_first = consts[0] is not None
            const = consts[0] if weight_first else consts[1]
            assert const is not None
            if len(const.value_shape) == 2:
                self.add(
                    scope,
                    const,
                    "matmul",
                    _matrix(const, not weight_first),
                    note=f"node {label}: MatMul with the weight {'first' if weight_first else 'second'}",
                )

    def add(self, scope: _Scope, const: _Const, op: str, load: Array, note: str, geometry: ConvGeometry | None = None) -> None:
        chain = f" via {'→'.join(const.chain)}" if const.chain else ""
        for source in (const.source, *const.parts):
            self.layer_sources.add((self.owner(scope, source), source))
        self.layers.append(
            Layer(
                const.source, op, const.shape, const.dtype, lambda: _to_torch(load()), scope=scope.path, geometry=geometry, note=note + chain, node=self._label
            )
        )

    def _gemm(self, scope: _Scope, label: str, consts: list[_Const | None], attrs: dict) -> None:
        alpha = float(attrs.get("alpha", 1.0))
        const: _Const | None
        if consts[1] is not None:  # y = x B'  ->  W = B'^T
            const, flip = consts[1], not bool(attrs.get("transB", 0))
        else:  # Y = A' X  ->  W = A'
            const, flip = consts[0], bool(attrs.get("transA", 0))
        if const is None or len(const.value_shape) != 2:
            return
        self.add(scope, const, "gemm", _matrix(const, flip, alpha), note=f"node {label}: Gemm" + (f", alpha={alpha:g}" if alpha != 1.0 else ""))

    def conv(self, scope: _Scope, node: NodeProto, label: str, const: _Const, attrs: dict, load: Array | None = None, note: str | None = None) -> None:
        n = len(const.value_shape) - 2
        if n not in (1, 2, 3):
            return
        transposed = node.op_type == "ConvTranspose"
        geometry = ConvGeometry(
            stride=tuple(attrs.get("strides", [1] * n)),
            padding=tuple(attrs.get("pads", [0] * (2 * n))),
            dilation=tuple(attrs.get("dilations", [1] * n)),
            groups=int(attrs.get("group", 1)),
            output_padding=tuple(attrs.get("output_padding", [0] * n)) if transposed else (),
            auto_pad=bytes(attrs.get("auto_pad", b"NOTSET")).decode(),
        )
        _check_geometry(geometry, n, tuple(const.value_shape), label, transposed)
        op = f"conv_transpose{_CONV_NDIM[n + 2]}" if transposed else f"conv{_CONV_NDIM[n + 2]}"
        dims = self.shapes.get(node.input[0])
        found: ConvGeometry | None = geometry
        if transposed and attrs.get("output_shape"):
            found = _output_shape_pads(geometry, tuple(const.value_shape[2:]), dims, list(attrs["output_shape"]))
        self.add(scope, const, op, load or const.array, note=note or f"node {label}: {node.op_type}", geometry=found)
        if dims is not None and len(dims) == n + 2 and all(d is not None for d in dims[2:]):
            self.layers[-1].input_spatial = tuple(int(d) for d in dims[2:])  # type: ignore[arg-type]

    def skipped(self) -> list[Skipped]:
        out: list[Skipped] = []
        for scope in self.scopes:
            for name, shape in scope.stored.items():
                if len(shape) < 2 or (scope.path, name) in self.layer_sources:
                    continue
                ops = sorted(set(self.uses.get((scope.path, name), [])))
                if not ops:
                    reason = "not used by any layer node (unused, or feeds only non-layer ops)"
                elif ops == ["Gather"]:
                    reason = "used by Gather: an embedding lookup, not a linear map"
                else:
                    reason = f"used by {', '.join(ops)}: not a linear/conv weight"
                out.append(Skipped(f"{scope.path}/{name}" if scope.path else name, shape, reason))
        return out


def _output_shape_pads(geometry: ConvGeometry, kernel: tuple[int, ...], dims: tuple[int | None, ...] | None, output_shape: list[int]) -> ConvGeometry | None:
    """A ConvTranspose whose ``output_shape`` fixes its pads (the ONNX formula), or None (no geometry)
    where the input size is unknown. Negative pads add output cells no input reaches: zero rows,
    which leave the norm as with no pad."""
    n = len(kernel)
    if dims is None or len(dims) != n + 2 or any(d is None for d in dims[2:]) or len(output_shape) < n:
        return None
    begin, end = [], []
    pads = geometry.output_padding or (0,) * n
    for size, out, k, s, d, extra in zip(dims[2:], output_shape[-n:], kernel, geometry.stride, geometry.dilation, pads):
        total = s * (int(size) - 1) + extra + (k - 1) * d + 1 - int(out)
        first, second = (total // 2, total - total // 2) if geometry.auto_pad.upper() == "SAME_UPPER" else (total - total // 2, total // 2)
        begin.append(max(0, first))
        end.append(max(0, second))
    return replace(geometry, padding=tuple(begin) + tuple(end), auto_pad="NOTSET")


def _fixed(value: np.ndarray) -> Array:
    return lambda: value


def _matrix(const: _Const, flip: bool, alpha: float = 1.0) -> Array:
    """A loader of a constant as a weight matrix: transposed when ``flip``, times ``alpha``."""

    def load() -> np.ndarray:
        w = const.array().T if flip else const.array()
        return w if alpha == 1.0 else w.astype(np.float64) * alpha

    return load


def load(path: Path, input_shapes: tuple[tuple[int, ...], ...] | None = None) -> Model:
    """Load an ONNX file's layers without running it; shape inference gives each conv's input size."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise CorruptFileError(f"cannot read {path} as an ONNX model ({str(exc).strip()[:200] or type(exc).__name__})") from None
    if not proto.graph.node and not proto.graph.initializer:
        raise CorruptFileError(f"{path} parses as ONNX but holds an empty graph; is it really an ONNX model?")
    shapes, note = onnx_shapes.infer(proto, input_shapes)
    inputs = {v.name for v in onnx_shapes.model_inputs(proto.graph)}
    reader = _Reader(path, shapes, inputs, {entry.domain or "": entry.version for entry in proto.opset_import})
    reader.walk(proto.graph, "", None)  # refuses external data outside the folder first
    try:
        onnx.checker.check_model(str(path))  # by path: external data is checked beside the model
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = first_line(exc, 200)
        raise CorruptFileError(f"{path} fails the ONNX checker ({first}); re-export the model") from None
    notes = [note] if note else []
    constants = {scope.path: {name: const.array for name, const in scope.consts.items()} for scope in reader.scopes}
    graph = onnx_front.build(proto, constants, reader.layers, dict(shapes), reader.dequantize)
    unknown = [layer for layer in reader.layers if layer.is_conv and layer.input_spatial is None]
    if unknown and not note:
        notes.append(
            f"{len(unknown)} conv(s) see an input whose size the file leaves open: their bound holds for "
            "every input size; pass --input-shape (e.g. 1x3x224x224, one per model input) for the operator norm"
        )
    whole = not proto.functions and not any(t.data_location == TensorProto.EXTERNAL for t in all_tensors(proto.graph))
    return Model(str(path), "onnx", reader.layers, reader.skipped(), notes, graph, source=proto if whole else None)


_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def _check_geometry(geometry: ConvGeometry, n: int, shape: tuple[int, ...], label: str, transposed: bool) -> None:
    """Refuse conv attributes no runtime can apply: wrong lengths, strides or dilations below 1,
    a group that does not divide the channels, an unknown auto_pad, an empty kernel."""
    problems = []
    if len(geometry.stride) != n or len(geometry.dilation) != n or len(geometry.padding) != 2 * n:
        problems.append(f"strides, dilations and pads need {n}, {n} and {2 * n} values for a {n}-d kernel")
    if any(s < 1 for s in geometry.stride) or any(d < 1 for d in geometry.dilation):
        problems.append("strides and dilations must be at least 1")
    if transposed and len(geometry.output_padding) != n:
        problems.append(f"output_padding needs {n} values")
    channels = shape[0]  # a Conv's output channels, a ConvTranspose's input channels: both split into groups
    if any(d == 0 for d in shape):
        problems.append(f"its kernel of shape {list(shape)} is empty")
    elif geometry.groups < 1 or channels % geometry.groups:
        problems.append(f"group {geometry.groups} does not divide the kernel of shape {list(shape)}")
    if geometry.auto_pad not in _AUTO_PADS:
        problems.append(f"auto_pad {geometry.auto_pad!r} is none of {', '.join(_AUTO_PADS)}")
    if problems:
        raise CorruptFileError(f"node {label}: {problems[0]}; the ONNX file is malformed: re-export the model")
