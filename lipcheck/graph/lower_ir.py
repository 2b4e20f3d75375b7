"""Pairs for the lower bound from the network's own Jacobian: power iteration on J(x)ᵀJ(x) in
float32, of lipcheck's IR run in torch (ONNX) or of a float32 copy of a torch module. Only
directions are searched here; lipcheck.graph.lower certifies the ratio of each pair in float64.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.ir import Graph
from lipcheck.graph.lower import CHECKED

if TYPE_CHECKING:
    import torch

_POINTS = 4  # random points whose Jacobian is searched by power iteration
_STEP = 1e-3  # the pair's step, relative to the input's RMS (at least 1)
_BUDGET_PASSES = 12  # the ascent's time budget in float32 forward passes of the IR in torch (times --effort)
_MIN_STEPS = 2
_MAX_STEPS = 48  # power steps per point and output
_MIN_SECONDS = 1.0  # the budget's floor


def differentiable(graph: Graph) -> bool:
    """Whether lipcheck's IR of the graph runs in torch, so autograd can search it."""
    from lipcheck.graph.torch_eval import supported

    return not supported(graph)


def ir_ascent(graph: Graph, shapes: list[tuple[int, ...]], seed: int, effort: float) -> list[tuple[float, list[np.ndarray], list[np.ndarray]]]:
    """(float32 ratio, xs, ys) for the IR run in torch in float32 (see jacobian_pairs), best first, as
    arrays; [] where the IR cannot be run or differentiated."""
    import torch

    from lipcheck.graph.torch_eval import Unsupported, evaluate

    constants: dict[str, object] = {}

    def run(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return evaluate(graph, xs, torch.float32, constants)

    try:
        found = jacobian_pairs(run, shapes, seed, effort)
    except (Unsupported, RuntimeError, ValueError, IndexError, TypeError):
        return []
    return [(value, [x.numpy() for x in xs], [y.numpy() for y in ys]) for value, xs, ys in found]


def jacobian_pairs(
    run: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]], shapes: Sequence[tuple[int, ...]], seed: int, effort: float
) -> list[tuple[float, list[torch.Tensor], list[torch.Tensor]]]:
    """(float32 ratio, xs, ys) with ys = xs + h v, v from power iteration on J(x)ᵀJ(x) of the float32
    function ``run`` (J v by a forward difference, Jᵀ u by autograd) at a few random x; the best
    CHECKED, best first.

    Stops after about ``effort`` × max(_MIN_SECONDS, _BUDGET_PASSES forward passes), after at
    least _MIN_STEPS steps from the first point. ``run``'s errors propagate.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)

    def draw() -> list[torch.Tensor]:
        return [torch.randn(s, generator=generator, dtype=torch.float32) for s in shapes]

    def flat(values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [v.reshape(-1) for v in values if v.is_floating_point()]

    with torch.no_grad():
        count = len(flat(run(draw())))
        started = time.monotonic()  # the first pass may convert constants or warm caches: time the second
        run(draw())
    deadline = started + effort * max(_MIN_SECONDS, _BUDGET_PASSES * (time.monotonic() - started))
    found: list[tuple[float, list[torch.Tensor], list[torch.Tensor]]] = []
    directions: dict[int, list[torch.Tensor]] = {}  # per output, the last point's direction: a warm start
    for point in range(_POINTS):
        if found and time.monotonic() > deadline:
            break
        xs = [x.requires_grad_(True) for x in draw()]
        scale = max(1.0, math.sqrt(sum(float((x.detach() ** 2).sum()) for x in xs) / max(1, sum(x.numel() for x in xs))))
        with torch.enable_grad():
            outs = flat(run(xs))
        for k in range(min(count, 4)):
            vs = directions.get(k) or draw()
            for step in range(_MAX_STEPS):
                if (step >= _MIN_STEPS or point > 0) and time.monotonic() > deadline:
                    break
                norm = math.sqrt(sum(float((v**2).sum()) for v in vs))
                if norm == 0.0 or not math.isfinite(norm):
                    break
                h = _STEP * scale / norm
                with torch.no_grad():
                    ys = [x.detach() + h * v for x, v in zip(xs, vs)]
                    moved = flat(run(ys))
                jv = (moved[k] - outs[k].detach()) / h
                value = float(jv.norm()) / norm
                if math.isfinite(value):
                    found.append((value, [x.detach() for x in xs], ys))
                # Jᵀ(Jv) as the gradient of a scalar: grad_outputs would make torch import sympy (half a second).
                with torch.enable_grad():
                    grads = torch.autograd.grad((outs[k] * jv).sum(), xs, retain_graph=True, allow_unused=True)
                vs = [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, xs)]
            directions[k] = [v.detach() for v in vs]
    found.sort(key=lambda item: item[0], reverse=True)
    return found[:CHECKED]
