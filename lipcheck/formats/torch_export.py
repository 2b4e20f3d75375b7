"""torch.export archives (.pt2, written by ``torch.export.save``): weights, conv geometry and the graph.

The archive is checked and loaded by :mod:`lipcheck.formats.export_archive` (nothing in it can
make torch's loader run code); this module reads the loaded program's layers: each weight with
the aten call that applies it, its conv geometry and, where the program records them, the conv's
input size.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lipcheck.errors import LipcheckError
from lipcheck.formats.edit import divided
from lipcheck.formats.export_archive import quiet, read
from lipcheck.formats.named_tensors import dtype_name, op_for_weight
from lipcheck.model import ConvGeometry, Layer, Model, Skipped, WeightEdit

_CONVS = {"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::convolution", "aten::_convolution"}
_CONV_T = {"aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d"}
_LINEAR = {"aten::linear"}
_MATMUL = {"aten::addmm", "aten::mm"}  # x @ t(W) (+ b): a decomposed nn.Linear
_TRANSPOSES = {"aten::t", "aten::permute", "aten::transpose", "aten::numpy_T"}


def arguments(node: torch.fx.Node) -> dict[str, Any]:
    """A call's arguments by their schema names, defaults filled in (empty for non-operator calls)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    out: dict[str, Any] = {}
    for index, arg in enumerate(schema.arguments):
        if index < len(node.args):
            out[arg.name] = node.args[index]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def kind(node: torch.fx.Node) -> str:
    """The schema name of a call (``aten::conv2d``), or the Python name of another target."""
    schema = getattr(node.target, "_schema", None)
    return schema.name if schema is not None else getattr(node.target, "__name__", str(node.target))


def _ints(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    items = tuple(int(v) for v in value)
    return items * n if len(items) == 1 and n > 1 else items


def _input_shapes(ep: torch.export.ExportedProgram) -> tuple[tuple[int, ...], ...] | None:
    """The user inputs' shapes the program records, when every one is fully static."""
    by_name = {node.name: node for node in ep.graph.nodes if node.op == "placeholder"}
    found = [static_shape(by_name.get(name)) for name in ep.graph_signature.user_inputs if isinstance(name, str)]
    if not found or any(shape is None or None in shape for shape in found):
        return None
    return tuple(tuple(int(d) for d in shape if d is not None) for shape in found if shape is not None)


def static_shape(node: Any) -> tuple[int | None, ...] | None:
    """The shape torch.export recorded for a value (``meta["val"]``); symbolic sizes are None."""
    val = getattr(node, "meta", {}).get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(d if isinstance(d, int) else None for d in val.shape)


def _geometry(name: str, args: dict[str, Any], dims: int) -> ConvGeometry | None:
    """A conv call's stride, padding, dilation and groups; None where padding is a string torch resolves."""
    stride = _ints(args.get("stride", 1), dims)
    dilation = _ints(args.get("dilation", 1), dims)
    groups = int(args.get("groups", 1))
    padding = args.get("padding", 0)
    out_pad = _ints(args.get("output_padding", 0), dims) if name in _CONV_T or args.get("transposed") else ()
    if isinstance(padding, str):
        auto = "SAME_UPPER" if padding.lower() == "same" else "VALID"  # torch's "same" puts the odd pad at the end
        return ConvGeometry(stride, (), dilation, groups, out_pad, auto_pad=auto)
    pads = _ints(padding, dims)
    return ConvGeometry(stride, pads + pads, dilation, groups, out_pad)


def weight_uses(ep: torch.export.ExportedProgram) -> dict[str, list[tuple[torch.fx.Node, str]]]:
    """For each parameter or buffer, the calls that apply it as a linear map: (node, op)."""
    owners = {**ep.graph_signature.inputs_to_parameters, **ep.graph_signature.inputs_to_buffers}
    uses: dict[str, list[tuple[torch.fx.Node, str]]] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name, args = kind(node), arguments(node)
        if name in _CONVS or name in _CONV_T:
            weight = args.get("weight")
            transposed = name in _CONV_T or bool(args.get("transposed", False))
            op = "conv_transpose" if transposed else "conv"
        elif name in _LINEAR:
            weight, op = args.get("weight"), "linear"
        elif name in _MATMUL:
            mat = args.get("mat2")
            weight = mat.args[0] if isinstance(mat, torch.fx.Node) and kind(mat) in _TRANSPOSES and _swaps(mat) else None
            op = "linear"
        else:
            continue
        if isinstance(weight, torch.fx.Node) and weight.op == "placeholder" and weight.name in owners:
            uses.setdefault(owners[weight.name], []).append((node, op))
    return uses


def _swaps(node: torch.fx.Node) -> bool:
    """Whether a transpose call swaps the two axes of a matrix."""
    args = arguments(node)
    if kind(node) in ("aten::t", "aten::numpy_T"):
        return True
    if kind(node) == "aten::permute":
        return [int(d) for d in args.get("dims", [])] in ([1, 0], [-1, -2], [1, -2], [-1, 0])
    return {int(args.get("dim0", 0)) % 2, int(args.get("dim1", 0)) % 2} == {0, 1}


def load(path: Path) -> Model:
    """Load a .pt2 archive: one layer per weight a conv or linear call applies, and the graph."""
    ep = read(path)
    state = {**ep.state_dict, **{k: v for k, v in ep.constants.items() if isinstance(v, torch.Tensor)}}
    uses = weight_uses(ep)
    layers: list[Layer] = []
    skipped: list[Skipped] = []
    for fqn, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2:
            continue
        shape = tuple(tensor.shape)
        found = uses.get(fqn)
        if not found:
            skipped.append(Skipped(fqn, shape, "not applied by a conv or linear call in the graph"))
            continue
        ops = {call for _, call in found}
        geometries: set[ConvGeometry | None] = set()
        sizes: set[tuple[int, ...] | None] = set()
        for node, call in found:
            if call != "linear":
                geometries.add(_geometry(kind(node), arguments(node), tensor.dim() - 2))
                sizes.add(_spatial(node, tensor.dim()))
        if len(ops) > 1 or len(geometries) > 1:
            skipped.append(Skipped(fqn, shape, "applied by calls of different kinds or geometries; lipcheck bounds one linear map per weight"))
            continue
        op_kind = ops.pop()
        op = "linear" if op_kind == "linear" else op_for_weight(tensor.dim(), op_kind == "conv_transpose")
        if op is None or (op == "linear" and tensor.dim() != 2):
            skipped.append(Skipped(fqn, shape, f"{op_kind} weight of unexpected shape {list(shape)}"))
            continue
        geometry = geometries.pop() if geometries else None
        size = sizes.pop() if len(sizes) == 1 else None
        calls = ", ".join(f"{node.name} ({kind(node)})" for node, _ in found)
        layers.append(Layer(fqn, op, shape, dtype_name(tensor.dtype), _detached(tensor), geometry=geometry, note=f"graph call {calls}", input_spatial=size))
    from lipcheck.graph.export_front import build
    from lipcheck.graph.ir import STATEFUL_NOTE, NoGraph, StatefulGraph

    model = Model(str(path), "torch_export", layers, skipped, input_shapes=_input_shapes(ep))
    mutated = [*ep.graph_signature.buffers_to_mutate, *ep.graph_signature.user_inputs_to_mutate]
    stateful = bool(mutated)
    if mutated:
        model.no_graph = f"the program changes {', '.join(sorted(map(str, mutated))[:3])} on every call, so each call computes another function"
    else:
        try:
            model.graph = build(ep, layers, uses)
        except NoGraph as exc:
            model.no_graph, stateful = str(exc), isinstance(exc, StatefulGraph)
    if stateful:
        model.notes.append(STATEFUL_NOTE)
    else:
        model.runnable = ep.module(check_guards=False)  # guards would be exec-ed as Python source from the file
    missing = [layer.name for layer in layers if layer.is_conv and layer.input_spatial is None]
    if missing:
        model.notes.append(
            f"input size not fixed by the export for {len(missing)} conv(s) ({', '.join(missing[:5])}"
            f"{', …' if len(missing) > 5 else ''}): their bound holds for every input size"
        )
    shapes = [model.graph.shapes.get(name) for name in model.graph.inputs] if model.graph is not None else []
    fixed = [s for s in shapes if s and all(isinstance(d, int) for d in s)]
    if fixed and len(fixed) == len(shapes):
        model.notes.append("exported input shape(s): " + ", ".join("x".join(str(d) for d in s) for s in fixed))
    return model


def _detached(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A loader of the stored tensor, detached from autograd."""
    return lambda: tensor.detach()


def _spatial(node: torch.fx.Node, dims: int) -> tuple[int, ...] | None:
    shape = static_shape(arguments(node).get("input"))
    if shape is None or len(shape) != dims or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return None
    return tuple(shape[2:])  # type: ignore[arg-type]


def save(src: Path, dst: Path, edits: list[WeightEdit]) -> None:
    """Write ``src`` to ``dst`` with the listed weights divided; the graph is saved as loaded."""
    ep = read(src)
    state = ep.state_dict
    with torch.no_grad():
        for edit in edits:
            if edit.vectors is not None:
                raise LipcheckError("spectral-norm parametrized exported programs cannot be rewritten; normalize the checkpoint and export again")
            if edit.divisor is None:
                continue
            if edit.name not in state:
                raise LipcheckError(f"{edit.name} is not a weight of {src}; re-run lipcheck inspect to see the layers")
            old = state[edit.name]
            new = divided(old, edit.divisor)
            state[edit.name] = torch.nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, torch.nn.Parameter) else new
    buffer = io.BytesIO()
    with quiet():
        torch.export.save(ep, buffer)
    dst.write_bytes(buffer.getvalue())
