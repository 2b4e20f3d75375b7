"""Evaluate an ONNX model in float64: a float64 twin of the graph, run by onnxruntime where its CPU
kernels cover every op in double, else lipcheck's IR run in torch (lipcheck.graph.torch_eval) where
it implements every op, else ONNX's reference evaluator (numpy, convolutions by torch).

The twin computes the function the file describes with its stored weights taken exactly: every
float32/float16/bfloat16 tensor (initializers, Constant nodes, tensor attributes, graph inputs,
outputs and value_info, in subgraphs too) becomes float64 and every cast to such a type becomes a
cast to float64. Only op inputs that ONNX defines as float32-only (Resize and Upsample scales) get a
cast back to float32, and those hold sizes, not activations.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import (
    AttributeProto,
    GraphProto,
    ModelProto,
    NodeProto,
    TensorProto,
    TypeProto,
    helper,
    numpy_helper,
)

from lipcheck.errors import first_line
from lipcheck.graph import ort_run
from lipcheck.graph.ir import Graph
from lipcheck.graph.torch_eval import supported

# Float types narrower than float64: FLOAT, FLOAT16, BFLOAT16 and the float8 kinds.
_NARROW = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, 17, 18, 19, 20}
# Integer attributes that name an element type (Cast.to, EyeLike/Random*.dtype).
_TYPE_ATTRS = {"to", "dtype"}
# A protobuf message cannot be serialized past 2 GiB; bigger twins go to onnxruntime through a file.
_IN_MEMORY_BYTES = 2**31 - 2**24
# Ops onnxruntime's CPU provider runs in float32 only: a graph holding one goes to the IR in torch
# without building a double session that would be refused.
_NO_DOUBLE_KERNEL = {"Conv"}


class NoFloat64Evaluation(RuntimeError):
    """Neither onnxruntime nor the reference evaluator can run the model's float64 twin."""


def float64_twin(model: ModelProto, folded: Mapping[str, Callable[[], np.ndarray]] | None = None) -> ModelProto:
    """Return a copy of ``model`` whose float tensors, casts and value types are all float64.

    ``folded`` holds the main graph's constant values as lipcheck folded them, in the file's own
    arithmetic (a weight cast to float16 and back, a dequantized weight in float32): the nodes that
    compute them are replaced by those values, so the twin computes the file's weights, not
    float64 versions of them.
    """
    twin = ModelProto()
    twin.CopyFrom(model)
    opsets = {entry.domain or "": entry.version for entry in twin.opset_import}
    if folded and twin.ir_version >= 4:  # older files list every initializer among the inputs too
        _take_folded(twin.graph, folded)
    _graph(twin.graph, opsets)
    for function in twin.functions:
        _nodes(function.node, opsets, None)
    return twin


def _take_folded(graph: GraphProto, folded: Mapping[str, Callable[[], np.ndarray]]) -> None:
    """Replace the nodes whose outputs are all folded constants by those constants."""
    kept = []
    for node in graph.node:
        outputs = [name for name in node.output if name]
        if node.op_type == "Constant" or not outputs or not all(name in folded for name in outputs):
            kept.append(node)
            continue
        try:
            values = [np.asarray(folded[name]()) for name in outputs]
            if any(value.dtype.kind not in "fiub" for value in values):
                raise TypeError("not a numeric tensor")  # a sequence or strings: the node computes it
            tensors = [numpy_helper.from_array(value, name) for name, value in zip(outputs, values)]
        except Exception:  # a constant lipcheck cannot materialize: the node computes it
            kept.append(node)
            continue
        graph.initializer.extend(tensors)
    del graph.node[:]
    graph.node.extend(kept)


def node_count(model: ModelProto) -> int:
    """The number of nodes in the model, subgraphs and local functions included."""

    def count(graph: GraphProto) -> int:
        total = 0
        for node in graph.node:
            total += 1
            for attr in node.attribute:
                total += sum(count(g) for g in ([attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs))
        return total

    return count(model.graph) + sum(len(f.node) for f in model.functions)


class Float64Model:
    """One ONNX model evaluated in float64 at inputs given in graph-input order.

    ``graph`` is lipcheck's IR of the same file; with it, graphs onnxruntime cannot run in double
    are run in torch instead of the (much slower) reference evaluator.
    """

    def __init__(self, model: ModelProto, graph: Graph | None = None) -> None:
        self._model = model
        self.input_names = [v.name for v in model.graph.input if v.name not in {init.name for init in model.graph.initializer}]
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._session: Any = None
        self._reference: Any = None
        self._graph: Graph | None = None
        self.backend = ""
        errors = []
        self._constants: dict[str, Any] = {}
        self._folded = graph.constants if graph is not None else None
        self._ir = graph if graph is not None and not supported(graph) else None
        self._last: tuple[Sequence[np.ndarray], float] | None = None  # the inputs of the last IR run and its peak
        runs_in_torch = graph is not None and not supported(graph)
        try:
            if runs_in_torch and any(node.op_type in _NO_DOUBLE_KERNEL for node in model.graph.node):
                raise NotImplementedError("no double kernel for " + ", ".join(sorted(_NO_DOUBLE_KERNEL)))
            self._session = self._ort_session()
            self.backend = "onnxruntime"
        except Exception as exc:  # onnxruntime lacks a double kernel for some op
            errors.append(f"onnxruntime: {first_line(exc, 200)}")
            if runs_in_torch:
                self._graph, self.backend = graph, "torch"
                return
            try:
                self._reference = _reference_evaluator(self.twin)
                self.backend = "reference"
            except Exception as ref_exc:  # an op the reference evaluator does not implement either
                errors.append(f"reference evaluator: {first_line(ref_exc, 200)}")
        if not self.backend:
            raise NoFloat64Evaluation("no float64 evaluation of this graph (" + "; ".join(errors) + ")")

    @functools.cached_property
    def twin(self) -> ModelProto:
        """The float64 twin of the model (built only for onnxruntime or the reference evaluator)."""
        return float64_twin(self._model, self._folded)

    def _ort_session(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Unfused kernels: the twin's ops are evaluated as written, each in double.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if self.twin.ByteSize() < _IN_MEMORY_BYTES:
            return ort.InferenceSession(self.twin.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._tmp = tempfile.TemporaryDirectory(prefix="lipcheck-f64-")
        path = os.path.join(self._tmp.name, "twin.onnx")
        onnx.save_model(self.twin, path, save_as_external_data=True, location="twin.data")
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def peak(self, inputs: Sequence[np.ndarray]) -> float:
        """The largest 2-norm of any value the graph computes at ``inputs`` (lipcheck's IR in torch),
        or 0 where the IR cannot evaluate the graph; free when the last call ran the IR at them."""
        if self._last is not None and self._last[0] is inputs:
            return self._last[1]
        if self._ir is None:
            return 0.0
        import torch

        from lipcheck.graph.torch_eval import evaluate

        found = [0.0]
        with torch.no_grad():
            try:
                evaluate(self._ir, [torch.from_numpy(np.asarray(x)) for x in inputs], cache=self._constants, peak=found)
            except Exception:  # an op the IR evaluates differently from the file: no peak known
                return 0.0
        return found[0]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs at ``inputs`` (float inputs are widened to float64), as float64 arrays."""
        if self._graph is not None:
            import torch

            from lipcheck.graph.torch_eval import evaluate

            found = [0.0]
            with torch.no_grad():
                values = evaluate(self._graph, [torch.from_numpy(np.asarray(x)) for x in inputs], cache=self._constants, peak=found)
            self._last = (inputs, found[0])
            return [v.detach().numpy().astype(np.float64) for v in values]
        feeds = {name: (np.asarray(x, dtype=np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x)) for name, x in zip(self.input_names, inputs)}
        if self._session is not None:
            try:
                outputs = ort_run.run(self._session, None, feeds)
            except Exception:  # a kernel that fails only at run time: the reference evaluator takes over
                self._session = None
                self._reference = _reference_evaluator(self.twin)
                self.backend = "reference"
        if self._session is None:
            outputs = self._reference.run(None, feeds)
        return [np.asarray(o, dtype=np.float64) for o in outputs]


# -- the twin ---------------------------------------------------------------------------------------
def _graph(graph: GraphProto, opsets: dict[str, int]) -> None:
    for index, init in enumerate(graph.initializer):
        if init.data_type in _NARROW:
            graph.initializer[index].CopyFrom(_widen(init))
    for values in (graph.input, graph.output, graph.value_info):
        for value in values:
            _type(value.type)
    _nodes(graph.node, opsets, graph)


def _nodes(nodes: Any, opsets: dict[str, int], graph: GraphProto | None) -> None:
    casts: list[tuple[int, NodeProto]] = []
    for index, node in enumerate(nodes):
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and attr.t.data_type in _NARROW:
                attr.t.CopyFrom(_widen(attr.t))
            elif attr.type == AttributeProto.TENSORS:
                for i, tensor in enumerate(attr.tensors):
                    if tensor.data_type in _NARROW:
                        attr.tensors[i].CopyFrom(_widen(tensor))
            elif attr.type == AttributeProto.INT and attr.name in _TYPE_ATTRS and attr.i in _NARROW:
                attr.i = TensorProto.DOUBLE
            elif attr.type == AttributeProto.GRAPH:
                _graph(attr.g, opsets)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _graph(sub, opsets)
        if node.op_type == "Constant" and (node.domain or "") == "":
            _constant(node)
        for port in _float_only_ports(node, opsets):
            name = node.input[port]
            narrowed = f"{name}__lipcheck_f32_{index}_{port}"
            casts.append((index, helper.make_node("Cast", [name], [narrowed], to=TensorProto.FLOAT)))
            node.input[port] = narrowed
    for offset, (index, cast) in enumerate(casts):
        nodes.insert(index + offset, cast)


def _constant(node: NodeProto) -> None:
    """value_float(s) attributes hold float32; they become a float64 ``value`` tensor."""
    for i, attr in enumerate(node.attribute):
        if attr.name in ("value_float", "value_floats"):
            value = np.asarray(helper.get_attribute_value(attr), dtype=np.float32).astype(np.float64)
            del node.attribute[i]
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))
            return


def _float_only_ports(node: NodeProto, opsets: dict[str, int]) -> list[int]:
    """Inputs ONNX types as float32 only, of an op that otherwise accepts float64."""
    domain = node.domain or ""
    if domain not in ("", "ai.onnx") or node.op_type == "Cast":
        return []
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, opsets.get("", 1)), domain)
    except Exception:  # an op ONNX does not define: leave it as it is
        return []
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def types(type_str: str) -> set[str]:
        return allowed.get(type_str, {type_str})

    if not any("tensor(double)" in types(p.type_str) for p in [*schema.inputs, *schema.outputs]):
        return []  # no float64 form at all: the reference evaluator runs it in double anyway
    ports = []
    for i, name in enumerate(node.input):
        if not name:
            continue
        param = schema.inputs[min(i, len(schema.inputs) - 1)] if schema.inputs else None
        if param is not None and types(param.type_str) == {"tensor(float)"}:
            ports.append(i)
    return ports


def _widen(tensor: TensorProto) -> TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float64)
    return numpy_helper.from_array(array, tensor.name)


def _type(tp: TypeProto) -> None:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type" and tp.tensor_type.elem_type in _NARROW:
        tp.tensor_type.elem_type = TensorProto.DOUBLE
    elif kind == "sparse_tensor_type" and tp.sparse_tensor_type.elem_type in _NARROW:
        tp.sparse_tensor_type.elem_type = TensorProto.DOUBLE
    elif kind == "sequence_type":
        _type(tp.sequence_type.elem_type)
    elif kind == "optional_type":
        _type(tp.optional_type.elem_type)
    elif kind == "map_type":
        _type(tp.map_type.value_type)


# -- the reference evaluator -------------------------------------------------------------------------
def _reference_evaluator(model: ModelProto) -> Any:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=[_torch_conv_class()])


def _torch_conv_class() -> type:
    from onnx.reference.ops.op_conv import Conv

    class TorchConv(Conv):
        """Conv in float64 by torch (the reference's numpy loops are slow); other cases as the reference."""

        op_domain = ""

        def _run(  # type: ignore[no-untyped-def]
            self,
            X,
            W,
            B=None,
            auto_pad=None,
            dilations=None,
            group=None,
            kernel_shape=None,
            pads=None,
            strides=None,
        ):
            import torch

            n = X.ndim - 2
            pad_mode = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
            if X.dtype != np.float64 or W.dtype != np.float64 or n not in (1, 2, 3) or pad_mode not in ("NOTSET", "VALID"):
                return super()._run(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)
            pads = list(pads) if pads is not None and pad_mode == "NOTSET" else [0] * (2 * n)
            x = torch.tensor(np.asarray(X))
            # ONNX pads are (begin_1..begin_n, end_1..end_n); torch's F.pad wants (begin_n, end_n, ..., begin_1, end_1).
            torch_pads = [p for axis in reversed(range(n)) for p in (pads[axis], pads[axis + n])]
            if any(torch_pads):
                x = torch.nn.functional.pad(x, torch_pads)
            conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[n]
            y = conv(
                x,
                torch.tensor(np.asarray(W)),
                None if B is None else torch.tensor(np.asarray(B)),
                stride=tuple(strides or [1] * n),
                dilation=tuple(dilations or [1] * n),
                groups=int(group or 1),
            )
            return (y.numpy(),)

    TorchConv.__name__ = "Conv"
    return TorchConv
