"""Spectral normalization of a model file (W <- W / sigma(W)), in its own format.

By default each selected layer is divided by its certified Lipschitz upper end over the target,
so the written layer's Lipschitz constant is at most the target (for dense layers this is
W / sigma(W) up to 1e-6); ``convention="torch"`` divides convs by the reshaped sigma, exactly as
torch's spectral_norm does. Spectral-norm-trained layers (W_orig with stored u, v) are scale-free
by construction: their u and v are set to W_orig's exact top singular vectors, so the effective
weight's sigma is exactly 1.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lipcheck.api import analyze
from lipcheck.atomic import restored_on_error
from lipcheck.errors import LipcheckError, first_line
from lipcheck.formats import Format, Options, detect, extensions, load, named_format, save
from lipcheck.model import Layer, Model, WeightEdit
from lipcheck.report.data import LayerReport, Report
from lipcheck.settings import Settings


@dataclass(frozen=True)
class Plan:
    """What to do with one layer, and why (for the before/after table)."""

    name: str
    target: float | None
    divisor: float | None
    action: str


@dataclass
class Result:
    """The reports before and after, the per-layer plan, and warnings for the user."""

    before: Report
    after: Report
    plans: list[Plan]
    warnings: list[str] = field(default_factory=list)


def _check_paths(src: Path, dst: Path, force: bool, extra: Path | None = None) -> None:
    """Refuse a missing input, an output that is the input or a folder, and outputs that exist without --force
    (``extra``: the second file the format writes beside the output)."""
    if not src.is_file():
        raise LipcheckError(f"{src} does not exist or is not a file; check the path")
    if dst.exists() or dst.is_symlink():
        if os.path.realpath(dst) == os.path.realpath(src) or (dst.exists() and os.path.samefile(dst, src)):
            raise LipcheckError(f"the output {dst} is the input file; choose another output path (-o)")
        if not force:
            raise LipcheckError(f"{dst} already exists; pass --force to overwrite it")
        if dst.is_dir():
            raise LipcheckError(f"{dst} is a folder; give a file path with -o")
    if extra is not None and extra.exists() and not force:
        raise LipcheckError(f"{extra} already exists (the output's external data would go there); pass --force to overwrite it")


def _sn_vectors(layer: Layer, model_path: Path, key: str | None, allow_globals: tuple[str, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top singular vectors of a spectral-norm layer's W_orig in its own reshape (dim 0 or 1)."""
    from lipcheck.formats import torch_pickle

    if detect(model_path) is Format.SAFETENSORS:
        from lipcheck.formats import safetensors_file

        w = next(e for e in safetensors_file.entries(model_path) if e.name == layer.name).load()
    else:
        state, _, _ = torch_pickle.select_state_dict(torch_pickle.read(model_path, allow_globals), key)
        w = dict(torch_pickle._flatten(state))[layer.name]
    w = w.to(torch.float64)
    mat = (w.transpose(0, 1) if layer.is_transposed else w).reshape(w.shape[1] if layer.is_transposed else w.shape[0], -1)
    u, _, vh = torch.linalg.svd(mat, full_matrices=False)
    return u[:, 0], vh[0]


_EPS = {"float64": 2.3e-16, "float32": 1.2e-7, "float16": 9.8e-4, "bfloat16": 7.9e-3}


def margin(dtype: str, tol: float) -> float:
    """Relative headroom for re-certification (interval width) and storage rounding of the dtype."""
    return 2.0 * tol + 4.0 * _EPS.get(dtype, 1.2e-7)


def plan(
    model: Model, report: Report, *, target: float, budget: float | None, convention: str, clip: bool, patterns: tuple[str, ...]
) -> tuple[list[Plan], list[WeightEdit], list[str]]:
    """Decide every layer's divisor; layers that cannot be divided are left alone with a warning."""
    names = {layer.name for layer in model.layers}
    # A recurrent gate's rows ("NAME[gate]") are part of the stacked matrix NAME: that one is divided.
    stacked = {i: layer.name.rsplit("[", 1)[0] for i, layer in enumerate(model.layers) if layer.name.endswith("]")}
    parts = {i: name for i, name in stacked.items() if name in names}
    selected = [
        i for i, layer in enumerate(model.layers) if i not in parts and (not patterns or any(fnmatch.fnmatchcase(layer.display_name, p) for p in patterns))
    ]
    if not selected:
        raise LipcheckError(f"no layer matches {', '.join(patterns)}; run lipcheck inspect to see the layer names")
    per_layer = budget ** (1.0 / len(selected)) if budget is not None else target
    plans, edits, warnings = [], [], []
    for index, (layer, entry) in enumerate(zip(model.layers, report.layers)):
        name = layer.display_name
        if index in parts:
            plans.append(Plan(name, None, None, f"gate rows of {parts[index]}: divided with it"))
            continue
        if index not in selected:
            plans.append(Plan(name, None, None, "not selected"))
            continue
        if layer.warm_u is not None and layer.name.endswith(("_orig", ".original")):
            if not math.isclose(per_layer, 1.0):
                warnings.append(f"{name}: a spectral-norm layer is normalized to 1 by construction; target {per_layer:g} does not apply to it")
            plans.append(Plan(name, 1.0, None, "spectral-norm layer: u, v set to exact singular vectors"))
            edits.append(WeightEdit(layer.name, layer.scope, None, ("sn", "sn")))  # type: ignore[arg-type]
            continue
        if entry.lipschitz is None or entry.sigma is None:
            raise LipcheckError(f"non-finite weights (NaN or Inf) in {name}: no normalization exists; fix or retrain the layer, or leave it out with --layers")
        # σ's certified upper end: dividing by the attained σ could leave the layer above its target
        value = (_sigma_upper(entry) or entry.sigma) if convention == "torch" else entry.lipschitz.upper
        if convention == "torch" and layer.is_conv and layer.geometry is None and not layer.is_transposed:
            note = "weights without a graph: --convention torch reads each conv's σ as a Conv's (rows = dim 0); a ConvTranspose's spectral_norm uses dim 1"
            if note not in warnings:
                warnings.append(note)
        if value == 0.0:
            warnings.append(f"{name}: zero weights (σ = 0), left unchanged")
            plans.append(Plan(name, per_layer, None, "left: σ = 0"))
            continue
        if clip and value <= per_layer:
            plans.append(Plan(name, per_layer, None, "already within the target"))
            continue
        # A little extra so the written (rounded, re-certified) layer stays at or below the target.
        divisor = value * (1.0 + margin(layer.dtype, report.settings.get("tol", 1e-6))) / per_layer
        if not (math.isfinite(divisor) and divisor > 0.0):
            raise LipcheckError(f"{name}: dividing by {value!r} / {per_layer!r} is beyond float range; choose a target nearer the layer's bound")
        if per_layer / math.sqrt(max(1, math.prod(layer.shape))) < _smallest_normal(layer.dtype):
            raise LipcheckError(
                f"{name}: a target of {per_layer!r} would push its {layer.dtype} weights below the smallest normal number "
                "(they would round to zero or lose their precision); choose a larger target"
            )
        plans.append(Plan(name, per_layer, divisor, f"divided by {divisor:.6g}"))
        edits.append(WeightEdit(layer.name, layer.scope, divisor))
    return plans, edits, warnings


def _check_suffix(fmt: Format, dst: Path) -> None:
    """Refuse an output name whose extension names another format than the input's (the copy keeps the input's)."""
    named = named_format(dst)
    if named is None or named == fmt or fmt == Format.SHARDED or (named == Format.TORCH and fmt == Format.TORCHSCRIPT):
        return
    wanted = ", ".join(extensions(fmt)) or "the input's extension"
    raise LipcheckError(f"-o {dst}: normalize writes the input's format ({fmt.value}), which {dst.suffix} does not name; use {wanted}")


def normalize(
    src: str | Path,
    dst: str | Path,
    *,
    target: float = 1.0,
    budget: float | None = None,
    convention: str = "lipschitz",
    clip: bool = False,
    layers: tuple[str, ...] = (),
    force: bool = False,
    settings: Settings | None = None,
    key: str | None = None,
) -> Result:
    """Write a spectrally normalized copy of ``src`` to ``dst``; ``src`` is never modified."""
    src, dst = Path(src), Path(dst)
    if not (target > 0 and math.isfinite(target)) or (budget is not None and not (budget > 0 and math.isfinite(budget))):
        raise LipcheckError("--target and --budget must be positive numbers")
    if convention not in ("lipschitz", "torch"):
        raise LipcheckError(f"unknown convention {convention!r}; choose lipschitz or torch")
    fmt = detect(src)  # the standard messages for a missing, empty or directory input
    extra = _data_file(fmt, dst)
    _check_paths(src, dst, force, extra)
    settings = settings or Settings()
    model = load(src, key=key, input_shapes=settings.input_shape, allow_globals=settings.allow_globals)
    _check_suffix(fmt, dst)  # after the input's own problems, which the user fixes first
    before = analyze(model, settings)
    plans, edits, warnings = plan(model, before, target=target, budget=budget, convention=convention, clip=clip, patterns=tuple(layers))
    warnings.extend(f"{entry.name} {list(entry.shape)}: not normalized ({entry.reason})" for entry in model.skipped)
    by_name = {layer.name: layer for layer in model.layers}
    edits = [WeightEdit(e.name, e.scope, e.divisor, _sn_vectors(by_name[e.name], src, key, settings.allow_globals)) if e.vectors else e for e in edits]
    mode = stat.S_IMODE(src.stat().st_mode) & 0o777  # permission bits only: never copy setuid or setgid
    options = Options(key=key, allow_globals=settings.allow_globals, mode=mode)
    # The copy is re-read before normalize returns: if that fails, the old output comes back (or none is left).
    with restored_on_error(dst), restored_on_error(extra) if extra is not None else contextlib.nullcontext():
        warnings.extend(_written(fmt, src, dst, edits, options))
        after = analyze(load(dst, key=key, input_shapes=settings.input_shape, allow_globals=settings.allow_globals), settings)
        # Verify: storage rounding can leave a layer a hair above its target; divide those once more.
        targets = {p.name: p.target for p in plans if p.divisor is not None}
        fixes = []
        for layer, entry in zip(model.layers, after.layers):
            goal = targets.get(layer.display_name)
            if goal is not None and entry.lipschitz is not None and entry.lipschitz.upper > goal:
                value = _sigma_upper(entry) if convention == "torch" else entry.lipschitz.upper
                if value is not None and value > goal:
                    fixes.append(WeightEdit(layer.name, layer.scope, value * (1.0 + margin(layer.dtype, settings.tol)) / goal))
        if fixes:
            warnings.extend(w for w in _written(fmt, dst, dst, fixes, options) if w not in warnings)
            after = analyze(load(dst, key=key, input_shapes=settings.input_shape, allow_globals=settings.allow_globals), settings)
        if after.non_finite_layers:
            raise LipcheckError(
                f"the normalized weights of {', '.join(after.non_finite_layers)} do not fit their storage type (they became Inf or NaN); "
                "choose a target nearer the layers' bounds; nothing was written"
            )
        promised = {p.name: p.target for p in plans if p.target is not None}
        for layer, entry in zip(model.layers, after.layers):
            goal = promised.get(layer.display_name)
            value = (_sigma_upper(entry) if convention == "torch" else entry.lipschitz.upper) if entry.lipschitz is not None else None
            if goal is not None and value is not None and value > goal * (1.0 + margin(layer.dtype, settings.tol)):
                warnings.append(
                    f"layer {layer.display_name}: re-certified at {value!r}, above its target {goal!r}; check this layer before relying on the copy"
                )
    return Result(before, after, plans, warnings)


def _sigma_upper(entry: LayerReport) -> float | None:
    """The certified upper end of a layer's σ in torch's convention (its attained value where none is known)."""
    return entry.sigma_upper if entry.sigma_upper is not None else entry.sigma


def _smallest_normal(dtype: str) -> float:
    """The smallest positive normal number of a stored float type (float32's for types lipcheck does not know)."""
    import numpy as np

    name = dtype.removeprefix("torch.")
    if name in ("bfloat16",):
        return 2.0**-126
    try:
        return float(np.finfo(np.dtype(name)).tiny)
    except (TypeError, ValueError):  # an integer or float8 type numpy does not describe
        return float(np.finfo(np.float32).tiny)


def _written(fmt: Format, src: Path, dst: Path, edits: list[WeightEdit], options: Options) -> list[str]:
    """Write the copy; a writer's failure (a full disk, say) becomes one clear error."""
    try:
        return save(fmt, src, dst, edits, options)
    except LipcheckError:
        raise
    except Exception as exc:  # torch and safetensors report write failures in their own exception types
        raise LipcheckError(f"could not write {dst} ({first_line(exc)}); check the free space and the folder's permissions") from None


def _data_file(fmt: Format, dst: Path) -> Path | None:
    """The second file a format writes beside its output (an ONNX model's external data), if any."""
    if fmt is not Format.ONNX:
        return None
    from lipcheck.formats.onnx_write import data_path

    return data_path(dst)
