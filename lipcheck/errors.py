"""User-facing errors: each message says what went wrong and what to do next."""

from __future__ import annotations


class LipcheckError(Exception):
    """An error the user can act on; the CLI prints its message on one line and exits 2."""

    exit_code = 2


class UnsupportedFileError(LipcheckError):
    """The file is not in a format lipcheck reads."""


class CorruptFileError(LipcheckError):
    """The file looks like a known format but cannot be parsed."""


class RefusedFileError(LipcheckError):
    """The file would need code execution or escapes its folder, so lipcheck will not read it."""


class NonFiniteWeightsError(LipcheckError):
    """A layer's weights contain NaN or Inf, so no bound exists."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message, shortened; its type name when it has none."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


def one_line(text: str) -> str:
    """``text`` on one line: line breaks inside it (a file name can hold them) written as escapes, as
    are other characters a terminal would act on."""
    from lipcheck.report.text import printable

    return printable(text.replace("\r", "\\r").replace("\n", "\\n"))
