"""Atomic file output: write beside the target, fsync, then rename; nothing half-written remains."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lipcheck.errors import LipcheckError


def umask() -> int:
    """The process's file-creation mask, read without changing it where the system allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    # os.umask can only be read by setting it: put the old value straight back.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode a newly created file gets from ``open``: 0666 less the umask."""
    return 0o666 & ~umask()


@contextlib.contextmanager
def replacing(*targets: Path, mode: int | None = None) -> Iterator[list[Path]]:
    """Yield temporary paths in each target's folder; on success rename them over the targets in order.

    Each written file gets ``mode`` (permission bits), or, when None, the mode a new file gets
    under the current umask (temporary files are created 0600 otherwise). On any error (or
    interruption) the temporaries are removed and the targets are untouched.
    """
    final_mode = default_mode() if mode is None else mode & 0o7777
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
                # Set after writing: a writer may have replaced the temporary rather than written into it.
                os.fchmod(handle.fileno(), final_mode)
                os.fsync(handle.fileno())
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
        temps = []
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink()
