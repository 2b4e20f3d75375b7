"""ATen operator names mapped to the ONNX op names the graph walk knows, shared by the torch front ends.

Keys are schema names (``aten::relu``) as TorchScript node kinds and ``OpOverload._schema.name`` spell
them; ops whose arguments need reading (convolutions, pools, batch norm) are handled by each front end.
"""

from __future__ import annotations

SIMPLE: dict[str, str] = {
    "aten::relu": "Relu",
    "aten::relu_": "Relu",
    "aten::sigmoid": "Sigmoid",
    "aten::tanh": "Tanh",
    "aten::softplus": "TorchSoftplus",  # returns x above its threshold: a jump (see the rule)
    "aten::selu": "Selu",
    "aten::gelu": "Gelu",
    "aten::silu": "Silu",
    "aten::hardswish": "HardSwish",
    "aten::mish": "Mish",
    "aten::softmax": "Softmax",
    "aten::layer_norm": "LayerNormalization",
    "aten::group_norm": "GroupNormalization",
    "aten::instance_norm": "InstanceNormalization",
    "aten::exp": "Exp",
    "aten::log": "Log",
    "aten::sqrt": "Sqrt",
    "aten::abs": "Abs",
    "aten::neg": "Neg",
    "aten::flatten": "Flatten",
    "aten::view": "Reshape",
    "aten::reshape": "Reshape",
    "aten::permute": "Transpose",
    "aten::transpose": "Transpose",
    "aten::contiguous": "Identity",
    "aten::squeeze": "Squeeze",
    "aten::unsqueeze": "Unsqueeze",
    "aten::dropout": "Dropout",
    "aten::slice": "Slice",
    "aten::select": "Slice",
    "aten::size": "Shape",
    "aten::clamp": "Clip",
    "aten::hardtanh": "Clip",
    "aten::relu6": "Clip",
    "aten::matmul": "MatMul",
    "aten::mm": "MatMul",
    "aten::bmm": "MatMul",
    "aten::mul": "Mul",
    "aten::mul_": "Mul",
    "aten::div": "Div",
    "aten::div_": "Div",
    "aten::max_pool1d": "MaxPool",
    "aten::max_pool2d": "MaxPool",
    "aten::max_pool3d": "MaxPool",
    "aten::avg_pool1d": "AveragePool",
    "aten::avg_pool2d": "AveragePool",
    "aten::avg_pool3d": "AveragePool",
    "aten::batch_norm": "BatchNormalization",
    "aten::linear": "Gemm",
    "aten::cat": "Concat",
    "aten::add": "Add",
    "aten::add_": "Add",
    "aten::sub": "Sub",
    "aten::sub_": "Sub",
    "aten::leaky_relu": "LeakyRelu",
    "aten::elu": "Elu",
    "aten::hardsigmoid": "HardSigmoid",
    "aten::mean": "ReduceMean",
    "aten::adaptive_avg_pool1d": "AdaptiveAveragePool",
    "aten::adaptive_avg_pool2d": "AdaptiveAveragePool",
    "aten::adaptive_avg_pool3d": "AdaptiveAveragePool",
    "aten::adaptive_max_pool2d": "AdaptiveMaxPool",
    "aten::hardswish_": "HardSwish",
    "aten::relu6_": "Clip",
    "aten::lstm": "LSTM",
    "aten::gru": "GRU",
    "aten::rnn_tanh": "RNN",
    "aten::rnn_relu": "RNN",
    "aten::hardtanh_": "Clip",
    "aten::silu_": "Silu",
    "aten::sigmoid_": "Sigmoid",
    "aten::tanh_": "Tanh",
}

# aten ops (in-place forms too) that draw random numbers: a graph holding one computes another function on every call.
_RANDOM_OPS = frozenset(
    "bernoulli rand rand_like randn randn_like randint randint_like normal uniform multinomial randperm exponential geometric cauchy log_normal poisson".split()
)
_DROPOUTS = frozenset({"aten::dropout", "aten::feature_dropout", "aten::alpha_dropout", "aten::native_dropout"})


def draws_random(kind: str, train: object) -> bool:
    """Whether an aten call draws random numbers: a dropout whose ``train`` argument is not the
    constant False, or a sampling op."""
    if kind in _DROPOUTS:
        return train is not False
    return kind.startswith("aten::") and kind.split("::")[-1].rstrip("_") in _RANDOM_OPS
