"""File formats: detect a model file's format from its bytes and load it into a Model."""

from __future__ import annotations

import enum
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

from lipcheck.errors import CorruptFileError, LipcheckError, UnsupportedFileError, first_line
from lipcheck.formats.handlers import HANDLERS, Options
from lipcheck.model import Model, WeightEdit


class Format(str, enum.Enum):
    """The file formats lipcheck reads."""

    TORCH = "torch"  # torch.save output: a state_dict or a checkpoint dict
    TORCHSCRIPT = "torchscript"
    SAFETENSORS = "safetensors"
    ONNX = "onnx"
    SHARDED = "sharded"  # an index json naming the shard of each tensor
    TORCH_EXPORT = "torch_export"  # torch.export.save output (.pt2): an ExportedProgram


_EXTENSIONS = {
    ".pt": Format.TORCH,
    ".pth": Format.TORCH,
    ".bin": Format.TORCH,
    ".ckpt": Format.TORCH,
    ".tar": Format.TORCH,
    ".safetensors": Format.SAFETENSORS,
    ".onnx": Format.ONNX,
    ".pt2": Format.TORCH_EXPORT,
}
_PICKLE_PROTOCOL_2 = b"\x80\x02"


def named_format(path: Path) -> Format | None:
    """The format a file name's extension names, if it names one."""
    return _EXTENSIONS.get(path.suffix.lower())


def extensions(fmt: Format) -> list[str]:
    """The extensions that name a format."""
    return [ext for ext, kind in _EXTENSIONS.items() if kind == fmt]


def detect(path: Path) -> Format:
    """Tell a file's format from its first bytes, falling back to its extension."""
    if path.is_dir():
        raise LipcheckError(f"{path} is a directory; point lipcheck at a model file inside it")
    if path.name.endswith(".index.json"):
        return Format.SHARDED
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except FileNotFoundError:
        raise LipcheckError(f"{path} does not exist; check the path") from None
    except OSError as exc:
        raise LipcheckError(f"cannot open {path} ({exc.strerror}); check its permissions") from None
    if not head:
        raise LipcheckError(f"{path} is empty; re-export or re-download the model")
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(_PICKLE_PROTOCOL_2):
        return Format.TORCH
    if _looks_like_safetensors(head):
        return Format.SAFETENSORS
    by_ext = _EXTENSIONS.get(path.suffix.lower())
    if by_ext is not None:
        return by_ext
    raise UnsupportedFileError(
        f"cannot tell the format of {path}; lipcheck reads PyTorch (.pt/.pth/.bin/.ckpt), TorchScript, torch.export (.pt2), safetensors and ONNX files"
    )


def _zip_kind(path: Path) -> Format:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return Format.TORCH  # let the torch loader report what is wrong
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return Format.TORCHSCRIPT
    # torch.export archives: <root>/archive_format and <root>/models/<name>.json (before torch 2.8, the
    # program's JSON at the top level); torch.save zips hold <root>/data.pkl instead.
    if any(n.endswith("/archive_format") or n == "serialized_exported_program.json" for n in names):
        return Format.TORCH_EXPORT
    return Format.TORCH


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return 2 <= size < 100_000_000 and head[8:9] == b"{"


def load(path: Path, key: str | None = None, input_shapes: tuple[tuple[int, ...], ...] | None = None, allow_globals: tuple[str, ...] = ()) -> Model:
    """Load any supported model file into the neutral Model.

    ``input_shapes`` (one per model input) fixes the dynamic input sizes of a graph format.
    """
    if path.is_dir():
        from lipcheck.formats.sharded import resolve_folder

        path = resolve_folder(path)
    if path.exists() and not path.is_file() and not _is_device_file(path):
        raise LipcheckError(f"{path} is not a regular file (a pipe or socket would be read without end); give the model file itself")
    fmt = detect(path)
    if allow_globals and fmt is not Format.TORCH:
        raise LipcheckError(f"--allow-global applies to PyTorch checkpoints; {path} is {fmt.value}")
    if key is not None and fmt is not Format.TORCH:
        raise LipcheckError(f"--key selects a model inside a PyTorch checkpoint; {path} is {fmt.value}")
    options = Options(key, input_shapes, allow_globals)
    if input_shapes is not None and fmt is Format.TORCH_EXPORT:
        model = _load(path, fmt, replace(options, input_shapes=None))
        model.notes.append("--input-shape does not change a .pt2's conv bounds: the export fixes each conv's input size")
        return model
    if input_shapes is not None and not HANDLERS[fmt.value].takes_input_shape:
        model = _load(path, fmt, replace(options, input_shapes=None))
        model.notes.append("--input-shape needs a graph (ONNX, TorchScript): this file has none, so convs keep the geometry-free bound")
        return model
    return _load(path, fmt, options)


def _is_device_file(path: Path) -> bool:
    """Character and block devices (/dev/zero, /dev/null): their reads end, and the format check refuses them."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _load(path: Path, fmt: Format, options: Options) -> Model:
    try:
        return HANDLERS[fmt.value].load(path, options)
    except (LipcheckError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a parser tripping over malformed content: the file is corrupt
        raise CorruptFileError(f"cannot read {path} as {fmt.value} ({type(exc).__name__}: {first_line(exc)}); the file is malformed: re-export it") from None


def save(fmt: Format, src: Path, dst: Path, edits: list[WeightEdit], options: Options) -> list[str]:
    """Write a copy of ``src`` in its own format with the weight edits applied; return warnings for the user."""
    writer = HANDLERS[fmt.value].save
    if writer is None:
        raise LipcheckError(f"lipcheck cannot write {fmt.value} files")
    return writer(src, dst, edits, options)


__all__ = ["Format", "Options", "detect", "load", "save"]
