"""The knobs of an analysis, recorded in every report."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TOL = 1e-6
DEFAULT_MAX_ITER = 10_000
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Settings:
    """How lipcheck estimates each layer: seed, relative tolerance and iteration cap."""

    seed: int = DEFAULT_SEED
    tol: float = DEFAULT_TOL
    max_iter: int = DEFAULT_MAX_ITER
    input_shape: tuple[tuple[int, ...], ...] | None = None
    allow_globals: tuple[str, ...] = ()  # module.Name objects a checkpoint may contain (--allow-global)
    node_constants: tuple[tuple[str, float], ...] = ()  # --node-constant LABEL=C: user-vouched constants
    device: str = "cpu"  # where dense certificates run: cpu, cuda, cuda:N (never required)
    lower: bool = True  # an attained lower bound where the model can be run
    effort: float = 1.0  # scales the time budgets of the lower-bound search and the tight bound
