"""lipcheck: how Lipschitz is a trained network? Measure it, certify it, enforce it."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "inspect", "bound", "check", "normalize", "spectral_normalize", "LipcheckError", "Settings"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `lipcheck --version` does not pay for torch.
    if name in ("inspect", "bound", "check"):
        from lipcheck import api

        return getattr(api, name)
    if name == "normalize":
        from lipcheck.normalize import normalize

        return normalize
    if name == "spectral_normalize":
        from lipcheck.training import spectral_normalize

        return spectral_normalize
    if name == "LipcheckError":
        from lipcheck.errors import LipcheckError

        return LipcheckError
    if name == "Settings":
        from lipcheck.settings import Settings

        return Settings
    raise AttributeError(name)
