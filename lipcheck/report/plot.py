"""A picture of a run: per layer, torch's σ beside the certified Lipschitz upper end, with the
thresholds as lines and the network bound in the title. Needs the optional ``plot`` extra (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lipcheck.atomic import replacing
from lipcheck.errors import LipcheckError
from lipcheck.report.numbers import up
from lipcheck.report.run import FileResult, Run

_SIGMA, _UPPER, _FAIL = "#9ab", "#27b", "#d33"


def _draw(axis: Any, result: FileResult, run: Run) -> None:
    """One model: σ beside the upper end per layer, layers failing their threshold in red."""
    report = result.report
    assert report is not None
    failing = {c.subject for c in (result.outcome.failures if result.outcome is not None else []) if c.name == "layer"}
    names = [layer.display_name for layer in report.layers]
    sigma = [layer.sigma or 0.0 for layer in report.layers]
    upper = [layer.lipschitz.upper if layer.lipschitz else 0.0 for layer in report.layers]
    positions = range(len(names))
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    axis.bar([p - 0.2 for p in positions], sigma, width=0.4, color=_SIGMA)
    axis.bar([p + 0.2 for p in positions], upper, width=0.4, color=[_FAIL if n in failing else _UPPER for n in names])
    legend: list[Any] = [Patch(color=_SIGMA, label="σ (torch, reshaped kernel)"), Patch(color=_UPPER, label="Lipschitz upper bound")]
    if failing:
        legend.append(Patch(color=_FAIL, label="above its threshold"))
    spec = run.spec
    if spec is not None and spec.fail_layer_above is not None:
        axis.axhline(spec.fail_layer_above, color=_FAIL, linestyle="--")
        legend.append(Line2D([], [], color=_FAIL, linestyle="--", label=f"--fail-layer-above {spec.fail_layer_above:g}"))
    axis.set_xticks(list(positions), names, rotation=60, ha="right", fontsize=7)
    axis.set_ylabel("Lipschitz constant", fontsize=8)
    bound = report.bound
    judged = f"network bound {up(bound.upper)} ({bound.method})" if bound.upper is not None else "no network bound"
    axis.set_title(f"{report.model_path}: {judged}", fontsize=9)
    axis.legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def write(run: Run, path: Path) -> None:
    """Draw every analysed model of the run into one PNG or SVG file (by its suffix)."""
    if path.suffix.lower() not in (".png", ".svg"):
        raise LipcheckError(f"--plot {path}: give a .png or .svg file name")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LipcheckError("--plot needs matplotlib: pip install 'lipcheck[plot]'") from None
    results = [r for r in run.results if r.report is not None]
    if not results:
        raise LipcheckError("--plot: no model could be analysed, nothing to draw")
    most = max(len(r.report.layers) for r in results if r.report is not None)
    figure, axes = plt.subplots(len(results), 1, figsize=(max(6.0, 0.5 * most + 2), 3.2 * len(results)), squeeze=False)
    for axis, result in zip(axes[:, 0], results):
        _draw(axis, result, run)
    figure.tight_layout()
    try:
        with replacing(path) as (tmp,):
            figure.savefig(tmp, format=path.suffix.lower().lstrip("."))
    finally:
        plt.close(figure)
