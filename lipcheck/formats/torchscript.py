"""TorchScript archives: weights together with the module type that uses each."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from lipcheck.errors import CorruptFileError
from lipcheck.formats.named_tensors import TensorEntry, classify, dtype_name, op_for_weight
from lipcheck.model import ConvGeometry, Layer, Model, Skipped

_EMBEDDINGS = {"Embedding", "EmbeddingBag"}
_TRANSPOSED = {"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
_CONVS = {"Conv1d", "Conv2d", "Conv3d"} | _TRANSPOSED
_LINEARS = {"Linear", "NonDynamicallyQuantizableLinear", "LazyLinear"}


def load(path: Path) -> Model:
    """Load a TorchScript archive with torch.jit.load and read each module's own parameters."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+ deprecates jit, not our user's problem
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch.jit raises RuntimeError and friends for bad archives
        raise CorruptFileError(f"cannot read {path} as a TorchScript archive ({str(exc).strip().splitlines()[0][:200]})") from None
    layers: list[Layer] = []
    skipped: list[Skipped] = []
    for prefix, sub in module.named_modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        own = [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]
        for local, tensor in own:
            name = f"{prefix}.{local}" if prefix else local
            shape = tuple(tensor.shape)
            if tensor.dim() < 2:
                continue
            if kind in _EMBEDDINGS:
                skipped.append(Skipped(name, shape, f"embedding table ({kind}): a lookup, not a linear map"))
            elif local == "weight" and (kind in _CONVS or kind in _LINEARS):
                op = "linear" if kind in _LINEARS else op_for_weight(tensor.dim(), kind in _TRANSPOSED)
                if op is None:
                    skipped.append(Skipped(name, shape, f"{kind} weight of unexpected shape {list(shape)}"))
                    continue
                layers.append(
                    Layer(name, op, shape, dtype_name(tensor.dtype), (lambda t=tensor: t.detach()), scope="",
                          geometry=_geometry(sub) if kind in _CONVS else None, note=f"module {prefix or '(root)'}: {kind}")
                )
            else:
                # Modules lipcheck does not know: fall back to the state_dict naming rules.
                found, skips = classify([TensorEntry(name, shape, tensor.dtype, (lambda t=tensor: t.detach()))])
                for layer in found:
                    layer.note = f"module {prefix or '(root)'}: {kind}; role guessed from the name"
                layers.extend(found)
                skipped.extend(skips)
    return Model(str(path), "torchscript", layers, skipped)


def _tuple(value: object, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(x) for x in value)  # type: ignore[union-attr]


def _geometry(sub: torch.nn.Module) -> ConvGeometry | None:
    """Read a scripted conv's hyper-parameters; traced modules do not keep them (None)."""
    try:
        stride = _tuple(sub.stride, 0)
        n = len(stride)
        padding = sub.padding
        if isinstance(padding, str):
            return ConvGeometry(stride, (), _tuple(sub.dilation, n), int(sub.groups),
                                _tuple(getattr(sub, "output_padding", (0,) * n), n), auto_pad=padding.upper())
        pads = _tuple(padding, n)
        return ConvGeometry(stride, pads + pads, _tuple(sub.dilation, n), int(sub.groups),
                            _tuple(getattr(sub, "output_padding", (0,) * n), n))
    except (AttributeError, RuntimeError, TypeError):
        return None
