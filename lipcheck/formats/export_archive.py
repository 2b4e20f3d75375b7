"""torch.export archives (.pt2, written by ``torch.export.save``): the checks before torch's loader reads one.

The archive is read with torch's own loader, ``torch.export.load``, but only after lipcheck has
checked that nothing in it can make that loader run code. What the loader does (torch 2.13,
``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``), and how each
path is closed:

* Weights and constants stored as raw bytes (``use_pickle: false`` in the payload configs) are
  read as plain storage: safe. A payload with ``use_pickle: true`` is read with
  ``torch.load(..., weights_only=False)``, custom objects with ``torch._C._pickle_load_obj``, opaque
  objects with ``pickle.loads``, and legacy ``data/weights/<model>.pt`` files are unpickled later
  the same way: any of these means refusal.
* The sample inputs (``data/sample_inputs/<model>.pt``) are loaded with ``weights_only=True`` and,
  if that fails, again with ``weights_only=False``. lipcheck loads them first with
  ``weights_only=True`` and refuses the archive if that fails, so torch's first, identical
  attempt succeeds and its fallback never runs.
* An AOTInductor directory makes the loader open a compiled shared library; archives from before
  the pt2 layout take a fallback path through pickles. Only the members of the plain layout are
  accepted, so neither path is reached.
* The graph JSON is turned into an FX graph whose Python source torch generates and ``exec``-s:
  node names, argument names, attribute paths and forward argument names land in that source
  verbatim, and symbolic-shape expressions go through ``sympy.sympify`` (an ``eval``). lipcheck
  requires names to be identifiers, paths to be dotted identifiers, expressions to use only
  numbers, operators and known symbols or functions, no string to hold a line break Python
  would honour inside a comment, and every call to be a registered ``aten``/``prims`` operator
  (or an ``operator`` arithmetic function), so the generated source holds nothing from the file
  but identifiers and literals, and running the graph runs only torch operators.
* Shape guards (``guards_code``) are also turned into Python source and exec-ed when the program
  becomes a module: lipcheck makes the module without guards, and refuses a guard that is not one
  line of plain comparison characters.

The archive is read into memory once: the checks and torch's loader see the same bytes. Every
archive also passes the zip-inflation guard first.
"""

from __future__ import annotations

import contextlib
import io
import json
import keyword
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lipcheck.errors import CorruptFileError, LipcheckError, RefusedFileError, UnsupportedFileError, first_line
from lipcheck.formats.limits import check_zip

MODEL = "model"  # the program torch.export.save writes and torch.export.load returns
_MEMBERS = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|\.data/\w+\.pkl_version"
    r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+|data/sample_inputs/model\.pt"
    r"|extra/[\w.\-/]+)"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_OPERATOR = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
_PY_OPERATORS = {"getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_"}
# Names a symbolic-shape expression may use: torch's shape symbols (s0, u3, ...) and these functions.
_SYMBOL = re.compile(r"[a-z]{1,3}\d+")
_SYMPY_NAMES = {
    "FloorDiv",
    "ModularIndexing",
    "Where",
    "PythonMod",
    "Mod",
    "CleanDiv",
    "CeilToInt",
    "FloorToInt",
    "CeilDiv",
    "LShift",
    "RShift",
    "PowByNatural",
    "FloatPow",
    "FloatTrueDiv",
    "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat",
    "TruncToInt",
    "RoundToInt",
    "RoundDecimal",
    "ToFloat",
    "Identity",
    "Max",
    "Min",
    "Eq",
    "Ne",
    "Lt",
    "Le",
    "Gt",
    "Ge",
    "And",
    "Or",
    "Not",
    "Abs",
    "floor",
    "ceiling",
    "oo",
    "True",
    "False",
    "Integer",
    "Rational",
    "Float",
}
_EXPR_TOKEN = re.compile(r"\s+|\d+(\.\d+)?(e[-+]?\d+)?|[A-Za-z_][A-Za-z0-9_]*|\*\*|[<>=!]=|[-+*/%<>(),~&|]")
# A shape guard torch writes (``L['x'].size()[0] <= 64``): torch turns guards into Python source and
# execs it when a program is made a module. lipcheck never asks torch for guards, and accepts only
# guards made of these tokens: numbers, quoted keys, operators and the names below.
_GUARD_TOKEN = re.compile(r" +|\d+(\.\d+)?|'[A-Za-z0-9_]*'|\"[A-Za-z0-9_]*\"|[A-Za-z_][A-Za-z0-9_]*|\*\*|//|[<>=!]=|[-+*/%<>()\[\].,]")
_GUARD_NAMES = {"L", "size", "stride", "storage_offset", "numel", "dim", "and", "or", "not", "True", "False", "math", "floor", "ceil", "inf"}
# Characters that end a line in Python source, other than the newline itself.
_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00]")
# Keys of the graph JSON whose string values end up in generated source as attribute paths.
_PATH_KEYS = {"parameter_name", "buffer_name", "tensor_constant_name", "user_input_name", "fqn", "target", "custom_obj_name", "lifted_tensor_constant_name"}


def _control_flow(path: Path) -> UnsupportedFileError:
    return UnsupportedFileError(
        f"{path} holds control flow (torch.cond, while_loop, map) as subgraphs, which lipcheck does not read; "
        "export the model without data-dependent control flow, or to ONNX, and inspect that"
    )


def _refuse(path: Path, why: str) -> RefusedFileError:
    return RefusedFileError(
        f"{path}: {why}; lipcheck refuses this .pt2 because loading it could run code. "
        "Re-export the model with torch.export.export and save it with torch.export.save"
    )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch.export's warnings and log records (it logs tracebacks on bad files)."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export", "torch.export.pt2_archive")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_strings(path: Path, obj: Any, key: str = "", in_nodes: bool = False) -> None:
    """Walk the graph JSON and refuse any string that could become code (see the module docstring)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str) or _LINE_BREAKS.search(k):
                raise _refuse(path, f"the graph has a malformed key {k!r}")
            if k in ("custom_obj_values",) and v:
                raise _refuse(path, "the graph holds custom (torchbind) objects")
            if k == "as_graph":
                raise _control_flow(path)
            if k == "as_custom_obj":
                raise _refuse(path, "the graph passes a custom object to an operator")
            _check_strings(path, v, k, in_nodes=k == "nodes")
        return
    if isinstance(obj, list):
        for item in obj:
            if in_nodes and isinstance(item, dict):
                _check_target(path, item.get("target"))
                _check_strings(path, {k: v for k, v in item.items() if k != "target"}, key)
            elif key == "forward_arg_names":
                _check_name(path, item)
            else:
                _check_strings(path, item, key)
        return
    if not isinstance(obj, str):
        return
    if _LINE_BREAKS.search(obj):
        raise _refuse(path, f"a '{key}' string holds a control character")
    if key == "name":
        _check_name(path, obj)
    elif key in _PATH_KEYS and obj and not _PATH.fullmatch(obj):
        raise _refuse(path, f"the attribute path {obj[:80]!r} is not a dotted name")
    elif key == "expr_str":
        _check_expression(path, obj)
    elif key == "guards_code":
        _check_guard(path, obj)


def _check_guard(path: Path, text: str) -> None:
    pos = 0
    while pos < len(text):
        match = _GUARD_TOKEN.match(text, pos)
        token = match.group(0) if match is not None else text[pos]
        if match is None or ((token[0].isalpha() or token[0] == "_") and token not in _GUARD_NAMES and token not in _SYMPY_NAMES):
            raise _refuse(path, f"the shape guard {text[:80]!r} is not a plain comparison of input sizes (it holds {token[:40]!r})")
        pos = match.end()


def _check_name(path: Path, name: object) -> None:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name) or keyword.iskeyword(name):
        raise _refuse(path, f"the graph names a value {str(name)[:80]!r}, which is not a Python identifier")


def _check_target(path: Path, target: object) -> None:
    if not isinstance(target, str):
        raise _refuse(path, "a graph node has no operator")
    module, _, name = target.partition(".")
    if _OPERATOR.fullmatch(target) or (module == "_operator" and name in _PY_OPERATORS):
        return
    if target.startswith("torch.ops.higher_order."):
        raise _control_flow(path)
    raise _refuse(path, f"the graph calls {target[:80]!r}, which is not an aten or prims operator")


def _check_expression(path: Path, text: str) -> None:
    pos = 0
    while pos < len(text):
        match = _EXPR_TOKEN.match(text, pos)
        if match is None:
            raise _refuse(path, f"the shape expression {text[:80]!r} holds {text[pos]!r}")
        token = match.group(0)
        if token[0].isalpha() or token[0] == "_":
            if token in ("Symbol", "Integer") and text.startswith(token):
                raise UnsupportedFileError(
                    f"{path} has symbolic sizes (dynamic shapes from torch.export.Dim, or sizes read from values), "
                    "which lipcheck does not read; export it with static input shapes and inspect that"
                )
            if token not in _SYMPY_NAMES and not _SYMBOL.fullmatch(token):
                raise _refuse(path, f"the shape expression {text[:80]!r} names {token!r}")
        pos = match.end()


def _screen(path: Path, data: bytes) -> None:
    """Refuse the archive unless torch.export.load can read it without unpickling or exec-ing file content."""
    from torch.export.pt2_archive._package import PT2ArchiveReader

    with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(io.BytesIO(data)) as archive:
        if "serialized_exported_program.json" in archive.namelist():
            raise UnsupportedFileError(
                f"{path} is a torch.export archive in the layout of torch 2.7 and earlier, "
                "which stores weights as pickles; load and re-save it with torch.export.save "
                "under a current torch where you trust the file"
            )
    try:
        with quiet():
            reader = PT2ArchiveReader(io.BytesIO(data))
            names = reader.get_file_names()
    except Exception as exc:  # torch's zip reader raises RuntimeError or AssertionError
        first = first_line(exc)
        raise CorruptFileError(f"cannot read {path} as a torch.export archive ({first}); re-save it with torch.export.save") from None
    if len(set(names)) != len(names):
        raise _refuse(path, "the archive lists a member twice")
    for name in names:
        if not _MEMBERS.fullmatch(name) or ".." in name.split("/"):
            raise _refuse(
                path, f"the archive holds '{name[:100]}', which a plain torch.export.save archive does not (compiled code, pickled objects or a legacy layout)"
            )
    for required in (
        "archive_version",
        "models/model.json",
        "data/weights/model_weights_config.json",
        "data/constants/model_constants_config.json",
        "data/sample_inputs/model.pt",
    ):
        if required not in names:
            raise CorruptFileError(f"{path} has no '{required}'; it is not a complete torch.export archive: re-save it with torch.export.save")
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

    if reader.read_string("archive_version") != ARCHIVE_VERSION_VALUE:
        raise UnsupportedFileError(
            f"{path} is a torch.export archive of another layout version; re-save it with this torch ({torch.__version__}) via torch.export.save"
        )
    for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
        try:
            payloads = json.loads(reader.read_string(config))["config"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise CorruptFileError(f"{path}: '{config}' is not valid JSON; re-save the model with torch.export.save") from None
        if not isinstance(payloads, dict):
            raise CorruptFileError(f"{path}: '{config}' holds no payload table; re-save the model")
        for fqn, meta in payloads.items():
            if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
                raise _refuse(path, f"'{fqn}' is stored as a pickle")
            if not isinstance(meta.get("path_name"), str) or not re.fullmatch(r"(weight|tensor)_\d+", meta["path_name"]):
                raise _refuse(path, f"'{fqn}' is stored as a {str(meta.get('path_name'))[:40]!r} object, not a tensor")
            if not _PATH.fullmatch(str(fqn)):
                raise _refuse(path, f"the weight name {str(fqn)[:80]!r} is not a dotted name")
    try:
        graph = json.loads(reader.read_string("models/model.json"))
    except (ValueError, UnicodeDecodeError):
        raise CorruptFileError(f"{path}: the graph (models/model.json) is not valid JSON; re-save the model") from None
    _check_strings(path, graph)
    try:
        with quiet():
            torch.load(io.BytesIO(reader.read_bytes("data/sample_inputs/model.pt")), map_location="cpu", weights_only=True)
    except Exception:  # anything weights-only loading refuses would send torch to weights_only=False
        raise _refuse(path, "its sample inputs hold objects that weights-only loading refuses") from None


def read(path: Path) -> torch.export.ExportedProgram:
    """Load a .pt2 archive with torch.export.load once the checks of the module docstring pass."""
    check_zip(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LipcheckError(f"{path} does not exist; check the path") from None
    except OSError as exc:
        raise LipcheckError(f"cannot open {path} ({exc.strerror}); check its permissions") from None
    _screen(path, data)
    try:
        with quiet():
            return torch.export.load(io.BytesIO(data))
    except Exception as exc:  # the deserializer raises many types for inconsistent archives
        first = first_line(exc)
        raise CorruptFileError(f"cannot read {path} as a torch.export archive ({first}); re-export the model and save it with torch.export.save") from None
