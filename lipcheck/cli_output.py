"""The command line's output: the report to stdout or a file, the plot, and the exit status of a run."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from lipcheck.cli_options import Failure, Fmt, warn
from lipcheck.errors import one_line


@contextlib.contextmanager
def printing_to_stderr() -> Iterator[None]:
    """Send to stderr what runs while models are analysed prints (a TorchScript forward's print):
    stdout carries only the report."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout to keep clean
        yield
        return
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def emit(run: Any, fmt: str, output: Path | None) -> None:
    from lipcheck import report

    if fmt == "table" and output is None:
        from rich.console import Console

        from lipcheck.report import table

        table.render(run, Console())
    else:
        text = report.render(run, fmt)
        if output is None:
            sys.stdout.write(text)
        else:
            check_output(output, models_read(run))
            write_atomic(output, text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if fmt == "github" and summary:
        from lipcheck.report import github

        try:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(github.summary(run))
        except OSError as exc:
            warn(f"cannot append to GITHUB_STEP_SUMMARY ({exc})")


def publish(run: Any, fmt: Fmt, output: Path | None, plot: Path | None, *, exit_zero: bool, strict: bool) -> None:
    """Write the report and the plot, then exit with the run's status."""
    if plot:
        check_output(plot, models_read(run), "--plot")
    emit(run, fmt.value, output)
    if plot:
        from lipcheck.report import plot as drawing

        drawing.write(run, plot)
    finish(run, exit_zero=exit_zero, strict=strict)


def models_read(run: Any) -> list[Path]:
    """The model files a run read (what no output may replace)."""
    return [Path(r.path) for r in getattr(run, "results", [])]


def check_destinations(output: Path | None, plot: Path | None, inputs: list[Path]) -> None:
    """Refuse, before any work, a report or plot path that cannot be written as asked."""
    if output is not None:
        check_output(output, inputs)
    if plot is None:
        return
    check_output(plot, inputs, "--plot")
    if plot.suffix.lower() not in (".png", ".svg"):
        raise Failure(f"--plot {plot}: give a .png or .svg file name")
    if output is not None and os.path.abspath(os.path.realpath(output)) == os.path.abspath(os.path.realpath(plot)):
        raise Failure(f"-o and --plot both name {output}; the plot would replace the report: give them different files")


def check_output(output: Path, inputs: list[Path], flag: str = "-o") -> None:
    """Refuse a report path that is a folder or one of the models read (the report would replace it)."""
    if output.is_dir():
        raise Failure(f"{output} is a folder; give {flag} a file name")
    for path in inputs:
        try:
            same = output.exists() and path.exists() and os.path.samefile(output, path)
        except OSError:
            same = False
        if same:
            raise Failure(f"{flag} {output} is the model {path} itself; write it elsewhere")


def write_atomic(path: Path, text: str) -> None:
    from lipcheck.atomic import write_text

    write_text(path, text)


def finish(run: Any, *, exit_zero: bool, strict: bool) -> None:
    from lipcheck.gate import exit_status

    single = len(run.results) == 1
    problems = errors = 0
    for result in run.results:
        name = "" if single else f"{result.path}: "
        if result.error is not None:
            errors += 1
            prefix = "" if result.error.startswith(result.path) else name
            sys.stderr.write(f"lipcheck: error: {one_line(prefix + (result.error or ''))}\n")
            continue
        bad = result.report.non_finite_layers
        gate_errors = result.outcome.errors if result.outcome is not None else []
        if bad or gate_errors:
            errors += 1
            text = (f"non-finite weights (NaN or Inf) in {', '.join(bad)}: no bound exists; fix or retrain these layers") if bad else gate_errors[0]
            sys.stderr.write(f"lipcheck: error: {one_line(name + text)}\n")
        if result.outcome is not None and result.outcome.problems:
            problems += 1
            more = len(result.outcome.problems) - 1
            text = f"{name}{result.outcome.problems[0]}" + (f" (and {more} more)" if more else "")
            if strict:
                sys.stderr.write(f"lipcheck: error: {one_line(text)}; --strict makes this an error\n")
            else:
                warn(text)
    code = exit_status(errors=errors, failed=len(run.failed), problems=problems, exit_zero=exit_zero, strict=strict)
    if code:
        raise typer.Exit(code)
