"""Settings from ``[tool.lipcheck]`` in pyproject.toml (or ``--config PATH``).

Keys are the command-line flag names (``fail-above``; ``fail_above`` is accepted too). The CLI
applies the precedence: command line > ``LIPCHECK_*`` environment > config file > defaults.
"""

from __future__ import annotations

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
    "input-shape": (list, str),
    "key": (str,),
    "allow-global": (list,),
    "node-constant": (dict, list),
    "fail-if-grows": (int, float),
    "plot": (str,),
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
            raise LipcheckError(f"[tool.lipcheck] {raw} in {path} must be {' or '.join(t.__name__ for t in types)}, "
                                f"not {type(value).__name__}")
        out[key] = value
    return out, path
