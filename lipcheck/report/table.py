"""The terminal renderer: a rich table of layers with the bounds beneath it."""

from __future__ import annotations

import math

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from lipcheck.model import CONV_OPS, CONV_TRANSPOSE_OPS
from lipcheck.report.data import LayerReport, Report


def _down(x: float, digits: int = 6) -> str:
    """Format x with ``digits`` significant digits, rounded toward zero (a lower end stays lower)."""
    return _directed(x, digits, math.floor)


def _up(x: float, digits: int = 6) -> str:
    """Format x with ``digits`` significant digits, rounded up (an upper end stays an upper bound)."""
    return _directed(x, digits, math.ceil)


def _directed(x: float, digits: int, rounding) -> str:  # type: ignore[no-untyped-def]
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    exponent = math.floor(math.log10(abs(x))) - digits + 1
    scaled = rounding(x / 10.0**exponent)
    value = scaled * 10.0**exponent
    if 1e-4 <= abs(x) < 10.0**digits:
        return f"{value:.{max(0, -exponent)}f}"
    return f"{value:.{digits - 1}e}"


def _interval(layer: LayerReport) -> str:
    lip = layer.lipschitz
    if lip is None:
        return "n/a"
    lower = _down(lip.lower) if lip.lower is not None else "?"
    return f"[{lower}, {_up(lip.upper)}]"


def _at(layer: LayerReport) -> Text:
    """Where a conv's interval holds: its input size, every size, or (no geometry) a loose bound."""
    if layer.op not in CONV_OPS + CONV_TRANSPOSE_OPS:
        return Text("")
    if layer.input_size is not None:
        return Text("×".join(map(str, layer.input_size)))
    method = layer.lipschitz.method if layer.lipschitz is not None else ""
    return Text("any size" if method.startswith(("input size unknown", "1x1")) else "no geometry", style="dim")


def _sigma(layer: LayerReport) -> Text:
    if layer.sigma is None:
        return Text("non-finite", style="bold red")
    return Text(f"{layer.sigma:.6g}")


def _product(report: Report) -> str:
    b = report.bound
    if b.product_log10 is None:
        return "n/a (a layer has non-finite weights)"
    if b.product is not None and 1e-4 <= b.product < 1e7:
        return _up(b.product)
    return f"10^{b.product_log10:.4f}"


def build(report: Report) -> Group:
    """Build the rich renderable of a report."""
    table = Table(title=Text(f"{report.model_path} ({report.model_format})"), title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer")
    table.add_column("op")
    table.add_column("shape")
    table.add_column("σ (torch)", justify="right")
    table.add_column(Text("Lipschitz [lower, upper]"), justify="right")
    table.add_column("at", justify="right")
    table.add_column("iters", justify="right")
    for index, layer in enumerate(report.layers):
        iters = str(layer.iterations) + ("" if layer.converged else "*")
        # Text cells: names from a file must never be read as rich markup.
        table.add_row(str(index), Text(layer.display_name), Text(layer.op), Text("×".join(map(str, layer.shape))),
                      _sigma(layer), Text(_interval(layer)), _at(layer), iters)
    lines: list[Text] = [Text.assemble(("product bound ∏ upper: ", "bold"), _product(report))]
    graph = report.bound.graph
    lines.append(Text.assemble(("graph bound: ", "bold"), _up(graph) if graph is not None else "n/a"))
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


def render(report: Report, console: Console) -> None:
    """Print a report to a console."""
    console.print(build(report))
