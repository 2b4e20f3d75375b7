"""Rewrite an ONNX file's layer weights (initializers and Constant nodes, in subgraphs too).

A stored tensor used by several layers is divided once, by the largest divisor asked for. Only
the rewritten weights change: every other tensor keeps its bytes and its place, inline tensors
stay inline and external ones stay external. External data is written afresh into one file
beside the output (``OUT.data``). The model and its data are written in a temporary folder next
to the output, loaded and run once in onnxruntime, and only then renamed into place, data first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, TensorProto, numpy_helper

from lipcheck.atomic import staged
from lipcheck.errors import CorruptFileError, LipcheckError, RefusedFileError, first_line
from lipcheck.formats.edit import divided_array
from lipcheck.formats.onnx_consts import all_tensors
from lipcheck.formats.onnx_labels import node_labels
from lipcheck.model import WeightEdit

_CHUNK = 16 << 20
# onnxruntime's input type names and the arrays that feed them.
_FEED_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def _tensors(graph: GraphProto, path: str, out: dict[tuple[str, str], TensorProto]) -> None:
    """Index every stored tensor by (graph path, name), with the paths the loader uses."""
    for init in graph.initializer:
        out[(path, init.name)] = init
    labels = node_labels(graph.node)
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    out[(path, node.output[0])] = attr.t
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                label = f"{labels[index]}.{attr.name}"
                _tensors(attr.g, f"{path}/{label}" if path else label, out)


def _find(index: dict[tuple[str, str], TensorProto], scope: str, name: str) -> tuple[str, TensorProto]:
    path = scope
    while True:
        if (path, name) in index:
            return path, index[(path, name)]
        if not path:
            if name.endswith(("[forward]", "[reverse]")):
                raise LipcheckError(
                    f"'{name}' is one direction of a bidirectional recurrent layer, stored with the other in one tensor; "
                    "lipcheck cannot rewrite one direction yet: leave the layer out with --layers"
                )
            raise LipcheckError(f"cannot find the stored tensor '{name}' to rewrite; please report this model's layout")
        path = path.rpartition("/")[0]


def data_path(dst: Path) -> Path:
    """Where the external data of an output written to ``dst`` goes."""
    return dst.with_name(f"{dst.name}.data")


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def _source(tensor: TensorProto, base: str) -> tuple[str, int, int]:
    """Where an external tensor's bytes lie: (file inside ``base``, offset, length)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    target = os.path.realpath(os.path.join(base, location))
    if not location or os.path.isabs(location) or os.path.commonpath([base, target]) != base:
        raise RefusedFileError(
            f"tensor '{tensor.name}' points to external data '{location}' outside the model's "
            "folder; lipcheck only reads external data beside the model: move the data file next to it"
        )
    try:
        size = os.path.getsize(target)
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else size - offset
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"cannot read the external data of tensor '{tensor.name}' ({exc}); copy the model's data file next to it") from None
    if offset < 0 or length < 0 or offset + length > size:
        raise CorruptFileError(f"external data of tensor '{tensor.name}' ends past its file; the data file is truncated")
    return target, offset, length


def _inline_copy(tensor: TensorProto, base: str) -> TensorProto:
    """A copy of ``tensor`` holding its bytes inline."""
    copy = TensorProto()
    copy.CopyFrom(tensor)
    if _is_external(tensor):
        target, offset, length = _source(tensor, base)
        with open(target, "rb") as handle:
            handle.seek(offset)
            copy.raw_data = handle.read(length)
        copy.data_location = TensorProto.DEFAULT
        del copy.external_data[:]
    return copy


def _point_at(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` refer to ``length`` bytes at ``offset`` of ``location``."""
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _copy_range(source: str, offset: int, length: int, sink: BinaryIO) -> None:
    with open(source, "rb") as handle:
        handle.seek(offset)
        left = length
        while left:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                raise CorruptFileError(f"external data file {source} shrank while it was copied; try again")
            sink.write(chunk)
            left -= len(chunk)


def run_error(path: Path) -> str | None:
    """Load ``path`` in onnxruntime and run it once on zeros; the error's first line, or None when it ran.

    Unknown dimensions are fed as 1. A model whose inputs cannot be built as arrays (sequences,
    strings, bfloat16) is only loaded.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds: dict[str, np.ndarray] = {}
        for arg in session.get_inputs():
            dtype = _FEED_DTYPES.get(arg.type)
            if dtype is None:
                return None
            shape = [dim if isinstance(dim, int) and dim >= 0 else 1 for dim in arg.shape]
            feeds[arg.name] = np.zeros(shape, dtype)
        session.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types for every kind of failure
        return first_line(exc, 200)
    return None


def _input_files(src: Path, tensors: list[TensorProto]) -> list[str]:
    base = os.path.realpath(src.parent)
    return [str(src)] + sorted({_source(t, base)[0] for t in tensors if _is_external(t)})


def save(src: Path, dst: Path, edits: list[WeightEdit], mode: int | None = None) -> list[str]:
    """Write ``src`` with the edits applied to ``dst`` (and ``dst.data`` when the source used external data).

    The written files get ``mode`` (default: what the umask gives a new file). Returns warnings
    for the user; raises a LipcheckError, and writes nothing, when onnxruntime cannot run the
    output although it runs the input.
    """
    proto = onnx.load(str(src), load_external_data=False)
    base = os.path.realpath(src.parent)
    index: dict[tuple[str, str], TensorProto] = {}
    _tensors(proto.graph, "", index)
    divisors: dict[tuple[str, str], float] = {}
    for edit in edits:
        if edit.divisor is None:
            continue
        key = _find(index, edit.scope, edit.name)[0], edit.name
        divisors[key] = max(divisors.get(key, 0.0), edit.divisor)

    folder = dst.parent
    if not folder.is_dir():
        raise LipcheckError(f"cannot write {dst}: folder {folder} does not exist; create it first")
    data_target = data_path(dst)
    data_name = data_target.name
    stored = list(all_tensors(proto.graph))
    if data_target.is_dir():
        raise LipcheckError(f"cannot write {dst}: its external data goes to {data_target}, which is a folder; choose another output name")
    same_model = dst.exists() and os.path.samefile(src, dst)
    if data_target.exists() and not same_model and any(os.path.samefile(data_target, used) for used in _input_files(src, stored)):
        raise LipcheckError(f"the output's data file {data_target} is one of the input's files; choose another output name or folder")
    if dst.exists() and not same_model and any(os.path.samefile(dst, used) for used in _input_files(src, stored)):
        raise LipcheckError(f"the output {dst} is one of the input's external data files; choose another output name or folder")

    # Bytes of external tensors stay where they are read from until the data file is written.
    rewritten: dict[tuple[str, str], bool] = {}
    for key, divisor in divisors.items():
        tensor = index[key]
        array = numpy_helper.to_array(_inline_copy(tensor, base))
        if array.dtype.kind not in "f" and array.dtype.name not in ("bfloat16",):
            raise LipcheckError(
                f"weight '{key[1]}' is stored as {array.dtype.name} (quantized); lipcheck cannot "
                "rescale it exactly: exclude it with --layers or normalize the float model"
            )
        scaled = divided_array(array, divisor)
        rewritten[key] = _is_external(tensor)
        tensor.CopyFrom(numpy_helper.from_array(scaled, tensor.name))

    warnings: list[str] = []
    with staged(data_target, dst, mode=mode) as work:
        external = any(_is_external(t) for t in stored) or any(rewritten.values())
        if external:
            with open(work / data_name, "wb") as sink:
                for tensor in stored:
                    if _is_external(tensor):
                        source, offset, length = _source(tensor, base)
                        start = sink.tell()
                        _copy_range(source, offset, length, sink)
                        _point_at(tensor, data_name, start, length)
                for key, was_external in rewritten.items():
                    if was_external:
                        tensor = index[key]
                        start = sink.tell()
                        sink.write(tensor.raw_data)
                        _point_at(tensor, data_name, start, sink.tell() - start)
        onnx.save(proto, str(work / dst.name))
        problem = run_error(work / dst.name)
        if problem is not None:
            baseline = run_error(src)
            if baseline is None:
                raise LipcheckError(f"the normalized model would not run in onnxruntime ({problem}); nothing was written to {dst}: please report this model")
            warnings.append(f"onnxruntime cannot run the input either ({baseline}); the output was written without that check")
    return warnings
