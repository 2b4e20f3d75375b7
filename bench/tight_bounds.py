"""Tight certified bounds and chain lower bounds against the product, ECLipsE-Fast and LipSDP-Neuron
solved by cvxpy with Clarabel, on random-weight ReLU nets of the usual benchmark shapes and on the
trained nets of the corpus (bench/corpus.json: an ACAS Xu network, ERAN's MNIST nets and its
convSmall CNN), on random-weight CNNs, whose convs join the chain as explicit operators, and on
random-weight ResNets, whose residual branches are certified per frequency;
prints markdown tables (append them to bench/RESULTS.md with the machine).

    python bench/tight_bounds.py [--sdp-max 2000] [--real-only | --resnet-only]
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lipcheck.graph.chains import FoundChain  # noqa: E402
from lipcheck.graph.lipsdp import Chain, certified_bound, eclipse_fast  # noqa: E402
from lipcheck.graph.lower_chain import certified_pairs, chain_directions  # noqa: E402
from lipcheck.graph.tight import budget_seconds  # noqa: E402

NETS = {
    "small 6-10-10-4": (6, 10, 10, 4),
    "MNIST-shaped 784-50-10": (784, 50, 10),
    "ACAS-shaped 5-50x6-5": (5, 50, 50, 50, 50, 50, 50, 5),
    "mnistfc-shaped 784-256-256-10": (784, 256, 256, 10),
    "ERAN-shaped 784-200x8-10": (784,) + (200,) * 8 + (10,),
}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdp-max", type=int, default=200, help="largest reduced LipSDP matrix handed to cvxpy")
    parser.add_argument("--real-only", action="store_true", help="only the trained nets of the corpus")
    parser.add_argument("--resnet-only", action="store_true", help="only the residual CNNs")
    args = parser.parse_args()
    if args.resnet_only:
        print(f"Machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        residual_cnns()
        return
    from test_tight import _lipsdp, _weights

    rows = []
    for name, sizes in ({} if args.real_only else NETS).items():
        ws = _weights(sizes, 0)
        g = torch.Generator().manual_seed(1)
        biases = [0.1 * torch.randn(w.shape[0], generator=g, dtype=torch.float64).numpy() for w in ws]
        chain = Chain(ws, [(0.0, 1.0)] * (len(ws) - 1))
        product = math.prod(float(torch.linalg.matrix_norm(w, 2)) for w in ws)
        closed = eclipse_fast(ws)
        budget = budget_seconds(FoundChain(ws, [], [], [], 1.0, None, False))
        start = time.perf_counter()
        result = certified_bound(chain, budget)
        seconds = time.perf_counter() - start
        reduced = min(sizes[0], sizes[1]) + sum(sizes[1:-1])
        sdp, sdp_s = (None, None)
        if reduced <= args.sdp_max:
            t0 = time.perf_counter()
            sdp = _lipsdp(ws, chain.slopes)
            sdp_s = time.perf_counter() - t0

        def f(x: np.ndarray, ws: list = ws, biases: list = biases) -> np.ndarray:  # type: ignore[type-arg]
            for k, w in enumerate(ws):
                x = w.numpy() @ x + biases[k]
                if k < len(ws) - 1:
                    x = np.maximum(x, 0.0)
            return x

        t0 = time.perf_counter()
        found = chain_directions(ws, biases, [torch.relu] * (len(ws) - 1), 0, 0.5 * budget, kinked=[True] * (len(ws) - 1))
        lower = certified_pairs(lambda x, y: float(np.linalg.norm(f(x) - f(y)) / np.linalg.norm(x - y)), found)
        lower_s = time.perf_counter() - t0
        assert result is not None
        rows.append(
            f"| {name} | {product:.4g} | {closed:.4g} | {sdp:.6g} ({sdp_s:.1f} s) |" if sdp is not None else f"| {name} | {product:.4g} | {closed:.4g} | – |"
        )
        rows[-1] += (
            f" {result.bound:.6g} | {seconds:.1f} s | {closed / result.bound:.2f}× |"
            + (f" {result.bound / sdp:.6f} |" if sdp else " – |")
            + f" {lower:.5g} ({lower_s:.1f} s) |"
        )
        print(rows[-1], flush=True)
    print()
    print(f"Machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| net (random weights, seed 0, ReLU) | product | ECLipsE-Fast | LipSDP (Clarabel) | tight (certified) | time | "
        "ECLipsE/tight | tight/SDP | lower (time) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print()
    cnns()
    print()
    residual_cnns()
    print()
    real_nets(args.sdp_max, _lipsdp)


def cnns() -> None:
    """Random-weight CNNs at 16 and 32 px (torch's default init), exported to ONNX and inspected in
    process: the graph bound, the tight bound over explicit conv operators, the lower bound, the gap."""
    import tempfile
    import warnings

    from torch import nn

    from lipcheck.api import inspect

    nets = {
        "CNN 3x16x16: conv8 / conv16 s2 / depthwise16 / fc10": (
            (1, 3, 16, 16),
            lambda: nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, 16, 3, 2, 1),
                nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1, groups=16),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(1024, 10),
            ),
        ),
        "CNN 3x32x32: conv8 s2 / conv16 s2 / fc100 / fc10": (
            (1, 3, 32, 32),
            lambda: nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1),
                nn.ReLU(),
                nn.Conv2d(8, 16, 3, 2, 1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(1024, 100),
                nn.ReLU(),
                nn.Linear(100, 10),
            ),
        ),
    }
    print("| CNN (random weights, seed 0, ONNX) | product | graph | tight (certified) | lower | graph/lower | tight/lower | inspect time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as root:
        for name, (shape, make) in nets.items():
            torch.manual_seed(0)
            path = Path(root) / "cnn.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(make().eval(), torch.zeros(shape), str(path), dynamo=False, opset_version=17)
            start = time.perf_counter()
            bound = inspect(path).bound
            took = time.perf_counter() - start
            assert bound.graph is not None and bound.upper is not None and bound.lower
            print(
                f"| {name} | {bound.product:.4g} | {bound.graph:.4g} | {bound.tight:.4g} | {bound.lower:.4g} | "
                f"{bound.graph / bound.lower:.1f} | {bound.upper / bound.lower:.1f} | {took:.1f} s |",
                flush=True,
            )


def residual_cnns() -> None:
    """Random-weight ResNets (torch's default init, batch norms folded by the exporter) at 32 and 64 px:
    the graph bound with each residual branch's product, then with the branches' conv chains
    certified per frequency (--effort 1: closed-form multipliers; 2: optimized), the lower bound, the gap."""
    import tempfile
    from unittest import mock

    from conv_speed import Basic, export_onnx, resnet  # type: ignore[import-not-found]
    from torch import nn

    from lipcheck.api import inspect
    from lipcheck.graph import segments
    from lipcheck.settings import Settings

    class Cifar(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            stages: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU()]
            c_in = 16
            for width, stride in ((16, 1), (32, 2), (64, 2)):
                stages.append(Basic(c_in, width, stride))
                c_in = width
            self.net = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    nets = {
        "ResNet (3 basic blocks, 16-64 ch) 3x32x32": ((1, 3, 32, 32), Cifar),
        "ResNet-18-shaped 3x64x64": ((1, 3, 64, 64), lambda: resnet(Basic, [2, 2, 2, 2], 1)),
    }
    print(
        "| ResNet (random weights, seed 0, ONNX) | graph, branches as products | graph, conv chains (effort 1) | time | graph (effort 2) | time | lower | gap (effort 2) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as root:
        for name, (shape, make) in nets.items():
            torch.manual_seed(0)
            path = export_onnx(make().eval(), shape, Path(root) / "resnet.onnx")
            with mock.patch.object(segments, "find_conv_runs", lambda model, reader=None: []):
                plain = inspect(path, settings=Settings(lower=False)).bound
            timed = []
            for effort in (1.0, 2.0):
                start = time.perf_counter()
                bound = inspect(path, settings=Settings(effort=effort)).bound
                timed.append((bound, time.perf_counter() - start))
            (one, t1), (two, t2) = timed
            assert plain.graph and one.graph and two.graph and two.lower
            print(
                f"| {name} | {plain.graph:.4g} | {one.graph:.4g} | {t1:.1f} s | {two.graph:.4g} | {t2:.1f} s | {two.lower:.3g} | {two.graph / two.lower:.3g} |",
                flush=True,
            )


REAL = ["ACASXU_run2a_2_2_batch_2000.onnx", "mnist_relu_3_50.onnx", "mnist_300_200_100.onnx", "convSmallRELU__Point.onnx"]


def real_nets(sdp_max: int, lipsdp: object) -> None:
    """`lipcheck inspect` (in process) of the corpus' trained chains against the same references."""
    from bench.fetch_corpus import fetch
    from lipcheck.api import inspect
    from lipcheck.formats import load
    from lipcheck.graph.chains import find_chain

    paths = {p.name: p for p in fetch(Path(__file__).resolve().parent / ".corpus")}
    print("| trained net (corpus) | product | graph | ECLipsE-Fast | LipSDP (Clarabel) | lipcheck bound (method) | inspect time | ECLipsE/bound | lower |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in REAL:
        chain, why = find_chain(load(paths[name]))
        if chain is None:
            print(f"| {name} | not a chain: {why} |")
            continue
        closed = eclipse_fast(chain.weights) * chain.scale
        sizes = [chain.weights[0].shape[1]] + [w.shape[0] for w in chain.weights[:-1]]
        sdp = None
        if min(sizes[0], sizes[1]) + sum(sizes[1:]) <= sdp_max:
            t0 = time.perf_counter()
            sdp = (lipsdp(chain.weights, chain.slopes) * chain.scale, time.perf_counter() - t0)  # type: ignore[operator]
        start = time.perf_counter()
        report = inspect(paths[name])
        took = time.perf_counter() - start
        bound = report.bound
        assert bound.upper is not None
        sdp_text = f"{sdp[0]:.6g} ({sdp[1]:.0f} s)" if sdp else "–"
        print(
            f"| {name} ({'-'.join(map(str, sizes + [chain.weights[-1].shape[0]]))}) | {bound.product:.4g} | {bound.graph:.4g} | {closed:.4g} | {sdp_text} | "
            f"{bound.upper:.6g} ({bound.method}) | {took:.1f} s | {closed / bound.upper:.1f}× | {bound.lower:.5g} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
