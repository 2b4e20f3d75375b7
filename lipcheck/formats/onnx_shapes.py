"""Static shapes of an ONNX graph's values, by ONNX shape inference from the inputs' shapes (nothing
is run; shapes the file declares for computed values are not taken on trust).

Used to learn the input size each convolution sees and how broadcasting copies entries.
``--input-shape`` fixes the graph inputs whose dimensions the file leaves dynamic.
"""

from __future__ import annotations

import math

import onnx
from onnx import GraphProto, ModelProto, TensorProto, ValueInfoProto

from lipcheck.errors import LipcheckError, first_line

Dims = tuple[int | None, ...]
# Initializers larger than this are stripped of their data before inference (shapes suffice).
_KEEP_ELEMENTS = 4096


def model_inputs(graph: GraphProto) -> list[ValueInfoProto]:
    """The graph inputs a caller feeds (old exporters also list initializers as inputs)."""
    stored = {init.name for init in graph.initializer}
    return [value for value in graph.input if value.name not in stored]


def _dims(value: ValueInfoProto) -> Dims | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim)


def _fix_inputs(graph: GraphProto, input_shapes: tuple[tuple[int, ...], ...]) -> None:
    inputs = model_inputs(graph)
    if len(inputs) != len(input_shapes):
        names = ", ".join(value.name for value in inputs) or "none"
        raise LipcheckError(
            f"the model has {len(inputs)} input(s) ({names}) but {len(input_shapes)} --input-shape "
            "value(s) were given; pass one --input-shape per input, in that order"
        )
    for value, shape in zip(inputs, input_shapes):
        declared = _dims(value)
        if declared is not None and len(declared) != len(shape):
            raise LipcheckError(
                f"input '{value.name}' has {len(declared)} dimensions but --input-shape "
                f"{'x'.join(map(str, shape))} has {len(shape)}; give all of them, batch first"
            )
        if declared is not None and any(d is not None and d != s for d, s in zip(declared, shape)):
            fixed = "x".join("?" if d is None else str(d) for d in declared)
            raise LipcheckError(
                f"input '{value.name}' is fixed by the file as {fixed}; --input-shape "
                f"{'x'.join(map(str, shape))} contradicts it (only ? dimensions can be chosen)"
            )
        tensor_type = value.type.tensor_type
        tensor_type.ClearField("shape")
        for size in shape:
            tensor_type.shape.dim.add().dim_value = size


def _strip(graph: GraphProto) -> None:
    """Drop large initializer payloads: inference needs their dims, not their values."""
    for init in graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        if count > _KEEP_ELEMENTS or init.data_location == TensorProto.EXTERNAL:
            dims, dtype, name = list(init.dims), init.data_type, init.name
            init.Clear()
            init.name, init.data_type = name, dtype
            init.dims.extend(dims)
            init.data_location = TensorProto.EXTERNAL
            entry = init.external_data.add()
            entry.key, entry.value = "location", "lipcheck-not-loaded"
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _strip(attr.g)


def _forget_declared(graph: GraphProto) -> None:
    """Drop the shapes a file declares for values it computes: onnxruntime only warns when they are
    wrong and runs with the real ones, so they are claims, not facts. Inputs keep theirs (they are
    checked when the model is fed)."""
    del graph.value_info[:]
    for value in graph.output:
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []:
                _forget_declared(sub)


def _collect(graph: GraphProto, out: dict[str, Dims]) -> None:
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = _dims(value)
        if dims is not None:
            out.setdefault(value.name, dims)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect(attr.g, out)


def infer(proto: ModelProto, input_shapes: tuple[tuple[int, ...], ...] | None) -> tuple[dict[str, Dims], str | None]:
    """Return the inferred dims of every named value, and a note when inference failed."""
    work = ModelProto()
    work.CopyFrom(proto)
    if input_shapes is not None:
        _fix_inputs(work.graph, input_shapes)
    _forget_declared(work.graph)
    _strip(work.graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(work, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and others on graphs it cannot follow
        shapes: dict[str, Dims] = {}
        _collect(work.graph, shapes)
        return shapes, f"ONNX shape inference failed ({first_line(exc)}); convs whose input size is unknown get a bound for every size"
    shapes = {}
    _collect(inferred.graph, shapes)
    for _ in range(_CORRECTION_ROUNDS):
        corrected = _runtime_sizes(work.graph, shapes)
        if not corrected:
            break
        # Inference keeps a declared shape where it would compute another one (strict_mode off), and
        # reads the nodes after from it.
        for graph, name, dims in corrected:
            declared = next((value for value in graph.output if value.name == name), None)
            if declared is None:
                graph.value_info.append(onnx.helper.make_tensor_value_info(name, TensorProto.UNDEFINED, list(dims)))
            else:  # a branch's or body's output: what the If or Loop around it reads
                declared.type.CopyFrom(onnx.helper.make_tensor_value_info(name, declared.type.tensor_type.elem_type, list(dims)).type)
        try:
            inferred = onnx.shape_inference.infer_shapes(work, check_type=False, strict_mode=False, data_prop=True)
        except Exception as exc:  # the corrected sizes are ones onnxruntime computes: inference accepting the first is no promise
            return {}, f"ONNX shape inference failed ({first_line(exc)}); convs whose input size is unknown get a bound for every size"
        shapes = {}
        _collect(inferred.graph, shapes)
    return shapes, None


# Rounds of correcting sizes that ONNX shape inference gets wrong, each after the one before.
_CORRECTION_ROUNDS = 8


def _runtime_sizes(graph: GraphProto, shapes: dict[str, Dims]) -> list[tuple[GraphProto, str, tuple[int | str, ...]]]:
    """Outputs whose inferred shape differs from the one onnxruntime computes, with that shape and
    the graph (or If branch, Loop body) that holds them.

    ONNX shape inference keeps a ceil_mode pool's last window even when it starts in the right
    padding (onnxruntime and PyTorch drop it), sizes SAME-padded pools otherwise than onnxruntime
    (which pads for the undilated kernel), and adds output_padding to a ConvTranspose with SAME
    padding. A size lipcheck cannot tell is given as unknown, so the convs after it get a bound
    for every size.
    """
    found: list[tuple[GraphProto, str, tuple[int | str, ...]]] = []
    stored = {init.name: list(init.dims) for init in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found.extend(_runtime_sizes(attr.g, shapes))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    found.extend(_runtime_sizes(sub, shapes))
        if not node.input or not node.output:
            continue
        source, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if source is None or out is None or len(source) < 3:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        spatial: list[int | str] | None = None
        if node.op_type in ("MaxPool", "AveragePool", "LpPool"):
            if auto_pad.startswith("SAME"):
                spatial = _same_pool_sizes(source[2:], attrs, auto_pad)
            elif int(attrs.get("ceil_mode", 0)) and auto_pad in ("NOTSET", "VALID"):
                spatial = _ceil_pool_sizes(source[2:], attrs, auto_pad)
        elif node.op_type == "ConvTranspose" and (auto_pad.startswith("SAME") or "output_shape" in attrs):
            if "kernel_shape" not in attrs and len(node.input) > 1 and node.input[1] in stored:
                attrs["kernel_shape"] = stored[node.input[1]][2:]
            spatial = _transposed_sizes(source[2:], attrs, auto_pad)
        if spatial is None:
            continue
        dims = (*(d if d is not None else f"unknown_{node.output[0]}_{i}" for i, d in enumerate(out[:2])), *spatial)
        if len(out) != len(dims) or any(a != b for a, b in zip(out, dims)):
            found.extend((graph, name, dims) for name in node.output[: 2 if node.op_type == "MaxPool" else 1] if name)
    return found


def _window(sizes: Dims, attrs: dict[str, object]) -> tuple[list[int], list[int], list[int]] | None:
    """A pool's kernel, strides and dilations (ONNX defaults filled in), or None when the kernel does not fit the input's rank."""
    kernel = [int(k) for k in attrs.get("kernel_shape", [])]  # type: ignore[attr-defined]
    if len(kernel) != len(sizes):
        return None
    strides = [int(v) for v in attrs.get("strides", [1] * len(kernel))]  # type: ignore[attr-defined]
    dilations = [int(v) for v in attrs.get("dilations", [1] * len(kernel))]  # type: ignore[attr-defined]
    return kernel, strides, dilations


def _same_pool_sizes(sizes: Dims, attrs: dict[str, object], auto_pad: str) -> list[int | str] | None:
    """onnxruntime's SAME pool: pads for ceil(n/s) windows of the undilated kernel, then sizes the
    output with the dilated one, in C integer division (checked against onnxruntime on 1855 cases)."""
    window = _window(sizes, attrs)
    if window is None:
        return None
    kernel, strides, dilations = window
    ceil = bool(int(attrs.get("ceil_mode", 0)))  # type: ignore[call-overload]
    out: list[int | str] = []
    for i, (n, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        if n is None or s <= 0:
            out.append(f"unknown_pool_{i}")
            continue
        need = (-(-n // s) - 1) * s + k - n
        head = int((need + 1) / 2) if auto_pad == "SAME_LOWER" else int(need / 2)
        span = n + need - d * (k - 1) - 1
        count = (math.ceil(span / s) + 1) if ceil else (int(span / s) + 1)
        if ceil and count > 0 and (count - 1) * s >= n + head:
            count -= 1
        out.append(count if count > 0 else f"unknown_pool_{i}")
    return out


def _ceil_pool_sizes(sizes: Dims, attrs: dict[str, object], auto_pad: str) -> list[int | str] | None:
    window = _window(sizes, attrs)
    if window is None:
        return None
    kernel, strides, dilations = window
    pads = [0] * (2 * len(kernel)) if auto_pad == "VALID" else [int(v) for v in attrs.get("pads", [0] * (2 * len(kernel)))]  # type: ignore[attr-defined]
    out: list[int | str] = []
    for i, (n, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        if n is None or s <= 0:
            out.append(f"unknown_pool_{i}")
            continue
        begin, end = pads[i], pads[i + len(kernel)]
        count = -(-(n + begin + end - ((k - 1) * d + 1)) // s) + 1
        if (count - 1) * s >= n + begin:
            count -= 1  # the last window would start in the right padding
        out.append(count)
    return out


def _transposed_sizes(sizes: Dims, attrs: dict[str, object], auto_pad: str) -> list[int | str]:
    rank = len(sizes)
    given = [int(v) for v in attrs.get("output_shape", [])]  # type: ignore[attr-defined]
    if given:
        if len(given) in (rank, rank + 2):
            return list(given[-rank:])
        return [f"unknown_transposed_{i}" for i in range(rank)]
    strides = [int(v) for v in attrs.get("strides", [1] * rank)]  # type: ignore[attr-defined]
    dilations = [int(v) for v in attrs.get("dilations", [1] * rank)]  # type: ignore[attr-defined]
    adjust = [int(v) for v in attrs.get("output_padding", [0] * rank)]  # type: ignore[attr-defined]
    weight_kernel = attrs.get("kernel_shape")
    out: list[int | str] = []
    for i, (n, s) in enumerate(zip(sizes, strides)):
        if n is None or not isinstance(weight_kernel, (list, tuple)) or len(weight_kernel) != rank or len(dilations) != rank or len(adjust) != rank:
            out.append(f"unknown_transposed_{i}")
            continue
        # SAME asks for n * s; where even unpadded the output is shorter, onnxruntime gives that length.
        full = (n - 1) * s + adjust[i] + (int(weight_kernel[i]) - 1) * dilations[i] + 1
        out.append(min(n * s, full))
    return out
