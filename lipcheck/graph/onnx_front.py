"""ONNX front end: an ONNX graph as lipcheck's graph IR, each If/Loop/Scan body a subgraph of its node.

The ONNX reader (:mod:`lipcheck.formats.onnx_graph`) finds the layers and the constants of each
graph scope; this module turns the nodes into IR nodes with the reader's labels and scope paths,
so every layer finds the node that applies it, and folds the main graph's constant values.
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, GraphProto, NodeProto, helper

from lipcheck.formats import onnx_shapes, recurrent
from lipcheck.formats.onnx_labels import node_labels
from lipcheck.graph.fold import Constant, fold
from lipcheck.graph.ir import Graph, Node
from lipcheck.model import Layer

Shapes = dict[str, tuple[int | None, ...]]


def build(proto: onnx.ModelProto, constants: dict[str, dict[str, Constant]], layers: list[Layer], shapes: Shapes, dequantize: set[str]) -> Graph:
    """The main graph as IR; ``constants`` maps each scope path ("" for the main graph) to its constants."""
    inputs = [v.name for v in onnx_shapes.model_inputs(proto.graph)]
    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    graph, _ = _ir(proto.graph, "", inputs, constants, layers, dict(shapes), opsets)
    graph.dequantize = set(dequantize)
    graph.wide = _has_double(proto.graph)
    return graph


def _has_double(proto: GraphProto) -> bool:
    """Whether any value, constant or cast of the graph (or its bodies) is a double."""
    double = onnx.TensorProto.DOUBLE
    if any(v.type.tensor_type.elem_type == double for v in [*proto.input, *proto.output, *proto.value_info]):
        return True
    if any(t.data_type == double for t in proto.initializer):
        return True
    for node in proto.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == double:
                return True
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == double:
                return True
            if attr.type == onnx.AttributeProto.GRAPH and _has_double(attr.g):
                return True
            if attr.type == onnx.AttributeProto.GRAPHS and any(_has_double(g) for g in attr.graphs):
                return True
        if node.op_type == "CastLike":
            return True  # the target type comes from a value: take the wide range
    return False


def _ir(
    proto: GraphProto, path: str, inputs: list[str], constants: dict[str, dict[str, Constant]], layers: list[Layer], shapes: Shapes, opsets: dict[str, int]
) -> tuple[Graph, set[str]]:
    """One graph as IR, and the names it reads from enclosing graphs (its bodies' reads included).

    Labels and scope paths are the reader's, so a body's layers find their nodes: a node inside a
    body is labelled ``<scope path>/<node label>``.
    """
    nodes = []
    defined = set(inputs) | {init.name for init in proto.initializer}
    read: set[str] = set()
    labels = node_labels(proto.node)
    for index, node in enumerate(proto.node):
        local = labels[index]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.type != AttributeProto.GRAPH}
        if node.op_type in ("Softmax", "LogSoftmax") and (node.domain or "") in ("", "ai.onnx") and opsets.get("", 13) < 13:
            attrs["coerced_2d"] = 1  # before opset 13: one softmax over the input flattened from axis (default 1)
        subgraphs: dict[str, Graph] = {}
        captured: set[str] = set()
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                body_path = f"{path}/{local}.{attr.name}" if path else f"{local}.{attr.name}"
                body, free = _ir(attr.g, body_path, [v.name for v in attr.g.input], constants, layers, shapes, opsets)
                subgraphs[attr.name] = body
                captured |= free
        captured.discard("")
        nodes.append(
            Node(op_name(node), f"{path}/{local}" if path else local, tuple(node.input), tuple(node.output), attrs, subgraphs, tuple(sorted(captured)))
        )
        read |= {name for name in node.input if name} | captured
        defined |= set(node.output)
    own = dict(constants.get(path, {}))
    if not path:  # a body's values may depend on its formal inputs each iteration: fold the main graph only
        own = fold(proto, own, set(inputs), opsets, shapes)
    cells = {
        labels[index] for index, node in enumerate(proto.node) if node.op_type in recurrent.ONNX_GATES
    }  # their weights are layers, the recursion is not one
    layer_nodes = {
        (f"{path}/{layer.node}" if path else layer.node): i for i, layer in enumerate(layers) if layer.scope == path and layer.node and layer.node not in cells
    }
    graph = Graph(list(inputs), [v.name for v in proto.output], nodes, own, shapes, layer_nodes)
    return graph, read - defined


def op_name(node: NodeProto) -> str:
    """The op as rules know it: the ONNX name, prefixed with its domain outside the standard one.

    A contrib op may share a standard op's name with other semantics, so it never borrows the
    standard op's rule or evaluation.
    """
    domain = node.domain or ""
    return node.op_type if domain in ("", "ai.onnx") else f"{domain}.{node.op_type}"
