"""The report of one analysis, as plain data that renderers turn into text."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lipcheck.model import Interval

SCHEMA_VERSION = 1  # report.schema.json beside this module describes it


@dataclass(frozen=True)
class LayerReport:
    """One layer's numbers, as the JSON contract names them."""

    name: str
    scope: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    sigma: float | None
    sigma_upper: float | None
    lipschitz: Interval | None
    iterations: int
    certificate_steps: int  # Cholesky factorizations the upper end took
    converged: bool
    note: str | None = None
    input_size: tuple[int, ...] | None = None  # a conv's input spatial size, where known
    node: str | None = None  # the graph node that applies the weight, where the file has a graph
    sigma_iterations: int = 0  # iterations behind [sigma, sigma_upper], the weight-as-a-matrix interval
    sigma_converged: bool = False

    @property
    def display_name(self) -> str:
        """The name with its subgraph scope."""
        return f"{self.scope}/{self.name}" if self.scope else self.name


@dataclass(frozen=True)
class SkippedReport:
    """A 2-D+ tensor left out of the bound, and why."""

    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass
class BoundReport:
    """Whole-network bounds: ``upper`` is the one sound for the file as built, the rest show where it came from."""

    upper: float | None  # the network bound check judges; None when lipcheck cannot bound the network
    method: str | None  # how ``upper`` was obtained (graph, graph with user-supplied node constants)
    product: float | None  # the product of layer bounds: a network bound only for a plain chain
    product_log10: float | None
    graph: float | None
    lower: float | None  # an attained ratio: never above the true constant
    assumptions: list[str]
    blocking: list[str] = field(default_factory=list)  # why ``upper`` is None, naming nodes where there are any
    tight: float | None = None  # a certified bound tighter than the graph walk, where one was computed


@dataclass
class Report:
    """Everything lipcheck found about one model file."""

    tool_version: str
    model_path: str
    model_format: str
    settings: dict[str, Any]
    layers: list[LayerReport]
    skipped: list[SkippedReport]
    bound: BoundReport
    notes: list[str] = field(default_factory=list)
    gate: dict[str, Any] | None = None

    @property
    def non_finite_layers(self) -> list[str]:
        """Names of layers whose weights hold NaN or Inf."""
        return [layer.display_name for layer in self.layers if layer.sigma is None]

    def to_dict(self) -> dict[str, Any]:
        """Return the report as the object report.schema.json describes."""

        def layer(entry: LayerReport) -> dict[str, Any]:
            out = asdict(entry)
            out["shape"] = list(entry.shape)
            out["input_size"] = list(entry.input_size) if entry.input_size is not None else None
            if not entry.scope:
                del out["scope"]
            return out

        return {
            "schema_version": SCHEMA_VERSION,
            "tool_version": self.tool_version,
            "model": {"path": self.model_path, "format": self.model_format},
            "settings": self.settings,
            "layers": [layer(entry) for entry in self.layers],
            "skipped": [{"name": s.name, "shape": list(s.shape), "reason": s.reason} for s in self.skipped],
            "bound": asdict(self.bound),
            "notes": self.notes,
            "gate": self.gate,
        }
