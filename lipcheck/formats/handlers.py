"""One small interface per format: how lipcheck loads it, and how normalize writes an edited copy.

Each format module keeps its own reader and writer; this table gives them one calling
convention, so loading and saving dispatch in one place. A new format is a Format member (in
``lipcheck.formats``), its detection, and one row here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipcheck.atomic import replacing
from lipcheck.errors import LipcheckError
from lipcheck.model import Model, WeightEdit

STALE_OPTIMIZER = "the checkpoint's optimizer state (moments) now describes the old weights; reset it before resuming training"


@dataclass(frozen=True)
class Options:
    """What the user asked for that a reader or writer may need."""

    key: str | None = None  # the model inside a PyTorch checkpoint
    input_shapes: tuple[tuple[int, ...], ...] | None = None  # fixes a graph's dynamic input sizes
    allow_globals: tuple[str, ...] = ()  # checkpoint globals the user allows
    mode: int | None = None  # permission bits of a written file (None: what the umask gives)


@dataclass(frozen=True)
class Handler:
    """A format's reader and (optional) writer, both taking :class:`Options`."""

    load: Callable[[Path, Options], Model]
    save: Callable[[Path, Path, list[WeightEdit], Options], list[str]] | None
    takes_input_shape: bool = False  # whether --input-shape changes what is read


def _module(name: str) -> Any:
    return importlib.import_module(f"lipcheck.formats.{name}")


def _replacing(write: Callable[[Path, Path, list[WeightEdit], Options], object]) -> Callable[[Path, Path, list[WeightEdit], Options], list[str]]:
    """A writer of one file, written to a temporary beside the output and renamed into place."""

    def save(src: Path, dst: Path, edits: list[WeightEdit], options: Options) -> list[str]:
        with replacing(dst, mode=options.mode) as (tmp,):
            write(src, tmp, edits, options)
        return []

    return save


def _save_torch(src: Path, dst: Path, edits: list[WeightEdit], options: Options) -> list[str]:
    with replacing(dst, mode=options.mode) as (tmp,):
        stale = _module("torch_pickle").save(src, tmp, edits, options.key, options.allow_globals)
    return [STALE_OPTIMIZER] if stale else []


def _save_sharded(src: Path, dst: Path, edits: list[WeightEdit], options: Options) -> list[str]:
    raise LipcheckError("normalize writes single-file models; merge the shards (or normalize each framework's own copy) first")


HANDLERS: dict[str, Handler] = {
    "torch": Handler(lambda p, o: _module("torch_pickle").load(p, o.key, o.allow_globals), _save_torch),
    "torchscript": Handler(
        lambda p, o: _module("torchscript").load(p, o.input_shapes), _replacing(lambda s, d, e, o: _module("torchscript").save(s, d, e)), takes_input_shape=True
    ),
    "safetensors": Handler(lambda p, o: _module("safetensors_file").load(p), _replacing(lambda s, d, e, o: _module("safetensors_file").save(s, d, e))),
    "onnx": Handler(
        lambda p, o: _module("onnx_graph").load(p, o.input_shapes), lambda s, d, e, o: _module("onnx_write").save(s, d, e, o.mode), takes_input_shape=True
    ),
    "sharded": Handler(lambda p, o: _module("sharded").load(p), _save_sharded),
    "torch_export": Handler(lambda p, o: _module("torch_export").load(p), _replacing(lambda s, d, e, o: _module("torch_export").save(s, d, e))),
}
