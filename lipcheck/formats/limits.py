"""Caps checked before anything is allocated: zip bombs, declared sizes larger than the data or
than this machine's memory."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

from lipcheck.errors import CorruptFileError, RefusedFileError

# A compressed zip entry may inflate to at most this many times its stored size...
MAX_INFLATE_RATIO = 100
# ...unless it inflates to less than this (small, very repetitive entries are harmless).
SMALL_ENTRY = 64 << 20


def check_zip(path: Path) -> None:
    """Refuse a zip archive whose compressed entries would inflate past the caps."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return  # not a readable zip: the format loader reports it
    inflated = 0
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED:
            continue
        inflated += info.file_size
        if info.file_size > SMALL_ENTRY and info.file_size > MAX_INFLATE_RATIO * max(1, info.compress_size):
            raise RefusedFileError(
                f"{path}: zip entry '{info.filename}' would inflate from {info.compress_size} to {info.file_size} bytes (a zip bomb?); lipcheck refuses it"
            )
    if inflated > max(SMALL_ENTRY, MAX_INFLATE_RATIO * os.path.getsize(path)):
        raise RefusedFileError(f"{path}: compressed entries would inflate to {inflated} bytes in all; lipcheck refuses it")


def memory_bytes() -> int:
    """Physical memory of this machine (a generous 1 TiB when the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_layer_size(name: str, shape: tuple[int, ...]) -> None:
    """Refuse a layer whose float64 working copies would not fit in memory, before allocating it."""
    count = math.prod(shape)
    need = 3 * 8 * count  # the float64 copy, the reshaped matrix and a Gram-side workspace
    if need > memory_bytes():
        raise RefusedFileError(
            f"layer '{name}' declares shape {list(shape)} ({count} elements): analysing it needs "
            f"about {need >> 30} GiB, more than this machine has; use a bigger machine"
        )


def check_payload(name: str, shape: tuple[int, ...], itemsize: int, available: int) -> None:
    """A stored tensor must hold exactly the bytes its declared shape needs."""
    need = math.prod(shape) * itemsize
    if need != available:
        raise CorruptFileError(
            f"tensor '{name}' declares shape {list(shape)} ({need} bytes) but stores {available} bytes; the file is truncated or corrupt: re-export it"
        )
