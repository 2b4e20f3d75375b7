"""Pairs for the lower bound from the network's own Jacobian: power iteration on J(x)ᵀJ(x) in
float32, of lipcheck's IR run in torch (ONNX) or of a float32 copy of a torch module, then, for the
IR, gradient ascent on ‖J(x)v‖ over the input x. A ReLU network's Jacobian is constant between
activation changes, so the ascent climbs a smoothed stand-in (every ReLU a softplus, sharper at
each stage) and each stage's point is measured on the network itself. Only points and directions
are searched here; lipcheck.graph.lower certifies the ratio of each pair in float64.
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
_MAX_STEPS = 48  # power steps per point
_MAX_STEPS_BEFORE_ASCENT = 16  # the same where the ascent follows: it finds the larger Jacobians
_MIN_SECONDS = 1.0  # the budget's floor
_ASCENT_SHARE = 0.7  # of the budget, for the ascent on the input where the IR can be smoothed
_SHARPNESS = (1.0, 3.0, 10.0, 30.0)  # softplus β of the ascent's stages
_ASCENT_RATE = 0.05  # Adam's step, relative to the input's RMS
_ASCENT_MIN_PASSES = 100  # forward passes the budget must hold for the ascent to run
_ASCENT_STEPS = 25  # per stage, times --effort: a model that takes them within the budget gets the same pairs every run


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

    def smoothed(xs: list[torch.Tensor], sharpness: float) -> list[torch.Tensor]:
        return evaluate(graph, xs, torch.float32, constants, smooth=sharpness)

    try:
        found = jacobian_pairs(run, shapes, seed, effort, smoothed)
    except (Unsupported, RuntimeError, ValueError, IndexError, TypeError):
        return []
    return [(value, [x.numpy() for x in xs], [y.numpy() for y in ys]) for value, xs, ys in found]


def jacobian_pairs(
    run: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
    shapes: Sequence[tuple[int, ...]],
    seed: int,
    effort: float,
    smoothed: Callable[[list[torch.Tensor], float], Sequence[torch.Tensor]] | None = None,
) -> list[tuple[float, list[torch.Tensor], list[torch.Tensor]]]:
    """(float32 ratio, xs, ys) with ys = xs + h v, v from power iteration on J(x)ᵀJ(x) of the float32
    function ``run``, its float outputs taken together as one vector as the network bound takes
    them (J v by a forward difference, Jᵀ u by autograd), at a few random x, and with
    ``smoothed`` (``run`` with its ReLUs as softplus of a given sharpness) at the points an ascent
    on the input reaches (module doc); the best CHECKED, best first.

    Stops after about ``effort`` × max(_MIN_SECONDS, _BUDGET_PASSES forward passes), after at
    least _MIN_STEPS steps from the first point; with ``smoothed`` and a budget of at least
    _ASCENT_MIN_PASSES forward passes, the random points take _ASCENT_SHARE of that and the ascent
    the rest. ``run``'s errors propagate.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)

    def draw() -> list[torch.Tensor]:
        return [torch.randn(s, generator=generator, dtype=torch.float32) for s in shapes]

    def flat(values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [v.reshape(-1) for v in values if v.is_floating_point()]

    def joined(values: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(flat(values))

    probe = draw()  # the passes timed all take this input: the points drawn after never depend on the timings
    with torch.no_grad():
        if not flat(run(probe)):
            return []
        started = time.monotonic()  # the first pass may convert constants or warm caches: time the second
        run(probe)
    one_pass = time.monotonic() - started
    if smoothed is not None and _ASCENT_MIN_PASSES * one_pass > effort * max(_MIN_SECONDS, _BUDGET_PASSES * one_pass):
        # The first passes of a process run several times slower than the next ones: a model the
        # ascent would skip for one slow pass is timed again, so its pairs do not hang on that.
        with torch.no_grad():
            again = time.monotonic()
            run(probe)
        one_pass = min(one_pass, time.monotonic() - again)
    budget = effort * max(_MIN_SECONDS, _BUDGET_PASSES * one_pass)
    final = started + budget
    if budget < _ASCENT_MIN_PASSES * one_pass:
        smoothed = None  # a large model: the budget holds too few of the ascent's steps to be worth them
    deadline = started + budget * (1.0 - _ASCENT_SHARE) if smoothed is not None else final
    found: list[tuple[float, list[torch.Tensor], list[torch.Tensor]]] = []
    direction: list[torch.Tensor] | None = None  # the last point's: a warm start
    for point in range(_POINTS):
        if found and time.monotonic() > deadline:
            break
        xs = [x.requires_grad_(True) for x in draw()]
        scale = max(1.0, math.sqrt(sum(float((x.detach() ** 2).sum()) for x in xs) / max(1, sum(x.numel() for x in xs))))
        with torch.enable_grad():
            outs = joined(run(xs))
        vs = direction or draw()
        for step in range(_MAX_STEPS if smoothed is None else _MAX_STEPS_BEFORE_ASCENT):
            if (step >= _MIN_STEPS or point > 0) and time.monotonic() > deadline:
                break
            norm = math.sqrt(sum(float((v**2).sum()) for v in vs))
            if norm == 0.0 or not math.isfinite(norm):
                break
            h = _STEP * scale / norm
            with torch.no_grad():
                ys = [x.detach() + h * v for x, v in zip(xs, vs)]
                jv = (joined(run(ys)) - outs.detach()) / h
            value = float(jv.norm()) / norm
            if math.isfinite(value):
                found.append((value, [x.detach() for x in xs], ys))
            # Jᵀ(Jv) as the gradient of a scalar: grad_outputs would make torch import sympy (half a second).
            with torch.enable_grad():
                grads = torch.autograd.grad((outs * jv).sum(), xs, retain_graph=True, allow_unused=True)
            vs = [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, xs)]
        direction = [v.detach() for v in vs]
    if smoothed is not None and found:
        best = max(found, key=lambda item: item[0])
        found.extend(_ascent(run, smoothed, best[1], final, joined, max(1, round(_ASCENT_STEPS * effort)), generator))
    found.sort(key=lambda item: item[0], reverse=True)
    return found[:CHECKED]


def _ascent(
    run: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
    smoothed: Callable[[list[torch.Tensor], float], Sequence[torch.Tensor]],
    start: list[torch.Tensor],
    deadline: float,
    joined: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    steps: int,
    generator: torch.Generator,
) -> list[tuple[float, list[torch.Tensor], list[torch.Tensor]]]:
    """Adam on x for ‖J(x)v‖ of the smoothed network (all outputs together), v kept at its top right
    singular vector by a power step per move, ``steps`` moves in each of the _SHARPNESS stages, or
    fewer where they share out the time to ``deadline`` first; after the last stage but one and at
    the end, a pair from power steps on ``run`` itself at the point reached."""
    import torch

    scale = max(1.0, math.sqrt(sum(float((x**2).sum()) for x in start) / max(1, sum(x.numel() for x in start))))
    h = _STEP * scale
    xs = [x.detach().clone() for x in start]
    vs = [torch.randn(x.shape, generator=generator, dtype=x.dtype) for x in xs]
    pairs: list[tuple[float, list[torch.Tensor], list[torch.Tensor]]] = []

    def measure(points: list[torch.Tensor], directions: list[torch.Tensor]) -> None:
        for _ in range(_MIN_STEPS + 2):
            directions = _power_step(run, points, directions, h, joined)
        norm = math.sqrt(sum(float((v**2).sum()) for v in directions))
        if norm == 0.0 or not math.isfinite(norm):
            return
        with torch.no_grad():
            ys = [x + (h / norm) * v for x, v in zip(points, directions)]
            value = float((joined(run(ys)) - joined(run(points))).norm()) / h
        if math.isfinite(value):
            pairs.append((value, points, ys))

    moved_at_all = False
    for stage, sharpness in enumerate(_SHARPNESS):
        now = time.monotonic()
        if now >= deadline:
            break
        stage_end = now + (deadline - now) / (len(_SHARPNESS) - stage)
        params = [x.clone().requires_grad_(True) for x in xs]
        # Adam's moments, written out: torch.optim takes a second to import on first use.
        first = [torch.zeros_like(x) for x in xs]
        second = [torch.zeros_like(x) for x in xs]
        taken = 0

        def stand_in(values: list[torch.Tensor], sharpness: float = sharpness) -> Sequence[torch.Tensor]:
            return smoothed(values, sharpness)

        while taken < steps and time.monotonic() < stage_end:
            vs = _power_step(stand_in, [p.detach() for p in params], vs, h, joined)
            norm = math.sqrt(sum(float((v**2).sum()) for v in vs))
            if norm == 0.0 or not math.isfinite(norm):
                break
            with torch.enable_grad():
                here = joined(smoothed(params, sharpness))
                moved = joined(smoothed([p + (h / norm) * v for p, v in zip(params, vs)], sharpness))
                gain = (((moved - here) / h) ** 2).sum()
            grads = torch.autograd.grad(gain, params, allow_unused=True)
            if not all(g is not None and bool(torch.isfinite(g).all()) for g in grads):
                break
            taken += 1
            with torch.no_grad():
                for p, g, m1, m2 in zip(params, grads, first, second):
                    assert g is not None
                    m1.mul_(0.9).add_(g, alpha=0.1)
                    m2.mul_(0.999).addcmul_(g, g, value=0.001)
                    step = (m1 / (1 - 0.9**taken)) / ((m2 / (1 - 0.999**taken)).sqrt() + 1e-12)
                    p.add_(step, alpha=_ASCENT_RATE * scale)
            moved_at_all = True
        reached = [p.detach() for p in params]
        if not all(bool(torch.isfinite(x).all()) for x in reached):
            break
        xs = reached
        if stage == len(_SHARPNESS) - 2:
            measure(xs, [v.clone() for v in vs])
    if moved_at_all:  # the point the ascent ended at, however far it got
        measure(xs, [v.clone() for v in vs])
    return pairs


def _power_step(
    fn: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
    xs: list[torch.Tensor],
    vs: list[torch.Tensor],
    h: float,
    joined: Callable[[Sequence[torch.Tensor]], torch.Tensor],
) -> list[torch.Tensor]:
    """Jᵀ(J v) at ``xs`` (J v by a forward difference of step h along v / ‖v‖, Jᵀ by autograd)."""
    import torch

    norm = math.sqrt(sum(float((v**2).sum()) for v in vs))
    if norm == 0.0 or not math.isfinite(norm):
        return vs
    points = [x.detach().requires_grad_(True) for x in xs]
    with torch.enable_grad():
        here = joined(fn(points))
        with torch.no_grad():
            jv = (joined(fn([x.detach() + (h / norm) * v for x, v in zip(xs, vs)])) - here.detach()) / h
        grads = torch.autograd.grad((here * jv).sum(), points, allow_unused=True)
    return [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, xs)]
