"""Seeded random models with the layer shapes of BERT-base, ResNet-50 and a >2 GB transformer.

Weights are Gaussian with std 1/sqrt(fan_in) (a trained-init scale), float32, written as
safetensors with the tensor names their reference implementations use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file


def _randn(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    return torch.randn(*shape, generator=generator) / max(1, fan_in) ** 0.5


def bert_base() -> Iterator[tuple[str, tuple[int, ...]]]:
    """Names and shapes of BERT-base (uncased): 12 layers, 768 hidden, 3072 intermediate, 110M parameters."""
    yield "bert.embeddings.word_embeddings.weight", (30522, 768)
    yield "bert.embeddings.position_embeddings.weight", (512, 768)
    yield "bert.embeddings.token_type_embeddings.weight", (2, 768)
    yield "bert.embeddings.LayerNorm.weight", (768,)
    yield "bert.embeddings.LayerNorm.bias", (768,)
    for i in range(12):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            yield p + name + ".weight", (768, 768)
            yield p + name + ".bias", (768,)
        yield p + "attention.output.LayerNorm.weight", (768,)
        yield p + "attention.output.LayerNorm.bias", (768,)
        yield p + "intermediate.dense.weight", (3072, 768)
        yield p + "intermediate.dense.bias", (3072,)
        yield p + "output.dense.weight", (768, 3072)
        yield p + "output.dense.bias", (768,)
        yield p + "output.LayerNorm.weight", (768,)
        yield p + "output.LayerNorm.bias", (768,)
    yield "bert.pooler.dense.weight", (768, 768)
    yield "bert.pooler.dense.bias", (768,)


def resnet50() -> Iterator[tuple[str, tuple[int, ...]]]:
    """Names and shapes of torchvision's ResNet-50: 53 convs, 53 batch norms and the fc layer (25.6M)."""

    def bn(name: str, c: int) -> Iterator[tuple[str, tuple[int, ...]]]:
        for part in ("weight", "bias", "running_mean", "running_var"):
            yield f"{name}.{part}", (c,)

    yield "conv1.weight", (64, 3, 7, 7)
    yield from bn("bn1", 64)
    in_c = 64
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}."
            yield p + "conv1.weight", (width, in_c, 1, 1)
            yield from bn(p + "bn1", width)
            yield p + "conv2.weight", (width, width, 3, 3)
            yield from bn(p + "bn2", width)
            yield p + "conv3.weight", (width * 4, width, 1, 1)
            yield from bn(p + "bn3", width * 4)
            if b == 0:
                yield p + "downsample.0.weight", (width * 4, in_c, 1, 1)
                yield from bn(p + "downsample.1", width * 4)
            in_c = width * 4
    yield "fc.weight", (1000, 2048)
    yield "fc.bias", (1000,)


def big_transformer(layers: int = 12, hidden: int = 2048, ffn: int = 8192) -> Iterator[tuple[str, tuple[int, ...]]]:
    """A decoder stack large enough for a >2 GB float32 file (604M parameters at the defaults)."""
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"):
            yield p + name + ".weight", (hidden, hidden)
        yield p + "mlp.up_proj.weight", (ffn, hidden)
        yield p + "mlp.down_proj.weight", (hidden, ffn)
        yield p + "input_layernorm.weight", (hidden,)


MODELS = {"bert-base": bert_base, "resnet50": resnet50, "big-transformer": big_transformer}


def write(model: str, path: Path, seed: int = 0) -> Path:
    """Write the named model's seeded weights to ``path`` as safetensors, unless it is already there."""
    if path.exists():
        return path
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in MODELS[model]():
        if name.endswith(("running_var", "LayerNorm.weight", "layernorm.weight")):
            tensors[name] = torch.ones(shape)
        elif len(shape) == 1:
            tensors[name] = torch.zeros(shape)
        else:
            tensors[name] = _randn(shape, generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.rename(path)
    return path
