"""The input index ONNX's nearest Resize reads for each output of an axis, as ONNX defines it."""

from __future__ import annotations

from typing import Any

import numpy as np


def nearest_indices(n: int, m: int, scale: float, coordinate: str, rounding: str, dtype: Any = np.float32) -> np.ndarray | None:
    """Indices into an axis of n read by its m outputs, the coordinates computed in ``dtype``
    (onnxruntime computes them in float32); None for a mode ONNX does not define."""
    y = np.arange(m, dtype=dtype)
    s, half = dtype(scale), dtype(0.5)
    if coordinate == "half_pixel" or (coordinate == "pytorch_half_pixel" and m > 1):
        x = (y + half) / s - half
    elif coordinate == "pytorch_half_pixel":
        x = np.zeros_like(y)
    elif coordinate == "align_corners":
        x = y * dtype(n - 1) / dtype(m - 1) if m > 1 else np.zeros_like(y)
    elif coordinate == "asymmetric":
        x = y / s
    elif coordinate == "tf_half_pixel_for_nn":
        x = (y + half) / s
    else:
        return None
    if rounding == "floor":
        index = np.floor(x)
    elif rounding == "ceil":
        index = np.ceil(x)
    elif rounding == "round_prefer_ceil":
        index = np.floor(x + half)
    elif rounding == "round_prefer_floor":
        index = np.ceil(x - half)
    else:
        return None
    return np.clip(index, 0, n - 1).astype(np.int64)


def attr_text(value: object) -> str:
    """A string attribute as text (ONNX stores them as bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
