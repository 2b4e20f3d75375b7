"""A live torch.nn.Module (Python API only): its Linear/Conv/ConvTranspose weights and geometry.

Nothing is loaded from disk, so nothing untrusted runs; with ``input_shapes`` the caller's own
module is run once on zeros (under no_grad) to learn each conv's input size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lipcheck.errors import LipcheckError
from lipcheck.formats.named_tensors import dtype_name, op_for_weight
from lipcheck.formats.torchscript import conv_geometry
from lipcheck.model import Layer, Model

_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_TRANSPOSED = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def load(module: torch.nn.Module, input_shapes: tuple[tuple[int, ...], ...] | None = None) -> Model:
    """Read a module's layers; spectral-norm parametrizations give the effective weight."""
    layers: list[Layer] = []
    by_module: dict[int, Layer] = {}
    for prefix, sub in module.named_modules():
        if not isinstance(sub, (torch.nn.Linear, *_CONVS, *_TRANSPOSED)):
            continue
        weight = sub.weight.detach()
        transposed = isinstance(sub, _TRANSPOSED)
        op = "linear" if isinstance(sub, torch.nn.Linear) else op_for_weight(weight.dim(), transposed)
        if op is None:
            continue
        name = f"{prefix}.weight" if prefix else "weight"
        layer = Layer(
            name,
            op,
            tuple(weight.shape),
            dtype_name(weight.dtype),
            _weight_of(sub),
            geometry=None if op == "linear" else conv_geometry(sub),
            note=f"module {prefix or '(root)'}: {type(sub).__name__}",
        )
        layers.append(layer)
        by_module[id(sub)] = layer
    model = Model(f"<{type(module).__name__}>", "module", layers, runnable=module)
    if input_shapes is not None:
        _input_sizes(module, by_module, input_shapes)
        model.graph, model.no_graph = _traced_graph(module, layers, input_shapes)
    return model


def _weight_of(sub: torch.nn.Module) -> Callable[[], torch.Tensor]:
    """A loader of the module's current weight (read when the layer is certified)."""

    def load() -> torch.Tensor:
        weight = sub.weight
        assert isinstance(weight, torch.Tensor)
        return weight.detach()

    return load


def _input_sizes(module: torch.nn.Module, by_module: dict[int, Layer], input_shapes: tuple[tuple[int, ...], ...]) -> None:
    seen: dict[int, set[tuple[int, ...]]] = {}

    def hook(sub: torch.nn.Module, args: tuple[object, ...]) -> None:
        layer = by_module.get(id(sub))
        if layer is not None and layer.is_conv and args and isinstance(args[0], torch.Tensor):
            seen.setdefault(id(sub), set()).add(tuple(args[0].shape[2:]))
            # A conv called at several sizes gets the bound for every size.
            layer.input_spatial = tuple(args[0].shape[2:]) if len(seen[id(sub)]) == 1 else None

    handles = [sub.register_forward_pre_hook(hook) for sub in module.modules() if id(sub) in by_module]
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(*(torch.zeros(shape, dtype=dtype, device=device) for shape in input_shapes))
    except Exception as exc:  # the caller's own module refused the shapes
        raise LipcheckError(f"the module did not accept input_shape {list(input_shapes)} ({exc}); pass the shapes its forward takes, batch first") from None
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()


def _traced_graph(module: torch.nn.Module, layers: list[Layer], input_shapes: tuple[tuple[int, ...], ...]):  # type: ignore[no-untyped-def]
    """Trace the caller's module at the given shapes and read its graph: (graph, "") or (None, why not)."""
    import warnings

    from lipcheck.errors import first_line
    from lipcheck.graph.ir import NoGraph
    from lipcheck.graph.torchscript_front import build

    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = module.training
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = torch.jit.trace(module.eval(), tuple(torch.zeros(s, dtype=dtype) for s in input_shapes))
    except Exception as exc:  # an untraceable module has no graph, so no network bound
        return None, f"torch.jit.trace cannot trace this module ({first_line(exc)}); export it with torch.export and inspect that"
    finally:
        module.train(was_training)
    # Python control flow on tensor values is fixed at the traced input: the trace is another function.
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer:
        warned = first_line(tracer[0].message).split(". ")[0]  # type: ignore[arg-type]
        return None, (
            f"tracing the module warned that the trace may not follow it ({warned}); a branch on the input's values "
            "would be fixed at the traced input. Export it with torch.export and inspect that"
        )
    try:
        return build(traced, layers, input_shapes), ""
    except NoGraph as exc:
        return None, str(exc)
