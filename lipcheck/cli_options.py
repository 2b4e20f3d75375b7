"""The command line's shared options: their parsing, the config file as defaults, and Settings per model."""

from __future__ import annotations

import enum
import glob
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from lipcheck.settings import Settings


class Fmt(str, enum.Enum):
    """Report formats; each command accepts the ones that mean something for it."""

    table = "table"
    json = "json"
    markdown = "markdown"
    github = "github"
    junit = "junit"
    csv = "csv"


class BoundKind(str, enum.Enum):
    """Which network bound --fail-above judges."""

    network = "upper"  # the member name avoids shadowing str.upper
    graph = "graph"
    product = "product"


class Convention(str, enum.Enum):
    """What normalize divides each layer by."""

    lipschitz = "lipschitz"
    torch = "torch"


def _config(ctx: typer.Context, value: Path | None) -> Path | None:
    """Read the config first (an eager option) and hand its values to the framework as defaults."""
    from lipcheck import config

    loaded, path = config.load(value if value is not None else config.find(Path.cwd()), explicit=value is not None)
    params = {param.name for param in ctx.command.params if param.name}
    ctx.default_map = {**(ctx.default_map or {}), **config.default_map(loaded, path, params)}
    ctx.meta["lipcheck.config"] = (loaded, path)
    return value


class Failure(Exception):
    """A one-line error for the user: printed as ``lipcheck: error: ...``, exit 2."""


def number(value: Any) -> float:
    """A float option's value, with a plain message when it is not one."""
    try:
        found = float(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is not a number; write e.g. 10, 2.5 or 1e-6") from None
    if found != found:
        raise typer.BadParameter(f"{value!r} is not a number: a gate against NaN could never fail; write e.g. 10, 2.5 or 1e-6")
    return found


def _integer(value: Any) -> int:
    """An integer option's value, with a plain message when it is not one."""
    try:
        return int(str(value), 10)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a whole number; write e.g. 100") from None


def warn(message: str) -> None:
    from lipcheck.errors import one_line

    sys.stderr.write(f"lipcheck: warning: {one_line(message)}\n")


# -- options shared by the commands -------------------------------------------------------------
def format_option(allowed: tuple[str, ...]) -> Any:
    return typer.Option("--format", "-f", envvar="LIPCHECK_FORMAT", metavar="|".join(allowed),
                        help=f"Report format: {', '.join(allowed)}.")


OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", envvar="LIPCHECK_OUTPUT", metavar="FILE",
                                                   help="Write the report to FILE (atomically) instead of stdout.")]
TolOpt = Annotated[float, typer.Option("--tol", envvar="LIPCHECK_TOL", metavar="REL", parser=number,
                                       help="Relative width at which a layer's interval counts as converged.")]
MaxIterOpt = Annotated[int, typer.Option("--max-iter", envvar="LIPCHECK_MAX_ITER", metavar="N", parser=_integer, help="Iteration cap per layer.")]
EffortOpt = Annotated[float, typer.Option("--effort", envvar="LIPCHECK_EFFORT", metavar="X", parser=number,
                                          help="Scale the time spent on the lower bound and the tight bound (2 = twice as long).")]
LowerOpt = Annotated[bool, typer.Option("--lower/--no-lower", envvar="LIPCHECK_LOWER",
                                        help="Search an attained lower bound where the model can be run.")]
SeedOpt = Annotated[int, typer.Option("--seed", envvar="LIPCHECK_SEED", metavar="N", parser=_integer, help="Seed of the start vectors.")]
DeviceOpt = Annotated[str, typer.Option("--device", envvar="LIPCHECK_DEVICE", metavar="DEVICE",
                                        help="Where dense certificates run: cpu, cuda, cuda:N, or auto. Never required.")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="LIPCHECK_KEY", metavar="KEY",
                                               help="Checkpoint key holding the weights (e.g. ema), dotted for nested dicts.")]
ShapeOpt = Annotated[list[str] | None, typer.Option(
    "--input-shape", envvar="LIPCHECK_INPUT_SHAPE", metavar="1x3x224x224",
    help="Shape of a model input, batch first; repeat once per input, in order. Gives conv operator norms at that "
         "size (ONNX, TorchScript). In the config, a table from model glob to shape sets it per model.")]
AllowGlobalOpt = Annotated[list[str] | None, typer.Option(
    "--allow-global", envvar="LIPCHECK_ALLOW_GLOBAL", metavar="module.Name",
    help="Allow one non-tensor object (e.g. argparse.Namespace) in a PyTorch checkpoint; repeatable. "
         "Only for files you trust: nothing else is ever unpickled.")]
NodeOpt = Annotated[list[str] | None, typer.Option(
    "--node-constant", envvar="LIPCHECK_NODE_CONSTANT", metavar="LABEL=C",
    help="Vouch that graph node LABEL is C-Lipschitz (for nodes lipcheck cannot bound; recorded in the report).")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", envvar="LIPCHECK_PLOT", metavar="FILE",
                                                 help="Also draw each layer's bounds into FILE.png or FILE.svg (needs lipcheck[plot]).")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", envvar="LIPCHECK_CONFIG", metavar="TOML", is_eager=True, callback=_config,
    help="A TOML file with a [tool.lipcheck] table (default: the nearest pyproject.toml).")]


# The search budgets scale with --effort: beyond this they would run for days.
_MAX_EFFORT = 1000.0


def settings_for(ctx: typer.Context, model: str, *, tol: float, max_iter: int, seed: int, device: str,
                 input_shape: list[str] | None, allow_global: list[str] | None,
                 node_constant: list[str] | None, effort: float = 1.0, lower: bool = True) -> Settings:
    """The Settings for one model; input shapes may come per model from the config."""
    from lipcheck import config

    if not 0.0 < tol < 1.0 or max_iter < 1 or not 0.0 < effort <= _MAX_EFFORT:
        raise Failure(f"--tol must be between 0 and 1 (e.g. 1e-6), --max-iter at least 1 and --effort above 0 and at most {_MAX_EFFORT:g}")
    if not 0 <= seed < 2**63:
        raise Failure("--seed must be a whole number from 0 to 2**63 - 1")
    if input_shape is None and "lipcheck.config" in ctx.meta:
        loaded, path = ctx.meta["lipcheck.config"]
        input_shape = config.shapes_for(loaded, path, model)
    shapes = tuple(_parse_shape(text) for text in input_shape) if input_shape else None
    pairs = tuple(parse_pair(text, "--node-constant", "LABEL=C, e.g. '/attn/MatMul=4.0'") for text in node_constant or ())
    return Settings(seed=seed, tol=tol, max_iter=max_iter, input_shape=shapes, device=_device(device),
                    allow_globals=tuple(allow_global or ()), node_constants=pairs, lower=lower, effort=effort)


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.lower().replace(",", "x").split("x")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts) or len(parts) < 2:
        raise Failure(f"--input-shape {text!r}: write positive sizes joined by x, batch first, e.g. 1x3x224x224")
    return tuple(int(p) for p in parts)


def parse_pair(text: str, flag: str, form: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name or number != number or number < 0:
        raise Failure(f"{flag} {text!r}: write {form}")
    return name, number


def _device(text: str) -> str:
    """Check a --device value against what this machine has."""
    if text == "cpu":
        return text
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" or text.startswith("cuda:") and text[5:].isdigit():
        if not torch.cuda.is_available():
            raise Failure(f"--device {text}: this torch build or machine has no CUDA GPU; use --device cpu (the default)")
        if text != "cuda" and int(text[5:]) >= torch.cuda.device_count():
            raise Failure(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
        return text
    raise Failure(f"--device {text!r}: choose cpu, cuda, cuda:N or auto")


def expand(models: list[str]) -> list[str]:
    """Paths as given, and glob patterns (also quoted ones the shell left alone) expanded in order."""
    out: list[str] = []
    for entry in models:
        if any(ch in entry for ch in "*?[") and not os.path.exists(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                raise Failure(f"no file matches {entry!r}; check the pattern (quote it to let lipcheck expand **)")
            out.extend(matches)
        else:
            out.append(entry)
    return out
