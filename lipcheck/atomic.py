"""Atomic file output: write beside the target, fsync, then rename; nothing half-written remains."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
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


def not_a_file(path: Path) -> bool:
    """Whether ``path`` names something other than a regular file or folder (a device, pipe or socket), links followed."""
    try:
        kind = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(kind) or stat.S_ISDIR(kind))


def write_text(path: Path, text: str) -> None:
    """Write a text report: atomically over a regular file (through a link, to the file it names), or
    straight into a device or pipe (``-o /dev/stdout``), which renaming would replace."""
    if not_a_file(path):
        try:
            with open(path, "w", encoding="utf-8", errors="backslashreplace") as handle:
                handle.write(text)
        except OSError as exc:
            raise LipcheckError(f"cannot write {path} ({exc.strerror})") from None
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    with replacing(target) as (tmp,):
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")


@contextlib.contextmanager
def staged(*targets: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a hidden folder beside the targets to write them in under their own names; then rename them.

    On success every file written there gets ``mode`` (permission bits; None: what the umask gives
    a new file), is fsynced, and is renamed over its target in the order given; a target not
    written is left alone. On any error (or interruption) the folder is removed and the targets
    are untouched. All targets must share one folder.
    """
    folder = targets[0].parent
    if any(target.parent != folder for target in targets):
        raise ValueError("staged targets must share one folder")
    for target in targets:
        if not_a_file(target):
            raise LipcheckError(f"cannot write {target}: it is a device, pipe or socket, which a written file would replace; choose a file name")
    if not folder.is_dir():
        raise LipcheckError(f"cannot write {targets[0]}: folder {folder} does not exist; create it first")
    final_mode = default_mode() if mode is None else mode & 0o7777
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{targets[0].name}.", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise LipcheckError(f"cannot write {targets[0]} ({exc.strerror}); choose a writable folder") from None
    try:
        yield work
        written = [target for target in targets if (work / target.name).is_file()]
        for target in written:
            with open(work / target.name, "rb") as handle:
                os.fchmod(handle.fileno(), final_mode)
                os.fsync(handle.fileno())
        for target in written:
            os.replace(work / target.name, target)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


@contextlib.contextmanager
def replacing(*targets: Path, mode: int | None = None) -> Iterator[list[Path]]:
    """Yield temporary paths for the targets; on success they replace the targets in order (see :func:`staged`)."""
    with staged(*targets, mode=mode) as work:
        temps = [work / target.name for target in targets]
        yield temps
        missing = [str(target) for temp, target in zip(temps, targets) if not temp.is_file()]
        if missing:
            raise LipcheckError(f"internal error: nothing was written for {', '.join(missing)}; please report it")


@contextlib.contextmanager
def restored_on_error(path: Path) -> Iterator[None]:
    """Put ``path`` back as it was (or remove it, if it did not exist) when the block raises.

    The copy kept meanwhile has a name of its own and is complete before the block runs, so a failed
    copy changes nothing and a later run never mistakes a leftover for its own.
    """
    backup: Path | None = None
    if path.is_file():
        try:
            handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".lipcheck-previous", dir=path.parent)
            os.close(handle)
            backup = Path(name)
            shutil.copy2(path, backup)
        except OSError as exc:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()
            raise LipcheckError(f"cannot keep a copy of {path} while it is rewritten ({exc.strerror}); free some space or choose another output") from None
    try:
        yield
    except BaseException:
        # The block's own error is the one to report; a copy that cannot be put back stays beside it.
        with contextlib.suppress(OSError):
            if backup is not None:
                os.replace(backup, path)
            else:
                path.unlink(missing_ok=True)
        raise
    if backup is not None:
        with contextlib.suppress(OSError):
            backup.unlink()
