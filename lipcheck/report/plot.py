"""A picture of a run: per layer, torch's σ beside the certified Lipschitz upper end, with the
thresholds as lines. Needs the optional ``plot`` extra (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from lipcheck.atomic import replacing
from lipcheck.errors import LipcheckError
from lipcheck.report.numbers import up
from lipcheck.report.run import Run


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
    figure, axes = plt.subplots(len(results), 1, figsize=(max(6.0, 0.5 * max(len(r.report.layers) for r in results) + 2),
                                                          3.2 * len(results)), squeeze=False)
    for axis, result in zip(axes[:, 0], results):
        report = result.report
        assert report is not None
        names = [layer.display_name for layer in report.layers]
        sigma = [layer.sigma or 0.0 for layer in report.layers]
        upper = [layer.lipschitz.upper if layer.lipschitz else 0.0 for layer in report.layers]
        positions = range(len(names))
        axis.bar([p - 0.2 for p in positions], sigma, width=0.4, label="σ (torch, reshaped kernel)")
        axis.bar([p + 0.2 for p in positions], upper, width=0.4, label="Lipschitz upper (operator norm)")
        spec = run.spec
        if spec is not None and spec.fail_layer_above is not None:
            axis.axhline(spec.fail_layer_above, color="red", linestyle="--", label=f"--fail-layer-above {spec.fail_layer_above:g}")
        axis.set_xticks(list(positions), names, rotation=60, ha="right", fontsize=7)
        axis.set_title(f"{report.model_path}  (product bound {up(report.bound.product)})" if report.bound.product is not None
                       else report.model_path, fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    try:
        with replacing(path) as (tmp,):
            figure.savefig(tmp, format=path.suffix.lower().lstrip("."))
    finally:
        plt.close(figure)
