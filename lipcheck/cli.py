"""The command line: options in, call the API, render, map errors to exit codes (design.md §4)."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lipcheck import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure, certify and enforce the Lipschitz constant of trained networks.")


class OutputFormat(str, enum.Enum):
    """Report formats of ``inspect``."""

    table = "table"
    json = "json"


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


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="Model file: .pt/.pth/.bin/.ckpt, TorchScript, .safetensors or .onnx.")],
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="Report format.")] = OutputFormat.table,
    tol: Annotated[float, typer.Option(help="Relative width at which a layer's interval counts as converged.")] = 1e-6,
    max_iter: Annotated[int, typer.Option(help="Power-iteration cap per layer.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the power iteration's start vectors.")] = 0,
    key: Annotated[Optional[str], typer.Option(help="Checkpoint key holding the weights (e.g. ema), dotted for nested dicts.")] = None,
    input_shape: Annotated[Optional[list[str]], typer.Option(
        "--input-shape", help="Shape of a model input, batch first (1x3x224x224); repeat once per input, in order. "
                              "Gives conv operator norms at that size (ONNX, TorchScript).")] = None,
) -> None:
    """Print each layer's spectral norm and the network's product bound."""
    from rich.console import Console

    from lipcheck.errors import LipcheckError

    if not (0 < tol < 1) or max_iter < 1:
        raise _fail("--tol must be in (0, 1) and --max-iter at least 1")
    shapes = tuple(_parse_shape(text) for text in input_shape) if input_shape else None
    err = Console(stderr=True)
    try:
        from lipcheck.api import inspect as run_inspect
        from lipcheck.settings import Settings

        with _progress_bar(err) as progress:
            report = run_inspect(model, settings=Settings(seed=seed, tol=tol, max_iter=max_iter, input_shape=shapes), key=key,
                                 progress=progress)
    except LipcheckError as exc:
        raise _fail(str(exc)) from None
    except MemoryError:
        raise _fail(f"ran out of memory reading {model}; try a machine with more memory") from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:  # an internal error is still one line and exit 2
        raise _fail(f"internal error ({type(exc).__name__}: {exc}); please report it with the model's layout") from None
    if output_format is OutputFormat.json:
        from lipcheck.report import json_report

        sys.stdout.write(json_report.render(report))
    else:
        from lipcheck.report import table

        table.render(report, Console())
    bad = report.non_finite_layers
    if bad:
        raise _fail(f"non-finite weights (NaN or Inf) in {', '.join(bad)}: no bound exists; fix or retrain these layers")


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.lower().replace(",", "x").split("x")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts) or len(parts) < 2:
        raise _fail(f"--input-shape {text!r}: write positive sizes joined by x, batch first, e.g. 1x3x224x224")
    return tuple(int(p) for p in parts)


class _progress_bar:
    """A per-layer progress bar on stderr, shown only on a terminal."""

    def __init__(self, console) -> None:  # type: ignore[no-untyped-def]
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True, disable=not console.is_terminal)
        self.task = self.bar.add_task("layers", total=None)

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        self.bar.__exit__(*exc)

    def __call__(self, index: int, total: int, layer) -> None:  # type: ignore[no-untyped-def]
        name = layer.display_name if layer is not None else "done"
        self.bar.update(self.task, completed=index, total=total, description=f"σ {name}")


def main() -> None:
    """Entry point of the ``lipcheck`` console script."""
    app()


if __name__ == "__main__":
    main()
