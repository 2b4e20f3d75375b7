"""The golden comparison itself: last-bit differences between CPUs pass, real changes fail."""

from __future__ import annotations

import pytest

from tests.golden_text import assert_matches_golden

GOLDEN = "network bound (graph) 1.119254587887917 is above 1.1\n│ 0 │ 0.weight │ 16×16 │ 28 │ ████▌ │\n"


def test_last_bits_of_a_blas_reduction_do_not_matter() -> None:
    # The value an AMD EPYC machine printed for the Intel-made golden above.
    assert_matches_golden(GOLDEN.replace("1.119254587887917", "1.119254587886872"), GOLDEN)


def test_column_widths_and_bar_lengths_follow_the_numbers() -> None:
    assert_matches_golden(GOLDEN.replace("│ 28 │ ████▌ │", "│  28 │ ████▋  │"), GOLDEN)


@pytest.mark.parametrize(
    "changed",
    [
        GOLDEN.replace("1.119254587887917", "1.1195"),  # a real change of the bound
        GOLDEN.replace("16×16", "8×8"),  # an input size
        GOLDEN.replace("│ 28 │", "│ 29 │"),  # a count
        GOLDEN.replace("above", "within"),  # the wording
    ],
)
def test_real_changes_fail(changed: str) -> None:
    with pytest.raises(AssertionError):
        assert_matches_golden(changed, GOLDEN)


def test_lower_bound_lines_allow_the_search_to_differ_by_two_percent() -> None:
    golden = "attained lower bound: 0.180744 (upper/lower 3.18)\n"
    assert_matches_golden("attained lower bound: 0.180925 (upper/lower 3.18)\n", golden)
    with pytest.raises(AssertionError):
        assert_matches_golden("attained lower bound: 0.2 (upper/lower 3.18)\n", golden)
