"""Comparisons, boolean logic and rounding: constant where their inputs are, else a jump.

A comparison (``Equal``, ``Less``, ...) of values that depend on the input outputs false on one
side of a threshold and true on the other, so whatever it selects (a ``Where``, an ``If``) can
jump; rounding (``Floor``, ``Round``, ``Sign``, ...) jumps at every step. Where all inputs are
constant the engine already gives the output 0 (constant) before a rule is asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lipcheck.graph.rules import rule

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk


@rule(
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "IsNaN",
    "IsInf",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "BitwiseNot",
)
def comparison(walk: Walk, node: Node, ins: list[float]) -> float:
    """A boolean of values that depend on the input: it jumps between false and true, not continuous."""
    return walk.unbounded(
        node, "compares values that depend on the input: its boolean output jumps between false and true, so what it selects or masks is not continuous"
    )


@rule("Floor", "Ceil", "Round", "Sign", "Mod", "ArgMax", "ArgMin")
def rounding(walk: Walk, node: Node, ins: list[float]) -> float:
    """A step function of values that depend on the input: it jumps, not continuous."""
    return walk.unbounded(node, "a step function (rounding, sign, remainder or index) of values that depend on the input jumps, so it is not continuous")
