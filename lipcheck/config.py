"""Settings from ``[tool.lipcheck]`` in pyproject.toml (or ``--config PATH``).

Keys are the command-line flag names (``fail-above``; ``fail_above`` is accepted too). Paths in
the file (models, output, plot) are relative to the file's folder, as ruff and coverage read
theirs. ``input-shape`` may be a table from model glob to shape(s), for projects with several
models. The CLI feeds the values to its framework as defaults, so the precedence is: command
line > ``LIPCHECK_*`` environment > config file > built-in defaults.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from pathlib import Path
from typing import Any

from lipcheck.errors import LipcheckError

# Key -> the Python types its value may have.
KEYS: dict[str, tuple[type, ...]] = {
    "models": (list,),
    "fail-above": (int, float),
    "fail-layer-above": (int, float),
    "layer-threshold": (dict, list),
    "bound": (str,),
    "strict": (bool,),
    "exit-zero": (bool,),
    "format": (str,),
    "output": (str,),
    "tol": (float,),
    "max-iter": (int,),
    "seed": (int,),
    "device": (str,),
    "input-shape": (list, str, dict),
    "key": (str,),
    "allow-global": (list,),
    "node-constant": (dict, list),
    "fail-if-grows": (int, float),
    "plot": (str,),
    "effort": (int, float),
    "lower": (bool,),
}


def find(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above ``start``."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load(path: Path | None, *, explicit: bool) -> tuple[dict[str, Any], Path | None]:
    """Read and validate ``[tool.lipcheck]``; an explicit --config must exist and parse."""
    if path is None:
        return {}, None
    if path.exists() and not path.is_file():  # a folder, or a pipe that would block the read
        raise LipcheckError(f"config {path} is not a regular file; give --config a TOML file")
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise LipcheckError(f"config file {path} does not exist; check the --config path") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LipcheckError(f"cannot read config {path} ({exc}); fix the TOML syntax") from None
    section = data.get("tool", {}).get("lipcheck")
    if section is None:
        if explicit and path.name != "pyproject.toml":
            section = data  # a dedicated lipcheck.toml may hold the keys at top level
        else:
            return {}, None
    if not isinstance(section, dict):
        raise LipcheckError(f"[tool.lipcheck] in {path} must be a table")
    out: dict[str, Any] = {}
    for raw, value in section.items():
        key = raw.replace("_", "-")
        if key not in KEYS:
            known = ", ".join(sorted(KEYS))
            raise LipcheckError(f"unknown key '{raw}' in [tool.lipcheck] of {path}; known keys: {known}")
        types = KEYS[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise LipcheckError(f"[tool.lipcheck] {raw} in {path} must be {' or '.join(t.__name__ for t in types)}, not {type(value).__name__}")
        if isinstance(value, float) and value != value:
            raise LipcheckError(f"[tool.lipcheck] {raw} in {path} is nan, not a number (a gate against NaN could never fail); write e.g. 10, 2.5 or 1e-6")
        out[key] = value
    return out, path


_PATH_KEYS = ("models", "output", "plot")
_PARAMETER = {"format": "output_format"}  # keys whose command-line parameter has another Python name


def _relative_to(base: Path, value: str) -> str:
    """A config path made relative to the working directory, read from the config's folder."""
    return value if os.path.isabs(value) else os.path.relpath(base / value)


def default_map(config: dict[str, Any], path: Path | None, params: set[str]) -> dict[str, Any]:
    """The framework's defaults for one command's ``params`` (Python names) from a loaded config.

    Pairs given as tables (layer-threshold, node-constant) become PATTERN=VALUE strings; a table
    of input shapes is left to :func:`shapes_for` and is not a default of the option.
    """
    out: dict[str, Any] = {}
    base = path.parent if path is not None else Path.cwd()
    for key, value in config.items():
        name = _PARAMETER.get(key, key.replace("-", "_"))
        if name not in params or (key == "input-shape" and isinstance(value, dict)):
            continue
        if key in _PATH_KEYS:
            value = [_relative_to(base, str(v)) for v in value] if isinstance(value, list) else _relative_to(base, value)
        elif isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]
        elif key == "input-shape" and isinstance(value, str):
            value = [value]
        out[name] = value
    return out


def shapes_for(config: dict[str, Any], path: Path | None, model: str) -> list[str] | None:
    """The input shapes the config's ``input-shape`` table gives one model (first matching glob)."""
    table = config.get("input-shape")
    if not isinstance(table, dict):
        return None
    base = path.parent if path is not None else Path.cwd()
    for pattern, shapes in table.items():
        full = _relative_to(base, str(pattern))
        if fnmatch.fnmatch(model, full) or fnmatch.fnmatch(os.path.basename(model), str(pattern)):
            if isinstance(shapes, str):
                return [shapes]
            if not isinstance(shapes, list):
                raise LipcheckError(f'input-shape for {pattern!r} in {path}: write a shape string like "1x3x224x224" or a list of them')
            return [str(s) for s in shapes]
    return None
