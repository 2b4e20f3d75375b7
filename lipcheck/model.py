"""The neutral model every loader produces: layers with their weights, and skipped tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lipcheck.graph.ir import Graph

LINEAR_OPS = ("linear", "matmul", "gemm")
CONV_OPS = ("conv1d", "conv2d", "conv3d")
CONV_TRANSPOSE_OPS = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
WEIGHTS_ONLY_FORMATS = ("state_dict", "checkpoint", "safetensors")  # files with no graph: layers in file order


@dataclass(frozen=True)
class Interval:
    """A certified interval for a layer's Lipschitz constant; ``lower`` may be unknown."""

    lower: float | None
    upper: float
    method: str


@dataclass(frozen=True)
class ConvGeometry:
    """Hyper-parameters of a convolution, where the file records them."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]  # begin pads then end pads, ONNX order: (b1, b2, ..., e1, e2, ...)
    dilation: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"  # ONNX: NOTSET | SAME_UPPER | SAME_LOWER | VALID
    padding_mode: str = "zeros"  # torch: zeros | reflect | replicate | circular


@dataclass
class Layer:
    """One linear map of the network: a weight tensor and how the network applies it.

    ``load`` returns the weight in its canonical layout: (out, in) for linear, gemm and matmul
    (oriented as y = W x); as stored for convolutions, (C_out, C_in/g, *k) for Conv and
    (C_in, C_out/g, *k) for ConvTranspose.
    """

    name: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    load: Callable[[], torch.Tensor]
    scope: str = ""
    geometry: ConvGeometry | None = None
    warm_u: Callable[[], torch.Tensor] | None = None
    note: str | None = None
    input_spatial: tuple[int, ...] | None = None  # a conv's input height/width/... where the file fixes it
    node: str | None = None  # the graph node that applies this weight (ONNX), for the graph bound

    @property
    def is_conv(self) -> bool:
        """Whether the layer is a (transposed) convolution."""
        return self.op in CONV_OPS or self.op in CONV_TRANSPOSE_OPS

    @property
    def is_transposed(self) -> bool:
        """Whether the layer is a transposed convolution."""
        return self.op in CONV_TRANSPOSE_OPS

    @property
    def display_name(self) -> str:
        """The name with its subgraph scope, unique within a model."""
        return f"{self.scope}/{self.name}" if self.scope else self.name


@dataclass(frozen=True)
class Skipped:
    """A 2-D or larger tensor that is not treated as a layer, and why."""

    name: str
    shape: tuple[int, ...]
    reason: str


@dataclass
class Model:
    """Everything a loader found in one file."""

    path: str
    format: str
    layers: list[Layer] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    graph: Graph | None = None  # the computation graph, where the file has one (lipcheck.graph)
    no_graph: str = ""  # why a file with a graph gives none to walk
    input_shapes: tuple[tuple[int, ...], ...] | None = None  # the inputs' shapes, where the file fixes every one
    runnable: Any = None  # a torch module to differentiate for the empirical lower bound (TorchScript, API)
    # The parsed file, where later steps may take it instead of reading the file again (an ONNX
    # ModelProto that holds every tensor itself); None otherwise.
    source: Any = None


@dataclass(frozen=True)
class WeightEdit:
    """How normalize changes one stored weight: divide it, or (spectral-norm layers) set u and v."""

    name: str
    scope: str = ""
    divisor: float | None = None
    vectors: tuple[torch.Tensor, torch.Tensor] | None = None
