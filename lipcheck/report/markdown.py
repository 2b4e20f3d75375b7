"""The markdown renderer: for pull-request comments, job summaries and docs."""

from __future__ import annotations

from lipcheck.report.data import LayerReport, Report
from lipcheck.report.numbers import at_text, down, interval_text, lower_text, network_text, product_text, up
from lipcheck.report.run import FileResult, Run
from lipcheck.report.text import markdown_code, markdown_text

_cell, _code = markdown_text, markdown_code


def _layer_row(index: int, layer: LayerReport) -> str:
    sigma = down(layer.sigma) if layer.sigma is not None else "non-finite"
    cells = [
        str(index),
        _code(layer.display_name),
        layer.op,
        "×".join(map(str, layer.shape)),
        sigma,
        interval_text(layer),
        at_text(layer),
        "yes" if layer.converged else "no",
    ]
    return "| " + " | ".join(cells) + " |"


def _report(report: Report) -> list[str]:
    lines = ["| # | layer | op | shape | σ (torch) | Lipschitz [lower, upper] | at | converged |", "|---:|---|---|---|---:|---:|---:|---|"]
    lines += [_layer_row(i, layer) for i, layer in enumerate(report.layers)]
    b = report.bound
    lines += [
        "",
        f"- network bound: **{_cell(network_text(report))}**",
        f"- attained lower bound: {lower_text(report)}",
        *([f"- tight (LipSDP-Neuron, certified): {up(b.tight)}"] if b.tight is not None else []),
        f"- product of layer bounds (plain chains only): {product_text(report)}",
    ]
    lines += [f"- assumes: {_cell(a)}" for a in b.assumptions]
    lines += [f"- note: {_cell(n)}" for n in report.notes]
    if report.skipped:
        lines.append(f"- skipped {len(report.skipped)} tensor(s): " + ", ".join(f"{_code(s.name)} ({_cell(s.reason)})" for s in report.skipped))
    return lines


def _result(result: FileResult) -> list[str]:
    lines = [f"### {_code(result.path)}", ""]
    if result.error is not None:
        return lines + [f"**error:** {_cell(result.error)}", ""]
    assert result.report is not None
    if result.outcome is not None:
        verdict = "❌ failed" if result.failed else "✅ passed"
        lines += [f"**gate: {verdict}**", ""]
        lines += [f"- {_cell(check.message)}" for check in result.outcome.failures]
        if result.outcome.failures:
            lines.append("")
    return lines + _report(result.report) + [""]


def render(run: Run) -> str:
    """Render every file of a run as markdown."""
    lines = ["## lipcheck", ""]
    if run.spec is not None:
        lines += [f"{len(run.results)} model(s): {len(run.failed)} failed, {len(run.errors)} error(s)", ""]
    for result in run.results:
        lines += _result(result)
    return "\n".join(lines).rstrip("\n") + "\n"
