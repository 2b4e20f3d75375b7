"""A per-layer progress bar on stderr, shown only on a terminal."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class LayerProgress:
    """Shows which layer is being certified and how many are done; the API's ``progress`` callback."""

    def __init__(self, console: Console) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.task = self.bar.add_task("layers", total=None)
        self.model = ""

    def __enter__(self) -> LayerProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.__exit__(kind, value, tb)

    def start_file(self, path: str) -> None:
        """Name the file whose layers follow (runs over several files)."""
        self.model = path

    def __call__(self, index: int, total: int, layer: Any) -> None:
        name = layer.display_name if layer is not None else "done"
        prefix = f"{self.model}: " if self.model else ""
        self.bar.update(self.task, completed=index, total=total, description=f"{prefix}σ {name}")

    def segments(self, done: int, total: int, name: str) -> None:
        """Show which chain segment inside the graph is being certified and how many are done."""
        self.bar.update(self.task, completed=done, total=total, description=f"chain segments: {name}")

    def tight(self, fraction: float, best: float) -> None:
        """Show the tight bound falling as its optimizer spends its time budget."""
        self.bar.update(self.task, completed=round(1000 * fraction), total=1000, description=f"tight bound ≤ {best:.6g}")
