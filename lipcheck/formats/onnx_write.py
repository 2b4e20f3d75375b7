"""Rewrite an ONNX file's layer weights (initializers and Constant nodes, in subgraphs too).

A stored tensor used by several layers is divided once, by the largest divisor asked for. External
data is written afresh beside the output (``OUT.data``); the model and its data are written in a
temporary folder next to the output and renamed into place, data first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, TensorProto, numpy_helper

from lipcheck.errors import LipcheckError
from lipcheck.model import WeightEdit


def _tensors(graph: GraphProto, path: str, out: dict[tuple[str, str], TensorProto]) -> None:
    """Index every stored tensor by (graph path, name), with the paths the loader uses."""
    for init in graph.initializer:
        out[(path, init.name)] = init
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    out[(path, node.output[0])] = attr.t
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                label = f"{node.name or f'{node.op_type}_{index}'}.{attr.name}"
                _tensors(attr.g, f"{path}/{label}" if path else label, out)


def _find(index: dict[tuple[str, str], TensorProto], scope: str, name: str) -> tuple[str, TensorProto]:
    path = scope
    while True:
        if (path, name) in index:
            return path, index[(path, name)]
        if not path:
            raise LipcheckError(f"cannot find the stored tensor '{name}' to rewrite; please report this model's layout")
        path = path.rpartition("/")[0]


def save(src: Path, dst: Path, edits: list[WeightEdit]) -> None:
    """Write ``src`` with the edits applied to ``dst`` (and ``dst.data`` when the source used external data)."""
    proto = onnx.load(str(src), load_external_data=False)
    index: dict[tuple[str, str], TensorProto] = {}
    _tensors(proto.graph, "", index)
    external = any(t.data_location == TensorProto.EXTERNAL for t in index.values())
    if external:
        onnx.load_external_data_for_model(proto, str(src.parent))
    divisors: dict[tuple[str, str], float] = {}
    for edit in edits:
        if edit.divisor is None:
            continue
        key = _find(index, edit.scope, edit.name)[0], edit.name
        divisors[key] = max(divisors.get(key, 0.0), edit.divisor)
    for key, divisor in divisors.items():
        tensor = index[key]
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind not in "f" and array.dtype.name not in ("bfloat16",):
            raise LipcheckError(f"weight '{key[1]}' is stored as {array.dtype.name} (quantized); lipcheck cannot "
                                "rescale it exactly: exclude it with --layers or normalize the float model")
        scaled = (array.astype(np.float64) / divisor).astype(array.dtype)
        tensor.CopyFrom(numpy_helper.from_array(scaled, tensor.name))
    folder = dst.parent
    if not folder.is_dir():
        raise LipcheckError(f"cannot write {dst}: folder {folder} does not exist; create it first")
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=folder))
    try:
        data_name = f"{dst.name}.data"
        if external:
            onnx.save(proto, str(work / dst.name), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=data_name, size_threshold=0)
        else:
            onnx.save(proto, str(work / dst.name))
        for written in work.iterdir():
            with open(written, "rb") as handle:
                os.fsync(handle.fileno())
        if external:
            os.replace(work / data_name, folder / data_name)
        os.replace(work / dst.name, dst)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
