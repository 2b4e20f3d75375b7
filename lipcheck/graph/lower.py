"""An empirical lower bound on the true Lipschitz constant: ratios ‖f(x)−f(y)‖/‖x−y‖ at inputs
onnxruntime actually evaluates (random pairs, then a short random-search attack).

Every reported value is attained by evaluated pairs, shrunk by 0.1% for float32 rounding of the
outputs, so it is a true lower bound. onnxruntime runs the graph's standard ops only (no custom-op
libraries are registered); nothing from the file is executed as Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipcheck.graph.ir import Graph

_PAIRS = 16
_ATTACK_STEPS = 48
_ROUNDING = 1e-3
_JACOBIAN_MAX_INPUTS = 4096
_JACOBIAN_POINTS = 1


def onnx_lower(path: Path, graph: Graph, seed: int) -> float | None:
    """The largest ratio found, or None when the input shapes are not fully known or not float."""
    import onnxruntime as ort

    shapes = [graph.shapes.get(name) for name in graph.inputs]
    if not shapes or any(s is None or not all(s) for s in shapes):
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = session.get_inputs()
    if any(f.type != "tensor(float)" for f in feeds):
        return None
    rng = np.random.default_rng(seed)

    def run(xs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float64) for o in session.run(None, {f.name: x for f, x in zip(feeds, xs)})]

    def ratio(xs: list[np.ndarray], us: list[np.ndarray]) -> float:
        ys = [(x + u).astype(np.float32) for x, u in zip(xs, us)]
        dx = np.sqrt(sum(float(np.sum((y.astype(np.float64) - x.astype(np.float64)) ** 2)) for x, y in zip(xs, ys)))
        if dx == 0.0:
            return 0.0
        fx, fy = run(xs), run(ys)
        return max(float(np.linalg.norm(b - a)) for a, b in zip(fx, fy)) / dx

    best, best_pair = 0.0, None
    size = sum(int(np.prod(s)) for s in shapes)  # type: ignore[arg-type]
    if size <= _JACOBIAN_MAX_INPUTS:
        # Small inputs: a finite-difference Jacobian at a few points shows the worst direction; the
        # value kept is still the ratio of the evaluated pair (x, x + delta*v).
        for _ in range(_JACOBIAN_POINTS):
            xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]  # type: ignore[arg-type]
            direction = _top_direction(run, xs, size)
            if direction is None:
                continue
            us, offset = [], 0
            for x in xs:
                us.append(direction[offset:offset + x.size].reshape(x.shape) * 1e-2 * np.sqrt(size))
                offset += x.size
            value = ratio(xs, us)
            if value > best:
                best, best_pair = value, (xs, us)
    for _ in range(_PAIRS):
        xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]  # type: ignore[arg-type]
        us = [rng.standard_normal(s) * 1e-2 for s in shapes]  # type: ignore[arg-type]
        value = ratio(xs, us)
        if value > best:
            best, best_pair = value, (xs, us)
    if best_pair is None:
        return None
    xs, us = best_pair
    for _ in range(_ATTACK_STEPS):
        trial_x = [(x + rng.standard_normal(x.shape) * 0.1).astype(np.float32) for x in xs]
        trial_u = [u + rng.standard_normal(u.shape) * 3e-3 for u in us]
        value = ratio(trial_x, trial_u)
        if value > best:
            best, xs, us = value, trial_x, trial_u
    return float(best * (1.0 - _ROUNDING))


def _top_direction(run, xs: list[np.ndarray], size: int) -> np.ndarray | None:  # type: ignore[no-untyped-def]
    """The top right singular vector of a forward-difference Jacobian at xs (all outputs stacked)."""
    base = np.concatenate([o.ravel() for o in run(xs)])
    step = 1e-2
    columns = []
    flat = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    for i in range(size):
        bumped = flat.copy()
        bumped[i] += step
        parts, offset = [], 0
        for x in xs:
            parts.append(bumped[offset:offset + x.size].reshape(x.shape).astype(np.float32))
            offset += x.size
        actual = float(parts_delta(parts, xs, i))
        columns.append((np.concatenate([o.ravel() for o in run(parts)]) - base) / actual if actual else base * 0)
    jac = np.stack(columns, axis=1)
    if not np.all(np.isfinite(jac)):
        return None
    _, _, vh = np.linalg.svd(jac, full_matrices=False)
    return vh[0]


def parts_delta(parts: list[np.ndarray], xs: list[np.ndarray], index: int) -> float:
    """The float32 step actually taken at flat coordinate ``index``."""
    offset = 0
    for p, x in zip(parts, xs):
        if index < offset + x.size:
            return float(p.ravel()[index - offset]) - float(x.ravel()[index - offset])
        offset += x.size
    return 0.0


def torch_lower(module: "torch.nn.Module", input_shapes: tuple[tuple[int, ...], ...], seed: int,
                points: int = 4, steps: int = 25) -> float | None:
    """max ‖J(x) v‖ over a few random x, v refined by power iteration on JᵀJ (autograd).

    ‖J(x) v‖ with ‖v‖ = 1 never exceeds the Lipschitz constant; shrunk by 0.1% for rounding.
    """
    import torch

    param = next(iter(module.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(seed)
    module.eval()

    def f(*xs: torch.Tensor) -> torch.Tensor:
        out = module(*xs)
        if isinstance(out, (tuple, list)):
            return torch.cat([o.reshape(-1) for o in out])
        return out.reshape(-1)

    best = 0.0
    for _ in range(points):
        xs = tuple(torch.randn(s, generator=generator).to(dtype) for s in input_shapes)
        vs = tuple(torch.randn(s, generator=generator).to(dtype) for s in input_shapes)
        for _ in range(steps):
            norm = torch.sqrt(sum((v.double() ** 2).sum() for v in vs))
            vs = tuple(v / norm.to(v.dtype) for v in vs)
            _, jv = torch.autograd.functional.jvp(f, xs, vs)
            best = max(best, float(jv.double().norm()))
            _, back = torch.autograd.functional.vjp(f, xs, jv)
            vs = back if isinstance(back, tuple) else (back,)
            if float(sum((v.double() ** 2).sum() for v in vs)) == 0.0:
                break
    return best * (1.0 - _ROUNDING) if best > 0 else None
