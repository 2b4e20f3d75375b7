"""Ops that move, select, copy or size entries: reshapes, slices, casts, padding, resizing."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.rules import rule

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

# ONNX TensorProto float types: FLOAT, FLOAT16, DOUBLE, BFLOAT16 (and the float8 kinds).
_FLOAT_TYPES = {1, 10, 11, 16, 17, 18, 19, 20}


@rule(
    "Identity",
    "Dropout",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "CastLike",
    "Split",
    "GlobalMaxPool",
    "DepthToSpace",
    "SpaceToDepth",
    "Neg",
    "ReduceMax",
    "ReduceMin",
)
def move(walk: Walk, node: Node, ins: list[float]) -> float:
    """Entries moved, selected or negated without changing any value's size: norm <= 1."""
    return ins[0]


@rule("Shape", "Size", "ConstantOfShape", "Range", "EyeLike", "NonZero", "Constant")
def sizes(walk: Walk, node: Node, ins: list[float]) -> float:
    """Outputs that do not depend continuously on activations (shapes, sizes): constant, 0."""
    return 0.0


@rule("Cast")
def cast(walk: Walk, node: Node, ins: list[float]) -> float:
    """A cast between float types keeps values (rounding aside); to an integer type it rounds."""
    if int(node.attrs.get("to", 1)) not in _FLOAT_TYPES:
        return walk.unbounded(node, "a cast to an integer type rounds, which is not Lipschitz")
    return ins[0]


@rule("Pad")
def pad(walk: Walk, node: Node, ins: list[float]) -> float:
    """Constant padding adds constant entries; reflect, edge and wrap copy entries: sqrt(max copies)."""
    mode = node.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if sum(ins[1:2]) > 0.0 or sum(ins[3:4]) > 0.0:
        return walk.unbounded(node, "pads that depend on the input")
    if mode == "constant":
        return ins[0] + sum(ins[2:3])
    found = pad_copies(walk, node, mode)
    if found is None:
        return walk.unbounded(node, f"{mode} padding with pads lipcheck could not read")
    return ins[0] * math.sqrt(found)


def pad_copies(walk: Walk, node: Node, mode: str) -> float | None:
    """The most times reflect/edge/wrap padding repeats one input entry, or None when pads are unknown.

    Per axis the count is exact where the axis size is known (numpy's padding of the indices, the
    same modes ONNX defines); otherwise ``1 + before + after`` bounds it (every added entry a copy of
    one and the same entry). The axes are independent, so the most copies is the product.
    """
    pads_const = walk.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    pads = [int(p) for p in (pads_const.ravel() if pads_const is not None else node.attrs.get("pads", []))]
    shape = walk.graph.shapes.get(node.inputs[0])
    rank = len(shape) if shape is not None else len(pads) // 2
    if not pads or len(pads) % 2 or mode not in ("reflect", "edge", "wrap"):
        return None
    axes_const = walk.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    axes = [int(a) % max(rank, 1) for a in axes_const.ravel()] if axes_const is not None else list(range(len(pads) // 2))
    if len(axes) != len(pads) // 2:
        return None
    total = 1.0
    for k, axis in enumerate(axes):
        before, after = max(pads[k], 0), max(pads[k + len(axes)], 0)
        size = shape[axis] if shape is not None and axis < len(shape) else None
        if size and min(pads[k], pads[k + len(axes)]) >= 0 and (mode != "reflect" or size > 1):
            index = np.pad(np.arange(size), (before, after), mode=mode)  # type: ignore[call-overload]
            total *= float(np.bincount(index).max())
        else:
            total *= 1.0 + before + after
    return total


@rule("Tile")
def tile(walk: Walk, node: Node, ins: list[float]) -> float:
    """Each entry copied prod(repeats) times: sqrt of that."""
    reps = walk.const(node.inputs[1])
    if reps is None:
        return walk.unbounded(node, "repeats lipcheck could not read")
    return ins[0] * math.sqrt(float(np.prod(reps))) if reps.size else ins[0]


@rule("Expand")
def expand(walk: Walk, node: Node, ins: list[float]) -> float:
    """Broadcasting copies each entry prod(out)/prod(in) times, from static shapes."""
    src, out = walk.graph.shapes.get(node.inputs[0]), walk.graph.shapes.get(node.outputs[0])
    if not src or not out or not all(src) or not all(out):
        return walk.unbounded(node, "an Expand whose shapes lipcheck does not know copies entries an unknown number of times")
    return ins[0] * math.sqrt(float(np.prod(out)) / float(np.prod(src)))  # type: ignore[arg-type]


@rule("Resize", "Upsample")
def resize(walk: Walk, node: Node, ins: list[float]) -> float:
    """Nearest copies each entry at most prod(ceil(s)) times; linear rows sum to 1 (2·ceil(s) per axis)."""
    mode = node.attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    lip = ins[0]
    scales = None
    for index in (2, 1):  # Resize: (X, roi, scales, sizes); Upsample: (X, scales)
        if len(node.inputs) > index:
            c = walk.const(node.inputs[index])
            if c is not None and c.size:
                scales = c.ravel()
                break
    if scales is None and len(node.inputs) > 3:
        size, shape = walk.const(node.inputs[3]), walk.graph.shapes.get(node.inputs[0])
        if size is not None and shape and all(shape):
            scales = np.asarray(size, dtype=np.float64).ravel() / np.asarray(shape, dtype=np.float64)
    if scales is None:
        return walk.unbounded(node, "resize scales lipcheck could not read")
    copies = float(np.prod(np.ceil(np.maximum(scales, 1.0))))
    if mode == "nearest":
        return lip * math.sqrt(copies)
    return lip * math.sqrt(float(np.prod(2.0 * np.ceil(np.maximum(scales, 1.0)))))
