"""The outcome of one command over one or more model files: what every renderer draws from."""

from __future__ import annotations

from dataclasses import dataclass

from lipcheck.gate import GateSpec, Outcome
from lipcheck.report.data import Report


@dataclass(frozen=True)
class FileResult:
    """One model file: its report and gate outcome, or the error that stopped it."""

    path: str
    report: Report | None = None
    outcome: Outcome | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        """Whether a gate failed for this file."""
        return self.outcome is not None and not self.outcome.passed


@dataclass(frozen=True)
class Run:
    """Every file of one invocation, and the thresholds they were judged by (None for inspect)."""

    results: list[FileResult]
    spec: GateSpec | None = None

    @property
    def errors(self) -> list[FileResult]:
        """Files that could not be analysed."""
        return [r for r in self.results if r.error is not None]

    @property
    def failed(self) -> list[FileResult]:
        """Files that failed a gate."""
        return [r for r in self.results if r.failed]
