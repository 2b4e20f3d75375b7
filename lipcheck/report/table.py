"""The terminal renderer: a table of layers, one line each, with the bounds and the gate beneath it."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from lipcheck.report.data import LayerReport, Report
from lipcheck.report.numbers import at_text, down, lower_text, network_text, product_text, up, upper_text
from lipcheck.report.run import FileResult, Run
from lipcheck.report.text import printable

_BAR_WIDTH = 12
_WIDE = 120  # from this width on: shape, σ, iterations and a bar per layer
_NAME_MIN = 16


def _sigma(layer: LayerReport) -> Text:
    if layer.sigma is None:
        return Text("non-finite", style="bold red")
    return Text(down(layer.sigma))


def _bar(layer: LayerReport, largest: float) -> Text:
    """The layer's upper end as a bar; a full bar is the largest layer of the model."""
    if layer.lipschitz is None or largest <= 0:
        return Text("")
    eighths = round(8 * _BAR_WIDTH * layer.lipschitz.upper / largest)
    return Text("█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8], style="cyan")


def _shown_name(layer: LayerReport) -> str:
    """The layer's name, or its graph node's where the name is an exporter's number (onnx::Conv_12)."""
    if layer.node and layer.name.startswith("onnx::"):
        return f"{layer.scope}/{layer.node}" if layer.scope else layer.node
    return layer.display_name


def _common_prefix(names: list[str]) -> str:
    """The dotted or slashed prefix every name shares (empty for one name)."""
    if len(names) < 2:
        return ""
    first, last = min(names), max(names)
    cut = 0
    for i, (a, b) in enumerate(zip(first, last)):
        if a != b:
            break
        if a in "./":
            cut = i + 1
    return first[:cut]


def middle_ellipsis(text: str, width: int) -> str:
    """Shorten text to ``width`` characters by an ellipsis in the middle, keeping both ends readable."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 2 + (width - 1) % 2
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


def build(report: Report, width: int = 80) -> Group:
    """Build the rich renderable of a report for a terminal ``width`` columns wide, one line per layer."""
    wide = width >= _WIDE
    names = [_shown_name(layer) for layer in report.layers]
    prefix = _common_prefix(names)
    if len(prefix) < 6:
        prefix = ""
    largest = max((layer.lipschitz.upper for layer in report.layers if layer.lipschitz is not None), default=0.0)
    title = f"{report.model_path} ({report.model_format})" + (f"; layer names below follow {prefix}" if prefix else "")
    table = Table(title=Text(printable(title)), title_justify="left")
    shapes = ["×".join(map(str, layer.shape)) for layer in report.layers]
    widths = {
        "#": len(str(len(names))),
        "op": max((len(layer.op) for layer in report.layers), default=2),
        "upper": max([len(upper_text(layer)) + 1 for layer in report.layers] + [19]),
        "at": max([len(at_text(layer)) for layer in report.layers] + [2]),
    }
    if wide:
        widths |= {"shape": max(len(text) for text in [*shapes, "shape"]), "sigma": 10, "iters": 5, "bar": _BAR_WIDTH}
    name_width = max(_NAME_MIN, width - sum(widths.values()) - 3 * (len(widths) + 1) - 1)
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("layer", no_wrap=True, max_width=name_width)
    table.add_column("op", no_wrap=True)
    if wide:
        table.add_column("shape", no_wrap=True)
        table.add_column("σ (torch)", justify="right", no_wrap=True)
    table.add_column(Text("Lipschitz ≤ (width)"), justify="right", no_wrap=True)
    table.add_column("at", justify="right", no_wrap=True)
    if wide:
        table.add_column("iters", justify="right", no_wrap=True)
        table.add_column(Text(f"0 ┄ {up(largest, 3)}") if largest > 0 else "", no_wrap=True)
    for index, (layer, name) in enumerate(zip(report.layers, names)):
        cells: list[RenderableType] = [str(index), Text(printable(middle_ellipsis(name[len(prefix) :], name_width))), Text(printable(layer.op))]
        if wide:
            cells += [Text(printable(shapes[index])), _sigma(layer)]
        star = "" if layer.converged else "*"
        cells += [Text(upper_text(layer) + star), Text(at_text(layer), style="dim")]
        if wide:
            cells += [str(layer.iterations), _bar(layer, largest)]
        table.add_row(*cells)
    lines: list[Text] = [Text.assemble(("network bound: ", "bold"), network_text(report))]
    if report.bound.lower is not None:
        lines.append(Text.assemble(("attained lower bound: ", "bold"), lower_text(report)))
    if report.bound.tight is not None:
        lines.append(Text.assemble(("tight (LipSDP-Neuron, certified): ", "bold"), up(report.bound.tight)))
    lines.append(Text.assemble(("product of layer bounds (plain chains only): ", "dim"), (product_text(report), "dim")))
    if any(not layer.converged for layer in report.layers if layer.sigma is not None):
        lines.append(Text("* not converged within --max-iter: the bound is still certified, but wider than --tol", style="yellow"))
    for assumption in report.bound.assumptions:
        lines.append(Text(printable(f"assumes: {assumption}"), style="dim"))
    for note in report.notes:
        lines.append(Text(printable(f"note: {note}"), style="dim"))
    if report.skipped:
        lines.append(Text(printable(f"skipped {len(report.skipped)} tensor(s) that are not layers:"), style="dim"))
        for s in report.skipped:
            lines.append(Text(printable(f"  {s.name} {list(s.shape)}: {s.reason}"), style="dim"))
    return Group(table, *lines)


def _result(result: FileResult, width: int) -> list[RenderableType]:
    if result.error is not None:
        return [Text(printable(f"{result.path}: error: {result.error}"), style="bold red")]
    assert result.report is not None
    parts: list[RenderableType] = [build(result.report, width)]
    if result.outcome is not None:
        if result.failed:
            parts.append(Text("gate: FAILED", style="bold red"))
            parts += [Text(printable(f"  {check.message}"), style="red") for check in result.outcome.failures]
        else:
            parts.append(Text("gate: passed", style="bold green"))
    return parts


def render(run: Run, console: Console) -> None:
    """Print every file of a run to a console."""
    for index, result in enumerate(run.results):
        if index:
            console.print()
        console.print(Group(*_result(result, console.width)))


def render_text(run: Run) -> str:
    """The table as plain text (for -o FILE), as wide as $COLUMNS or 80 columns."""
    import os

    console = Console(
        record=True,
        file=open(os.devnull, "w"),
        no_color=True,  # noqa: SIM115
        width=int(os.environ.get("COLUMNS", 0)) or 80,
    )
    render(run, console)
    return console.export_text(styles=False)
