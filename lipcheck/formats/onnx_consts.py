"""Helpers for ONNX constants: folding pass-through chains, dequantizing, payload checks, torch views."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from onnx import GraphProto, NodeProto, TensorProto, helper

from lipcheck.errors import CorruptFileError
from lipcheck.formats.limits import check_payload

Array = Callable[[], np.ndarray]


def fold_chain(node: NodeProto, inputs: Sequence[Any]) -> Array:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def value(i: int) -> np.ndarray | None:
        c = inputs[i] if i < len(inputs) else None
        return None if c is None else c.array()

    def need(i: int) -> np.ndarray:
        found = value(i)
        if found is None:
            raise ValueError(f"{node.op_type} input {i} is not a constant")
        return found

    def compute() -> np.ndarray:
        x = value(0)
        assert x is not None
        op = node.op_type
        if op == "Transpose":
            return np.transpose(x, attrs.get("perm"))
        if op == "Cast":
            return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        if op == "CastLike":
            like = value(1)
            return x.astype(like.dtype) if like is not None else x
        if op in ("Identity",):
            return x
        if op == "Neg":
            return -x
        if op in ("Mul", "Div"):
            y = need(1)
            if x.dtype == y.dtype and x.dtype in (np.float32, np.float64):
                # The product onnxruntime computes: one IEEE rounding in the tensors' own type.
                return np.multiply(x, y) if op == "Mul" else np.divide(x, y)
            if x.dtype == y.dtype and x.dtype.itemsize == 2 and x.dtype.kind in "fV":
                # float16 and bfloat16: onnxruntime computes these in float32 and may keep that result.
                x32, y32 = x.astype(np.float32), y.astype(np.float32)
                return np.multiply(x32, y32) if op == "Mul" else np.divide(x32, y32)
            x64 = x.astype(np.float64)
            return x64 * y if op == "Mul" else x64 / y
        if op == "DequantizeLinear":
            return dequantize(x, value(1), value(2), int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)))
        if op == "Reshape":
            shape = [int(d) for d in need(1)]
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
            return x.reshape(shape)
        if op in ("Squeeze", "Unsqueeze"):
            axes = attrs.get("axes")
            if axes is None and value(1) is not None:
                axes = [int(a) for a in need(1)]
            if op == "Squeeze":
                return np.squeeze(x, axis=tuple(axes) if axes is not None else None)
            for a in sorted(int(a) % (x.ndim + len(axes or [])) for a in axes or []):
                x = np.expand_dims(x, a)
            return x
        raise AssertionError(op)

    return compute


def folded_shape(node: NodeProto, inputs: Sequence[Any], fold: Array) -> tuple[int, ...]:
    """The shape of a folded value: permuted by Transpose, computed for reshapes, else broadcast."""
    main = inputs[0]
    assert main is not None
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        perm = perm or list(reversed(range(len(main.value_shape))))
        return tuple(main.value_shape[p] for p in perm)
    if node.op_type in ("Reshape", "Squeeze", "Unsqueeze"):
        return tuple(fold().shape)
    if node.op_type in ("Mul", "Div"):
        return tuple(np.broadcast_shapes(*(c.value_shape for c in inputs if c is not None)))
    return main.value_shape


def dequantize(x: np.ndarray, scale: np.ndarray | None, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    """(x - zero) * scale as onnxruntime computes it: the integer difference exact, converted to the
    scale's type, then one rounding of the product in that type."""
    assert scale is not None
    out_type = scale.dtype if np.issubdtype(scale.dtype, np.floating) else np.dtype(np.float64)
    integral = np.issubdtype(x.dtype, np.integer) and (zero is None or np.issubdtype(zero.dtype, np.integer))
    xf = x.astype(np.int64) if integral else x.astype(np.float64)
    zf = np.zeros(scale.shape, dtype=xf.dtype) if zero is None else zero.astype(xf.dtype)
    sf = scale.astype(out_type)

    def product(diff: np.ndarray, factor: np.ndarray) -> np.ndarray:
        return np.multiply(diff.astype(out_type), factor) if integral else diff * factor.astype(np.float64)

    if sf.ndim == 0 or sf.size == 1:
        return product(xf - zf.reshape(()), sf.reshape(()))
    axis %= x.ndim
    if block:
        sf = np.repeat(sf, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        zf = np.repeat(zf, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        return product(xf - zf, sf)
    shape = [1] * x.ndim
    shape[axis] = -1
    return product(xf - zf.reshape(shape), sf.reshape(shape))


def payload_fits(tensor: TensorProto, base: str) -> None:
    """Raw or external bytes must match the declared shape before anything is allocated."""
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize if tensor.data_type else 1
    if tensor.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return  # packed two per byte
    dims = tuple(tensor.dims)
    if tensor.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        offset = int(info.get("offset", 0) or 0)
        size = os.path.getsize(os.path.join(base, info.get("location", "")))
        length = int(info["length"]) if info.get("length") else size - offset
        if offset + length > size:
            raise CorruptFileError(f"external data of tensor '{tensor.name}' ends past its file; the data file is truncated")
        check_payload(tensor.name, dims, itemsize, length)
    elif tensor.HasField("raw_data") or not any(
        len(getattr(tensor, f)) for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
    ):
        check_payload(tensor.name, dims, itemsize, len(tensor.raw_data))


def to_torch(array: np.ndarray) -> torch.Tensor:
    if array.dtype.kind in "OSU":
        raise CorruptFileError(f"a layer weight holds {array.dtype.name} values, not numbers; re-export the model with numeric weights")
    if array.dtype.kind not in "fiu":  # bfloat16, float8 and friends: widen through numpy first
        array = array.astype(np.float32)
    return torch.from_numpy(np.array(array, copy=True))


def all_tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """Every TensorProto a graph stores (initializers, sparse ones, attribute tensors), subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse_tensors = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sparse in [*sparse_tensors, *attr.sparse_tensors]:
                yield sparse.values
                yield sparse.indices
            if attr.HasField("g"):
                yield from all_tensors(attr.g)
            for sub in attr.graphs:
                yield from all_tensors(sub)
