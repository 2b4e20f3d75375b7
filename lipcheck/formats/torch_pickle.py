"""PyTorch checkpoints written by torch.save: state_dicts and the dicts that wrap them.

Files are read with ``torch.load(..., weights_only=True)`` only: no pickled code ever runs.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch

from lipcheck.errors import CorruptFileError, LipcheckError, RefusedFileError, first_line
from lipcheck.formats.limits import check_zip
from lipcheck.formats.named_tensors import TensorEntry, classify, sn_vector_names
from lipcheck.model import Model, WeightEdit

# Where checkpoints keep the model's weights, most likely first.
_MODEL_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "params", "weights")
_EMA_KEYS = ("ema", "model_ema", "state_dict_ema", "ema_state_dict", "ema_model")
# Training state that holds tensors but is never the model.
_NOT_MODEL = re.compile(r"optim|sched|scaler|callbacks|loops|hyper_param|hparams|amp|rng", re.IGNORECASE)


# Callables that run code or touch the system when a pickle calls them: never allowed, whatever the user says.
_RUNS_CODE_MODULES = ("os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "pickle", "marshal", "ctypes", "socket", "code", "pty")
_RUNS_CODE_BUILTINS = {"eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "open", "input", "breakpoint", "globals", "vars"}


def runs_code(dotted: str) -> bool:
    """Whether module.Name is a callable that would let a pickle run code or reach the system."""
    module_name, _, attr = dotted.rpartition(".")
    if module_name in ("builtins", "__builtin__", ""):
        return attr in _RUNS_CODE_BUILTINS
    return any(module_name == m or module_name.startswith(f"{m}.") for m in _RUNS_CODE_MODULES)


def resolve_globals(names: tuple[str, ...]) -> list[Any]:
    """Import the classes/functions named module.Name that the user allows in a checkpoint."""
    import importlib

    found: list[Any] = []
    for dotted in names:
        if runs_code(dotted):
            raise LipcheckError(f"--allow-global {dotted}: it would let the file run code; lipcheck never allows it")
        module_name, _, attr = dotted.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attr) if module_name else None
        except (ImportError, AttributeError, ValueError):
            obj = None
        if obj is None or not callable(obj):
            raise LipcheckError(f"--allow-global {dotted}: no such class or function; write module.Name, e.g. argparse.Namespace")
        found.append(obj)
    return found


def _reason(exc: BaseException) -> str:
    """What torch's message says went wrong, without its advice about unsafe loading or internals."""
    text = first_line(exc, 200)
    if "zip archive" in text or "central directory" in text:
        return "its zip archive is damaged"
    if "Weights only load failed" in text or "weights_only" in text:
        return "its pickle is not one of tensors"
    return text.split(". ")[0]


def read(path: Path, allow_globals: tuple[str, ...] = ()) -> Any:
    """Load a torch.save file with weights_only=True, mapping failures to LipcheckErrors.

    Every torch.save file lipcheck reads comes through here, so each one (single file or shard)
    passes the zip-inflation guard first. ``allow_globals`` (module.Name) widens weights-only
    loading by exactly those objects.
    """
    check_zip(path)
    allowed = resolve_globals(allow_globals)
    try:
        # torch warns while rebuilding some tensors (sparse CSR is "beta"): not the user's concern.
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # Files in the legacy (pre-zip) format cannot be memory-mapped.
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        pairs = re.findall(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(exc))
        found = sorted({name for pair in pairs for name in pair if name})
        if not found:  # no refused object named: the bytes are not a pickle lipcheck can read
            raise CorruptFileError(
                f"cannot read {path} as a PyTorch checkpoint: it is neither a torch.save zip "
                "archive nor a pickle of tensors; is the file complete? re-save or re-download "
                "it"
            ) from None
        needs = f" (it needs {', '.join(found)})" if found else ""
        if any(runs_code(name) for name in found):
            hint = "; some of them run code, which lipcheck never allows"
        else:
            hint = f"; if you trust them, allow exactly these with --allow-global {' --allow-global '.join(found)}" if found else ""
        raise RefusedFileError(
            f"{path} holds Python objects that weights-only loading refuses{needs}; lipcheck never runs "
            f"pickled code: re-save the weights with torch.save(model.state_dict(), PATH){hint}"
        ) from None
    except LipcheckError:
        raise
    except Exception as exc:  # torch raises many types for corrupt files
        raise CorruptFileError(f"cannot read {path} as a PyTorch checkpoint ({_reason(exc)}); is the file complete? re-save or re-download it") from None


def _holds_tensors(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.dim() >= 2
    if isinstance(obj, Mapping):
        return any(_holds_tensors(v) for v in obj.values())
    return False


def _flatten(obj: Mapping[str, Any] | list[Any] | tuple[Any, ...], prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor under a mapping, named by its key path; tuples and lists (a quantized layer's packed
    weight and bias) by their positions, so none drops out unreported."""
    out: list[tuple[str, torch.Tensor]] = []
    items = obj.items() if isinstance(obj, Mapping) else enumerate(obj)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out.append((name, value))
        elif isinstance(value, (Mapping, list, tuple)):
            out.extend(_flatten(value, f"{name}."))
    return out


def select_state_dict(obj: Any, key: str | None) -> tuple[Mapping[str, Any], str | None, list[str]]:
    """Find the model's weights in a loaded checkpoint.

    Returns the mapping, the key path it sits under (None for a bare state_dict), and notes.
    """
    if not isinstance(obj, Mapping):
        raise LipcheckError(f"the file holds a {type(obj).__name__}, not a state_dict; save the weights with torch.save(model.state_dict(), PATH)")
    if key is not None:
        node: Any = obj
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise LipcheckError(f"checkpoint has no key '{key}'; its top-level keys are: {_keys(obj)}")
            node = node[part]
        if not _holds_tensors(node):
            raise LipcheckError(f"checkpoint key '{key}' holds no weight tensors; top-level keys are: {_keys(obj)}")
        return node, key, []
    candidates = [k for k, v in obj.items() if isinstance(k, str) and not _NOT_MODEL.search(k) and _holds_tensors(v)]
    top = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if top:
        nested = [c for c in candidates if not isinstance(obj[c], torch.Tensor)]
        if not nested:
            return obj, None, []
        if any(v.dim() >= 2 for v in top.values()):
            # Weights at the top level are the model; the nested sets (an EMA copy, say) are others.
            return (
                (_TopLevelTensors(obj) if isinstance(obj, MutableMapping) else top),
                None,
                [f"checkpoint also holds weights under {', '.join(repr(n) for n in nested)}: pass --key to inspect them"],
            )
        # Only counters or vectors at the top level: a wrapper around the nested sets.
    for preferred in (*_MODEL_KEYS, *_EMA_KEYS):
        if preferred in candidates:
            others = [c for c in candidates if c != preferred]
            notes = [f"checkpoint also holds weights under {', '.join(repr(o) for o in others)}: pass --key to inspect them"] if others else []
            return obj[preferred], preferred, notes
    if len(candidates) == 1:
        return obj[candidates[0]], candidates[0], []
    if not candidates:
        raise LipcheckError(f"no weight tensors found in the checkpoint; its top-level keys are: {_keys(obj)}")
    raise LipcheckError(f"the checkpoint holds several models ({', '.join(candidates)}); choose one with --key, e.g. --key {candidates[0]}")


class _TopLevelTensors(MutableMapping[Any, Any]):
    """A checkpoint's top-level tensors alone (it also nests other weight sets); writes go to the checkpoint."""

    def __init__(self, checkpoint: MutableMapping[Any, Any]) -> None:
        self._checkpoint = checkpoint

    def __getitem__(self, key: Any) -> Any:
        value = self._checkpoint[key]
        if not isinstance(value, torch.Tensor):
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self._checkpoint[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._checkpoint[key]

    def __iter__(self) -> Iterator[Any]:
        return (k for k, v in self._checkpoint.items() if isinstance(v, torch.Tensor))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _keys(obj: Mapping[str, Any]) -> str:
    keys = [str(k) for k in obj.keys()]
    return ", ".join(keys[:12]) + (" ..." if len(keys) > 12 else "") if keys else "(none)"


def _constant(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    if tensor.layout != torch.strided:  # a sparse weight is the same linear map as its dense form
        return lambda: tensor.to_dense()
    return lambda: tensor


def tensor_entries(path: Path, key: str | None = None, allow_globals: tuple[str, ...] = ()) -> tuple[list[TensorEntry], str | None, list[str]]:
    """Every tensor of the file's state_dict, with the key path it sits under and notes (see select_state_dict)."""
    state, where, notes = select_state_dict(read(path, allow_globals), key)
    entries = [TensorEntry(name, tuple(t.shape), t.dtype, _constant(t)) for name, t in _flatten(state)]
    return entries, where, notes


def load(path: Path, key: str | None = None, allow_globals: tuple[str, ...] = ()) -> Model:
    """Load a state_dict or a checkpoint dict that wraps one."""
    entries, where, notes = tensor_entries(path, key, allow_globals)
    layers, skipped = classify(entries)
    model = Model(str(path), "state_dict" if where is None else "checkpoint", layers, skipped, notes)
    if where is not None:
        model.notes.insert(0, f"weights read from checkpoint key '{where}'")
    return model


def _slots(obj: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(flattened name, container, key) for every tensor, as ``_flatten`` names them."""
    out: list[tuple[str, Any, Any]] = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out.append((name, obj, key))
        elif isinstance(value, Mapping):
            out.extend(_slots(value, f"{name}."))
    return out


def _by_storage(slots: list[tuple[str, Any, Any]]) -> dict[int, list[tuple[str, Any, Any]]]:
    """The checkpoint's dense, non-empty tensors grouped by the storage they live in."""
    groups: dict[int, list[tuple[str, Any, Any]]] = {}
    for slot in slots:
        tensor = slot[1][slot[2]]
        if tensor.layout == torch.strided and tensor.numel():
            groups.setdefault(tensor.untyped_storage().data_ptr(), []).append(slot)
    return groups


def _aliases(tensor: torch.Tensor, groups: dict[int, list[tuple[str, Any, Any]]], name: str) -> list[tuple[str, Any, Any]]:
    """Other names for the same tensor; a different view of its storage cannot be rewritten apart from it."""
    if tensor.layout != torch.strided:
        return []
    same: list[tuple[str, Any, Any]] = []
    for other_name, container, key in groups.get(tensor.untyped_storage().data_ptr(), []):
        other = container[key]
        if other_name == name:
            continue
        if other.storage_offset() == tensor.storage_offset() and other.shape == tensor.shape and other.stride() == tensor.stride():
            same.append((other_name, container, key))
        else:
            raise LipcheckError(
                f"{name} shares its storage with {other_name} in another shape; normalize cannot divide one without changing the other: "
                f"leave it out with --layers, or save the checkpoint with separate tensors"
            )
    return same


def save(src: Path, dst: Path, edits: list[WeightEdit], key: str | None = None, allow_globals: tuple[str, ...] = ()) -> bool:
    """Write ``src`` with the edits applied to ``dst``; every other object is kept as loaded.

    Returns whether the checkpoint also holds optimizer state (whose moments are now stale).
    """
    obj = read(src, allow_globals)
    state, _, _ = select_state_dict(obj, key)
    found = _slots(state)
    slots = {name: (container, k) for name, container, k in found}
    groups = _by_storage(found)  # read before any edit replaces a tensor
    divided: set[str] = set()
    for edit in edits:
        if edit.vectors is not None:
            for slot_name, vector in zip(sn_vector_names(edit.name), edit.vectors):
                container, k = slots[slot_name]
                container[k] = vector.to(container[k].dtype).clone()
        if edit.divisor is not None and edit.name not in divided:
            container, k = slots[edit.name]
            tensor = container[k]
            scaled = (tensor.to_dense().to(torch.float64) / edit.divisor).to(tensor.dtype)
            scaled = scaled if tensor.layout == torch.strided else scaled.to_sparse(layout=tensor.layout)
            # Tied weights (one tensor under several names) stay one tensor, divided once.
            for alias_name, alias_container, alias_key in _aliases(tensor, groups, edit.name):
                alias_container[alias_key] = scaled
                divided.add(alias_name)
            container[k] = scaled
    torch.save(obj, dst)
    return isinstance(obj, Mapping) and any("optim" in str(k) for k in obj)
