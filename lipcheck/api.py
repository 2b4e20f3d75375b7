"""The Python API: inspect a model file and get a Report."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lipcheck import __version__
from lipcheck.errors import LipcheckError, first_line
from lipcheck.formats import load
from lipcheck.gate import BOUND_KINDS, GateSpec, Outcome, evaluate
from lipcheck.graph.tight import apply_tight, improve_lower
from lipcheck.model import WEIGHTS_ONLY_FORMATS, Layer, Model
from lipcheck.product import PRODUCT_ASSUMPTION, log10_product, product_upper
from lipcheck.report.data import BoundReport, LayerReport, Report, SkippedReport
from lipcheck.report.run import FileResult, Run
from lipcheck.settings import Settings
from lipcheck.spectral.layer import estimate_all

if TYPE_CHECKING:
    import numpy as np
    import torch

NO_GRAPH_REASON = (
    "this file has no graph, so lipcheck cannot tell how the layers connect; inspect an ONNX, TorchScript or torch.export (.pt2) export of the model"
)

Progress = Callable[[int, int, Layer | None], None]  # layer None: all done


def inspect(
    path: str | Path | torch.nn.Module,
    *,
    settings: Settings | None = None,
    key: str | None = None,
    progress: Progress | None = None,
) -> Report:
    """Load a model file (or take a live torch module) and estimate every layer and the bounds."""
    settings = settings or Settings()
    if isinstance(path, (str, Path)):
        model = load(Path(path), key=key, input_shapes=settings.input_shape, allow_globals=settings.allow_globals)
    else:
        from lipcheck.formats import torch_module

        model = torch_module.load(path, settings.input_shape)
    report = analyze(model, settings, progress)
    runnable = model.runnable
    shapes = settings.input_shape or model.input_shapes
    if settings.lower and shapes and runnable is not None and not report.non_finite_layers:
        from lipcheck.graph.lower import torch_lower

        try:
            report.bound.lower = torch_lower(runnable, shapes, settings.seed, effort=settings.effort)
        except Exception as exc:  # the module refused the shapes or autograd: no lower bound, say why
            report.notes.append(f"no empirical lower bound: the module could not be differentiated ({first_line(exc)})")
    if settings.lower and model.format == "onnx" and model.graph is not None and not report.non_finite_layers:
        from lipcheck.graph.lower import NoCertifiedPair, onnx_lower

        try:
            report.bound.lower = onnx_lower(Path(path), model.graph, settings.seed, settings.effort, model.source)  # type: ignore[arg-type]
        except NoCertifiedPair as exc:
            report.notes.append(f"no empirical lower bound: {exc}")
        except Exception as exc:  # a graph that cannot be evaluated in float64: no lower bound, say why
            report.notes.append(f"no empirical lower bound: the graph could not be evaluated ({first_line(exc)})")
    if settings.lower and not report.non_finite_layers:
        try:
            improve_lower(model, path, report, settings)
        except Exception as exc:  # the chain's search only raises the lower bound: the one found stands
            report.notes.append(f"no chain lower-bound search ({first_line(exc)})")
    lower, upper = report.bound.lower, report.bound.upper
    if lower is not None and upper is not None and lower > upper * (1 + 1e-9):
        report.notes.append(
            f"the attained lower bound {lower!r} is above the certified upper bound {upper!r}: the model computes "
            "with rounding the bounds do not model (a low-precision cast inside it), or a bound is wrong; "
            "please report this model"
        )
    return report


def bound(
    path: str | Path | torch.nn.Module,
    *,
    kind: str = "upper",
    input_shape: tuple[int, ...] | None = None,
    settings: Settings | None = None,
    key: str | None = None,
) -> float:
    """Return the network's certified upper bound (``kind="upper"``), or the graph or product value.

    ``kind`` is upper, graph or product (as ``check --bound``); the product is a network bound only
    for a plain chain with 1-Lipschitz activations. Raises LipcheckError when the bound asked for
    does not exist, naming what blocks it.
    """
    if kind not in BOUND_KINDS:
        raise LipcheckError(f"unknown bound kind {kind!r}; choose one of {', '.join(BOUND_KINDS)}")
    report = inspect(path, settings=_with_shape(settings, input_shape), key=key)
    value = {"upper": report.bound.upper, "graph": report.bound.graph, "product": report.bound.product}[kind]
    if value is None:
        why = "; ".join(report.bound.blocking) if kind != "product" else "a layer bound is unknown or out of range"
        raise LipcheckError(f"no {kind} bound for this model: {why}")
    return value


def check(
    path: str | Path | torch.nn.Module,
    *,
    fail_above: float | None = None,
    bound: str = "upper",
    fail_layer_above: float | None = None,
    layer_thresholds: dict[str, float] | None = None,
    input_shape: tuple[int, ...] | None = None,
    settings: Settings | None = None,
) -> Outcome:
    """Gate a model as ``lipcheck check`` does; the outcome is truthy when every check passed.

    ``assert lipcheck.check("model.onnx", fail_above=10)`` shows the failing checks on failure.
    """
    spec = GateSpec(fail_above=fail_above, bound=bound, fail_layer_above=fail_layer_above, layer_thresholds=tuple((layer_thresholds or {}).items()))
    return evaluate(inspect(path, settings=_with_shape(settings, input_shape)), spec)


def analyse_files(
    paths: Sequence[str],
    settings_for: Callable[[str], Settings],
    *,
    key: str | None = None,
    spec: GateSpec | None = None,
    progress: Progress | None = None,
    on_file: Callable[[str], None] | None = None,
) -> Run:
    """Inspect (and gate, with ``spec``) each file in turn; a file that fails becomes an error entry.

    ``settings_for`` gives each path its settings (input shapes may differ per model); ``on_file``
    is told which file starts. Errors are one-line messages: the run goes on with the next file.
    """
    results: list[FileResult] = []
    for path in paths:
        if on_file is not None:
            on_file(path)
        try:
            report = inspect(path, settings=settings_for(path), key=key, progress=progress)
        except LipcheckError as exc:
            results.append(FileResult(path, error=str(exc)))
            continue
        except MemoryError:
            results.append(FileResult(path, error=f"ran out of memory reading {path}; try a machine with more memory"))
            continue
        except Exception as exc:  # an internal error still becomes one line and exit 2
            results.append(FileResult(path, error=f"internal error ({type(exc).__name__}: {first_line(exc)}); please report it with the model's layout"))
            continue
        results.append(FileResult(path, report=report, outcome=evaluate(report, spec) if spec is not None else None))
    return Run(results, spec)


def _with_shape(settings: Settings | None, input_shape: tuple[int, ...] | None) -> Settings:
    settings = settings or Settings()
    return replace(settings, input_shape=(tuple(input_shape),)) if input_shape is not None else settings


def analyze(model: Model, settings: Settings, progress: Progress | None = None) -> Report:
    """Estimate every layer of a loaded model and combine the bounds."""
    found: dict[int, LayerReport] = {}
    total = len(model.layers)
    if progress is not None and total:
        progress(0, total, model.layers[0])
    requests = _fold_requests(model, settings)
    for index, est in estimate_all(model.layers, settings, _by_layer(requests)):
        layer = model.layers[index]
        found[index] = LayerReport(
            name=layer.name,
            scope=layer.scope,
            op=layer.op,
            shape=layer.shape,
            dtype=layer.dtype,
            sigma=est.sigma,
            sigma_upper=est.sigma_upper,
            lipschitz=est.lipschitz,
            iterations=est.iterations,
            certificate_steps=est.certificate_steps,
            converged=est.converged,
            note=layer.note,
            input_size=layer.input_spatial,
            node=layer.node,
            sigma_iterations=est.sigma_iterations,
            sigma_converged=est.sigma_converged,
        )
        if progress is not None and len(found) < total:
            progress(len(found), total, layer)
    if progress is not None:
        progress(total, total, None)
    layers = [found[index] for index in range(total)]
    log10 = log10_product([entry.lipschitz.upper if entry.lipschitz else None for entry in layers])
    assumptions = [PRODUCT_ASSUMPTION]
    if model.format in WEIGHTS_ONLY_FORMATS:
        assumptions.append("order: no graph in the file, so layers are listed in file order")
    notes = list(model.notes)
    if any(layer.is_conv and layer.geometry is None for layer in model.layers):
        notes.append(
            "convs: this file records no stride, padding or input size, so their bound is the loose "
            "sqrt(kh*kw)*sigma (assuming zero padding, or circular padding no wider than (k-1)*dilation per axis); the same model as ONNX, "
            "TorchScript or .pt2 gives each conv's operator norm"
        )
    graph_value, method, blocking = None, None, []
    if model.graph is not None:
        from lipcheck.graph.walk import GraphBound, graph_bound

        segments, segment_notes = _segments(model, settings)
        uppers = [entry.lipschitz.upper if entry.lipschitz else None for entry in layers]
        fuse = _fuser(model, settings)
        try:
            _prefetch_fused(requests, settings, fuse)
            walked = graph_bound(model.graph, uppers, dict(settings.node_constants), fuse=fuse, segments=segments)
        except Exception as exc:  # a graph the walk cannot follow: no number rather than a crash
            walked = GraphBound({}, [f"the graph walk failed ({type(exc).__name__}: {exc}); please report this model"])
        graph_value = walked.value
        assumptions.extend(f"graph: user-supplied constant for node {text}" for text in walked.supplied)
        assumptions.extend(f"graph: {note}" for note in walked.notes)
        unknown = sorted(set(dict(settings.node_constants)) - {node.label for node in model.graph.nodes})
        if unknown:
            raise LipcheckError(f"--node-constant names no node of this graph: {', '.join(unknown)}; the report's assumptions name the nodes that need one")
        if graph_value is not None:
            method = "graph with user-supplied node constants" if walked.supplied else "graph"
            if segments:
                method += " and certified chain segments"
            assumptions.append(
                "graph: follows the file's graph (residual adds, concatenations, norms, pools, "
                "activations) with each layer's certified upper bound; sound for the model as built"
            )
            if len(walked.outputs) > 1:
                each = ", ".join(f"{name} {walked.per_output[name]:.6g}" for name in walked.outputs if name in walked.per_output)
                assumptions.append(
                    f"graph: the {len(walked.outputs)} outputs taken together as one vector (the root of the sum of their squared bounds); each output alone: {each}"
                )
            assumptions.extend(f"graph: {note}" for note in segment_notes)
        else:
            blocking = list(walked.unbounded) or ["the graph has no output lipcheck can follow"]
            assumptions.extend(f"graph: no bound, {reason}" for reason in blocking)
    else:
        blocking = [model.no_graph or NO_GRAPH_REASON]
    if non_finite := [entry.display_name for entry in layers if entry.lipschitz is None]:
        graph_value, method = None, None
        blocking = [f"non-finite weights in {', '.join(non_finite)}"]
    bound = BoundReport(
        upper=graph_value,
        method=method,
        product=product_upper([entry.lipschitz.upper if entry.lipschitz else None for entry in layers]),
        product_log10=log10,
        graph=graph_value,
        lower=None,
        assumptions=assumptions,
        blocking=blocking,
    )
    apply_tight(model, settings, bound)
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


def _segments(model: Model, settings: Settings) -> tuple[dict[str, tuple[str, float]], list[str]]:
    """Certified constants of the chains inside a graph that is not one chain as a whole (that one
    gets its tight bound from apply_tight)."""
    from lipcheck.graph.chains import find_chain
    from lipcheck.graph.segments import segment_constants

    try:
        if find_chain(model, explicit=False)[0] is not None:
            return {}, []
        return segment_constants(model, settings.effort)
    except Exception as exc:  # the segments only tighten the walk: without them it still stands
        return {}, [f"no chain segments ({first_line(exc)})"]


def _prefetch_fused(requests: list[tuple[int, np.ndarray]], settings: Settings, fuse: Callable[[int, np.ndarray], float | None]) -> None:
    """Certify every (layer, batch-norm scale) the graph walk will fold, side by side, before the
    walk asks for them one at a time (``fuse`` keeps its results; most are cached by then)."""
    from lipcheck.spectral.layer import side_by_side

    if len(requests) > 1:
        side_by_side([functools.partial(fuse, index, scale) for index, scale in requests], settings.device, factorizations=settings.device == "cpu")


def _fold_requests(model: Model, settings: Settings) -> list[tuple[int, np.ndarray]]:
    """Each (layer index, output-channel scale) the graph walk folds a batch norm into, once.

    Found before any layer is certified, by a walk with every layer's bound taken as 1 (which
    layers fold depends on the graph, not on their bounds), so the certificates can share work
    with them; a graph the walk cannot follow has none here and fails the real walk later.
    """
    from lipcheck.graph.walk import graph_bound

    if model.graph is None or not any(node.op == "BatchNormalization" for node in model.graph.nodes):
        return []
    wanted: list[tuple[int, np.ndarray]] = []

    def record(index: int, scale: np.ndarray) -> float | None:
        wanted.append((index, scale))
        return None

    try:
        graph_bound(model.graph, [1.0] * len(model.layers), dict(settings.node_constants), fuse=record)
    except Exception:  # only a head start: the real walk reports the failure
        return []
    return list({(index, scale.tobytes()): (index, scale) for index, scale in wanted}.values())


def _by_layer(requests: list[tuple[int, np.ndarray]]) -> dict[int, list[np.ndarray]]:
    """The fold requests grouped per layer index."""
    folds: dict[int, list[np.ndarray]] = {}
    for index, scale in requests:
        folds.setdefault(index, []).append(scale)
    return folds


def _fuser(model: Model, settings: Settings) -> Callable[[int, np.ndarray], float | None]:
    """Certify a layer with its output channels scaled (a batch norm folded into it); each
    (layer, scale) is worked out once."""
    from lipcheck.spectral.layer import folded_weight, fused_upper

    done: dict[tuple[int, bytes], float | None] = {}

    def fuse(index: int, scale: np.ndarray) -> float | None:
        key = (index, scale.tobytes())
        if key not in done:
            done[key] = _fused(index, scale)
        return done[key]

    def _fused(index: int, scale: np.ndarray) -> float | None:
        layer = model.layers[index]
        if layer.is_transposed:
            return None
        try:
            return fused_upper(layer, lambda: folded_weight(layer.load(), scale), settings)
        except ValueError:
            return None

    return fuse
