"""Whether a chain read out of a graph computes what the file computes, checked on random inputs
against the file's own runtime (onnxruntime for ONNX, the archive's module for TorchScript, the
graph evaluated in torch otherwise)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph import ort_run
from lipcheck.graph.chains import FoundChain

if TYPE_CHECKING:
    import torch

    from lipcheck.model import Model

# Relative difference allowed between the chain in float64 and the file's float32 outputs.
TOLERANCE = 1e-3
_RUNTIME_NOISE = 1e-5  # of the outputs' size: the runtime's float32 rounding of each output
_SCALES = (0.1, 1.0, 10.0)


def reproduces(model: Model, found: FoundChain, activation: Callable[[object], Callable[[torch.Tensor], torch.Tensor] | None], seed: int = 0) -> str:
    """Why the chain's function differs from the file's on random inputs, or "" where it matches."""
    graph = model.graph
    assert graph is not None
    declared = graph.shapes.get(graph.inputs[0])
    if declared is None or not all(isinstance(d, int) for d in declared[1:]):
        return "the input's size is not fixed"
    shape = tuple(int(d) if isinstance(d, int) else 1 for d in declared)
    columns = found.weights[0].shape[1]
    if found.input_reordered or math.prod(shape) % columns:
        return "the chain does not read the input as stored"
    funcs = [activation(node) for node in found.activations]
    tail = activation(found.tail) if found.tail is not None else (lambda z: z)
    if any(f is None for f in funcs) or tail is None:
        return "an activation lipcheck cannot evaluate"
    reference = _reference(model, shape)
    if isinstance(reference, str):
        return reference
    rng = np.random.default_rng(seed)
    offset = found.offset if found.offset is not None else 0.0
    for scale in _SCALES:
        pair = [scale * rng.standard_normal(shape) for _ in range(2)]
        try:
            expected = [reference(x).reshape(-1) for x in pair]
        except Exception as exc:  # the runtime refused the input: nothing to compare with
            return f"the file's function could not be run ({type(exc).__name__})"
        try:
            got = [_chain(found, funcs, tail, (x.reshape(-1) + offset).reshape(-1, columns)) for x in pair]  # type: ignore[arg-type]
        except (RuntimeError, ValueError) as exc:  # an activation that does not fit the chain's rows
            return f"the chain could not be evaluated ({type(exc).__name__})"
        if any(g.shape != e.shape or not np.isfinite(e).all() for g, e in zip(got, expected)):
            return "the chain's output does not line up with the file's"
        size = sum(float(np.linalg.norm(e)) for e in expected)
        # the outputs, and their change between the two inputs: a large bias cannot hide the weights
        if any(np.linalg.norm(g - e) > TOLERANCE * (np.linalg.norm(e) + 1e-30) for g, e in zip(got, expected)):
            return "the chain read out of the graph does not reproduce the file's outputs"
        change, wanted = got[1] - got[0], expected[1] - expected[0]
        if np.linalg.norm(change - wanted) > TOLERANCE * float(np.linalg.norm(wanted)) + _RUNTIME_NOISE * size:
            return "the chain read out of the graph does not reproduce the file's outputs"
    return ""


def _chain(
    found: FoundChain, funcs: list[Callable[[torch.Tensor], torch.Tensor]], tail: Callable[[torch.Tensor], torch.Tensor], rows: np.ndarray
) -> np.ndarray:
    """The chain's outputs for ``rows`` (one input row each), in float64."""
    import torch

    with torch.no_grad():
        z = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64))
        for k, w in enumerate(found.weights):
            z = z @ w.mT
            if found.biases[k] is not None:
                z = z + torch.from_numpy(np.array(found.biases[k], dtype=np.float64).reshape(-1))
            z = funcs[k](z) if k < len(funcs) else tail(z)
    return z.numpy().reshape(-1)


def _reference(model: Model, shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray] | str:
    """The file's function on one input of ``shape``, in the file's own runtime."""
    import torch

    if model.format == "onnx":
        import onnxruntime as ort

        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(model.path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # the file may need a runtime feature onnxruntime lacks
            return f"onnxruntime could not load the file ({type(exc).__name__})"
        first = session.get_inputs()[0]
        dtype = np.float64 if first.type == "tensor(double)" else np.float16 if first.type == "tensor(float16)" else np.float32

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(ort_run.run(session, None, {first.name: x.astype(dtype)})[0], dtype=np.float64)

        return run
    if model.runnable is not None:
        module = model.runnable
        params = list(module.parameters()) if hasattr(module, "parameters") else []
        wanted: torch.dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)

        def call(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = module(torch.from_numpy(x).to(wanted))
            out = out[0] if isinstance(out, (tuple, list)) else out
            return out.detach().to(torch.float64).numpy()

        return call
    from lipcheck.graph.torch_eval import evaluate

    graph = model.graph
    assert graph is not None

    def ir(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return evaluate(graph, [torch.from_numpy(x)])[0].numpy()

    return ir
