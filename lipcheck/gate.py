"""The pass/fail rule of a CI gate: which bound is judged, against which thresholds.

Values are compared exactly (``value > threshold`` fails) and messages print them with ``repr``,
so a gate never shows 10.0 while failing at 10.0003.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

from lipcheck.errors import LipcheckError
from lipcheck.report.data import Report

BOUND_KINDS = ("upper", "graph", "product")


@dataclass(frozen=True)
class GateSpec:
    """Thresholds for one run: a network bound, every layer, and layers by name pattern."""

    fail_above: float | None = None
    bound: str = "upper"  # upper: the network bound (None when there is none); product: labelled, not a bound
    fail_layer_above: float | None = None
    layer_thresholds: tuple[tuple[str, float], ...] = ()
    strict: bool = False

    def __post_init__(self) -> None:
        values = [self.fail_above, self.fail_layer_above, *(value for _, value in self.layer_thresholds)]
        if any(value is not None and value != value for value in values):
            raise LipcheckError("a threshold is NaN, so the gate could never fail; set a number (a config file or an environment variable may hold it)")

    @property
    def active(self) -> bool:
        """Whether any threshold is set."""
        return self.fail_above is not None or self.fail_layer_above is not None or bool(self.layer_thresholds)


@dataclass(frozen=True)
class Check:
    """One comparison of a value against a threshold."""

    name: str  # "bound" or "layer"
    subject: str  # "product", "graph", or a layer name
    value: float | None
    threshold: float
    passed: bool
    message: str


@dataclass(frozen=True)
class Outcome:
    """The result of gating one report."""

    checks: list[Check]
    problems: list[str] = field(default_factory=list)  # what --strict turns into exit 2
    errors: list[str] = field(default_factory=list)  # why a requested check could not be made: exit 2

    @property
    def passed(self) -> bool:
        """Whether every check could be made and passed."""
        return not self.errors and all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [check for check in self.checks if not check.passed]

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else "failed: " + "; ".join(c.message for c in self.failures)
        return f"<lipcheck gate {verdict}>"


def _exceeds(value: float | None, threshold: float) -> bool:
    # An unknown or non-finite bound cannot pass a gate.
    return value is None or math.isnan(value) or value > threshold


_NOT_A_BOUND = "the product of layer bounds, a network bound only for a plain chain with 1-Lipschitz activations"


def _network_value(report: Report, kind: str) -> tuple[str, float | None]:
    """The judged value and how a message names it."""
    b = report.bound
    if kind == "product":
        if b.product is None and b.product_log10 is not None and b.product_log10 > 0:
            return f"product ({_NOT_A_BOUND})", math.inf  # beyond float range: above any threshold
        return f"product ({_NOT_A_BOUND})", b.product
    value = b.graph if kind == "graph" else b.upper
    return f"network bound ({b.method or kind})", value


def evaluate(report: Report, spec: GateSpec) -> Outcome:
    """Judge a report against the thresholds; the report itself is not changed.

    A network threshold judges ``bound.upper``; with none, the outcome carries an error naming what
    blocks it (exit 2), never a fallback number. Whatever is judged, an attained lower bound above
    the threshold fails the check: the network provably exceeds it.
    """
    checks: list[Check] = []
    errors: list[str] = []
    if spec.fail_above is not None:
        label, value = _network_value(report, spec.bound)
        subject = "product" if spec.bound == "product" else "network"
        lower = report.bound.lower
        if value is None and spec.bound != "product":
            blocking = report.bound.blocking[0] if report.bound.blocking else "no network bound"
            errors.append(
                f"no network bound to judge against --fail-above {spec.fail_above!r}: {blocking} "
                "(--node-constant LABEL=C vouches for a node; --bound product judges the product of layer "
                "bounds, valid only for a plain chain with 1-Lipschitz activations)"
            )
            checks.append(Check("bound", subject, None, spec.fail_above, False, f"no network bound, so it cannot pass --fail-above {spec.fail_above!r}"))
        elif lower is not None and lower > spec.fail_above:
            message = f"empirical lower bound {lower!r} is above --fail-above {spec.fail_above!r}: the network provably exceeds it (the {label} is {value!r})"
            checks.append(Check("bound", subject, lower, spec.fail_above, False, message))
        else:
            failed = _exceeds(value, spec.fail_above)
            verb = "above" if failed else "within"
            shown = "unknown" if value is None else repr(value)
            checks.append(Check("bound", subject, value, spec.fail_above, not failed, f"{label} {shown} is {verb} --fail-above {spec.fail_above!r}"))
    for layer in report.layers:
        threshold, source = None, ""
        for pattern, limit in spec.layer_thresholds:
            if fnmatch.fnmatchcase(layer.display_name, pattern):
                threshold, source = limit, f"--layer-threshold {pattern}={limit!r}"
                break
        if threshold is None and spec.fail_layer_above is not None:
            threshold, source = spec.fail_layer_above, f"--fail-layer-above {spec.fail_layer_above!r}"
        if threshold is None:
            continue
        value = layer.lipschitz.upper if layer.lipschitz is not None else None
        failed = _exceeds(value, threshold)
        shown = "non-finite" if value is None else repr(value)
        message = f"layer {layer.display_name}: upper bound {shown} is {'above' if failed else 'within'} {source}"
        checks.append(Check("layer", layer.display_name, value, threshold, not failed, message))
    problems = [f"{s.name} was skipped ({s.reason})" for s in report.skipped]
    return Outcome(checks, problems, errors)


def gate_dict(spec: GateSpec, outcome: Outcome) -> dict[str, Any]:
    """The report contract's ``gate`` object."""
    return {
        "fail_above": spec.fail_above,
        "bound": spec.bound,
        "fail_layer_above": spec.fail_layer_above,
        "layer_thresholds": {pattern: limit for pattern, limit in spec.layer_thresholds},
        "passed": outcome.passed,
        "errors": list(outcome.errors),
        "failures": [{"check": c.name, "subject": c.subject, "value": c.value, "threshold": c.threshold, "message": c.message} for c in outcome.failures],
    }


def exit_status(*, errors: int, failed: int, problems: int, exit_zero: bool, strict: bool) -> int:
    """The process exit code for a run's tallies.

    Errors (a file that could not be read, a network bound that does not exist, and with --strict
    skipped tensors) give 2; a failed gate gives 1 unless --exit-zero; otherwise 0.
    """
    if errors or (strict and problems):
        return 2
    if failed and not exit_zero:
        return 1
    return 0
