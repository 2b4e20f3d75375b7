"""Reports: the data of one analysis and its renderers (table, json)."""

from lipcheck.report.data import BoundReport, LayerReport, Report, SkippedReport

__all__ = ["BoundReport", "LayerReport", "Report", "SkippedReport"]
