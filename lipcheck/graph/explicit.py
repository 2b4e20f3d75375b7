"""Convolutions of small maps as explicit matrices, for the chains that LipSDP certifies.

A conv applied to one sample of static shape (C, *spatial) is the linear map x ↦ K x on the
flattened sample (C-order, as a reshape flattens it). Column j of K is the conv of the j-th basis
sample without its bias, so every entry of K is one kernel tap or 0. K is read as which tap: the
conv of the basis with the kernel's taps numbered 1, 2, … gives each entry's number (an integer,
recovered exactly whatever algorithm the conv uses), and K takes that tap's weight exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from lipcheck.graph.ir import Node

# Entries of one explicit operator (128 MiB in float64), and the widest sample a chain may carry.
MAX_ENTRIES = 1 << 24
MAX_WIDTH = 4096


def conv_matrix(node: Node, weight: torch.Tensor, sample: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]] | str:
    """The conv ``node`` with ``weight`` on samples of shape ``sample`` as a float64 matrix (out, in),
    with the output sample's shape; or why it is not built."""
    import torch

    from lipcheck.graph.torch_eval import Unsupported
    from lipcheck.graph.torch_ops import _conv

    if len(sample) != weight.dim() - 1 or len(sample) < 2:
        return f"{node.label} reads a sample of rank {len(sample)} with a {weight.dim()}-d kernel"
    columns = math.prod(sample)
    if columns > MAX_WIDTH:
        return f"{node.label} reads {columns} values per sample, more than the {MAX_WIDTH} an explicit operator takes"
    taps = torch.arange(1, weight.numel() + 1, dtype=torch.float64).reshape(weight.shape)
    try:
        with torch.no_grad():  # the output's size first, on one sample: the basis may be large
            rows = math.prod(_conv(None, node, [torch.zeros(1, *sample, dtype=torch.float64), taps]).shape[1:])  # type: ignore[arg-type]
            if rows > MAX_WIDTH or rows * columns > MAX_ENTRIES:
                return f"{node.label} writes {rows} values per sample, more than an explicit operator takes"
            basis = torch.eye(columns, dtype=torch.float64).reshape(columns, *sample)
            numbered = _conv(None, node, [basis, taps])  # type: ignore[arg-type]
    except (RuntimeError, Unsupported, ValueError) as exc:
        return f"{node.label} cannot be applied to a {'x'.join(map(str, sample))} sample ({exc})"
    if numbered.numel() == 0:
        return f"{node.label} writes no values"
    index = numbered.round()
    if float((numbered - index).abs().max()) > 0.25 or float(index.min()) < 0 or float(index.max()) > weight.numel():
        return f"{node.label}: its explicit operator could not be read tap by tap"
    index = index.long().reshape(columns, rows).mT
    flat = torch.cat([torch.zeros(1, dtype=torch.float64), weight.reshape(-1).to(torch.float64)])
    return flat[index].contiguous(), tuple(int(d) for d in numbered.shape[1:])


def transpose_index(sample: tuple[int, ...], perm: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """For a Transpose ``perm`` of a batch of samples: idx with flat(after) = flat(before)[idx], and
    the sample shape after; None when the permutation moves the batch axis."""
    if len(perm) != len(sample) + 1 or perm[0] != 0 or sorted(perm) != list(range(len(perm))):
        return None
    inner = tuple(p - 1 for p in perm[1:])
    index = np.arange(math.prod(sample)).reshape(sample).transpose(inner).reshape(-1)
    return index, tuple(sample[p] for p in inner)


def channel_vector(values: np.ndarray, sample: tuple[int, ...]) -> np.ndarray:
    """A per-channel vector (a conv's bias) spread over every position of a (C, *spatial) sample."""
    shaped = values.reshape(-1, *([1] * (len(sample) - 1)))
    return np.broadcast_to(shaped, sample).reshape(-1).astype(np.float64)
