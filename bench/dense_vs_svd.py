"""Benchmark: lipcheck's certified dense intervals vs an exact SVD, on the same layers, in one run.

    python bench/dense_vs_svd.py            # prints a markdown table; RESULTS.md records one run

Layers: the distinct dense shapes of BERT-base (768x768, 3072x768, 768x3072) and of a
ResNet-50 head (1000x2048), seeded random weights scaled like a trained init.
"""

from __future__ import annotations

import os
import platform
import time

import torch

from lipcheck.spectral.dense import certify

SHAPES = [(768, 768), (3072, 768), (768, 3072), (1000, 2048), (512, 4608)]


def main() -> None:
    """Time both methods per shape and report the certified interval's position around the SVD value."""
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| shape | exact SVD s | lipcheck s | iters | certificate steps | (σ−exact)/exact | (upper−exact)/exact |")
    print("|---|---|---|---|---|---|---|")
    for i, shape in enumerate(SHAPES):
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(i)) / shape[1] ** 0.5
        t = time.perf_counter()
        exact = float(torch.linalg.matrix_norm(w.to(torch.float64), ord=2))
        t_svd = time.perf_counter() - t
        t = time.perf_counter()
        est = certify(w, tol=1e-6, max_iter=10_000, seed=0)
        t_lc = time.perf_counter() - t
        print(
            f"| {shape[0]}×{shape[1]} | {t_svd:.3f} | {t_lc:.3f} | {est.iterations} | {est.certificate_steps} | "
            f"{(est.sigma - exact) / exact:.2e} | {(est.upper - exact) / exact:.2e} |"
        )


if __name__ == "__main__":
    main()
