"""Distinct labels for the nodes of an ONNX graph, shared by the reader, the IR and the writer."""

from __future__ import annotations

from collections.abc import Sequence

from onnx import NodeProto


def node_labels(nodes: Sequence[NodeProto]) -> list[str]:
    """One distinct label per node of a graph: its name, else op_index; a label already taken gets #index.

    Runtimes refuse two nodes of one name, but the checker accepts them: a layer must never be
    looked up by a label that another node shares.
    """
    labels: list[str] = []
    taken: set[str] = set()
    for index, node in enumerate(nodes):
        label = node.name or f"{node.op_type}_{index}"
        if label in taken:
            label = f"{label}#{index}"
        taken.add(label)
        labels.append(label)
    return labels
