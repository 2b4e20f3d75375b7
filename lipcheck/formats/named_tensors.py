"""Turn a flat name -> tensor mapping (a state_dict, a safetensors file) into layers and skips.

Without a graph, a tensor's role is read from its name and shape, the way torch's modules name
their parameters: ``*.weight`` of 2 dims is a Linear, of 3-5 dims a Conv. Spectral-norm-trained
weights (``weight_orig``/``weight_u``/``weight_v`` and ``parametrizations.weight.original``) are
replaced by the effective weight the network computes with, W_orig / (u^T W_orig v).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lipcheck.formats import recurrent
from lipcheck.model import Layer, Skipped

# The last part of a 2-D weight's module path that names a lookup table (embed_out, a model's output
# head, and patch_embed.proj, a conv, are layers).
_EMBEDDING_NAME = re.compile(
    r"^(embed|embeds|embedding|embeddings|embed_tokens|embed_positions|\w*_embeddings?|wte|wpe|emb|tok_emb|pos_emb|shared)$", re.IGNORECASE
)
_SN_OLD = re.compile(r"^(?P<base>.*?)(?P<param>weight)_orig$")
_SN_NEW = re.compile(r"^(?P<base>.*?)parametrizations\.(?P<param>weight)\.original$")
_CONV_OPS = {3: "conv1d", 4: "conv2d", 5: "conv3d"}
_CONV_T_OPS = {3: "conv_transpose1d", 4: "conv_transpose2d", 5: "conv_transpose3d"}


@dataclass(frozen=True)
class TensorEntry:
    """A named tensor whose data is read only when needed."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]


def natural_key(name: str) -> list[object]:
    """Sort key that orders "layers.2" before "layers.10", as the network does."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def op_for_weight(ndim: int, transposed: bool = False) -> str | None:
    """Return the layer op for a weight of ``ndim`` dimensions, or None if none fits."""
    if ndim == 2:
        return "linear"
    return (_CONV_T_OPS if transposed else _CONV_OPS).get(ndim)


def dtype_name(dtype: torch.dtype) -> str:
    """Return the short name of a torch dtype ("float16", "bfloat16", ...)."""
    return str(dtype).removeprefix("torch.")


def _effective_weight(orig: TensorEntry, u: TensorEntry, v: TensorEntry, dim: int) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        w = orig.load().to(torch.float64)
        mat = w.movedim(dim, 0).reshape(w.shape[dim], -1)
        sigma_hat = torch.dot(u.load().to(torch.float64), mat @ v.load().to(torch.float64))
        return w / sigma_hat

    return load


def _spectral_norm_groups(entries: dict[str, TensorEntry]) -> dict[str, tuple[TensorEntry, TensorEntry, TensorEntry]]:
    """Find spectral-norm parametrized weights: original name -> (orig, u, v)."""
    groups: dict[str, tuple[TensorEntry, TensorEntry, TensorEntry]] = {}
    for name, entry in entries.items():
        if m := _SN_OLD.match(name):
            u_name, v_name = f"{m['base']}weight_u", f"{m['base']}weight_v"
        elif m := _SN_NEW.match(name):
            u_name = f"{m['base']}parametrizations.weight.0._u"
            v_name = f"{m['base']}parametrizations.weight.0._v"
        else:
            continue
        if u_name in entries and v_name in entries:
            groups[name] = (entry, entries[u_name], entries[v_name])
    return groups


def classify(entries: list[TensorEntry]) -> tuple[list[Layer], list[Skipped]]:
    """Split named tensors into layers (in the given order) and skipped 2-D+ tensors."""
    by_name = {e.name: e for e in entries}
    sn_groups = _spectral_norm_groups(by_name)
    shapes = {e.name: e.shape for e in entries}
    layers: list[Layer] = []
    skipped: list[Skipped] = []
    for entry in entries:
        if len(entry.shape) < 2:
            continue
        if entry.name in sn_groups:
            u, v = sn_groups[entry.name][1:]
            if _ambiguous_orientation(entry, u, v):
                skipped.append(
                    Skipped(
                        entry.name,
                        entry.shape,
                        "spectral-norm weight whose stored u, v fit both a conv and a transposed conv (as many input "
                        "as output channels) and give different scales; the file does not tell which the module is",
                    )
                )
                continue
            layers.append(_spectral_norm_layer(entry, u, v))
            continue
        cell = recurrent.torch_cell(entry.name, entry.shape, shapes)
        if cell is not None:
            layers.extend(
                recurrent.layers(
                    entry.name,
                    cell[0],
                    cell[1],
                    entry.shape,
                    dtype_name(entry.dtype),
                    entry.load,
                    f"{cell[0]} {'input' if '_ih_' in entry.name else 'hidden'}-to-hidden weight",
                )
            )
            continue
        reason = _skip_reason(entry)
        if reason:
            skipped.append(Skipped(entry.name, entry.shape, reason))
            continue
        op = op_for_weight(len(entry.shape))
        assert op is not None
        layers.append(Layer(entry.name, op, entry.shape, dtype_name(entry.dtype), entry.load))
    return layers, skipped


def _skip_reason(entry: TensorEntry) -> str | None:
    if "float8" in str(entry.dtype):
        return f"{dtype_name(entry.dtype)} tensor: lipcheck does not read float8 weights (their scales live elsewhere); export them dequantized"
    if not (entry.dtype.is_floating_point or entry.dtype.is_complex):
        return f"{dtype_name(entry.dtype)} tensor: indices or a buffer, not a weight"
    if entry.dtype.is_complex:
        return "complex tensor: lipcheck handles real weights only"
    if not entry.name.endswith("weight"):
        return "not a layer weight (its name does not end in 'weight')"
    module = entry.name.removesuffix("weight").rstrip("._")
    if len(entry.shape) == 2 and _EMBEDDING_NAME.match(module.split(".")[-1]):
        return "embedding table: a lookup, not a linear map"
    if op_for_weight(len(entry.shape)) is None:
        return f"{len(entry.shape)}-D weight: no linear or conv layer has this many dimensions"
    if any(d == 0 for d in entry.shape):
        return "empty weight (a zero-size dimension)"
    return None


def _ambiguous_orientation(orig: TensorEntry, u: TensorEntry, v: TensorEntry) -> bool:
    """Whether u, v fit both orientations of a square-channel conv weight with scales differing by
    more than rounding: torch uses dim 0 for Conv and dim 1 for ConvTranspose, and a state_dict does
    not say which module it came from."""
    shape = orig.shape
    if len(shape) <= 2 or shape[0] != shape[1] or u.shape[0] != shape[0]:
        return False
    w, uu, vv = orig.load().to(torch.float64), u.load().to(torch.float64), v.load().to(torch.float64)
    scales = [float(torch.dot(uu, w.movedim(d, 0).reshape(w.shape[d], -1) @ vv)) for d in (0, 1)]
    return abs(scales[0] - scales[1]) > 1e-9 * max(abs(scales[0]), abs(scales[1]), 1e-300)


def _spectral_norm_layer(orig: TensorEntry, u: TensorEntry, v: TensorEntry) -> Layer:
    # torch's spectral_norm uses dim=1 for ConvTranspose; the stored u's length tells which.
    dim = 1 if (u.shape[0] != orig.shape[0] and len(orig.shape) > 2 and u.shape[0] == orig.shape[1]) else 0
    op = op_for_weight(len(orig.shape), transposed=dim == 1) or "linear"
    return Layer(
        name=orig.name,
        op=op,
        shape=orig.shape,
        dtype=dtype_name(orig.dtype),
        load=_effective_weight(orig, u, v, dim),
        warm_u=u.load,
        note=f"spectral-norm trained: effective weight = {orig.name} / (u^T W v) with the stored u, v",
    )


def sn_vector_names(orig_name: str) -> tuple[str, str]:
    """The stored u and v names that belong to a spectral-norm ``weight_orig``/``original`` tensor."""
    if m := _SN_OLD.match(orig_name):
        return f"{m['base']}weight_u", f"{m['base']}weight_v"
    if m := _SN_NEW.match(orig_name):
        return f"{m['base']}parametrizations.weight.0._u", f"{m['base']}parametrizations.weight.0._v"
    raise KeyError(orig_name)
