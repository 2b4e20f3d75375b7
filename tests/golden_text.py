"""Compare rendered reports with golden files: the text exactly, the numbers within a stated tolerance.

Numbers come out of BLAS reductions whose last bits depend on the CPU (Intel, AMD, their kernels),
so a golden file pins the layout and wording exactly and every number to REL_TOL. Column widths,
bar lengths and rule lengths follow the numbers, so runs of spaces, bar blocks and rules are
compared as one character each.
"""

from __future__ import annotations

import math
import re

REL_TOL = 1e-4  # displayed values have 6 significant digits, full-precision ones vary in the last ~6
# Attained lower bounds come from a seeded search whose float32 steps can pick another pair on
# another CPU, and the tight bound's optimizer stops within a time budget, so lines that carry
# either compare their numbers to 2%.
LOWER_REL_TOL = 2e-2
_LOWER_LINES = ("lower bound", "(network bound)", "tight", "network bound:")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_RUNS = re.compile(r" +|[█▏▎▍▌▋▊▉]+|━+|─+")


def _skeleton(text: str) -> tuple[str, list[tuple[str, float]]]:
    numbers = [
        (found, LOWER_REL_TOL if any(mark in line for mark in _LOWER_LINES) else REL_TOL) for line in text.splitlines() for found in _NUMBER.findall(line)
    ]
    shape = _RUNS.sub(lambda m: m.group(0)[0], _NUMBER.sub("#", text))
    return shape, numbers


def _close(a: str, b: str, rel: float) -> bool:
    if a == b:
        return True
    if not any(c in a + b for c in ".eE"):
        return False  # integers (shapes, counts) must match exactly
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-300)


def assert_matches_golden(actual: str, expected: str) -> None:
    """Fail unless ``actual`` has ``expected``'s text, and its numbers within their tolerance."""
    shape_a, nums_a = _skeleton(actual)
    shape_e, nums_e = _skeleton(expected)
    assert shape_a == shape_e, f"layout differs:\n{actual}\n--- expected ---\n{expected}"
    assert len(nums_a) == len(nums_e)
    bad = [(a, e) for (a, rel), (e, _) in zip(nums_a, nums_e) if not _close(a, e, rel)]
    assert not bad, f"numbers differ beyond their tolerance: {bad[:5]}"
