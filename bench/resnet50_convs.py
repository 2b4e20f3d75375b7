"""Benchmark: certified operator-norm intervals of every conv of a ResNet-50-shaped stack at 224x224.

    python bench/resnet50_convs.py            # prints a markdown table; RESULTS.md records one run

The 53 convs of torchvision's ResNet-50 (v1.5: stride on the 3x3), with the input size each one
sees at 224x224, seeded Kaiming-normal weights. For each: lipcheck's interval (what `inspect`
computes for an ONNX export at that size), its relative width, the reshaped sigma (torch's
convention) and the size-free bound, and the time.
"""

from __future__ import annotations

import math
import os
import platform
import time

import torch

from lipcheck.model import ConvGeometry, Layer
from lipcheck.settings import Settings
from lipcheck.spectral.layer import estimate


def resnet50_convs() -> list[tuple[str, int, int, int, int, int]]:
    """(name, C_in, C_out, kernel, stride, input size) for every conv of ResNet-50 at 224."""
    convs = [("conv1", 3, 64, 7, 2, 224)]
    size, c_in = 56, 64
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 1 else 1
            prefix = f"layer{stage}.{block}"
            convs.append((f"{prefix}.conv1", c_in, width, 1, 1, size))
            convs.append((f"{prefix}.conv2", width, width, 3, stride, size))
            out_size = size // stride
            convs.append((f"{prefix}.conv3", width, 4 * width, 1, 1, out_size))
            if block == 0:
                convs.append((f"{prefix}.downsample", c_in, 4 * width, 1, stride, size))
            c_in, size = 4 * width, out_size
    return convs


def main() -> None:
    """Compute every interval and print one row per conv, then totals."""
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| conv | C_in→C_out | k/s | input | σ torch | size-free upper | lower | upper | width | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    settings = Settings()
    total, widths = 0.0, []
    for i, (name, c_in, c_out, k, stride, size) in enumerate(resnet50_convs()):
        g = torch.Generator().manual_seed(i)
        weight = torch.randn(c_out, c_in, k, k, generator=g) * math.sqrt(2.0 / (c_in * k * k))
        pad = k // 2
        geometry = ConvGeometry((stride, stride), (pad,) * 4, (1, 1), 1)
        free = Layer(name, "conv2d", tuple(weight.shape), "float32", lambda w=weight: w, geometry=geometry)
        sized = Layer(name, "conv2d", tuple(weight.shape), "float32", lambda w=weight: w, geometry=geometry, input_spatial=(size, size))
        start = time.perf_counter()
        est = estimate(sized, settings)
        elapsed = time.perf_counter() - start
        any_size = estimate(free, settings).lipschitz
        lip = est.lipschitz
        assert lip is not None and any_size is not None
        width = (lip.upper - lip.lower) / lip.upper if lip.lower is not None else math.inf
        widths.append(width)
        total += elapsed
        print(
            f"| {name} | {c_in}→{c_out} | {k}/{stride} | {size} | {est.sigma:.4f} | {any_size.upper:.4f} | "
            f"{lip.lower:.5f} | {lip.upper:.5f} | {width:.2e} | {elapsed:.2f} |",
            flush=True,
        )
    print(
        f"\n{len(widths)} convs in {total:.1f} s; widths: max {max(widths):.2e}, "
        f"median {sorted(widths)[len(widths) // 2]:.2e}; "
        f"{sum(w <= 0.01 for w in widths)}/{len(widths)} within 1%"
    )


if __name__ == "__main__":
    main()
