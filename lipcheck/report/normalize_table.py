"""The before/after table of ``lipcheck normalize``, and its JSON form."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from lipcheck.normalize import Result
from lipcheck.report.numbers import finite, product_text, up


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def render(result: Result, console: Console) -> None:
    """Per layer: sigma and the Lipschitz upper end before and after, and what was done."""
    table = Table(title=Text(f"{result.before.model_path} → {result.after.model_path}"), title_justify="left")
    for column in ("layer", "σ before", "upper before", "σ after", "upper after", "action"):
        table.add_column(column, justify="left" if column in ("layer", "action") else "right")
    for plan, old, new in zip(result.plans, result.before.layers, result.after.layers):
        table.add_row(
            Text(plan.name),
            _num(old.sigma),
            up(old.lipschitz.upper) if old.lipschitz else "—",
            _num(new.sigma),
            up(new.lipschitz.upper) if new.lipschitz else "—",
            Text(plan.action),
        )
    lines = [Text(f"product bound: {product_text(result.before)} → {product_text(result.after)}")]
    console.print(Group(table, *lines))


def render_json(result: Result) -> str:
    """The same, at full precision."""
    body: dict[str, Any] = {
        "input": result.before.model_path,
        "output": result.after.model_path,
        "layers": [
            {
                "name": p.name,
                "target": p.target,
                "divisor": p.divisor,
                "action": p.action,
                "sigma_before": old.sigma,
                "sigma_after": new.sigma,
                "upper_before": old.lipschitz.upper if old.lipschitz else None,
                "upper_after": new.lipschitz.upper if new.lipschitz else None,
            }
            for p, old, new in zip(result.plans, result.before.layers, result.after.layers)
        ],
        "product_before": result.before.bound.product,
        "product_after": result.after.bound.product,
        "warnings": result.warnings,
    }
    return json.dumps(finite(body), indent=2, allow_nan=False) + "\n"
