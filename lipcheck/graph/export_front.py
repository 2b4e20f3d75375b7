"""torch.export front end: an ExportedProgram's FX graph as lipcheck's graph IR.

Each call to an aten operator becomes a node named like the ONNX op the walk knows (the table in
lipcheck.graph.aten_ops plus the argument-reading cases below); an operator without a mapping
keeps its schema name, and the walk reports it as an op it cannot bound. Parameters, buffers and
lifted constants are graph constants; the program's user inputs are the graph inputs, with the
shapes torch.export recorded. Nothing is run.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lipcheck.formats.torch_export import arguments, kind, static_shape
from lipcheck.graph.aten_ops import SIMPLE, draws_random
from lipcheck.graph.ir import Constant, Graph, Node, NoGraph, StatefulGraph
from lipcheck.model import Layer

if TYPE_CHECKING:
    from torch.export import ExportedProgram

# Schema names torch.export writes that TorchScript graphs do not hold.
_EXTRA = {
    "aten::_unsafe_view": "Reshape",
    "aten::t": "Transpose",
    "aten::numpy_T": "Transpose",
    "aten::clone": "Identity",
    "aten::alias": "Identity",
    "aten::detach": "Identity",
    "aten::lift_fresh_copy": "Identity",
    "aten::sym_size": "Shape",
    "aten::sym_numel": "Shape",
    "aten::_softmax": "Softmax",
    "aten::split": "Split",
    "aten::split_with_sizes": "Split",
    "aten::chunk": "Split",
    "aten::unbind": "Split",
    "aten::_native_batch_norm_legit_no_training": "BatchNormalization",
}
_UNARY = frozenset(
    "Relu Sigmoid Tanh Softplus Gelu Silu HardSwish Mish Softmax Clip Flatten Reshape Transpose Identity Squeeze Unsqueeze Slice Abs Neg Exp Log Sqrt Split Shape".split()
)  # ops that read only their first input
_POOLS = {
    "aten::max_pool1d",
    "aten::max_pool2d",
    "aten::max_pool3d",
    "aten::max_pool1d_with_indices",
    "aten::max_pool2d_with_indices",
    "aten::max_pool3d_with_indices",
    "aten::avg_pool1d",
    "aten::avg_pool2d",
    "aten::avg_pool3d",
}
_ADAPTIVE = {"aten::adaptive_avg_pool1d", "aten::adaptive_avg_pool2d", "aten::adaptive_avg_pool3d", "aten::_adaptive_avg_pool2d", "aten::_adaptive_avg_pool3d"}
_CONVS = {"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::convolution", "aten::_convolution"}
_CONV_T = {"aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d"}
_IN_PLACE_ARITHMETIC = {"aten::add_", "aten::sub_", "aten::mul_", "aten::div_"}
# Calls whose first output is the result and whose other outputs are side values (indices, statistics).
_FIRST_OUTPUT = {
    "aten::max_pool1d_with_indices",
    "aten::max_pool2d_with_indices",
    "aten::max_pool3d_with_indices",
    "aten::_native_batch_norm_legit_no_training",
}


class _Builder:
    def __init__(self, ep: ExportedProgram, layers: list[Layer], uses: dict[str, list[tuple[torch.fx.Node, str]]]) -> None:
        self.ep = ep
        self.constants: dict[str, Constant] = {}
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        index = {layer.name: i for i, layer in enumerate(layers)}
        self.layer_nodes = {node.name: index[fqn] for fqn, calls in uses.items() if fqn in index for node, _ in calls}

    def constant(self, name: str, value: Any) -> str:
        """Register a number or list of numbers as a graph constant; return its name ("" for other values)."""
        if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple)):
            return ""
        if isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float)) for v in value):
            return ""
        self.constants[name] = _array(np.asarray(value, dtype=np.float64))
        return name

    def ref(self, node: torch.fx.Node, arg: str, value: Any) -> str:
        """The IR name of one argument: an FX value's name, or a constant made from a literal."""
        if isinstance(value, torch.fx.Node):
            return value.name
        return self.constant(f"{node.name}.{arg}", value)

    def placeholders(self) -> list[str]:
        sig = self.ep.graph_signature
        lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
        tensors = {**self.ep.state_dict, **self.ep.constants}
        for node in self.ep.graph.nodes:
            if node.op == "placeholder" and node.name in lifted:
                tensor = tensors.get(lifted[node.name])
                if isinstance(tensor, torch.Tensor):
                    self.constants[node.name] = _float64(tensor)
        return [name for name in sig.user_inputs if isinstance(name, str)]

    def build(self) -> Graph:
        inputs = self.placeholders()
        for node in self.ep.graph.nodes:
            shape = static_shape(node)
            if shape is not None:
                self.shapes[node.name] = shape
            if node.op == "call_function":
                self.nodes.append(self.call(node))
        outputs = [name for name in self.ep.graph_signature.user_outputs if isinstance(name, str)]
        return Graph(inputs, outputs, self.nodes, self.constants, self.shapes, self.layer_nodes)

    def call(self, node: torch.fx.Node) -> Node:
        name, args = kind(node), arguments(node)
        label, outs = node.name, (node.name,)
        first = node.args[0] if node.args else None
        x = self.ref(node, "input", first)
        if node.target is not operator.getitem and any(not isinstance(arg.meta.get("val"), torch.Tensor) for arg in node.all_input_nodes):
            # A size, index or bound the program computes (a symbolic or data-dependent int): the
            # rules read such arguments as literals, so the call is left to the unknown-op rule.
            return Node(f"{name} (a scalar computed in the graph)", label, tuple(arg.name for arg in node.all_input_nodes), outs)
        if node.target is operator.getitem:
            producer = first if isinstance(first, torch.fx.Node) else None
            source = kind(producer) if producer is not None else ""
            if (source in _FIRST_OUTPUT and node.args[1] == 0) or SIMPLE.get(source, _EXTRA.get(source)) == "Split":
                return Node("Identity", label, (x,), outs)
            return Node(f"{source or 'getitem'}[{node.args[1]}]", label, (x,), outs)  # indices, statistics: unknown
        if name in _CONVS or name in _CONV_T:
            transposed = name in _CONV_T or bool(args.get("transposed", False))
            conv = (x, self.ref(node, "weight", args.get("weight")), self.ref(node, "bias", args.get("bias")))
            return Node("ConvTranspose" if transposed else "Conv", label, conv, outs)
        if name == "aten::linear":
            return Node("Gemm", label, (x, self.ref(node, "weight", args.get("weight")), self.ref(node, "bias", args.get("bias"))), outs)
        if name in ("aten::addmm", "aten::mm"):
            return self.matmul(node, name, args)
        if name in ("aten::batch_norm", "aten::_native_batch_norm_legit_no_training"):
            return self.batch_norm(node, name, args)
        if name in _POOLS:
            return self.pool(node, name, args, x)
        if name in _ADAPTIVE:
            return self.adaptive(node, args, x)
        if name == "aten::mean" and isinstance(args.get("dim"), (list, tuple)):
            return Node("ReduceMean", label, (x, self.constant(f"{label}.dim", list(args["dim"]))), outs)
        if name in _IN_PLACE_ARITHMETIC:
            name = name[:-1]  # the result is the same value; _written_in_place vetted every other reader
        if name in ("aten::add", "aten::sub"):
            alpha = args.get("alpha", 1)
            op = "Add" if name == "aten::add" else "Sub"
            if not isinstance(alpha, (int, float)) or alpha != 1:
                op = f"{name} (alpha {alpha})"  # a scaled sum: left to the unknown-op rule
            return Node(op, label, (x, self.ref(node, "other", args.get("other"))), outs)
        if name in ("aten::mul", "aten::div"):
            op = "Mul" if name == "aten::mul" else "Div"
            if args.get("rounding_mode") is not None:
                op = f"{name} (rounding {args['rounding_mode']})"  # floor/trunc division is not continuous
            return Node(op, label, (x, self.ref(node, "other", args.get("other"))), outs)
        if name == "aten::cat":
            tensors = first if isinstance(first, (list, tuple)) else []
            return Node("Concat", label, tuple(self.ref(node, f"tensors{i}", t) for i, t in enumerate(tensors)), outs)
        if name == "aten::leaky_relu":
            return Node("LeakyRelu", label, (x,), outs, {"alpha": float(args.get("negative_slope", 0.01))})
        if name == "aten::elu":
            if float(args.get("scale", 1)) != 1 or float(args.get("input_scale", 1)) != 1:
                return Node(f"{name} (scaled)", label, (x,), outs)
            return Node("Elu", label, (x,), outs, {"alpha": float(args.get("alpha", 1.0))})
        if name == "aten::gelu":
            approximate = args.get("approximate", "none")
            return Node("Gelu", label, (x,), outs, {"approximate": approximate if isinstance(approximate, str) else "tanh"})
        if name == "aten::hardsigmoid":
            return Node("HardSigmoid", label, (x,), outs, {"alpha": 1.0 / 6.0})
        if name in ("aten::dropout", "aten::feature_dropout", "aten::alpha_dropout"):
            return Node("Identity" if not args.get("train", False) else f"{name} (training)", label, (x,), outs)
        if name in ("aten::pad", "aten::constant_pad_nd"):
            mode = str(args.get("mode", "constant"))
            if args.get("value") not in (None, 0, 0.0):
                mode = f"constant {args['value']}"  # padding with a non-zero value is still 1-Lipschitz
            return Node("Pad", label, (x,), outs, {"mode": "constant" if mode.startswith("constant") else mode})
        if name in ("aten::_to_copy", "aten::to"):
            dtype = args.get("dtype")
            floating = dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point)
            return Node("Identity" if floating else "Cast", label, (x,), outs, {} if floating else {"to": 7})
        op = SIMPLE.get(name) or _EXTRA.get(name) or name
        if op in ("LayerNormalization", "GroupNormalization", "InstanceNormalization"):
            # Scale and bias as inputs 1 and 2 and epsilon, as the normalization rule reads them.
            if op == "InstanceNormalization" and args.get("use_input_stats", True) is not True:
                return Node(f"{name} (running statistics)", label, (x,), outs)  # an affine map the rule does not read
            eps = args.get("eps")
            if not isinstance(eps, (int, float)) or isinstance(eps, bool):
                return Node(f"{name} (epsilon unread)", label, (x,), outs)
            scale, shift = (self.ref(node, arg, args.get(arg)) if args.get(arg) is not None else "" for arg in ("weight", "bias"))
            return Node(op, label, (x, scale, shift), outs, {"epsilon": float(eps)})
        if op == "Clip" and any(isinstance(args.get(bound), torch.fx.Node) for bound in ("min", "max")):
            op = f"{name} (bounds from tensors)"  # clamp(x, min=g(x)): left to the unknown-op rule
        if op in _UNARY:
            return Node(op, label, (x,), outs)
        ins = tuple(value.name for value in node.all_input_nodes)
        return Node(op, label, ins, outs)

    def matmul(self, node: torch.fx.Node, name: str, args: dict[str, Any]) -> Node:
        """addmm(b, x, t(W)) and mm(x, t(W)) with W a layer are a Gemm; other products are MatMuls."""
        x = self.ref(node, "mat1" if name == "aten::addmm" else "self", args.get("mat1", args.get("self")))
        mat = args.get("mat2")
        scaled = name == "aten::addmm" and (args.get("beta", 1) != 1 or args.get("alpha", 1) != 1)
        source = mat.args[0] if isinstance(mat, torch.fx.Node) and mat.args else None
        if node.name in self.layer_nodes and isinstance(source, torch.fx.Node) and not scaled:
            weight = source.name
            bias = self.ref(node, "self", args.get("self")) if name == "aten::addmm" else ""
            return Node("Gemm", node.name, (x, weight, bias), (node.name,))
        ins = tuple(value.name for value in node.all_input_nodes)
        if scaled:
            self.layer_nodes.pop(node.name, None)  # beta·b + alpha·x·Wᵀ is no plain layer: left to the unknown-op rule
            return Node(f"{name} (scaled)", node.name, ins, (node.name,))
        return Node("MatMul" if name == "aten::mm" else f"{name}", node.name, ins, (node.name,))

    def batch_norm(self, node: torch.fx.Node, name: str, args: dict[str, Any]) -> Node:
        """Batch norm with stored statistics; training-mode batch norm (batch statistics) is left unknown."""
        label = node.name
        if name == "aten::batch_norm" and args.get("training", False):
            return Node(f"{name} (training)", label, tuple(v.name for v in node.all_input_nodes), (label,))
        x = self.ref(node, "input", args.get("input"))
        var, mean = args.get("running_var"), args.get("running_mean")
        names = [self.ref(node, arg, args.get(arg)) for arg in ("weight", "bias")]
        if not names[0] and isinstance(var, torch.fx.Node) and var.name in self.constants:
            stats = self.constants[var.name]
            names[0] = f"{label}.weight"
            self.constants[names[0]] = _ones_like(stats)  # affine=False: γ = 1
        eps = args.get("eps", 1e-5)
        return Node(
            "BatchNormalization",
            label,
            (x, names[0], names[1], self.ref(node, "running_mean", mean), self.ref(node, "running_var", var)),
            (label,),
            {"epsilon": float(eps) if isinstance(eps, (int, float)) else 1e-5},
        )

    def pool(self, node: torch.fx.Node, name: str, args: dict[str, Any], x: str) -> Node:
        label = node.name
        kernel = list(args.get("kernel_size", []))
        dims = len(kernel)
        stride = list(args.get("stride") or kernel)
        pads = list(args.get("padding", 0)) if isinstance(args.get("padding", 0), (list, tuple)) else [args.get("padding", 0)]
        kernel, stride, pads = ([int(v) for v in (vals * dims if len(vals) == 1 else vals)] for vals in (kernel, stride, pads))
        if "max_pool" in name:
            dilation = args.get("dilation", 1)
            dilations = [int(d) for d in (dilation if isinstance(dilation, (list, tuple)) else [dilation])]
            dilations = dilations * dims if len(dilations) == 1 else dilations
            return Node("MaxPool", label, (x,), (label,), {"kernel_shape": kernel, "strides": stride, "pads": pads * 2, "dilations": dilations})
        if args.get("divisor_override") is not None or args.get("ceil_mode", False):
            return Node(f"{name} (divisor override or ceil mode)", label, (x,), (label,))  # border windows re-weighted
        return Node(
            "AveragePool",
            label,
            (x,),
            (label,),
            {"kernel_shape": kernel, "strides": stride, "pads": pads * 2, "count_include_pad": int(bool(args.get("count_include_pad", True)))},
        )

    def adaptive(self, node: torch.fx.Node, args: dict[str, Any], x: str) -> Node:
        """Adaptive average pooling: global, or a plain average pool where the sizes divide evenly."""
        label = node.name
        size = [int(v) for v in args.get("output_size", [])]
        shape = self.shapes.get(x)
        spatial = list(shape[-len(size) :]) if shape and size else []
        if size and all(v == 1 for v in size) and shape and len(shape) == len(size) + 2:
            return Node("GlobalAveragePool", label, (x,), (label,))
        if spatial and all(isinstance(d, int) and d % s == 0 for d, s in zip(spatial, size)):
            kernel = [d // s for d, s in zip(spatial, size)]  # type: ignore[operator]
            return Node(
                "AveragePool", label, (x,), (label,), {"kernel_shape": kernel, "strides": kernel, "pads": [0] * (2 * len(kernel)), "count_include_pad": 1}
            )
        return Node("aten::adaptive_avg_pool (uneven windows)", label, (x,), (label,))


def build(ep: ExportedProgram, layers: list[Layer], uses: dict[str, list[tuple[torch.fx.Node, str]]]) -> Graph:
    """The program's graph in lipcheck's IR; ``uses`` maps each layer's weight to the calls applying it.

    Raises NoGraph when a call writes into a value in place where the IR, which reads every value
    as computed once, would miss the change, and StatefulGraph when it writes into an input or a
    buffer (each call then computes another function).
    """
    drawn = next((node for node in ep.graph.nodes if node.op == "call_function" and draws_random(kind(node), arguments(node).get("train", False))), None)
    if drawn is not None:
        raise StatefulGraph(f"{drawn.name} ({kind(drawn)}) draws random numbers, so each call computes another function")
    written = _written_in_place(ep.graph)
    if written:
        raise NoGraph(f"{written}; lipcheck reads every value as computed once, so it gives no graph bound for this program")
    return _Builder(ep, layers, uses).build()


def _written_in_place(graph: torch.fx.Graph) -> str:
    """Why an in-place write changes a value some other node sees, or "".

    A call that writes into its argument (``relu_``, ``add_``, ``copy_``) is harmless when only
    its own result is read afterwards, as in ``relu(inplace=True)``. It changes what the graph
    computes when the argument is a view of another value (``y[:, 0] = ...`` writes into ``y``),
    when a later node or the output reads the argument, or when a view of the argument exists.
    """
    order = {node: position for position, node in enumerate(graph.nodes)}
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        for position, argument in enumerate(schema.arguments):
            if argument.alias_info is None or not argument.alias_info.is_write:
                continue
            value = node.args[position] if position < len(node.args) else node.kwargs.get(argument.name)
            for target in value if isinstance(value, (list, tuple)) else [value]:
                if not isinstance(target, torch.fx.Node):
                    continue
                if target.op == "placeholder":
                    raise StatefulGraph(
                        f"{node.name} ({kind(node)}) changes the program's input or state {target.name} in place, so each call computes another function"
                    )
                if _is_view(target):
                    return f"{node.name} ({kind(node)}) writes into a view of another value"
                for user in target.users:
                    if user is not node and (order[user] > order[node] or _is_view(user)):
                        return f"{node.name} ({kind(node)}) changes {target.name} in place, and {user.name} reads it"
    return ""


def _is_view(node: torch.fx.Node) -> bool:
    """Whether a node's value shares memory with one of its inputs without being written through (a view)."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        source = node.args[0]
        return isinstance(source, torch.fx.Node) and _is_view(source)
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def _array(value: np.ndarray) -> Constant:
    return lambda: value


def _float64(tensor: torch.Tensor) -> Constant:
    return lambda: tensor.detach().to(torch.float64).numpy()


def _ones_like(stats: Constant) -> Constant:
    return lambda: np.ones_like(stats())
