"""TorchScript archives: weights together with the module type that uses each."""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from lipcheck.errors import CorruptFileError, LipcheckError, RefusedFileError, first_line
from lipcheck.formats.limits import check_zip
from lipcheck.formats.named_tensors import TensorEntry, classify, dtype_name, op_for_weight
from lipcheck.model import ConvGeometry, Layer, Model, Skipped, WeightEdit

_EMBEDDINGS = {"Embedding", "EmbeddingBag"}
_TRANSPOSED = {"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
_CONVS = {"Conv1d", "Conv2d", "Conv3d"} | _TRANSPOSED
_LINEARS = {"Linear", "NonDynamicallyQuantizableLinear", "LazyLinear"}


def _detached(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: tensor.detach()


def _read(path: Path) -> torch.jit.ScriptModule:
    """Load a TorchScript archive on the CPU; every archive lipcheck reads passes the zip-inflation guard here first."""
    check_zip(path)
    _refuse_load_time_code(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+ deprecates jit, not our user's problem
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch.jit raises RuntimeError and friends for bad archives
        first = first_line(exc, 200)
        raise CorruptFileError(f"cannot read {path} as a TorchScript archive ({first})") from None


_SETSTATE = re.compile(rb"\bdef\s+__setstate__\s*\(")


def _refuse_load_time_code(path: Path) -> None:
    """torch.jit.load runs every ``__setstate__`` the archive's code defines: refuse such archives.

    The rest of an archive's code runs only when the module is called, which lipcheck never does.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            sources = [info for info in archive.infolist() if "/code/" in f"/{info.filename}" and info.filename.endswith(".py")]
            for info in sources:
                if _SETSTATE.search(archive.read(info)):
                    raise RefusedFileError(
                        f"{path}: its TorchScript code defines __setstate__ ({info.filename}), code that would run when the "
                        "file is loaded; lipcheck never runs a model file's code: inspect an ONNX export or the state_dict instead"
                    )
    except (zipfile.BadZipFile, OSError):
        return  # not a readable zip: torch.jit.load reports it


def load(path: Path, input_shapes: tuple[tuple[int, ...], ...] | None = None) -> Model:
    """Load a TorchScript archive with torch.jit.load and read each module's own parameters.

    With ``input_shapes``, static shape analysis of the frozen graph gives each conv's input size.
    """
    module = _read(path)
    layers: list[Layer] = []
    skipped: list[Skipped] = []
    for prefix, sub in module.named_modules():
        kind = getattr(sub, "original_name", type(sub).__name__)
        own = [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]
        guessed: list[TensorEntry] = []
        for local, tensor in own:
            name = f"{prefix}.{local}" if prefix else local
            shape = tuple(tensor.shape)
            if tensor.dim() < 2:
                continue
            if kind in _EMBEDDINGS:
                skipped.append(Skipped(name, shape, f"embedding table ({kind}): a lookup, not a linear map"))
            elif local == "weight" and (kind in _CONVS or kind in _LINEARS):
                op = "linear" if kind in _LINEARS else op_for_weight(tensor.dim(), kind in _TRANSPOSED)
                if op is None:
                    skipped.append(Skipped(name, shape, f"{kind} weight of unexpected shape {list(shape)}"))
                    continue
                layers.append(
                    Layer(
                        name,
                        op,
                        shape,
                        dtype_name(tensor.dtype),
                        _detached(tensor),
                        scope="",
                        geometry=conv_geometry(sub) if kind in _CONVS else None,
                        note=f"module {prefix or '(root)'}: {kind}",
                    )
                )
            else:
                # Modules lipcheck does not know: the state_dict naming rules, all of the module's tensors together
                # (a recurrent layer's input and hidden weights tell its gate count from each other's shapes).
                guessed.append(TensorEntry(name, shape, tensor.dtype, _detached(tensor)))
        found, skips = classify(guessed)
        for layer in found:
            layer.note = f"module {prefix or '(root)'}: {kind}; {layer.note or 'role guessed from the name'}"
        layers.extend(found)
        skipped.extend(skips)
    from lipcheck.graph.ir import STATEFUL_NOTE, NoGraph, StatefulGraph
    from lipcheck.graph.torchscript_front import build

    graph, no_graph, stateful = None, "", False
    try:
        graph = build(module, layers, input_shapes)  # adds the tensors conv/linear calls read as weights as layers
    except NoGraph as exc:
        no_graph, stateful = str(exc), isinstance(exc, StatefulGraph)
    named = {layer.name for layer in layers}
    model = Model(str(path), "torchscript", layers, [s for s in skipped if s.name not in named], graph=graph, no_graph=no_graph)
    model.runnable = None if stateful else module
    if stateful:
        model.notes.append(STATEFUL_NOTE)
    if input_shapes is not None:
        _conv_input_sizes(module, model, input_shapes)
    elif any(layer.is_conv for layer in layers):
        model.notes.append(
            "conv input sizes are not recorded in TorchScript: their bound holds for every input size; "
            "pass --input-shape (e.g. 1x3x224x224) for the operator norm"
        )
    return model


_CONV_CALLS = {
    "aten::_convolution",
    "aten::conv1d",
    "aten::conv2d",
    "aten::conv3d",
    "aten::conv_transpose1d",
    "aten::conv_transpose2d",
    "aten::conv_transpose3d",
}


def _conv_input_sizes(module: torch.jit.ScriptModule, model: Model, input_shapes: tuple[tuple[int, ...], ...]) -> None:
    """Propagate the given input shapes through the frozen graph (no forward pass is run)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(module.eval(), optimize_numerics=False)  # keep conv weights as stored
            graph = frozen.graph
            inputs = list(graph.inputs())[1:]
            if len(inputs) != len(input_shapes):
                raise LipcheckError(
                    f"the model's forward takes {len(inputs)} input(s) but {len(input_shapes)} --input-shape value(s) were given; pass one per input, in order"
                )
            for value, shape in zip(inputs, input_shapes):
                value.setType(torch._C.TensorType.create_from_tensor(torch.empty(shape, device="meta")))
            torch._C._jit_pass_propagate_shapes_on_graph(graph)
    except LipcheckError:
        raise
    except Exception as exc:  # torch.jit raises RuntimeError for graphs its shape analysis cannot follow
        model.notes.append(f"TorchScript shape analysis failed ({first_line(exc)}); conv bounds hold for every input size")
        return
    by_storage = {p.data_ptr(): name for name, p in [*module.named_parameters(), *module.named_buffers()]}
    by_name = {layer.name: layer for layer in model.layers}
    sizes: dict[str, set[tuple[int, ...]]] = {}
    for node in graph.nodes():
        if node.kind() not in _CONV_CALLS:
            continue
        x, w = list(node.inputs())[:2]
        weight = w.toIValue()
        name = by_storage.get(weight.data_ptr()) if isinstance(weight, torch.Tensor) else None
        layer = by_name.get(name) if name is not None else None
        if layer is not None and layer.geometry is not None and layer.geometry.padding_mode != "zeros" and x.node().kind() == "aten::pad":
            x = next(x.node().inputs())  # the module's own reflect/replicate/circular pad: the size before it
        dims = _sizes(x)
        if name is not None and isinstance(weight, torch.Tensor) and dims and len(dims) == weight.dim() and all(isinstance(d, int) and d > 0 for d in dims):
            sizes.setdefault(name, set()).add(tuple(dims[2:]))
    several = []
    for layer in model.layers:
        if layer.is_conv and layer.geometry is not None and layer.name in sizes:
            found = sizes[layer.name]
            layer.input_spatial = next(iter(found)) if len(found) == 1 else None
            if len(found) > 1:
                several.append(layer.name)
    if several:
        model.notes.append(f"applied at several input sizes: {', '.join(several)}; their bound holds for every input size")
    missing = [layer.name for layer in model.layers if layer.is_conv and layer.input_spatial is None]
    if missing:
        model.notes.append(
            f"input size unknown for {len(missing)} conv(s) ({', '.join(missing[:5])}"
            f"{', …' if len(missing) > 5 else ''}): their bound holds for every input size"
        )


def _sizes(value: torch._C.Value) -> list[int] | None:
    """A value's static sizes; for a pad that shape analysis leaves open, its input's sizes plus the pads."""
    kind = value.type()
    dims = kind.sizes() if isinstance(kind, torch._C.TensorType) else None
    if dims is not None or value.node().kind() not in ("aten::pad", "aten::constant_pad_nd"):
        return dims
    source, pads = list(value.node().inputs())[:2]
    before, amounts = _sizes(source), pads.toIValue()
    if before is None or not isinstance(amounts, (list, tuple)) or len(amounts) % 2 or len(amounts) > 2 * len(before):
        return None
    found = list(before)
    for axis, (begin, end) in enumerate(zip(amounts[0::2], amounts[1::2])):  # from the last axis backwards
        found[len(found) - 1 - axis] += int(begin) + int(end)
    return found


def _tuple(value: object, n: int) -> tuple[int, ...]:
    """An int (repeated n times) or a sequence of ints as a tuple; TypeError for anything else."""
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, (list, tuple)):
        return tuple(int(x) for x in value)
    raise TypeError(f"not an int or a sequence of ints: {value!r}")


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    raise TypeError(f"not an int: {value!r}")


def conv_geometry(sub: torch.nn.Module) -> ConvGeometry | None:
    """Read a scripted conv's hyper-parameters; traced modules do not keep them (None)."""
    try:
        stride = _tuple(sub.stride, 0)
        n = len(stride)
        padding = sub.padding
        mode = str(getattr(sub, "padding_mode", "zeros"))
        out_pad = _tuple(getattr(sub, "output_padding", (0,) * n), n)
        if isinstance(padding, str):
            # torch's "same" puts the odd pad at the end, as ONNX SAME_UPPER does.
            auto = "SAME_UPPER" if padding.lower() == "same" else "VALID"
            return ConvGeometry(stride, (), _tuple(sub.dilation, n), _int(sub.groups), out_pad, auto_pad=auto, padding_mode=mode)
        pads = _tuple(padding, n)
        return ConvGeometry(stride, pads + pads, _tuple(sub.dilation, n), _int(sub.groups), out_pad, padding_mode=mode)
    except (AttributeError, RuntimeError, TypeError):
        return _traced_geometry(sub)


# Nodes a traced conv's forward may hold besides the convolution itself (and one aten::pad).
_PLUMBING = {"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "aten::_convolution", "aten::pad"}


def _traced_geometry(sub: torch.nn.Module) -> ConvGeometry | None:
    """Read a traced conv's hyper-parameters from its aten::_convolution call.

    Anything else in the forward (a reflect pad, a reshape) means the call alone does not
    describe the layer, so the geometry stays unknown.
    """
    try:
        graph = getattr(sub, "graph", None)  # a traced submodule the trace never called has no forward
    except RuntimeError:
        return None
    if not isinstance(graph, torch._C.Graph):
        return None
    try:
        nodes = list(graph.nodes())
    except RuntimeError:
        return None
    if any(node.kind() not in _PLUMBING for node in nodes):
        return None
    calls = [node for node in nodes if node.kind() == "aten::_convolution"]
    pads = [node for node in nodes if node.kind() == "aten::pad"]
    if len(calls) != 1 or len(pads) > 1:
        return None
    args = list(calls[0].inputs())
    try:
        stride, padding, dilation = (_constant_list(a) for a in args[3:6])
        output_padding, groups = _constant_list(args[7]), args[8].toIValue()
    except (RuntimeError, TypeError, ValueError):
        return None
    if not isinstance(groups, int) or not stride:
        return None
    n = len(stride)
    begin, end, mode = list(padding), list(padding), "zeros"
    if pads:  # padding_mode reflect/replicate/circular: an explicit pad in front of an unpadded conv
        pad_args = list(pads[0].inputs())
        try:
            flat, pad_mode = _constant_list(pad_args[1]), pad_args[2].toIValue()
        except (RuntimeError, TypeError, ValueError):
            return None
        if not isinstance(pad_mode, str):
            return None
        mode = pad_mode
        if any(padding) or len(flat) != 2 * n or mode not in ("reflect", "replicate", "circular"):
            return None
        # torch lists (begin, end) pairs from the last axis backwards.
        begin = [flat[2 * (n - 1 - axis)] for axis in range(n)]
        end = [flat[2 * (n - 1 - axis) + 1] for axis in range(n)]
    return ConvGeometry(stride, tuple(begin) + tuple(end), dilation, groups, output_padding if args[6].toIValue() else (), padding_mode=str(mode))


def _constant_list(value: torch._C.Value) -> tuple[int, ...]:
    node = value.node()
    if node.kind() != "prim::ListConstruct":
        raise ValueError("not a constant list")
    items = tuple(item.toIValue() for item in node.inputs())
    if not all(isinstance(item, int) for item in items):
        raise ValueError("not a constant list")
    return items  # type: ignore[return-value]


def save(src: Path, dst: Path, edits: list[WeightEdit]) -> None:
    """Write ``src`` with the listed parameters divided, via torch.jit.save, its extra files kept."""
    module = _read(src)
    extra = _extra_files(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # every name of a tied tensor, each storage divided once
        tensors = {**dict(module.named_parameters(remove_duplicate=False)), **dict(module.named_buffers(remove_duplicate=False))}
        divided: set[int] = set()
        with torch.no_grad():
            for edit in edits:
                if edit.vectors is not None:
                    raise LipcheckError("spectral-norm parametrized TorchScript modules cannot be rewritten; normalize the checkpoint instead")
                if edit.divisor is not None and tensors[edit.name].data_ptr() not in divided:
                    tensor = tensors[edit.name]
                    divided.add(tensor.data_ptr())
                    tensor.copy_((tensor.to(torch.float64) / edit.divisor).to(tensor.dtype))
        # Into memory first: torch's file writer aborts the process when a write fails (a full disk).
        buffer = io.BytesIO()
        torch.jit.save(module, buffer, _extra_files=extra)
    dst.write_bytes(buffer.getvalue())


def _extra_files(path: Path) -> dict[str, str | bytes]:
    """The files saved beside the code (``_extra_files``), by name."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return {name.split("/extra/", 1)[1]: archive.read(name) for name in archive.namelist() if "/extra/" in name and not name.endswith("/")}
