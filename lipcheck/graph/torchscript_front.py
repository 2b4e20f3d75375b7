"""TorchScript front end: the frozen graph (batch norm kept separate) as lipcheck's graph IR.

Freezing inlines the module and turns weights into constants; nothing is run. Each aten call
becomes a node named like the ONNX ops the walk knows; an aten op without a mapping keeps its
name, and the walk reports it as an op it cannot bound.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import torch

from lipcheck.errors import first_line
from lipcheck.formats.named_tensors import dtype_name, op_for_weight
from lipcheck.graph.aten_ops import SIMPLE as _SIMPLE
from lipcheck.graph.aten_ops import draws_random
from lipcheck.graph.ir import Graph, Node, NoGraph, StatefulGraph
from lipcheck.model import ConvGeometry, Layer

_CONVS = {"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution"}
_CONV_T = {"aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d"}


_FIRST_INPUT_ONLY = frozenset(
    "Relu Sigmoid Tanh Softplus Gelu Silu HardSwish Mish Softmax Clip Flatten Reshape Transpose Identity Squeeze Unsqueeze Dropout Slice Abs Neg Exp Log Sqrt HardSwish".split()
)  # ops whose other arguments are not tensors to follow


# Ops whose other arguments only say which entries go where (sizes, axes, indices), never scale them.
_SHAPE_ARGUMENTS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Identity", "Concat", "Split", "Softmax"})
# Ops that change a list in place: the graph's list values would miss what they add, set or remove.
_LIST_CHANGES = frozenset(
    f"aten::{name}" for name in ("append", "_set_item", "__setitem__", "insert", "extend", "pop", "clear", "remove", "reverse", "sort", "_list_set_item")
)
# Ops whose output may share storage with an input: an in-place op on it changes that input too.
_VIEWS = frozenset(
    f"aten::{name}"
    for name in (
        "view",
        "view_as",
        "reshape",
        "reshape_as",
        "flatten",
        "unflatten",
        "select",
        "slice",
        "narrow",
        "transpose",
        "t",
        "permute",
        "expand",
        "expand_as",
        "squeeze",
        "unsqueeze",
        "as_strided",
        "detach",
        "alias",
        "chunk",
        "split",
        "unbind",
        "diagonal",
        "movedim",
        "unfold",
        "contiguous",
        "__getitem__",
        "split_with_sizes",
        "tensor_split",
        "numpy_T",
        "mT",
        "swapaxes",
        "swapdims",
        "real",
        "imag",
        "view_as_real",
        "view_as_complex",
    )
) | {"prim::ListUnpack", "prim::TupleUnpack", "prim::ConstantChunk"}


def _shaped(v: torch._C.Value) -> bool:
    """Whether a constant argument is a tensor with dimensions (a clamp bound that can broadcast x up)."""
    value = _value(v)
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _computed(v: torch._C.Value) -> bool:
    """Whether a node argument is computed in the graph rather than a constant."""
    return v.node().kind() != "prim::Constant"


def _same_geometry(call: ConvGeometry, layer: ConvGeometry | None) -> bool:
    """Whether a conv call applies its weight as the layer's geometry says (a module whose padding
    mode is not zeros pads in a node of its own, so its call has no padding)."""
    if layer is None:
        return False
    padding = call.padding if layer.padding_mode == "zeros" or any(call.padding) else layer.padding
    fields = (call.stride, call.dilation, call.groups, call.auto_pad, tuple(call.output_padding) or (0,) * len(call.stride))
    return padding == layer.padding and fields == (
        layer.stride,
        layer.dilation,
        layer.groups,
        layer.auto_pad,
        tuple(layer.output_padding) or (0,) * len(layer.stride),
    )


def _value(v: torch._C.Value) -> Any:
    try:
        return v.toIValue()
    except RuntimeError:
        return None


def _ints(value: Any, n: int) -> tuple[int, ...] | None:
    """A constant int or int list argument as n ints, or None when it is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return tuple(value) * (n if len(value) == 1 else 1)
    return None


def _call_geometry(kind: str, args: list[torch._C.Value], n: int) -> tuple[ConvGeometry, bool] | None:
    """A conv call's hyper-parameters from its constant arguments, and whether it is transposed."""
    values = [_value(a) for a in args]
    if kind == "aten::_convolution":  # (x, w, b, stride, padding, dilation, transposed, output_padding, groups, ...)
        stride, padding, dilation, transposed, out_pad, groups = values[3], values[4], values[5], values[6], values[7], values[8]
    elif kind in _CONV_T:  # (x, w, b, stride, padding, output_padding, groups, dilation)
        stride, padding, out_pad, groups, dilation, transposed = values[3], values[4], values[5], values[6], values[7], True
    else:  # (x, w, b, stride, padding, dilation, groups); padding may be "same" or "valid"
        stride, padding, dilation, groups, out_pad, transposed = values[3], values[4], values[5], values[6], 0, False
    strides, dilations, pads = _ints(stride, n), _ints(dilation, n), _ints(padding, n)
    auto = {"same": "SAME_UPPER", "valid": "VALID"}.get(padding) if isinstance(padding, str) else "NOTSET"
    out_pads = _ints(out_pad, n) if transposed else ()
    if strides is None or dilations is None or not isinstance(groups, int) or out_pads is None or auto is None:
        return None
    if pads is None and auto == "NOTSET":
        return None
    return ConvGeometry(strides, (pads + pads) if pads is not None else (), dilations, groups, out_pads, auto_pad=auto), bool(transposed)


def _call_layer(kind: str, args: list[torch._C.Value], name: str, label: str, weight: torch.Tensor) -> Layer | None:
    """A layer for a tensor a conv or linear call reads as its weight (a buffer, or a value freezing folded)."""
    tensor = weight.detach()
    if kind == "aten::linear":
        if tensor.dim() != 2:
            return None
        op, geometry = "linear", None
    else:
        found = _call_geometry(kind, args, tensor.dim() - 2)
        op_name = op_for_weight(tensor.dim(), found[1]) if found is not None and tensor.dim() > 2 else None
        if found is None or op_name is None:
            return None
        op, geometry = op_name, found[0]
    return Layer(
        name,
        op,
        tuple(tensor.shape),
        dtype_name(tensor.dtype),
        lambda: tensor,
        geometry=geometry,
        note=f"graph node {label}: {kind} reads this tensor as its weight",
        node=label,
    )


def build(module: torch.jit.ScriptModule, layers: list[Layer], input_shapes: tuple[tuple[int, ...], ...] | None = None) -> Graph:
    """The module's frozen forward graph.

    A conv or linear call whose weight is no layer yet (a buffer passed to ``F.conv1d``, or a
    weight computed from constants in ``forward``, which freezing folds) gets one, appended to
    ``layers``. With ``input_shapes``, TorchScript's static shape analysis gives the values'
    sizes (a mean divides by them, a conv's input size); without, sizes are unknown and such
    rules keep their size-free constants. Raises NoGraph when TorchScript cannot freeze the module,
    or when an in-place op changes a value another node reads.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(module.eval(), optimize_numerics=False)
    except Exception as exc:  # scripted code freezing does not support: no graph bound, the product stays
        raise NoGraph(f"TorchScript cannot freeze this module's forward ({first_line(exc)}), so lipcheck cannot read its graph") from exc
    graph = frozen.graph
    mutated = _mutation_read_later(graph)
    if mutated:
        raise NoGraph(f"{mutated}; lipcheck reads every value as computed once, so it gives no graph bound for this module")
    shapes = _shapes(graph, input_shapes) if input_shapes is not None else {}
    # A frozen constant is a stored tensor when it shares its storage, shape and strides (not a view of it).
    by_storage = {(t.data_ptr(), tuple(t.shape), t.stride()): name for name, t in [*module.named_parameters(), *module.named_buffers()]}
    layer_index = {layer.name: i for i, layer in enumerate(layers)}
    constants: dict[str, Any] = {}
    nodes: list[Node] = []
    lists: dict[str, list[str]] = {}
    shape_only: dict[str, bool] = {}  # memo of _shape_only
    layer_nodes: dict[str, int] = {}
    calls: dict[str, list[tuple[str, tuple[int | None, ...] | None]]] = {}  # a layer's calls: node label, input size
    for index, node in enumerate(graph.nodes()):
        kind = node.kind()
        outs = [o.debugName() for o in node.outputs()]
        ins = [i.debugName() for i in node.inputs()]
        if kind == "prim::Constant":
            value = _value(node.output())
            if isinstance(value, torch.Tensor):
                constants[outs[0]] = lambda t=value: t.detach().to(torch.float64).numpy()
            elif isinstance(value, (int, float, bool)) or (isinstance(value, list) and all(isinstance(x, (int, float)) for x in value)):
                constants[outs[0]] = lambda v=value: np.asarray(v, dtype=np.float64)
            else:
                constants[outs[0]] = lambda: np.zeros(0)
            continue
        if kind == "prim::ListConstruct":
            lists[outs[0]] = ins
            nodes.append(Node("Concat", f"{kind}_{index}", tuple(ins), tuple(outs)))  # a list: like a concatenation
            continue
        label = f"{kind.split('::')[-1]}_{index}"
        attrs: dict[str, Any] = {}
        op = _SIMPLE.get(kind, kind)
        args = list(node.inputs())
        if kind in _CONVS or kind in _CONV_T:
            op = "ConvTranspose" if kind in _CONV_T or (kind == "aten::_convolution" and _value(args[6])) else "Conv"
            ins = ins[:3]
        if kind in _CONVS or kind in _CONV_T or kind == "aten::linear":
            weight = _value(args[1])
            name = by_storage.get((weight.data_ptr(), tuple(weight.shape), weight.stride())) if isinstance(weight, torch.Tensor) else None
            if isinstance(weight, torch.Tensor) and name not in layer_index:
                found = _call_layer(kind, args, name or f"{label}.weight", label, weight)
                if found is not None:
                    sizes = shapes.get(ins[0])
                    if found.geometry is not None and sizes and len(sizes) == weight.dim() and all(sizes[2:]):
                        found.input_spatial = tuple(int(d) for d in sizes[2:] if d is not None)
                    layers.append(found)
                    layer_index[found.name] = len(layers) - 1
                    name = found.name
            if name in layer_index:
                layer = layers[layer_index[name]]
                call = _call_geometry(kind, args, weight.dim() - 2) if kind != "aten::linear" and isinstance(weight, torch.Tensor) else None
                sizes = shapes.get(ins[0])
                spatial = tuple(sizes[2:]) if sizes and kind != "aten::linear" else None
                if kind == "aten::linear" or (call is not None and _same_geometry(call[0], layer.geometry)):
                    layer_nodes[label] = layer_index[name]
                    calls.setdefault(name, []).append((label, spatial))
            ins = ins[:3]
        elif op in ("Add", "Sub") and len(args) > 2:
            alpha = _value(args[2])
            if isinstance(alpha, (int, float)) and alpha != 1:
                op = "Unknown_scaled_" + op  # alpha != 1: leave to the unknown-op rule
            ins = ins[:2]
        elif op == "Concat":
            ins = lists.get(ins[0], [ins[0]])
        elif op == "BatchNormalization":
            # batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
            eps = _value(args[7])
            attrs["epsilon"] = float(eps) if isinstance(eps, (int, float)) else 1e-5
            ins = [ins[0], ins[1], ins[2], ins[3], ins[4]]
            if _value(args[5]) is not False:
                op, ins = f"{kind} (training)", ins[:1]  # batch statistics, or a mode read at run time
        elif op == "Div" and len(args) > 2:
            mode = _value(args[2])
            if mode is not None:
                op = f"{kind} (rounding {mode})"  # floor or trunc division: steps, not Lipschitz
            ins = ins[:2]
        elif op in ("MaxPool", "AveragePool"):
            kernel = _value(args[1]) or []
            stride = _value(args[2]) or kernel
            attrs.update(kernel_shape=list(kernel), strides=list(stride))
            pads = _value(args[3]) or []
            attrs["pads"] = list(pads) * 2
            if op == "MaxPool":
                # max_pool(x, kernel, stride, padding, dilation, ceil_mode): dilated windows span more entries.
                dilation = _value(args[4]) if len(args) > 4 else None
                attrs["dilations"] = list(dilation) if isinstance(dilation, (list, tuple)) and dilation else [1] * len(kernel)
                attrs["ceil_mode"] = int(bool(_value(args[5]))) if len(args) > 5 else 0
            else:
                # avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
                include = _value(args[5]) if len(args) > 5 else True
                attrs["count_include_pad"] = int(bool(include))
                attrs["ceil_mode"] = int(bool(_value(args[4]))) if len(args) > 4 else 0
                if len(args) > 6 and _value(args[6]) is not None:
                    op = "Unknown_avg_pool_divisor_override"  # a chosen divisor: not an average
            ins = ins[:1]
        elif op == "LeakyRelu":
            slope = _value(args[1]) if len(args) > 1 else 0.01
            if isinstance(slope, (int, float)) and not isinstance(slope, bool):
                attrs["alpha"] = float(slope)
            else:
                op = f"{kind} (slope unread)"  # left to the unknown-op rule
            ins = ins[:1]
        elif op == "Elu":
            # elu(x, alpha, scale, input_scale): scale and input_scale other than 1 are left to the unknown-op rule.
            alpha, scale, input_scale = (_value(a) if len(args) > i else 1.0 for i, a in zip((1, 2, 3), args[1:4]))
            attrs["alpha"] = float(alpha) if isinstance(alpha, (int, float)) else 1.0
            if scale != 1 or input_scale != 1:
                op, attrs = f"{kind} (scaled)", {}
            ins = ins[:1]
        elif op == "Dropout":
            train = _value(args[2]) if len(args) > 2 else False
            if train is not False:
                op = f"{kind} (training)"  # a random mask scaled by 1/(1-p), or a mode read at run time
            ins = ins[:1]
        elif op in ("LayerNormalization", "GroupNormalization", "InstanceNormalization"):
            # layer_norm(x, shape, weight, bias, eps, ..), group_norm(x, groups, weight, bias, eps, ..),
            # instance_norm(x, weight, bias, mean, var, use_input_stats, momentum, eps, ..)
            at = (1, 2, 7) if op == "InstanceNormalization" else (2, 3, 4)
            eps = _value(args[at[2]]) if len(args) > at[2] else None
            if op == "InstanceNormalization" and (len(args) <= 5 or _value(args[5]) is not True):
                op, ins = f"{kind} (running statistics)", ins[:1]  # use_input_stats=False: an affine map the rule does not read
            elif isinstance(eps, (int, float)) and not isinstance(eps, bool):
                attrs["epsilon"] = float(eps)
                ins = [ins[0]] + ["" if (not _computed(args[i]) and _value(args[i]) is None) else ins[i] for i in at[:2]]
            else:
                op, ins = f"{kind} (epsilon unread)", ins[:1]
        elif op == "Clip" and any(_computed(a) or _shaped(a) for a in args[1:3]):
            op = f"{kind} (bounds from tensors)"  # clamp(x, min=g(x)): left to the unknown-op rule
        elif kind.startswith("aten::upsample_") and len(args) >= 3:
            scales = _value(args[2]) if kind.endswith(("nearest1d", "nearest2d", "nearest3d")) or len(args) == 3 else None
            if isinstance(scales, (list, tuple)) and scales and all(isinstance(v, (int, float)) for v in scales):
                mode = "nearest" if "nearest" in kind else "linear"
                name = f"{label}.scales"
                constants[name] = lambda v=[1.0, 1.0, *scales]: np.asarray(v, dtype=np.float64)
                op, ins, attrs = "Resize", [ins[0], "", name], {"mode": mode}
        elif op == "ReduceMean":
            dims = _value(args[1]) if len(args) > 1 else None
            if isinstance(dims, int):
                dims = [dims]
            attrs["axes"] = list(dims) if isinstance(dims, (list, tuple)) else []
            ins = ins[:1]
        elif op in ("AdaptiveAveragePool", "AdaptiveMaxPool"):
            size = _value(args[1])
            attrs["output_size"] = list(size) if isinstance(size, (list, tuple)) else [size]
            ins = ins[:1]
        elif op == "HardSigmoid":
            attrs["alpha"] = 1.0 / 6.0
        elif op == "Gelu":
            approximate = _value(args[1]) if len(args) > 1 else "none"
            attrs["approximate"] = approximate if isinstance(approximate, str) else "tanh"  # unread: the larger constant
            ins = ins[:1]
        elif op in _FIRST_INPUT_ONLY:
            ins = ins[:1]
        kept = set(ins)
        kept.update(name for name in (v.debugName() for v in node.inputs()) if name in lists and set(lists[name]) <= kept)  # a list read by its elements
        dropped = [value for value in node.inputs() if value.debugName() not in kept]
        if op in _SHAPE_ARGUMENTS:
            # Sizes, axes and indices may come from the input's shape (x.view(x.size(0), -1)), not its values.
            unfixed = any(not _shape_only(value, shape_only) for value in dropped)
        else:
            # Every other argument left out above was read as a number (an alpha, an eps, a stride): only a constant was.
            unfixed = any(_computed(value) for value in dropped)
        if unfixed:
            op, ins = f"{kind} (an argument computed in the graph)", [v.debugName() for v in node.inputs()]
        nodes.append(Node(op, label, tuple(ins), tuple(outs), attrs, captures=_captured(node)))
    inputs = [v.debugName() for v in list(graph.inputs())[1:]]
    outputs: list[str] = []
    for value in graph.outputs():
        producer = value.node()
        if producer.kind() == "prim::TupleConstruct":
            outputs.extend(i.debugName() for i in producer.inputs())
        else:
            outputs.append(value.debugName())
    for uses in calls.values():
        # One interval per layer: a weight applied at several input sizes is bounded at none of them.
        if len({spatial for _, spatial in uses}) > 1:
            for label, _ in uses:
                layer_nodes.pop(label, None)
    return Graph(inputs, outputs, nodes, constants, shapes, layer_nodes)


def _mutation_read_later(graph: torch._C.Graph) -> str:
    """Why an in-place op makes the graph's values untrustworthy, or "".

    A traced in-place op hands its result on as a new value, but scripted code can go on reading
    the old name (``h.mul_(5); return self.l1(h)``), and an op on a view changes its base too:
    either way a later node reads a value other than the one its input names.
    """
    order: dict[torch._C.Node, int] = {}

    def number(nodes: Any, returned: torch._C.Node) -> None:
        for node in nodes:
            order[node] = len(order)
            for block in node.blocks():
                number(block.nodes(), block.returnNode())
        order[returned] = len(order)  # what a graph or block returns is read after its nodes

    number(graph.nodes(), graph.return_node())
    for node, position in list(order.items()):
        kind = node.kind()
        if kind in _LIST_CHANGES:
            return f"{kind} changes a list after it is built"
        arguments = list(node.inputs())
        if draws_random(kind, _value(arguments[2]) if len(arguments) > 2 else None):
            raise StatefulGraph(f"{kind} draws random numbers, so each call computes another function")
        for target in _written(node):
            for value in _aliases(target):
                producer = value.node()
                if _is_view(producer):
                    return f"{kind} changes a view of another value in place"
                if producer.kind() == "prim::GetAttr":
                    raise StatefulGraph(f"{kind} changes the module's own state in place, so each call computes another function")
                if any(use.user is not node and order.get(use.user, -1) > position for use in value.uses()):
                    return f"{kind} changes a value in place that a later node reads"
                if any(_is_view(use.user) for use in value.uses()):
                    return f"{kind} changes a value in place that a view of it shows"
    return ""


def _schema(node: torch._C.Node) -> tuple[list[str], str]:
    """A node's schema as its argument declarations (keyword marker left out) and its return part; empty where it has none."""
    try:
        text = node.schema()
    except RuntimeError:
        return [], ""
    if "(" not in text or "->" not in text:
        return [], ""
    head, _, returns = text.rpartition("->")
    inner = head[head.index("(") + 1 : head.rindex(")")]
    arguments, depth, current = [], 0, ""
    for char in inner:
        depth += char in "(["
        depth -= char in ")]"
        if char == "," and depth == 0:
            arguments.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        arguments.append(current.strip())
    return [a for a in arguments if a != "*"], returns


def _written(node: torch._C.Node) -> list[torch._C.Value]:
    """The arguments a node writes into (``relu_``'s self, an ``out=`` tensor), by its schema's alias
    annotations; an aten op named with a trailing underscore writes its first argument where no schema says."""
    arguments, _ = _schema(node)
    inputs = list(node.inputs())
    if arguments and len(arguments) == len(inputs):
        return [value for value, declared in zip(inputs, arguments) if "!)" in declared.split(" ")[0]]
    name = node.kind().split("::")[-1]
    if node.kind().startswith("aten::") and name.endswith("_") and not name.endswith("__") and inputs:
        return inputs[:1]
    return []


def _is_view(node: torch._C.Node) -> bool:
    """Whether a node's result may share storage with an input without writing it (a view, or ``to`` returning self)."""
    if node.kind() in _VIEWS:
        return True
    _, returns = _schema(node)
    return bool(re.search(r"Tensor\([^)!]+\)", returns))


def _aliases(value: torch._C.Value) -> list[torch._C.Value]:
    """The value and the values an in-place chain made it from (``add_`` then ``relu_``): one storage."""
    chain = [value]
    while True:
        producer = chain[-1].node()
        _, returns = _schema(producer)
        written = _written(producer) if "!)" in returns else []
        if not written or written[0] in chain:
            return chain
        chain.append(written[0])


# Ops whose result depends on their input's shape only, never on its values.
_SHAPE_READS = frozenset({"aten::size", "aten::dim", "aten::numel", "aten::len", "prim::dtype", "prim::device", "prim::layout", "aten::sym_size"})


def _shape_only(value: torch._C.Value, memo: dict[str, bool]) -> bool:
    """Whether a value depends on the graph inputs' shapes at most (a constant, x.size(0) * 2), not on
    their values. A value from an If or Loop, or from a graph input itself, counts as depending on values."""
    name = value.debugName()
    if name in memo:
        return memo[name]
    memo[name] = False  # a cycle cannot occur in a graph, but a guess on re-entry must be the safe one
    node = value.node()
    kind = node.kind()
    if kind == "prim::Constant":
        found = True
    elif kind in _SHAPE_READS:
        found = all(_static_shape(v, memo) for v in node.inputs() if _is_tensor(v))
    elif kind == "prim::Param" or any(True for _ in node.blocks()):
        found = False
    else:
        found = all(_shape_only(v, memo) for v in node.inputs())
    memo[name] = found
    return found


# Ops whose output's shape depends on their input's values (which entries are nonzero, distinct, selected).
_VALUE_SHAPED = frozenset(
    f"aten::{name}"
    for name in (
        "nonzero",
        "nonzero_numpy",
        "argwhere",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
        "index",
        "repeat_interleave",
    )
)


def _is_tensor(value: torch._C.Value) -> bool:
    return bool(value.type().isSubtypeOf(torch._C.TensorType.get()))


def _static_shape(value: torch._C.Value, memo: dict[str, bool]) -> bool:
    """Whether a tensor's shape follows from the graph inputs' shapes alone (not from which of its
    entries are nonzero, say); memoized beside _shape_only under a name of its own."""
    key = "shape of " + value.debugName()
    if key in memo:
        return memo[key]
    memo[key] = False
    node = value.node()
    kind = node.kind()
    if kind in ("prim::Param", "prim::Constant"):
        found = True
    elif kind in _VALUE_SHAPED or any(True for _ in node.blocks()):
        found = False
    else:
        found = all(_static_shape(v, memo) if _is_tensor(v) else _shape_only(v, memo) for v in node.inputs())
    memo[key] = found
    return found


def _captured(node: torch._C.Node) -> tuple[str, ...]:
    """Values a node's blocks (an If's branches, a Loop's body) read from the graph around them.

    The node lists only its own arguments (an If, its condition): its outputs depend on these too.
    """
    inside: set[str] = set()
    used: list[str] = []

    def visit(block: torch._C.Block) -> None:
        inside.update(v.debugName() for v in block.inputs())
        for inner in block.nodes():
            used.extend(v.debugName() for v in inner.inputs())
            for nested in inner.blocks():
                visit(nested)
            inside.update(v.debugName() for v in inner.outputs())
        used.extend(v.debugName() for v in block.outputs())

    for block in node.blocks():
        visit(block)
    return tuple(dict.fromkeys(name for name in used if name not in inside))


def _shapes(graph: torch._C.Graph, input_shapes: tuple[tuple[int, ...], ...]) -> dict[str, tuple[int | None, ...]]:
    """Every tensor value's static sizes from the given input shapes (nothing is run); {} where analysis fails."""
    inputs = list(graph.inputs())[1:]
    if len(inputs) != len(input_shapes):
        return {}
    try:
        for value, shape in zip(inputs, input_shapes):
            value.setType(torch._C.TensorType.create_from_tensor(torch.empty(shape, device="meta")))
        torch._C._jit_pass_propagate_shapes_on_graph(graph)
    except Exception:  # torch.jit raises RuntimeError for graphs its shape analysis cannot follow
        return {}
    found: dict[str, tuple[int | None, ...]] = {}
    for node in graph.nodes():
        for out in node.outputs():
            kind = out.type()
            sizes = kind.varyingSizes() if isinstance(kind, torch._C.TensorType) and kind.dim() is not None else None
            if sizes is not None:
                found[out.debugName()] = tuple(int(d) if isinstance(d, int) and d > 0 else None for d in sizes)
    for value in inputs:
        found[value.debugName()] = tuple(value.type().sizes())  # type: ignore[attr-defined]
    return found
