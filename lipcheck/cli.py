"""The command line: options in, the API called, a report rendered, errors mapped to exit codes.

Option values come from the command line, else ``LIPCHECK_*`` environment variables, else
``[tool.lipcheck]`` in the nearest pyproject.toml (or ``--config``), else the defaults --help shows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lipcheck import __version__
from lipcheck import cli_options as opt
from lipcheck.cli_options import (
    AllowGlobalOpt,
    ConfigOpt,
    DeviceOpt,
    EffortOpt,
    Failure,
    Fmt,
    KeyOpt,
    LowerOpt,
    MaxIterOpt,
    NodeOpt,
    OutputOpt,
    PlotOpt,
    SeedOpt,
    ShapeOpt,
    TolOpt,
)
from lipcheck.cli_output import check_destinations, check_output, printing_to_stderr, publish, write_atomic
from lipcheck.model import WEIGHTS_ONLY_FORMATS
from lipcheck.settings import DEFAULT_MAX_ITER, DEFAULT_SEED, DEFAULT_TOL

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Measure, certify and enforce the Lipschitz constant of trained networks.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lipcheck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None) -> None:
    """Measure, certify and enforce the Lipschitz constant of trained networks."""


# -- running and reporting ---------------------------------------------------------------------------
def _analyse(ctx: typer.Context, paths: list[str], key: str | None, spec: Any = None, **common: Any) -> Any:
    from rich.console import Console

    from lipcheck.api import analyse_files
    from lipcheck.report.progress import LayerProgress

    settings = {path: opt.settings_for(ctx, path, **common) for path in paths}
    from lipcheck.graph.tight import reporting

    with printing_to_stderr(), LayerProgress(Console(stderr=True)) as progress, reporting(progress.tight, progress.segments):
        run = analyse_files(paths, settings.__getitem__, key=key, spec=spec, progress=progress,
                            on_file=progress.start_file if len(paths) > 1 else None)
    for result in run.results:
        if result.report is not None and settings[result.path].input_shape and result.report.model_format in WEIGHTS_ONLY_FORMATS:
            opt.warn(f"{result.path}: --input-shape applies to files with a graph (ONNX, TorchScript, .pt2); ignored here")
    return run


# -- commands ------------------------------------------------------------------------------------------
@app.command()
def inspect(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Model file: .pt/.pth/.bin/.ckpt, TorchScript, .pt2, .safetensors or .onnx.")],
    output_format: Annotated[Fmt, opt.format_option(("table", "json", "markdown", "csv"))] = Fmt.table,
    output: OutputOpt = None, tol: TolOpt = DEFAULT_TOL, max_iter: MaxIterOpt = DEFAULT_MAX_ITER,
    seed: SeedOpt = DEFAULT_SEED, device: DeviceOpt = "cpu", key: KeyOpt = None, input_shape: ShapeOpt = None,
    allow_global: AllowGlobalOpt = None, node_constant: NodeOpt = None, plot: PlotOpt = None, config: ConfigOpt = None,
    effort: EffortOpt = 1.0, lower: LowerOpt = True,
) -> None:
    """Print each layer's spectral norm, its certified Lipschitz interval, and the network's bounds."""
    _formats(output_format, ("table", "json", "markdown", "csv"), "inspect", "check writes junit and github")
    check_destinations(output, plot, [model])
    run = _analyse(ctx, [str(model)], key, tol=tol, max_iter=max_iter, seed=seed, device=device, effort=effort,
                   lower=lower, input_shape=input_shape, allow_global=allow_global, node_constant=node_constant)
    if run.errors:
        raise Failure(run.errors[0].error or "")
    publish(run, output_format, output, plot, exit_zero=False, strict=False)


@app.command()
def check(
    ctx: typer.Context,
    models: Annotated[list[str] | None, typer.Argument(metavar="MODEL...", help="Model files or glob patterns (default: 'models' from the config).")] = None,
    fail_above: Annotated[float | None, typer.Option("--fail-above", envvar="LIPCHECK_FAIL_ABOVE", parser=opt.number, metavar="X",
                                                        help="Fail when the network bound is above X.")] = None,
    bound: Annotated[opt.BoundKind, typer.Option("--bound", envvar="LIPCHECK_BOUND", metavar="upper|graph|product",
                                             help="What --fail-above judges: upper (the network bound; exit 2 when there is none), graph, or product (the product of layer bounds, a network bound only for plain chains).")] = opt.BoundKind.network,
    fail_layer_above: Annotated[float | None, typer.Option("--fail-layer-above", envvar="LIPCHECK_FAIL_LAYER_ABOVE", parser=opt.number, metavar="X",
                                                              help="Fail when any layer's upper bound is above X.")] = None,
    layer_threshold: Annotated[list[str] | None, typer.Option("--layer-threshold", envvar="LIPCHECK_LAYER_THRESHOLD", metavar="PATTERN=X",
                                                                 help="Fail when a layer matching the glob PATTERN is above X (first match wins; repeatable).")] = None,
    exit_zero: Annotated[bool, typer.Option("--exit-zero/--no-exit-zero", envvar="LIPCHECK_EXIT_ZERO",
                                            help="Exit 0 even when a gate fails (errors still exit 2).")] = False,
    strict: Annotated[bool, typer.Option("--strict/--no-strict", envvar="LIPCHECK_STRICT",
                                         help="Exit 2 when a tensor is skipped.")] = False,
    output_format: Annotated[Fmt, opt.format_option(tuple(f.value for f in Fmt))] = Fmt.table,
    output: OutputOpt = None, tol: TolOpt = DEFAULT_TOL, max_iter: MaxIterOpt = DEFAULT_MAX_ITER,
    seed: SeedOpt = DEFAULT_SEED, device: DeviceOpt = "cpu", key: KeyOpt = None, input_shape: ShapeOpt = None,
    allow_global: AllowGlobalOpt = None, node_constant: NodeOpt = None, plot: PlotOpt = None, config: ConfigOpt = None,
    effort: EffortOpt = 1.0, lower: LowerOpt = True,
) -> None:
    """Gate CI on Lipschitz bounds: exit 1 when a model is above a threshold, 2 when it cannot be judged."""
    from lipcheck.gate import GateSpec

    if not models:
        raise Failure("no model given; name files or globs (lipcheck check model.onnx) or set 'models' in [tool.lipcheck]")
    given = {"LIPCHECK_FAIL_ABOVE": fail_above, "LIPCHECK_FAIL_LAYER_ABOVE": fail_layer_above, "LIPCHECK_LAYER_THRESHOLD": layer_threshold}
    for name, value in given.items():
        if value in (None, []) and os.environ.get(name) == "":  # a CI variable that came out empty would switch the gate off
            raise Failure(f"{name} is set but empty; give it a threshold or unset it")
    pairs = tuple(opt.parse_pair(t, "--layer-threshold", "PATTERN=NUMBER, e.g. 'encoder.*=2.0'") for t in layer_threshold or ())
    spec = GateSpec(fail_above=fail_above, bound=bound.value, fail_layer_above=fail_layer_above,
                    layer_thresholds=pairs, strict=strict)
    paths = opt.expand(models)
    check_destinations(output, plot, [Path(p) for p in paths])
    run = _analyse(ctx, paths, key, spec, tol=tol, max_iter=max_iter, seed=seed, device=device,
                   effort=effort, lower=lower, input_shape=input_shape, allow_global=allow_global,
                   node_constant=node_constant)
    if not spec.active:
        opt.warn("no threshold set (--fail-above, --fail-layer-above, --layer-threshold): every model passes")
    publish(run, output_format, output, plot, exit_zero=exit_zero, strict=strict)


@app.command()
def normalize(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Model file to normalize (never modified).")],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the normalized copy (same format).")],
    target: Annotated[float, typer.Option("--target", parser=opt.number, metavar="X", help="Each selected layer's Lipschitz bound after normalization.")] = 1.0,
    budget: Annotated[float | None, typer.Option("--budget", parser=opt.number, metavar="K", help="A whole-network target K: each of the L selected layers gets K^(1/L).")] = None,
    convention: Annotated[opt.Convention, typer.Option("--convention", metavar="lipschitz|torch", help="lipschitz: divide by the certified Lipschitz upper bound (conv operator norm); torch: by the reshaped σ, as torch's spectral_norm.")] = opt.Convention.lipschitz,
    clip: Annotated[bool, typer.Option("--clip", help="Only shrink layers above the target.")] = False,
    layers: Annotated[list[str] | None, typer.Option("--layers", metavar="GLOB", help="Layer names to normalize (repeatable; default all).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    output_format: Annotated[Fmt, opt.format_option(("table", "json"))] = Fmt.table,
    tol: TolOpt = DEFAULT_TOL, max_iter: MaxIterOpt = DEFAULT_MAX_ITER, seed: SeedOpt = DEFAULT_SEED,
    device: DeviceOpt = "cpu", key: KeyOpt = None, input_shape: ShapeOpt = None, allow_global: AllowGlobalOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write a spectrally normalized copy of the model (W ← W/σ(W)) and show before/after."""
    from rich.console import Console

    from lipcheck.normalize import normalize as run_normalize
    from lipcheck.report import normalize_table
    from lipcheck.report.progress import LayerProgress

    _formats(output_format, ("table", "json"), "normalize", "its report is the before/after table")
    settings = opt.settings_for(ctx, str(model), tol=tol, max_iter=max_iter, seed=seed, device=device, input_shape=input_shape,
                         allow_global=allow_global, node_constant=None)
    with LayerProgress(Console(stderr=True)):
        result = run_normalize(model, output, target=target, budget=budget, convention=convention.value, clip=clip,
                               layers=tuple(layers or ()), force=force, settings=settings, key=key)
    for warning in result.warnings:
        opt.warn(warning)
    if output_format is Fmt.json:
        sys.stdout.write(normalize_table.render_json(result))
    else:
        normalize_table.render(result, Console())


@app.command()
def diff(
    ctx: typer.Context,
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The earlier checkpoint.")],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The later checkpoint of the same model.")],
    fail_if_grows: Annotated[float | None, typer.Option("--fail-if-grows", envvar="LIPCHECK_FAIL_IF_GROWS", parser=opt.number, metavar="PCT",
                                                           help="Exit 1 when a layer's upper bound or the product grows by more than PCT percent.")] = None,
    output_format: Annotated[Fmt, opt.format_option(("table", "json", "markdown"))] = Fmt.table,
    output: OutputOpt = None, tol: TolOpt = DEFAULT_TOL, max_iter: MaxIterOpt = DEFAULT_MAX_ITER,
    seed: SeedOpt = DEFAULT_SEED, device: DeviceOpt = "cpu", key: KeyOpt = None, input_shape: ShapeOpt = None,
    allow_global: AllowGlobalOpt = None, config: ConfigOpt = None,
) -> None:
    """Compare per-layer σ and bounds between two checkpoints (training drift)."""
    from rich.console import Console

    from lipcheck.diff import compare
    from lipcheck.report import drift as drift_render

    _formats(output_format, ("table", "json", "markdown"), "diff", "it compares two files, with no gate per model")
    if output:
        check_output(output, [old, new])
    run = _analyse(ctx, [str(old), str(new)], key, tol=tol, max_iter=max_iter, seed=seed, device=device,
                   input_shape=input_shape, allow_global=allow_global, node_constant=None)
    if run.errors:
        raise Failure(run.errors[0].error or "")
    for result in run.results:
        if result.report is not None and result.report.non_finite_layers:
            raise Failure(f"{result.path}: non-finite weights (NaN or Inf) in {', '.join(result.report.non_finite_layers)}; no bound to compare")
    drift = compare(run.results[0].report, run.results[1].report, fail_if_grows)
    for warning in drift.warnings:
        opt.warn(warning)
    if output_format is Fmt.table and not output:
        drift_render.render_table(drift, Console())
    else:
        text = drift_render.render_json(drift) if output_format is Fmt.json else drift_render.render_markdown(drift)
        write_atomic(output, text) if output else sys.stdout.write(text)
    if drift.failures:
        raise typer.Exit(1)


def _formats(chosen: Fmt, allowed: tuple[str, ...], command: str, why: str) -> None:
    if chosen.value not in allowed:
        raise Failure(f"{command} writes {', '.join(allowed)}, not {chosen.value} ({why})")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lipcheck`` console script: every error is one line on stderr and exit 2."""
    from lipcheck.errors import LipcheckError, first_line, one_line

    command = next((a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")), "")
    for stream in (sys.stdout, sys.stderr):  # a name no encoding can write (a lone surrogate) is escaped, not fatal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        code = app(args=argv, prog_name="lipcheck", standalone_mode=False)
    except (LipcheckError, Failure) as exc:
        sys.stderr.write(f"lipcheck: error: {one_line(str(exc))}\n")
        code = 2
    except KeyboardInterrupt:
        code = 130
    except OSError as exc:  # the system refused a read or write (a full disk, a read-only folder)
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"lipcheck: error: {one_line(exc.strerror or first_line(exc))}{one_line(where)}; check the path, its permissions and the free space\n")
        code = 2
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain `lipcheck`: the help, as the framework words it
            sys.stderr.write(str(exc.format_message()) + "\n")  # type: ignore[attr-defined]
            sys.exit(2)
        if not hasattr(exc, "format_message"):  # not the framework's own usage error: an internal one
            sys.stderr.write(f"lipcheck: error: internal error ({type(exc).__name__}: {first_line(exc)}); please report it\n")
            sys.exit(2)
        hint = f" (see lipcheck {command} --help)" if command else " (see lipcheck --help)"
        sys.stderr.write(f"lipcheck: error: {' '.join(str(exc.format_message()).split())}{hint}\n")
        code = getattr(exc, "exit_code", 2) or 2
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
