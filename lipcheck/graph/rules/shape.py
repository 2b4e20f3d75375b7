"""Ops that move, select, copy or size entries: reshapes, slices, casts, padding, resizing."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.resize_index import attr_text, nearest_indices
from lipcheck.graph.rules import not_lipschitz, rule

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

# ONNX TensorProto float types: FLOAT, FLOAT16, DOUBLE, BFLOAT16 (and the float8 kinds).
_FLOAT_TYPES = {1, 10, 11, 16, 17, 18, 19, 20}


@rule(
    "Identity",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Split",
    "GlobalMaxPool",
    "DepthToSpace",
    "SpaceToDepth",
    "Neg",
    "ReduceMax",
    "ReduceMin",
)
def move(walk: Walk, node: Node, ins: list[float]) -> float:
    """Entries moved, selected or negated without changing any value's size: norm <= 1, for indices,
    axes and sizes that do not depend on the input (else which entries move jumps with it)."""
    if any(lip > 0.0 for lip in ins[1:]):
        return walk.unbounded(node, "indices, axes or sizes that depend on the input: which entries it takes jumps with them")
    return ins[0]


# Ops that draw random values: never constant, whatever their inputs (the walk checks this set too).
RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})
rule(*sorted(RANDOM), reason="draws random values: a different function at every run")(not_lipschitz)


@rule("Shape", "Size", "EyeLike", "Constant")
def sizes(walk: Walk, node: Node, ins: list[float]) -> float:
    """Outputs that depend only on shapes (fixed at the input shape): constant, 0. The shape of a value
    lipcheck cannot bound (the indices NonZero picks, say) may itself change with the input's values."""
    if any(math.isinf(lip) for lip in ins):
        return walk.unbounded(node, f"{node.op} of a value that lipcheck cannot bound, whose size may change with the input's values")
    return 0.0


@rule("ConstantOfShape", "Range", "NonZero")
def from_values(walk: Walk, node: Node, ins: list[float]) -> float:
    """Sizes or indices read from values: constant where those values are, else jumping with them."""
    if any(lip > 0.0 for lip in ins):
        return walk.unbounded(node, f"{node.op} of values that depend on the input: its result jumps with them")
    return 0.0


@rule("Dropout")
def dropout(walk: Walk, node: Node, ins: list[float]) -> float:
    """The identity at inference; in training mode a random mask scaled by 1/(1 - ratio)."""
    mode = walk.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.zeros(())
    if mode is None or mode.size != 1:
        return walk.unbounded(node, "a Dropout whose training mode lipcheck could not read")
    if not bool(mode.reshape(())):
        return ins[0]
    ratio = walk.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else np.asarray(0.5)
    if ratio is None or ratio.size != 1 or not 0.0 <= float(ratio.reshape(())) < 1.0:
        return walk.unbounded(node, "a training-mode Dropout whose ratio lipcheck could not read")
    return ins[0] / (1.0 - float(ratio.reshape(()))) * (1 + 2.0**-20)  # room for the scale rounded in float32


# ONNX float16, bfloat16 and the float8 types round far more coarsely than float32.
LOW_PRECISION = (
    "low precision: rounding to float16, bfloat16 or float8 in a Cast (a relative step of up to 2^-8 per entry "
    "for bfloat16, coarser for float8) is not counted; the bound is that of the same graph in real arithmetic"
)


@rule("CastLike")
def cast_like(walk: Walk, node: Node, ins: list[float]) -> float:
    """A cast to the type of its second input: to a float type it keeps values, to an integer it rounds."""
    name = node.inputs[1] if len(node.inputs) > 1 else ""
    stored = walk.graph.constants.get(name) if name else None
    target = np.asarray(stored()).dtype if stored is not None else None
    if target is None or not np.issubdtype(target, np.floating):
        return walk.unbounded(node, "a CastLike to a type lipcheck could not read as a float type (a cast to an integer type rounds, which is not Lipschitz)")
    if np.finfo(target).nmant < 23 and ins[0] > 0.0:
        walk.note(LOW_PRECISION)
    return ins[0]


@rule("Cast")
def cast(walk: Walk, node: Node, ins: list[float]) -> float:
    """A cast between float types keeps values (rounding aside); to an integer type it rounds."""
    to = int(node.attrs.get("to", 1))
    if to not in _FLOAT_TYPES:
        return walk.unbounded(node, "a cast to an integer type rounds, which is not Lipschitz")
    if to not in (1, 11) and ins[0] > 0.0:
        walk.note(LOW_PRECISION)
    return ins[0]


@rule("Pad")
def pad(walk: Walk, node: Node, ins: list[float]) -> float:
    """Constant padding adds constant entries; reflect, edge and wrap copy entries: sqrt(max copies)."""
    mode = node.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if sum(ins[1:2]) > 0.0 or sum(ins[3:4]) > 0.0:
        return walk.unbounded(node, "pads that depend on the input")
    if mode == "constant":
        if sum(ins[2:3]) == 0.0:
            return ins[0]
        src, out = walk.graph.shapes.get(node.inputs[0]), walk.graph.shapes.get(node.outputs[0])
        if not src or not out or not all(src) or not all(out):
            return walk.unbounded(node, "a padding value that depends on the input, copied an unknown number of times")
        added = float(np.prod(out)) - float(np.prod(src))  # type: ignore[arg-type]
        return ins[0] + ins[2] * math.sqrt(max(added, 0.0))
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
    """Per resized axis with scale s: nearest copies an entry at most ceil(s) times; linear rows sum to 1
    with at most 2·ceil(s) entries per column; cubic rows and columns by the kernel's absolute sums."""
    attrs = node.attrs
    mode = attr_text(attrs.get("mode", "nearest"))
    if any(lip > 0.0 for lip in ins[1:]):
        return walk.unbounded(node, "resize scales, sizes or region that depend on the input")
    if attr_text(attrs.get("coordinate_transformation_mode", "half_pixel")) == "tf_crop_and_resize":
        return walk.unbounded(node, "crop-and-resize zooms into a region of interest lipcheck does not read")
    scales = _resize_scales(walk, node)
    if scales is None:
        return walk.unbounded(node, "resize scales lipcheck could not read")
    up = np.ceil(np.maximum(scales, 1.0))
    if mode == "nearest":
        return ins[0] * math.sqrt(_nearest_copies(walk, node, scales))
    if mode == "linear":
        return ins[0] * math.sqrt(float(np.prod(2.0 * up)))
    if mode == "cubic":
        if int(attrs.get("exclude_outside", 0)) or (int(attrs.get("antialias", 0)) and bool(np.any(scales < 1.0))):
            return walk.unbounded(node, "cubic resize with exclude_outside or antialiased downscaling reweights taps lipcheck does not bound")
        rows, columns = cubic_sums(float(attrs.get("cubic_coeff_a", -0.75)))
        return ins[0] * math.sqrt(float(np.prod(rows * columns * up)))
    return walk.unbounded(node, f"resize mode {mode!r} lipcheck does not know")


def _nearest_copies(walk: Walk, node: Node, scales: np.ndarray) -> float:
    """The most times nearest resizing repeats one input entry: per axis counted on the index map
    ONNX defines (coordinate transform, rounding, clamping at the edges, where one entry can take
    more than ceil(s) outputs), in float32 and float64 alike. An axis of unknown size takes the worst
    of the sizes up to 64 (one more for a non-integer scale); modes it does not model, 2·ceil(s) + 2."""
    shape = walk.graph.shapes.get(node.inputs[0])
    axes = [int(a) for a in node.attrs.get("axes", range(len(scales)))] if shape else []
    if "coordinate_transformation_mode" in node.attrs or node.op == "Upsample":
        default = "half_pixel" if node.op == "Resize" else "asymmetric"
        modes = [(attr_text(node.attrs.get("coordinate_transformation_mode", default)), attr_text(node.attrs.get("nearest_mode", "round_prefer_floor")))]
    else:  # a torch graph's nearest (asymmetric, floor) or ONNX's default (half_pixel, round_prefer_floor)
        modes = [("half_pixel", attr_text(node.attrs.get("nearest_mode", "round_prefer_floor"))), ("asymmetric", "floor")]
    total = 1.0
    for k, s in enumerate(scales):
        n = shape[axes[k]] if shape and k < len(axes) and axes[k] < len(shape) else None
        sizes = [int(n)] if n else range(1, 65)  # an unknown size: the worst of the sizes up to 64
        counts = [_axis_copies(size, float(s), coordinate, rounding) for size in sizes for coordinate, rounding in modes]
        if any(c is None for c in counts):
            return 2.0 ** len(scales) * float(np.prod(np.ceil(np.maximum(scales, 1.0)) + 1.0))
        most = max(c for c in counts if c is not None)
        total *= most if n or float(s).is_integer() else most + 1.0
    return total


def _axis_copies(n: int, s: float, coordinate: str, rounding: str) -> float | None:
    m = int(math.floor(n * s + 1e-6))  # a scale read from sizes (sizes / n) may land an ulp below sizes
    if m <= 0 or s <= 0.0:
        return 1.0
    most = 0
    for dtype in (np.float32, np.float64):
        index = nearest_indices(n, m, s, coordinate, rounding, dtype)
        if index is None:
            return None
        most = max(most, int(np.bincount(index, minlength=n).max()))
    return float(most)


def _resize_scales(walk: Walk, node: Node) -> np.ndarray | None:
    """The scale of every resized axis: Upsample (X, scales), Resize-10 (X, scales), Resize-11+
    (X, roi, scales, sizes) with sizes read against the input's shape and keep_aspect_ratio_policy."""
    inputs = node.inputs
    index = 1 if node.op == "Upsample" or len(inputs) == 2 else 2
    given = walk.const(inputs[index]) if len(inputs) > index and inputs[index] else None
    if given is not None and given.size:
        return np.asarray(given, dtype=np.float64).ravel()
    sizes = walk.const(inputs[3]) if node.op == "Resize" and len(inputs) > 3 and inputs[3] else None
    shape = walk.graph.shapes.get(inputs[0])
    if sizes is None or not shape or not all(shape):
        return None
    axes = [int(a) for a in node.attrs.get("axes", range(len(shape)))]
    if len(axes) != sizes.size:
        return None
    ratio = np.asarray(sizes, dtype=np.float64).ravel() / np.asarray([shape[a] for a in axes], dtype=np.float64)
    policy = attr_text(node.attrs.get("keep_aspect_ratio_policy", "stretch"))
    if policy == "not_larger":
        ratio[:] = ratio.min()
    elif policy == "not_smaller":
        ratio[:] = ratio.max()
    return ratio


def cubic_sums(a: float) -> tuple[float, float]:
    """For the cubic kernel k with coefficient a: the most a row's |weights| sum to (max over the
    phase t of sum_m |k(t - m)|) and sum over the four unit intervals of max |k| (a column's sum per
    output phase), each on a fine grid plus the grid's worst slope times its step."""
    t = np.linspace(0.0, 1.0, 100_001)

    def k(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        inner = (a + 2) * x**3 - (a + 3) * x**2 + 1
        outer = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return np.where(x <= 1.0, inner, np.where(x < 2.0, outer, 0.0))

    slack = 2e-5 * (20.0 * abs(a) + 20.0)  # step 1e-5 times a bound on |k'| (both pieces), twice
    taps = [np.abs(k(t + m)) for m in (-2.0, -1.0, 0.0, 1.0)]
    rows = float(np.max(sum(taps))) + 4 * slack
    columns = float(sum(np.max(tap) for tap in taps)) + 4 * slack
    return rows, columns
