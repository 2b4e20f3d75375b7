"""The op-rule registry: each ONNX op name maps to one rule that bounds the node's outputs.

A rule is a function ``(walk, node, ins) -> bound`` registered with :func:`rule`. ``ins`` are the
Lipschitz bounds of the node's inputs; the result is one bound for every output or a tuple with
one per output. A rule may carry the op's constant (``max |f'|`` of an activation) or, for an op
that is not globally Lipschitz, the reason shown to the user. The engine in
:mod:`lipcheck.graph.walk` looks rules up here; importing this package registers them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lipcheck.graph.ir import Node
    from lipcheck.graph.walk import Walk

Bound = float | tuple[float, ...]
RuleFn = Callable[["Walk", "Node", list[float]], Bound]


@dataclass(frozen=True)
class Rule:
    """How one op is bounded: the function, and the constant or the reason it documents."""

    op: str
    fn: RuleFn
    constant: float | None = None
    reason: str | None = None


RULES: dict[str, Rule] = {}


def rule(*ops: str, constant: float | None = None, reason: str | None = None) -> Callable[[RuleFn], RuleFn]:
    """Register the decorated function as the rule of every op named; one op, one rule."""

    def register(fn: RuleFn) -> RuleFn:
        for op in ops:
            if op in RULES:
                raise ValueError(f"op {op} already has a rule ({RULES[op].fn.__module__}.{RULES[op].fn.__name__})")
            RULES[op] = Rule(op, fn, constant, reason)
        return fn

    return register


def scaled(walk: Walk, node: Node, ins: list[float]) -> float:
    """An elementwise map whose rule constant bounds ``|f'|``: the input's bound times that constant."""
    constant = RULES[node.op].constant
    assert constant is not None
    return constant * ins[0] if ins else 0.0


def not_lipschitz(walk: Walk, node: Node, ins: list[float]) -> float:
    """An op that is not globally Lipschitz: unbounded, with the rule's reason."""
    return walk.unbounded(node, RULES[node.op].reason or "not globally Lipschitz")


def infinite() -> float:
    """The bound of a value with no Lipschitz constant."""
    return math.inf


from lipcheck.graph.rules import activations, control, gates, linear, logic, norms, pools, quantized, shape  # noqa: E402,F401,I001
