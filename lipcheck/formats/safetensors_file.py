"""safetensors files, read lazily one tensor at a time with safe_open."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from lipcheck.errors import CorruptFileError
from lipcheck.formats.edit import divided
from lipcheck.formats.named_tensors import TensorEntry, classify, natural_key, sn_vector_names
from lipcheck.model import Model, WeightEdit

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def entries(path: Path) -> list[TensorEntry]:
    """Every tensor's name, shape and dtype now; its data only when a layer asks for it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = sorted(handle.keys(), key=natural_key)
            slices = {name: handle.get_slice(name) for name in names}
            meta = {name: (tuple(s.get_shape()), s.get_dtype()) for name, s in slices.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"cannot read {path} as safetensors ({exc}); is the file complete?") from None

    def loader(name: str) -> Callable[[], torch.Tensor]:
        def load_tensor() -> torch.Tensor:
            with safe_open(str(path), framework="pt") as handle:
                return handle.get_tensor(name)

        return load_tensor

    return [TensorEntry(name, shape, _DTYPES.get(dtype, torch.uint8), loader(name)) for name, (shape, dtype) in meta.items()]


def load(path: Path) -> Model:
    """Load every tensor's name and shape now, and its data only when a layer asks for it."""
    layers, skipped = classify(entries(path))
    return Model(str(path), "safetensors", layers, skipped)


def save(src: Path, dst: Path, edits: list[WeightEdit]) -> None:
    """Write ``src`` with the edits applied to ``dst``, keeping every other tensor and the metadata."""
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    for edit in edits:
        if edit.vectors is not None:
            for name, vector in zip(sn_vector_names(edit.name), edit.vectors):
                tensors[name] = vector.to(tensors[name].dtype).contiguous()
        if edit.divisor is not None:
            tensor = tensors[edit.name]
            tensors[edit.name] = divided(tensor, edit.divisor).contiguous()
    save_file(tensors, str(dst), metadata=metadata)
