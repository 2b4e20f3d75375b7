"""CSV: one row per layer of every model, then rows for its network bound and the product."""

from __future__ import annotations

import csv
import io
from typing import Any

from lipcheck.report.run import Run

COLUMNS = ["model", "layer", "op", "shape", "dtype", "sigma", "lower", "upper", "method", "input_size", "converged", "threshold", "passed"]


def _write(writer: Any, cells: list[Any]) -> None:
    """One row; text cells a spreadsheet would read as a formula (=, +, -, @, tab, CR first) get a leading '."""
    writer.writerow([f"'{cell}" if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell for cell in cells])


def render(run: Run) -> str:
    """Render a run as CSV; numbers at full precision, empty cells for unknowns."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    _write(writer, COLUMNS)
    for result in run.results:
        if result.report is None:
            _write(writer, [result.path, "(error)", "", "", "", "", "", "", result.error] + [""] * 4)
            continue
        # The gate checks layers in report order: two layers of one name (one weight used by two nodes) keep their own.
        layer_checks: dict[str, list[Any]] = {}
        for c in result.outcome.checks if result.outcome is not None else []:
            if c.name == "layer":
                layer_checks.setdefault(c.subject, []).append(c)
        for layer in result.report.layers:
            lip = layer.lipschitz
            queued = layer_checks.get(layer.display_name)
            check = queued.pop(0) if queued else None
            _write(
                writer,
                [
                    result.path,
                    layer.display_name,
                    layer.op,
                    "x".join(map(str, layer.shape)),
                    layer.dtype,
                    _num(layer.sigma),
                    _num(lip.lower if lip else None),
                    _num(lip.upper if lip else None),
                    lip.method if lip else "",
                    "x".join(map(str, layer.input_size)) if layer.input_size else "",
                    str(layer.converged).lower(),
                    _num(check.threshold if check else None),
                    "" if check is None else str(check.passed).lower(),
                ],
            )
        bound_checks = [c for c in (result.outcome.checks if result.outcome is not None else []) if c.name == "bound"]
        b = result.report.bound
        rows = (
            ("network bound", b.lower, b.upper, b.method or "; ".join(b.blocking)),
            ("product of layer bounds", None, b.product, "a network bound only for a plain chain"),
        )
        for (label, lower, upper, method), subject in zip(rows, ("network", "product")):
            check = next((c for c in bound_checks if c.subject == subject), None)
            _write(
                writer,
                [
                    result.path,
                    f"({label})",
                    "",
                    "",
                    "",
                    "",
                    _num(lower),
                    _num(upper),
                    method,
                    "",
                    "",
                    _num(check.threshold if check else None),
                    "" if check is None else str(check.passed).lower(),
                ],
            )
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)
