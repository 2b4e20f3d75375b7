"""The terminal renderer: a rich table of layers with the bounds and the gate beneath it."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from lipcheck.report.data import LayerReport, Report
from lipcheck.report.numbers import at_text, interval_text, lower_text, network_text, product_text
from lipcheck.report.run import FileResult, Run

_BAR_WIDTH = 12
# Narrower terminals get the table without the bar column.
_BARS_FROM_WIDTH = 110


def _sigma(layer: LayerReport) -> Text:
    if layer.sigma is None:
        return Text("non-finite", style="bold red")
    return Text(f"{layer.sigma:.6g}")


def _bar(layer: LayerReport, largest: float) -> Text:
    """The layer's upper end as a bar, relative to the largest layer of the model."""
    if layer.lipschitz is None or largest <= 0:
        return Text("")
    eighths = round(8 * _BAR_WIDTH * layer.lipschitz.upper / largest)
    return Text("█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8], style="cyan")


def build(report: Report, bars: bool = True) -> Group:
    """Build the rich renderable of a report; ``bars`` adds a column of per-layer bars."""
    table = Table(title=Text(f"{report.model_path} ({report.model_format})"), title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer")
    table.add_column("op")
    table.add_column("shape")
    table.add_column("σ (torch)", justify="right")
    table.add_column(Text("Lipschitz [lower, upper]"), justify="right")
    table.add_column("at", justify="right")
    table.add_column("iters", justify="right")
    if bars:
        table.add_column("upper", no_wrap=True)
    largest = max((layer.lipschitz.upper for layer in report.layers if layer.lipschitz is not None), default=0.0)
    for index, layer in enumerate(report.layers):
        iters = str(layer.iterations) + ("" if layer.converged else "*")
        # Text cells: names from a file must never be read as rich markup.
        table.add_row(str(index), Text(layer.display_name), Text(layer.op), Text("×".join(map(str, layer.shape))),
                      _sigma(layer), Text(interval_text(layer)), Text(at_text(layer), style="dim"), iters,
                      *([_bar(layer, largest)] if bars else []))
    lines: list[Text] = [Text.assemble(("network bound: ", "bold"), network_text(report))]
    if report.bound.lower is not None:
        lines.append(Text.assemble(("attained lower bound: ", "bold"), lower_text(report)))
    lines.append(Text.assemble(("product of layer bounds (plain chains only): ", "dim"), (product_text(report), "dim")))
    if any(not layer.converged for layer in report.layers if layer.sigma is not None):
        lines.append(Text("* not converged within --max-iter: the interval is still certified, but wider than --tol", style="yellow"))
    for assumption in report.bound.assumptions:
        lines.append(Text(f"assumes: {assumption}", style="dim"))
    for note in report.notes:
        lines.append(Text(f"note: {note}", style="dim"))
    if report.skipped:
        lines.append(Text(f"skipped {len(report.skipped)} tensor(s) that are not layers:", style="dim"))
        for s in report.skipped:
            lines.append(Text(f"  {s.name} {list(s.shape)}: {s.reason}", style="dim"))
    return Group(table, *lines)


def _result(result: FileResult, bars: bool) -> list[RenderableType]:
    if result.error is not None:
        return [Text(f"{result.path}: error: {result.error}", style="bold red")]
    assert result.report is not None
    parts: list[RenderableType] = [build(result.report, bars)]
    if result.outcome is not None:
        if result.failed:
            parts.append(Text("gate: FAILED", style="bold red"))
            parts += [Text(f"  {check.message}", style="red") for check in result.outcome.failures]
        else:
            parts.append(Text("gate: passed", style="bold green"))
    return parts


def render(run: Run, console: Console) -> None:
    """Print every file of a run to a console."""
    for index, result in enumerate(run.results):
        if index:
            console.print()
        console.print(Group(*_result(result, bars=console.width >= _BARS_FROM_WIDTH)))
