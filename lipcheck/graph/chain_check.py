"""Whether a chain read out of a graph computes what the file computes, checked on random inputs
against the file's own runtime (onnxruntime for ONNX, the archive's module for TorchScript, the
graph evaluated in torch otherwise)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lipcheck.graph.chains import FoundChain

if TYPE_CHECKING:
    import torch

    from lipcheck.model import Model

# Relative difference allowed between the chain in float64 and the file's float32 outputs.
TOLERANCE = 1e-3
_SCALES = (0.1, 1.0, 10.0)


def reproduces(model: Model, found: FoundChain, activation: Callable[[object], Callable[[torch.Tensor], torch.Tensor] | None], seed: int = 0) -> str:
    """ "" when the chain's function matches the file's on random inputs, else why it does not."""
    import torch

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
    for scale in _SCALES:
        x = scale * rng.standard_normal(shape)
        try:
            expected = reference(x).reshape(-1)
        except Exception as exc:  # the runtime refused the input: nothing to compare with
            return f"the file's function could not be run ({type(exc).__name__})"
        with torch.no_grad():
            z = torch.from_numpy(x.reshape(-1, columns) + (found.offset if found.offset is not None else 0.0))
            for k, w in enumerate(found.weights):
                z = z @ w.mT
                if found.biases[k] is not None:
                    z = z + torch.from_numpy(np.array(found.biases[k], dtype=np.float64).reshape(-1))
                z = funcs[k](z) if k < len(funcs) else tail(z)  # type: ignore[misc]
        got = z.numpy().reshape(-1)
        if got.shape != expected.shape or not np.isfinite(expected).all():
            return "the chain's output does not line up with the file's"
        if np.linalg.norm(got - expected) > TOLERANCE * (np.linalg.norm(expected) + 1e-30):
            return "the chain read out of the graph does not reproduce the file's outputs"
    return ""


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
            return np.asarray(session.run(None, {first.name: x.astype(dtype)})[0], dtype=np.float64)

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
