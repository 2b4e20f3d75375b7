"""The JSON renderer: one report object per file, as lipcheck/report/report.schema.json describes."""

from __future__ import annotations

import json
from typing import Any

from lipcheck import __version__
from lipcheck.gate import gate_dict
from lipcheck.report.data import SCHEMA_VERSION
from lipcheck.report.numbers import finite
from lipcheck.report.run import FileResult, Run


def result_dict(run: Run, result: FileResult) -> dict[str, Any]:
    """One file's contract object (with ``gate`` filled in by check), or its error."""
    if result.report is None:
        return {"model": {"path": result.path}, "error": result.error}
    out = result.report.to_dict()
    if run.spec is not None and result.outcome is not None:
        out["gate"] = gate_dict(run.spec, result.outcome)
    return out


def render(run: Run) -> str:
    """Render a run as JSON; non-finite numbers become null so the output stays valid JSON.

    One file gives the contract's object itself; several give {"reports": [...]} of them.
    """
    if len(run.results) == 1:
        body: dict[str, Any] = result_dict(run, run.results[0])
    else:
        body = {
            "schema_version": SCHEMA_VERSION,
            "tool_version": __version__,
            "reports": [result_dict(run, r) for r in run.results],
            "passed": not run.failed and not run.errors,
        }
    return json.dumps(finite(body), indent=2, allow_nan=False) + "\n"
