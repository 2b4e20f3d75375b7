"""File-derived text (layer names, paths, messages) made safe to print in a terminal, a log or markdown."""

from __future__ import annotations

import re

# Control characters (a terminal acts on ESC, CR, BS), bidirectional overrides (they reorder what a
# reader sees) and unpaired surrogates (no encoding can write them).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def printable(text: str) -> str:
    """The text with every unprintable character written as an escape (``\\x1b``, ``\\u202e``)."""
    return _UNPRINTABLE.sub(lambda found: _escape(found.group(0)), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def markdown_text(text: str) -> str:
    """Text for a markdown table cell or list item: printable, with no markup, HTML or cell break in it."""
    escaped = printable(text).replace("\\", "\\\\").translate(_HTML)
    for char in "|`":
        escaped = escaped.replace(char, "\\" + char)
    return escaped


def markdown_code(text: str) -> str:
    """Text as a markdown code span, whatever backticks it holds (a longer fence), pipes escaped for tables."""
    shown = printable(text).replace("|", "\\|")
    runs = [len(run) for run in re.findall("`+", shown)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"
