"""lipcheck: how Lipschitz is a trained network? Measure it, certify it, enforce it."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "inspect", "LipcheckError"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `lipcheck --version` does not pay for torch.
    if name == "inspect":
        from lipcheck.api import inspect

        return inspect
    if name == "LipcheckError":
        from lipcheck.errors import LipcheckError

        return LipcheckError
    raise AttributeError(name)
