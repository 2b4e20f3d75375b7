"""The Python API: inspect a model file and get a Report."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

from lipcheck import __version__
from lipcheck.bound import PRODUCT_ASSUMPTION, log10_product, product_from_log10
from lipcheck.formats import load
from lipcheck.model import Layer, Model
from lipcheck.report.data import BoundReport, LayerReport, Report, SkippedReport
from lipcheck.settings import Settings
from lipcheck.spectral.layer import estimate

Progress = Callable[[int, int, Layer | None], None]  # layer None: all done


def inspect(
    path: str | Path,
    *,
    settings: Settings | None = None,
    key: str | None = None,
    progress: Progress | None = None,
) -> Report:
    """Load a model file and estimate every layer's spectral norm and the product bound."""
    settings = settings or Settings()
    model = load(Path(path), key=key, input_shapes=settings.input_shape)
    return analyze(model, settings, progress)


def analyze(model: Model, settings: Settings, progress: Progress | None = None) -> Report:
    """Estimate every layer of a loaded model and combine the bounds."""
    layers: list[LayerReport] = []
    for index, layer in enumerate(model.layers):
        if progress is not None:
            progress(index, len(model.layers), layer)
        est = estimate(layer, settings)
        layers.append(
            LayerReport(
                name=layer.name, scope=layer.scope, op=layer.op, shape=layer.shape, dtype=layer.dtype,
                sigma=est.sigma, sigma_upper=est.sigma_upper, lipschitz=est.lipschitz,
                iterations=est.iterations, gram_steps=est.gram_steps, converged=est.converged, note=layer.note,
                input_size=layer.input_spatial,
            )
        )
    if progress is not None:
        progress(len(model.layers), len(model.layers), None)
    log10 = log10_product([entry.lipschitz.upper if entry.lipschitz else None for entry in layers])
    assumptions = [PRODUCT_ASSUMPTION]
    if model.format in ("state_dict", "checkpoint", "safetensors"):
        assumptions.append("order: no graph in the file, so layers are listed in file order")
    notes = list(model.notes)
    if any(layer.is_conv and layer.geometry is None for layer in model.layers):
        notes.append("convs: this file records no stride, padding or input size, so their bound is the loose "
                     "sqrt(kh*kw)*sigma (assuming zero or circular padding); the same model as ONNX or "
                     "TorchScript gives each conv's operator norm")
    bound = BoundReport(product=product_from_log10(log10), product_log10=log10, graph=None, lower=None,
                        assumptions=assumptions)
    settings_dict = asdict(settings)
    settings_dict["input_shape"] = [list(s) for s in settings.input_shape] if settings.input_shape else None
    return Report(
        tool_version=__version__,
        model_path=model.path,
        model_format=model.format,
        settings=settings_dict,
        layers=layers,
        skipped=[SkippedReport(s.name, s.shape, s.reason) for s in model.skipped],
        bound=bound,
        notes=notes,
    )
