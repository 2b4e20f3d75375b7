"""Renderers of a checkpoint diff: a terminal table, markdown, or JSON."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from lipcheck.diff import Drift
from lipcheck.report.numbers import finite, up


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def _up(value: float | None) -> str:
    """An upper bound, rounded up so the printed number stays a bound."""
    return "—" if value is None else up(value)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.3f}%"


def render_table(drift: Drift, console: Console) -> None:
    """Print a per-layer table of old/new sigma and upper bounds."""
    table = Table(title=Text(f"{drift.old.model_path} → {drift.new.model_path}"), title_justify="left")
    for column in ("layer", "σ old", "σ new", "upper old", "upper new", "change"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for change in drift.layers:
        growth = change.growth
        style = "red" if drift.fail_if_grows is not None and growth is not None and growth > drift.fail_if_grows else ""
        table.add_row(
            Text(change.name), _num(change.old_sigma), _num(change.new_sigma), _up(change.old_upper), _up(change.new_upper), Text(_pct(growth), style=style)
        )
    lines = [Text(f"product bound: {_up(drift.old.bound.product)} → {_up(drift.new.bound.product)} ({_pct(drift.product_growth)})")]
    lines += [Text(f"FAILED: {message}", style="bold red") for message in drift.failures]
    console.print(Group(table, *lines))


def render_markdown(drift: Drift) -> str:
    """The same table in markdown."""
    lines = [
        f"## lipcheck diff `{drift.old.model_path}` → `{drift.new.model_path}`",
        "",
        "| layer | σ old | σ new | upper old | upper new | change |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in drift.layers:
        lines.append(f"| `{c.name}` | {_num(c.old_sigma)} | {_num(c.new_sigma)} | {_up(c.old_upper)} | {_up(c.new_upper)} | {_pct(c.growth)} |")
    lines += ["", f"product bound: {_up(drift.old.bound.product)} → {_up(drift.new.bound.product)} ({_pct(drift.product_growth)})"]
    lines += [f"- **failed:** {m}" for m in drift.failures]
    return "\n".join(lines) + "\n"


def render_json(drift: Drift) -> str:
    """Old and new values per layer at full precision, and the verdict."""
    body: dict[str, Any] = {
        "old": {"path": drift.old.model_path, "product": drift.old.bound.product},
        "new": {"path": drift.new.model_path, "product": drift.new.bound.product},
        "product_growth_percent": drift.product_growth,
        "layers": [
            {"name": c.name, "old_sigma": c.old_sigma, "new_sigma": c.new_sigma, "old_upper": c.old_upper, "new_upper": c.new_upper, "growth_percent": c.growth}
            for c in drift.layers
        ],
        "fail_if_grows": drift.fail_if_grows,
        "passed": not drift.failures,
        "failures": drift.failures,
    }
    return json.dumps(finite(body), indent=2, allow_nan=False) + "\n"
