"""Atomic file output: write beside the target, fsync, then rename; nothing half-written remains."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lipcheck.errors import LipcheckError


@contextlib.contextmanager
def replacing(*targets: Path) -> Iterator[list[Path]]:
    """Yield temporary paths in each target's folder; on success rename them over the targets in order.

    On any error (or interruption) the temporaries are removed and the targets are untouched.
    """
    temps: list[Path] = []
    try:
        for target in targets:
            folder = target.parent
            if not folder.is_dir():
                raise LipcheckError(f"cannot write {target}: folder {folder} does not exist; create it first")
            try:
                fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
            except OSError as exc:
                raise LipcheckError(f"cannot write {target} ({exc.strerror}); choose a writable folder") from None
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for temp in temps:
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
        temps = []
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink()
