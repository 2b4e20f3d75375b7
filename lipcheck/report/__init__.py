"""Reports: the plain data of one analysis, and the renderers that turn a run into text.

Every renderer is a module with ``render(run) -> str``; :func:`render` picks one by format name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lipcheck.report.data import BoundReport, LayerReport, Report, SkippedReport

if TYPE_CHECKING:
    from lipcheck.report.run import Run

RENDERERS = {"table": "table", "json": "json_report", "markdown": "markdown", "github": "github", "junit": "junit", "csv": "csv_report"}


def render(run: Run, fmt: str) -> str:
    """Render a run in one of RENDERERS' formats."""
    module = importlib.import_module(f"lipcheck.report.{RENDERERS[fmt]}")
    text: str = module.render_text(run) if fmt == "table" else module.render(run)
    return text


__all__ = ["RENDERERS", "BoundReport", "LayerReport", "Report", "SkippedReport", "render"]
