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
    entries = math.prod(int(k) for k in a.get("kernel_shape", []))
    if node.op == "LpPool":
        # A p-norm over n entries is n^(1/p - 1/2)-Lipschitz in l2 for p < 2, 1-Lipschitz for p >= 2.
        p = float(a.get("p", 2))
        if p < 1.0:
            return walk.unbounded(node, "an LpPool with p < 1 is no norm")
        return lip * math.sqrt(copies) * entries ** max(0.0, 1.0 / p - 0.5) * (1 + 2.0**-50)
    pads = [int(p) for p in a.get("pads", [])]
    auto = a.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    padded = any(pads) or auto not in ("NOTSET", "VALID", "")
    # Border windows average fewer entries: padded ones unless pads count, and with ceil_mode the
    # windows running past the end (onnxruntime divides those by the entries they hold).
    if (padded and not int(a.get("count_include_pad", 0))) or int(a.get("ceil_mode", 0)):
        return lip * math.sqrt(copies)
    return lip * math.sqrt(copies / entries)


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
    found = _axes(axes, len(shape)) if shape else None
    if shape and found and all(shape[ax] for ax in found):
        return lip / math.sqrt(math.prod(shape[ax] or 1 for ax in found))
    return lip


def _axes(axes: list[int], rank: int) -> set[int] | None:
    """The distinct axes named (negative ones counted from the end, as ONNX reads them), or None if
    one is out of range: an axis named twice is still reduced once."""
    if any(not -rank <= ax < rank for ax in axes):
        return None
    return {ax % rank for ax in axes}


@rule("ReduceSum")
def reduce_sum(walk: Walk, node: Node, ins: list[float]) -> float:
    """A sum over n entries is sqrt(n)-Lipschitz; unknown sizes leave it unbounded."""
    shape = walk.graph.shapes.get(node.inputs[0])
    axes_const = walk.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    axes = [int(x) for x in (axes_const.ravel() if axes_const is not None else node.attrs.get("axes", []))]
    if not shape or not all(shape):
        return walk.unbounded(node, "a sum over axes whose size lipcheck does not know")
    if len(node.inputs) > 1 and node.inputs[1] and axes_const is None:
        axes = list(range(len(shape)))  # axes computed at run time: the worst case sums everything
    axes = axes or ([] if int(node.attrs.get("noop_with_empty_axes", 0)) else list(range(len(shape))))
    found = _axes(axes, len(shape))
    if found is None:
        return walk.unbounded(node, "a sum over an axis the input does not have")
    return ins[0] * math.sqrt(math.prod(shape[ax] or 1 for ax in found))  # every size is known here


@rule("AdaptiveAveragePool", "AdaptiveMaxPool")
def adaptive_pool(walk: Walk, node: Node, ins: list[float]) -> float:
    """Adaptive pools (TorchScript): an entry sits in at most 2 windows per axis, 1 where m divides n.

    PyTorch's window for output i spans [floor(i·n/m), ceil((i+1)·n/m)); consecutive windows
    overlap by at most one entry when m <= n, so an entry lies in at most c = 2 windows per axis (1
    when m divides n, the windows then tiling the axis), and every window holds at least
    w = floor(n/m) entries. A max weighs each entry at most 1: the constant is sqrt(∏ c). A mean
    over a window W has ‖mean(x)‖² ≤ Σ_W x²/|W| (Cauchy–Schwarz), so the constant is
    sqrt(∏ c / ∏ w): 1/√n for a global mean. With m > n or n unknown windows can share more, so it is
    not bounded. A global pool of unknown input size is bounded by 1 (a mean's norm is at most 1).
    """
    size = [int(s) if s is not None else 0 for s in node.attrs.get("output_size", [])]
    shape = walk.graph.shapes.get(node.inputs[0])
    sides = [n if isinstance(n, int) else None for n in shape[-len(size) :]] if size and shape and len(shape) >= len(size) else []
    if size and all(s == 1 for s in size) and (not sides or None in sides):
        return ins[0]  # a global mean (norm <= 1) or a global max
    if not size or any(s <= 0 for s in size) or not sides:
        return walk.unbounded(node, "an adaptive pool whose input or output size lipcheck could not read")
    axes = [(m, n) for m, n in zip(size, sides) if n is not None]
    if len(axes) < len(size) or any(m > n for m, n in axes):
        return walk.unbounded(node, "an adaptive pool that enlarges an axis copies entries an unknown number of times")
    copies = math.prod(1 if n % m == 0 else 2 for m, n in axes)
    if node.op == "AdaptiveMaxPool":
        return ins[0] * math.sqrt(copies)
    window = math.prod(n // m for m, n in axes)
    return ins[0] * math.sqrt(copies / window) * (1 + 2.0**-50)
