"""Pools and means: windows that overlap copy entries; averages divide."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lipcheck.graph.rules import rule

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk


@rule("MaxPool", "AveragePool", "LpPool")
def pool(walk: Walk, node: Node, ins: list[float]) -> float:
    """An entry lies in at most prod(ceil(k/s)) windows; an average divides by the window size."""
    a, lip = node.attrs, ins[0]
    kernel = [int(k) for k in a.get("kernel_shape", [])]
    strides = [int(s) for s in a.get("strides", [1] * len(kernel))]
    dilations = [int(d) for d in a.get("dilations", [1] * len(kernel))]
    if not kernel:
        return walk.unbounded(node, "a pool without kernel_shape")
    if any(d != 1 for d in dilations):
        kernel = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]  # windows that span more: count them so
    copies = math.prod(-(-k // s) for k, s in zip(kernel, strides))
    if node.op == "MaxPool":
        return lip * (1.0 if all(s >= k for k, s in zip(kernel, strides)) else math.sqrt(copies))
    if node.op == "LpPool":
        return lip * math.sqrt(copies)
    pads = [int(p) for p in a.get("pads", [])]
    if (any(pads) or int(a.get("ceil_mode", 0))) and not int(a.get("count_include_pad", 0)):
        return lip * math.sqrt(copies)  # border windows average fewer entries
    return lip * math.sqrt(copies / math.prod(int(k) for k in a.get("kernel_shape", [])))


@rule("GlobalAveragePool", "ReduceMean")
def mean(walk: Walk, node: Node, ins: list[float]) -> float:
    """A mean over n entries is 1/sqrt(n)-Lipschitz; with sizes unknown, 1."""
    lip = ins[0]
    shape = walk.graph.shapes.get(node.inputs[0])
    if node.op == "GlobalAveragePool":
        axes = list(range(2, len(shape))) if shape else []
    else:
        axes_const = walk.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
        axes = [int(x) for x in (axes_const.ravel() if axes_const is not None else node.attrs.get("axes", []))]
    if shape and axes and all(shape[ax] for ax in axes):
        return lip / math.sqrt(math.prod(shape[ax] or 1 for ax in axes))
    return lip


@rule("ReduceSum")
def reduce_sum(walk: Walk, node: Node, ins: list[float]) -> float:
    """A sum over n entries is sqrt(n)-Lipschitz; unknown sizes leave it unbounded."""
    shape = walk.graph.shapes.get(node.inputs[0])
    axes_const = walk.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    axes = [int(x) for x in (axes_const.ravel() if axes_const is not None else node.attrs.get("axes", []))]
    if not shape or not all(shape):
        return walk.unbounded(node, "a sum over axes whose size lipcheck does not know")
    axes = axes or ([] if int(node.attrs.get("noop_with_empty_axes", 0)) else list(range(len(shape))))
    return ins[0] * math.sqrt(math.prod(shape[ax] or 1 for ax in axes))  # every size is known here


@rule("AdaptiveAveragePool", "AdaptiveMaxPool")
def adaptive_pool(walk: Walk, node: Node, ins: list[float]) -> float:
    """Adaptive pools (TorchScript): to size 1 a global pool; else an entry sits in at most 2 windows per axis.

    PyTorch's window for output i spans [floor(i·n/m), ceil((i+1)·n/m)); consecutive windows
    overlap by at most one entry when m <= n, so an entry lies in at most 2 windows per axis, each
    weighing it at most 1. With m > n or n unknown windows can share more, so it is not bounded.
    """
    size = [int(s) if s is not None else 0 for s in node.attrs.get("output_size", [])]
    if size and all(s == 1 for s in size):
        return ins[0]  # a global mean (norm <= 1) or a global max
    shape = walk.graph.shapes.get(node.inputs[0])
    if not size or any(s <= 0 for s in size) or not shape or len(shape) < len(size):
        return walk.unbounded(node, "an adaptive pool whose input or output size lipcheck could not read")
    if any(n is None or m > n for m, n in zip(size, shape[-len(size) :])):
        return walk.unbounded(node, "an adaptive pool that enlarges an axis copies entries an unknown number of times")
    return ins[0] * math.sqrt(2.0 ** len(size))
