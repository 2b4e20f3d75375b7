"""The command line: options in, call the API, render, map errors to exit codes (design.md §4).

Option values come from the command line, else ``LIPCHECK_*`` environment variables, else
``[tool.lipcheck]`` in pyproject.toml (or ``--config``), else the defaults below.
"""

from __future__ import annotations

import enum
import glob
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lipcheck import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure, certify and enforce the Lipschitz constant of trained networks.")

DEFAULTS: dict[str, Any] = {"tol": 1e-6, "max-iter": 10_000, "seed": 0, "device": "cpu", "format": "table", "bound": "upper",
                            "strict": False, "exit-zero": False}


class OutputFormat(str, enum.Enum):
    """Report formats."""

    table = "table"
    json = "json"
    markdown = "markdown"
    github = "github"
    junit = "junit"
    csv = "csv"


class BoundKind(str, enum.Enum):
    """Which network bound --fail-above judges."""

    upper = "upper"
    graph = "graph"
    product = "product"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lipcheck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Measure, certify and enforce the Lipschitz constant of trained networks."""


def _fail(message: str) -> typer.Exit:
    sys.stderr.write(f"lipcheck: error: {message}\n")
    return typer.Exit(2)


def _warn(message: str) -> None:
    sys.stderr.write(f"lipcheck: warning: {message}\n")


# -- options shared by the commands -------------------------------------------------------------
FormatOpt = Annotated[Optional[OutputFormat], typer.Option("--format", "-f", envvar="LIPCHECK_FORMAT",
                                                           help="Report format. [default: table]")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", envvar="LIPCHECK_OUTPUT",
                                                   help="Write the report to this file instead of stdout.")]
TolOpt = Annotated[Optional[float], typer.Option(envvar="LIPCHECK_TOL",
                                                 help="Relative width at which a layer's interval counts as converged. [default: 1e-6]")]
MaxIterOpt = Annotated[Optional[int], typer.Option(envvar="LIPCHECK_MAX_ITER", help="Power-iteration cap per layer. [default: 10000]")]
SeedOpt = Annotated[Optional[int], typer.Option(envvar="LIPCHECK_SEED", help="Seed of the power iteration's start vectors. [default: 0]")]
DeviceOpt = Annotated[Optional[str], typer.Option(envvar="LIPCHECK_DEVICE", help="Where dense certificates run: cpu, cuda, cuda:N, or auto (cuda when present). Never required. [default: cpu]")]
KeyOpt = Annotated[Optional[str], typer.Option(envvar="LIPCHECK_KEY",
                                               help="Checkpoint key holding the weights (e.g. ema), dotted for nested dicts.")]
ShapeOpt = Annotated[Optional[list[str]], typer.Option(
    "--input-shape", envvar="LIPCHECK_INPUT_SHAPE",
    help="Shape of a model input, batch first (1x3x224x224); repeat once per input, in order. "
         "Gives conv operator norms at that size (ONNX, TorchScript).")]
GlobalOpt = Annotated[Optional[list[str]], typer.Option(
    "--allow-global", envvar="LIPCHECK_ALLOW_GLOBAL",
    help="Allow one non-tensor object (module.Name, e.g. argparse.Namespace) in a PyTorch checkpoint; repeatable. "
         "Only for files you trust: nothing else is ever unpickled.")]
NodeOpt = Annotated[Optional[list[str]], typer.Option(
    "--node-constant", envvar="LIPCHECK_NODE_CONSTANT",
    help="LABEL=C: vouch that graph node LABEL is C-Lipschitz (for nodes lipcheck cannot bound; recorded in the report).")]
PlotOpt = Annotated[Optional[Path], typer.Option("--plot", envvar="LIPCHECK_PLOT",
                                                 help="Also draw σ and the Lipschitz upper bound per layer into FILE.png or FILE.svg (needs lipcheck[plot]).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", envvar="LIPCHECK_CONFIG",
                                                   help="A TOML file with a [tool.lipcheck] table (default: the nearest pyproject.toml).")]


class _Options:
    """Resolved option values: command line/environment, then config file, then defaults."""

    def __init__(self, config_path: Path | None, given: dict[str, Any]) -> None:
        from lipcheck import config

        explicit = config_path is not None
        self.config, self.config_path = config.load(config_path if explicit else config.find(Path.cwd()),
                                                    explicit=explicit)
        self.given = given

    def get(self, key: str) -> Any:
        value = self.given.get(key)
        if value is not None:
            return value
        if key in self.config:
            return self.config[key]
        return DEFAULTS.get(key)

    def settings(self):  # type: ignore[no-untyped-def]
        from lipcheck.settings import Settings

        tol, max_iter = float(self.get("tol")), int(self.get("max-iter"))
        if not (0 < tol < 1) or max_iter < 1:
            raise _fail("--tol must be in (0, 1) and --max-iter at least 1")
        shapes = self.get("input-shape")
        if isinstance(shapes, str):
            shapes = [shapes]
        parsed = tuple(_parse_shape(str(text)) for text in shapes) if shapes else None
        allowed = tuple(str(name) for name in (self.get("allow-global") or ()))
        supplied = self.get("node-constant") or ()
        pairs = tuple(supplied.items()) if isinstance(supplied, dict) else tuple(
            _parse_pair(str(t), "--node-constant", "LABEL=C, e.g. '/attn/MatMul=4.0'") for t in supplied)
        return Settings(seed=int(self.get("seed")), tol=tol, max_iter=max_iter, input_shape=parsed,
                        device=_device(str(self.get("device"))), allow_globals=allowed, node_constants=tuple((k, float(v)) for k, v in pairs))

    def output_format(self) -> OutputFormat:
        value = self.get("format")
        try:
            return OutputFormat(value)
        except ValueError:
            raise _fail(f"unknown format {value!r}; choose one of {', '.join(f.value for f in OutputFormat)}") from None


def _options(config: Path | None, given: dict[str, Any]) -> _Options:
    """Resolve options, turning a bad config file into the one-line error and exit 2."""
    from lipcheck.errors import LipcheckError

    try:
        return _Options(config, given)
    except LipcheckError as exc:
        raise _fail(str(exc)) from None


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.lower().replace(",", "x").split("x")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts) or len(parts) < 2:
        raise _fail(f"--input-shape {text!r}: write positive sizes joined by x, batch first, e.g. 1x3x224x224")
    return tuple(int(p) for p in parts)


def _parse_threshold(text: str) -> tuple[str, float]:
    return _parse_pair(text, "--layer-threshold", "PATTERN=NUMBER, e.g. 'encoder.*=2.0'")


def _parse_pair(text: str, flag: str, form: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name or number != number or number < 0:
        raise _fail(f"{flag} {text!r}: write {form}")
    return name, number


def _expand(models: list[str]) -> list[str]:
    """Paths as given, and glob patterns (also quoted ones the shell left alone) expanded in order."""
    out: list[str] = []
    for entry in models:
        if any(ch in entry for ch in "*?[") and not os.path.exists(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                raise _fail(f"no file matches {entry!r}; check the pattern (quote it to let lipcheck expand **)")
            out.extend(matches)
        else:
            out.append(entry)
    return out


# -- running and reporting ---------------------------------------------------------------------------
def _analyse(paths: list[str], settings, key: str | None, spec, err) -> "Run":  # type: ignore[no-untyped-def]
    from lipcheck.api import inspect as run_inspect
    from lipcheck.errors import LipcheckError
    from lipcheck.gate import evaluate
    from lipcheck.report.run import FileResult, Run

    results = []
    with _progress_bar(err) as progress:
        for path in paths:
            progress.model = path if len(paths) > 1 else ""
            try:
                report = run_inspect(path, settings=settings, key=key, progress=progress)
            except LipcheckError as exc:
                results.append(FileResult(path, error=str(exc)))
                continue
            except MemoryError:
                results.append(FileResult(path, error=f"ran out of memory reading {path}; try a machine with more memory"))
                continue
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
            except Exception as exc:  # an internal error is still one line and exit 2
                results.append(FileResult(path, error=f"internal error ({type(exc).__name__}: {exc}); please report it "
                                                      "with the model's layout"))
                continue
            outcome = evaluate(report, spec) if spec is not None else None
            results.append(FileResult(path, report=report, outcome=outcome))
    return Run(results, spec)


def _render(run, output_format: OutputFormat) -> str:  # type: ignore[no-untyped-def]
    if output_format is OutputFormat.json:
        from lipcheck.report import json_report

        return json_report.render(run)
    if output_format is OutputFormat.markdown:
        from lipcheck.report import markdown

        return markdown.render(run)
    if output_format is OutputFormat.github:
        from lipcheck.report import github

        return github.render(run)
    if output_format is OutputFormat.junit:
        from lipcheck.report import junit

        return junit.render(run)
    if output_format is OutputFormat.csv:
        from lipcheck.report import csv_report

        return csv_report.render(run)
    from rich.console import Console

    from lipcheck.report import table

    console = Console(record=True, file=open(os.devnull, "w"), no_color="NO_COLOR" in os.environ,  # noqa: SIM115
                      width=int(os.environ.get("COLUMNS", 0)) or None)
    table.render(run, console)
    return console.export_text(styles=console.is_terminal and not console.no_color)


def _emit(run, output_format: OutputFormat, output: Path | None) -> None:  # type: ignore[no-untyped-def]
    if output_format is OutputFormat.table and output is None:
        from rich.console import Console

        from lipcheck.report import table

        table.render(run, Console())
    else:
        text = _render(run, output_format)
        if output is None:
            sys.stdout.write(text)
        else:
            _write_atomic(output, text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if output_format is OutputFormat.github and summary:
        from lipcheck.report import github

        try:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(github.summary(run))
        except OSError as exc:
            _warn(f"cannot append to GITHUB_STEP_SUMMARY ({exc})")


def _write_atomic(path: Path, text: str) -> None:
    from lipcheck.atomic import replacing
    from lipcheck.errors import LipcheckError

    try:
        with replacing(path) as (tmp,):
            tmp.write_text(text, encoding="utf-8")
    except LipcheckError as exc:
        raise _fail(str(exc)) from None


def _plot(run, target: Any) -> None:  # type: ignore[no-untyped-def]
    if not target:
        return
    from lipcheck.errors import LipcheckError
    from lipcheck.report import plot

    try:
        plot.write(run, Path(target))
    except LipcheckError as exc:
        raise _fail(str(exc)) from None


def _finish(run, *, exit_zero: bool, strict: bool) -> None:  # type: ignore[no-untyped-def]
    from lipcheck.gate import exit_status

    single = len(run.results) == 1
    problems = 0
    for result in run.results:
        name = "" if single else f"{result.path}: "
        if result.error is not None:
            sys.stderr.write(f"lipcheck: error: {name}{result.error}\n")
            continue
        bad = result.report.non_finite_layers
        if bad:
            sys.stderr.write(f"lipcheck: error: {name}non-finite weights (NaN or Inf) in {', '.join(bad)}: no bound "
                             "exists; fix or retrain these layers\n")
        gate_errors = result.outcome.errors if result.outcome is not None else []
        for message in gate_errors:
            sys.stderr.write(f"lipcheck: error: {name}{message}\n")
        if result.outcome is not None and result.outcome.problems:
            problems += 1
            first = result.outcome.problems[0]
            more = len(result.outcome.problems) - 1
            text = f"{name}{first}" + (f" (and {more} more)" if more else "")
            if strict:
                sys.stderr.write(f"lipcheck: error: {text}; --strict makes this an error\n")
            else:
                _warn(text)
    errors = len(run.errors) + sum(1 for r in run.results if r.report is not None and (
        r.report.non_finite_layers or (r.outcome is not None and r.outcome.errors)))
    code = exit_status(errors=errors, failed=len(run.failed), problems=problems, exit_zero=exit_zero, strict=strict)
    if code:
        raise typer.Exit(code)


# -- commands ------------------------------------------------------------------------------------------
@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="Model file: .pt/.pth/.bin/.ckpt, TorchScript, .safetensors or .onnx.")],
    output_format: FormatOpt = None,
    output: OutputOpt = None,
    tol: TolOpt = None,
    max_iter: MaxIterOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    key: KeyOpt = None,
    input_shape: ShapeOpt = None,
    allow_global: GlobalOpt = None,
    node_constant: NodeOpt = None,
    plot: PlotOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print each layer's spectral norm, its certified Lipschitz interval, and the network's bounds."""
    from rich.console import Console

    opts = _options(config, {"format": output_format.value if output_format else None, "output": output,
                             "tol": tol, "max-iter": max_iter, "seed": seed, "device": device, "key": key, "input-shape": input_shape,
                             "allow-global": allow_global, "plot": plot, "node-constant": node_constant})
    fmt, settings = opts.output_format(), opts.settings()
    run = _analyse([str(model)], settings, opts.get("key"), None, Console(stderr=True))
    if run.errors:
        raise _fail(run.errors[0].error or "")
    out = opts.get("output")
    _emit(run, fmt, Path(out) if out else None)
    _plot(run, opts.get("plot"))
    _finish(run, exit_zero=False, strict=False)


@app.command()
def check(
    models: Annotated[Optional[list[str]], typer.Argument(help="Model files or glob patterns (default: 'models' from the config).")] = None,
    fail_above: Annotated[Optional[float], typer.Option(envvar="LIPCHECK_FAIL_ABOVE",
                                                        help="Fail when the network bound is above this.")] = None,
    bound: Annotated[Optional[BoundKind], typer.Option(envvar="LIPCHECK_BOUND",
                                                       help="Bound judged by --fail-above: upper (the network bound; exit 2 when there is none), graph, or product (the product of layer bounds, a network bound only for plain chains). [default: upper]")] = None,
    fail_layer_above: Annotated[Optional[float], typer.Option(envvar="LIPCHECK_FAIL_LAYER_ABOVE",
                                                              help="Fail when any layer's upper bound is above this.")] = None,
    layer_threshold: Annotated[Optional[list[str]], typer.Option(envvar="LIPCHECK_LAYER_THRESHOLD",
                                                                 help="PATTERN=X: fail when a layer matching the glob PATTERN is above X (first match wins; repeatable).")] = None,
    exit_zero: Annotated[Optional[bool], typer.Option("--exit-zero/--no-exit-zero", envvar="LIPCHECK_EXIT_ZERO",
                                                      help="Exit 0 even when a gate fails (errors still exit 2).")] = None,
    strict: Annotated[Optional[bool], typer.Option("--strict/--no-strict", envvar="LIPCHECK_STRICT",
                                                   help="Exit 2 when a tensor is skipped or a requested bound does not exist.")] = None,
    output_format: FormatOpt = None,
    output: OutputOpt = None,
    tol: TolOpt = None,
    max_iter: MaxIterOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    key: KeyOpt = None,
    input_shape: ShapeOpt = None,
    allow_global: GlobalOpt = None,
    node_constant: NodeOpt = None,
    plot: PlotOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Gate CI on Lipschitz bounds: exit 1 when a model is above a threshold (design.md §4)."""
    from rich.console import Console

    from lipcheck.gate import GateSpec

    opts = _options(config, {
        "models": models or None, "fail-above": fail_above, "bound": bound.value if bound else None,
        "fail-layer-above": fail_layer_above, "layer-threshold": layer_threshold or None, "exit-zero": exit_zero,
        "strict": strict, "format": output_format.value if output_format else None, "output": output, "tol": tol,
        "max-iter": max_iter, "seed": seed, "device": device, "key": key, "input-shape": input_shape, "allow-global": allow_global,
        "plot": plot, "node-constant": node_constant})
    paths = opts.get("models")
    if not paths:
        raise _fail("no model given; name files or globs (lipcheck check model.onnx) or set 'models' in [tool.lipcheck]")
    fmt, settings = opts.output_format(), opts.settings()
    thresholds = opts.get("layer-threshold") or []
    if isinstance(thresholds, dict):
        pairs = tuple((str(p), float(v)) for p, v in thresholds.items())
    else:
        pairs = tuple(_parse_threshold(str(t)) for t in thresholds)
    bound_kind = str(opts.get("bound"))
    if bound_kind not in {b.value for b in BoundKind}:
        raise _fail(f"unknown bound {bound_kind!r}; choose upper, graph or product")
    spec = GateSpec(
        fail_above=_float_or_none(opts.get("fail-above")), bound=bound_kind,
        fail_layer_above=_float_or_none(opts.get("fail-layer-above")), layer_thresholds=pairs,
        strict=bool(opts.get("strict")))
    if not spec.active:
        _warn("no threshold set (--fail-above, --fail-layer-above, --layer-threshold): every model passes")
    run = _analyse(_expand([str(p) for p in paths]), settings, opts.get("key"), spec, Console(stderr=True))
    out = opts.get("output")
    _emit(run, fmt, Path(out) if out else None)
    _plot(run, opts.get("plot"))
    _finish(run, exit_zero=bool(opts.get("exit-zero")), strict=spec.strict)


class Convention(str, enum.Enum):
    """What normalize divides each layer by."""

    lipschitz = "lipschitz"
    torch = "torch"


@app.command()
def normalize(
    model: Annotated[Path, typer.Argument(help="Model file to normalize (never modified).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the normalized copy (same format).")],
    target: Annotated[float, typer.Option(help="Each selected layer's Lipschitz bound after normalization.")] = 1.0,
    budget: Annotated[Optional[float], typer.Option(help="A whole-network target K: each of the L selected layers gets K^(1/L).")] = None,
    convention: Annotated[Convention, typer.Option(help="lipschitz: divide by the certified Lipschitz upper bound (conv operator norm); torch: by the reshaped σ, as torch's spectral_norm.")] = Convention.lipschitz,
    clip: Annotated[bool, typer.Option("--clip", help="Only shrink layers above the target.")] = False,
    layers: Annotated[Optional[list[str]], typer.Option("--layers", help="Glob of layer names to normalize (repeatable; default all).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="table or json.")] = OutputFormat.table,
    tol: TolOpt = None,
    max_iter: MaxIterOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    key: KeyOpt = None,
    input_shape: ShapeOpt = None,
    allow_global: GlobalOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write a spectrally normalized copy of the model (W ← W/σ(W)) and show before/after."""
    from rich.console import Console

    from lipcheck.errors import LipcheckError

    try:
        opts = _Options(config, {"tol": tol, "max-iter": max_iter, "seed": seed, "device": device, "key": key, "input-shape": input_shape, "allow-global": allow_global})
        settings = opts.settings()
        from lipcheck.normalize import normalize as run_normalize

        with _progress_bar(Console(stderr=True)):
            result = run_normalize(model, output, target=target, budget=budget, convention=convention.value, clip=clip,
                                   layers=tuple(layers or ()), force=force, settings=settings, key=opts.get("key"))
    except LipcheckError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:  # an internal error is still one line and exit 2
        raise _fail(f"internal error ({type(exc).__name__}: {exc}); the input is unchanged; please report it") from None
    for warning in result.warnings:
        _warn(warning)
    from lipcheck.report import normalize_table

    if output_format is OutputFormat.json:
        sys.stdout.write(normalize_table.render_json(result))
    else:
        normalize_table.render(result, Console())


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The earlier checkpoint.")],
    new: Annotated[Path, typer.Argument(help="The later checkpoint of the same model.")],
    fail_if_grows: Annotated[Optional[float], typer.Option(envvar="LIPCHECK_FAIL_IF_GROWS",
                                                           help="Exit 1 when a layer's upper bound or the product grows by more than this many percent.")] = None,
    output_format: FormatOpt = None,
    output: OutputOpt = None,
    tol: TolOpt = None,
    max_iter: MaxIterOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    key: KeyOpt = None,
    input_shape: ShapeOpt = None,
    allow_global: GlobalOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Compare per-layer σ and bounds between two checkpoints (training drift)."""
    from rich.console import Console

    from lipcheck.diff import compare
    from lipcheck.report import drift as drift_render

    opts = _options(config, {"fail-if-grows": fail_if_grows, "format": output_format.value if output_format else None,
                             "output": output, "tol": tol, "max-iter": max_iter, "seed": seed, "device": device, "key": key,
                             "input-shape": input_shape, "allow-global": allow_global})
    fmt, settings = opts.output_format(), opts.settings()
    run = _analyse([str(old), str(new)], settings, opts.get("key"), None, Console(stderr=True))
    if run.errors:
        raise _fail(run.errors[0].error or "")
    reports = [r.report for r in run.results]
    drift = compare(reports[0], reports[1], _float_or_none(opts.get("fail-if-grows")))  # type: ignore[arg-type]
    out = opts.get("output")
    if fmt is OutputFormat.table and not out:
        drift_render.render_table(drift, Console())
    elif fmt in (OutputFormat.table, OutputFormat.json, OutputFormat.markdown):
        text = {OutputFormat.json: drift_render.render_json, OutputFormat.markdown: drift_render.render_markdown}.get(
            fmt, drift_render.render_markdown)(drift)
        _write_atomic(Path(out), text) if out else sys.stdout.write(text)
    else:
        raise _fail(f"diff writes table, json or markdown, not {fmt.value}")
    if drift.failures:
        raise typer.Exit(1)


def _device(text: str) -> str:
    """Check a --device value against what this machine has."""
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return text
    if text == "cuda" or text.startswith("cuda:") and text[5:].isdigit():
        if not torch.cuda.is_available():
            raise _fail(f"--device {text}: this torch build or machine has no CUDA GPU; use --device cpu (the default)")
        if text != "cuda" and int(text[5:]) >= torch.cuda.device_count():
            raise _fail(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
        return text
    raise _fail(f"--device {text!r}: choose cpu, cuda, cuda:N or auto")


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


class _progress_bar:
    """A per-layer progress bar on stderr, shown only on a terminal."""

    def __init__(self, console) -> None:  # type: ignore[no-untyped-def]
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True, disable=not console.is_terminal)
        self.task = self.bar.add_task("layers", total=None)
        self.model = ""

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        self.bar.__exit__(*exc)

    def __call__(self, index: int, total: int, layer) -> None:  # type: ignore[no-untyped-def]
        name = layer.display_name if layer is not None else "done"
        prefix = f"{self.model}: " if self.model else ""
        self.bar.update(self.task, completed=index, total=total, description=f"{prefix}σ {name}")


def main() -> None:
    """Entry point of the ``lipcheck`` console script."""
    app()


if __name__ == "__main__":
    main()
