"""ONNX's shape, data-movement, constant and control-flow ops, run in torch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lipcheck.graph.ir import Node
from lipcheck.graph.resize_index import attr_text, nearest_indices
from lipcheck.graph.torch_eval import Run, Unsupported, axis_of, ints, op


# -- shapes and data movement ------------------------------------------------------------------------
@op("Reshape")
def _reshape(run: Run, node: Node, ins: list[Any]) -> Any:
    x, shape = ins[0], ints(ins[1])
    if not int(node.attrs.get("allowzero", 0)):
        shape = [int(x.shape[i]) if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def _flatten(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axis = axis_of(int(node.attrs.get("axis", 1)), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), -1)


@op("Transpose")
def _transpose(run: Run, node: Node, ins: list[Any]) -> Any:
    perm = ints(node.attrs.get("perm")) or list(reversed(range(ins[0].dim())))
    return ins[0].permute(perm)


@op("Squeeze", "Unsqueeze")
def _squeeze(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else ints(node.attrs.get("axes"))
    if node.op == "Squeeze":
        dims = [axis_of(a, x.dim()) for a in axes] or [i for i, s in enumerate(x.shape) if s == 1]
        return x.reshape([s for i, s in enumerate(x.shape) if i not in dims])
    rank = x.dim() + len(axes)
    for axis in sorted(axis_of(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


@op("Concat")
def _concat(run: Run, node: Node, ins: list[Any]) -> Any:
    return torch.cat([t for t in ins if t is not None], dim=int(node.attrs["axis"]))


@op("Split")
def _split(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    axis = axis_of(int(node.attrs.get("axis", 0)), x.dim())
    sizes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else ints(node.attrs.get("split"))
    if not sizes:
        parts = len(node.outputs)
        step = -(-int(x.shape[axis]) // parts)
        sizes = [min(step, int(x.shape[axis]) - i * step) for i in range(parts)]
    return tuple(torch.split(x, sizes, dim=axis))


@op("Slice")
def _slice(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    if len(ins) == 1:  # opset < 10: starts, ends and axes are attributes
        starts, ends = ints(node.attrs.get("starts")), ints(node.attrs.get("ends"))
        axes = ints(node.attrs.get("axes")) or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = ints(ins[1]), ints(ins[2])
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis_of(axis, x.dim())
        size = int(x.shape[axis])
        if step < 0:
            lo = max(-1, min(size - 1, start + size if start < 0 else start))
            hi = max(-1, min(size - 1, end + size if end < 0 else end))
            x = x.index_select(axis, torch.arange(lo, hi, step))
        else:
            lo = max(0, min(size, start + size if start < 0 else start))
            hi = max(0, min(size, end + size if end < 0 else end))
            x = x[(slice(None),) * axis + (slice(lo, hi, step),)]
    return x


@op("Gather")
def _gather(run: Run, node: Node, ins: list[Any]) -> Any:
    x, index = ins
    axis = axis_of(int(node.attrs.get("axis", 0)), x.dim())
    index = torch.where(index < 0, index + x.shape[axis], index)
    out = x.index_select(axis, index.reshape(-1))
    return out.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1 :]))


@op("Shape")
def _shape(run: Run, node: Node, ins: list[Any]) -> Any:
    dims = list(ins[0].shape)
    start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
    return torch.tensor(dims[start : None if end is None else int(end)], dtype=torch.int64)


@op("Size")
def _size(run: Run, node: Node, ins: list[Any]) -> Any:
    return torch.tensor(ins[0].numel(), dtype=torch.int64)


@op("Constant")
def _constant(run: Run, node: Node, ins: list[Any]) -> Any:
    from onnx import numpy_helper

    for key in ("value", "sparse_value"):
        if key in node.attrs:
            return run.tensor(numpy_helper.to_array(node.attrs[key]))
    for key, dtype in (("value_float", np.float64), ("value_floats", np.float64), ("value_int", np.int64), ("value_ints", np.int64)):
        if key in node.attrs:
            return run.tensor(np.asarray(node.attrs[key], dtype=dtype))
    raise Unsupported(f"{node.label} (Constant): a string constant")


@op("ConstantOfShape")
def _constant_of_shape(run: Run, node: Node, ins: list[Any]) -> Any:
    from onnx import numpy_helper

    fill = numpy_helper.to_array(node.attrs["value"]) if "value" in node.attrs else np.zeros(1, np.float32)
    return run.tensor(np.full(ints(ins[0]), fill.reshape(-1)[0], dtype=fill.dtype))


@op("Expand")
def _expand(run: Run, node: Node, ins: list[Any]) -> Any:
    shape = torch.broadcast_shapes(tuple(ins[0].shape), tuple(ints(ins[1])))
    return ins[0].expand(shape)


@op("Tile")
def _tile(run: Run, node: Node, ins: list[Any]) -> Any:
    return ins[0].repeat(ints(ins[1]))


@op("Range")
def _range(run: Run, node: Node, ins: list[Any]) -> Any:
    start, limit, delta = (t.item() for t in ins)
    dtype = ins[0].dtype
    return torch.arange(start, limit, delta, dtype=dtype)


@op("Pad")
def _pad(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    pads = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else ints(node.attrs.get("pads"))
    if len(ins) > 3 and ins[3] is not None:
        raise Unsupported(f"{node.label} (Pad): axes input")
    mode = node.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    value = float(ins[2].reshape(-1)[0]) if len(ins) > 2 and ins[2] is not None and ins[2].numel() else float(node.attrs.get("value", 0.0))
    rank = x.dim()
    order: list[int] = []
    for i in reversed(range(rank)):
        order += [pads[i], pads[i + rank]]
    while len(order) > 2 and order[-2:] == [0, 0]:
        order = order[:-2]
    if mode == "constant":
        return F.pad(x, order, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return F.pad(x, order, mode=torch_mode)


@op("Resize", "Upsample")
def _resize(run: Run, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    mode = attr_text(node.attrs.get("mode", b"nearest"))
    transform = attr_text(node.attrs.get("coordinate_transformation_mode", b"half_pixel" if node.op == "Resize" else b"asymmetric"))
    nearest = attr_text(node.attrs.get("nearest_mode", b"round_prefer_floor" if node.op == "Resize" else b"floor"))
    if node.op == "Upsample":
        transform, nearest = "asymmetric", "floor"
    if any(node.attrs.get(name) for name in ("antialias", "axes", "keep_aspect_ratio_policy", "exclude_outside")):
        raise Unsupported(f"{node.label} ({node.op}): antialias, axes or aspect-ratio attributes")
    scales = ins[1] if node.op == "Upsample" else (ins[2] if len(ins) > 2 else None)
    sizes = ins[3] if node.op == "Resize" and len(ins) > 3 else None
    spatial = list(x.shape[2:])
    given_sizes = sizes is not None and bool(sizes.numel())
    if sizes is not None and sizes.numel():
        size = ints(sizes)[2:]
        factors = [float(np.float32(o) / np.float32(n)) for o, n in zip(size, spatial)]
        if ints(sizes)[:2] != list(x.shape[:2]):
            raise Unsupported(f"{node.label} ({node.op}): resizes the batch or channel axis")
    elif scales is not None and scales.numel():
        given = [float(s) for s in scales.reshape(-1).tolist()]
        if given[:2] != [1.0, 1.0]:
            raise Unsupported(f"{node.label} ({node.op}): scales the batch or channel axis")
        factors = given[2:]
        size = [int(math.floor(n * s)) for n, s in zip(spatial, factors)]
    else:
        raise Unsupported(f"{node.label} ({node.op}): neither scales nor sizes")
    if mode == "nearest":
        out = x
        for axis, (n, m, f) in enumerate(zip(spatial, size, factors)):
            index = nearest_indices(n, m, f, transform, nearest)
            if index is None:
                raise Unsupported(f"{node.label} ({node.op}): nearest with {transform} coordinates and {nearest} rounding")
            out = out.index_select(2 + axis, torch.as_tensor(index, dtype=torch.int64, device=x.device))
        return out
    if mode == "linear" and transform in ("pytorch_half_pixel", "align_corners", "half_pixel") and x.dim() in (3, 4, 5):
        if transform == "pytorch_half_pixel" and any(m == 1 for m in size):
            raise Unsupported(f"{node.label} ({node.op}): linear pytorch_half_pixel to a size of 1")
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        if transform == "align_corners" or given_sizes:
            return F.interpolate(x, size=size, mode=torch_mode, align_corners=transform == "align_corners")
        out = F.interpolate(x, scale_factor=factors, mode=torch_mode, align_corners=False, recompute_scale_factor=False)
        if list(out.shape[2:]) != size:
            raise Unsupported(f"{node.label} ({node.op}): linear scales whose output size torch rounds otherwise")
        return out
    raise Unsupported(f"{node.label} ({node.op}): mode {mode} with {transform} coordinates")


@op("If")
def _if(run: Run, node: Node, ins: list[Any]) -> Any:
    branch = node.subgraphs["then_branch" if bool(ins[0].reshape(-1)[0]) else "else_branch"]
    inner = Run(branch, run.dtype, run.values)
    for name in node.captures:
        if name not in inner.values:
            inner.values[name] = run.value(name)
    outs = inner.outputs()
    return tuple(outs) if len(outs) > 1 else outs[0]
