"""Sharded checkpoints: an index (``*.safetensors.index.json`` / ``*.bin.index.json``) whose
``weight_map`` names the shard holding each tensor, and model folders that contain one.

Shards must lie inside the index's folder. Each is read like a single file of its format (told
from its bytes), through the same guarded loader: lazily (safetensors) or memory-mapped (torch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lipcheck.errors import CorruptFileError, LipcheckError, RefusedFileError, UnsupportedFileError
from lipcheck.formats.named_tensors import TensorEntry, classify, natural_key
from lipcheck.model import Model

# What a model folder may hold, most specific first.
FOLDER_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin", "model.onnx", "model.pt", "model.pth")
_MODEL_SUFFIXES = (".safetensors", ".onnx", ".pt", ".pth", ".bin", ".ckpt")


def resolve_folder(folder: Path) -> Path:
    """The model file inside a folder: a known name, else the only model-looking file."""
    for name in FOLDER_FILES:
        if (folder / name).is_file():
            return folder / name
    indexes = sorted(folder.glob("*.index.json"))
    if len(indexes) == 1:
        return indexes[0]
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _MODEL_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise LipcheckError(
            f"{folder} is a directory with no model file lipcheck recognizes ({', '.join(FOLDER_FILES[:2])}, …); point lipcheck at the model file"
        )
    names = ", ".join(p.name for p in candidates[:6])
    raise LipcheckError(f"{folder} is a directory with several model files ({names}); name the one to inspect")


def load(index: Path) -> Model:
    """Load every shard's tensors named by the index, in natural name order."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to shard file names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"cannot read {index} as a sharded-checkpoint index ({exc}); it needs a 'weight_map' of tensor name -> shard file") from None
    base = os.path.realpath(index.parent)
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    entries: list[TensorEntry] = []
    kinds = set()
    for shard, names in sorted(by_shard.items()):
        target = os.path.realpath(os.path.join(base, shard))
        if os.path.isabs(shard) or os.path.commonpath([base, target]) != base:
            raise RefusedFileError(f"{index} names shard '{shard}' outside its folder; lipcheck only reads shards beside the index")
        if not os.path.isfile(target):
            raise CorruptFileError(f"shard '{shard}' named by {index.name} is missing; download every shard")
        kind, found = _shard_entries(Path(target), names)
        kinds.add(kind)
        entries.extend(found)
    entries.sort(key=lambda e: natural_key(e.name))
    layers, skipped = classify(entries)
    kind = kinds.pop() if len(kinds) == 1 else "mixed"
    return Model(str(index), f"sharded {kind}", layers, skipped, [f"{len(by_shard)} shards read through {index.name}"])


def _shard_entries(path: Path, names: list[str]) -> tuple[str, list[TensorEntry]]:
    """The named tensors of one shard, read by the same guarded entry point as a single file of its format."""
    from lipcheck.formats import Format, detect

    fmt = detect(path)
    if fmt is Format.SAFETENSORS:
        from lipcheck.formats import safetensors_file

        kind, found = "safetensors", safetensors_file.entries(path)
    elif fmt is Format.TORCH:
        from lipcheck.formats import torch_pickle

        kind, found = "state_dict", torch_pickle.tensor_entries(path)[0]
    else:
        raise UnsupportedFileError(f"shard {path.name} is a {fmt.value} file; shards must be safetensors or torch.save files")
    by_name = {entry.name: entry for entry in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CorruptFileError(f"shard {path.name} lacks {missing[0]} (and {len(missing) - 1} more) that the index names")
    return kind, [by_name[n] for n in names]
