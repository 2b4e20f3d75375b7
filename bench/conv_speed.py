"""Benchmark: conv operator-norm intervals at real resolution, whole `lipcheck inspect` runs side by side.

    python bench/conv_speed.py            # prints markdown; RESULTS.md records one run
    python bench/conv_speed.py --quick    # the ResNet-50 row only
    python bench/conv_speed.py --device cuda   # every lipcheck run with --device cuda

Builds, with torch.nn and seeded random weights (batch norms with random statistics):
- a ResNet-50-shaped network (v1.5: stride on the 3x3), exported to ONNX at 1x3x224x224;
- a one-conv model at the same input, for the fixed start-up cost of the same command;
- a small FPN-style detector (strided backbone, lateral 1x1 convs, 3x3 heads) at 1x3x800x608;
- a ResNet-18-shaped network at 64 px, as ONNX and as TorchScript with --input-shape;
- the real PicoDet layout detector from a PyPI wheel (800x608), where bench/fetch_corpus.py has fetched it.

Each model is inspected by the command line in a fresh process (JSON report), timed wall to
wall. The ResNet-50's onnxruntime forward pass is timed in this process, so the cost beyond
start-up is also given in forward passes of the same model on the same machine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.1, 0.1)
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return bn


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 reduce, 3x3 (strided), 1x1 expand, with a projection where shapes change."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False),
            _bn(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            _bn(width),
            nn.ReLU(),
            nn.Conv2d(width, 4 * width, 1, bias=False),
            _bn(4 * width),
        )
        self.skip = nn.Sequential(nn.Conv2d(c_in, 4 * width, 1, stride, bias=False), _bn(4 * width)) if stride != 1 or c_in != 4 * width else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class Basic(nn.Module):
    """ResNet-18's block: two 3x3 convs."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 3, stride, 1, bias=False), _bn(width), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1, bias=False), _bn(width)
        )
        self.skip = nn.Sequential(nn.Conv2d(c_in, width, 1, stride, bias=False), _bn(width)) if stride != 1 or c_in != width else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet(block: type, depths: list[int], expansion: int) -> nn.Module:
    """A torchvision-shaped ResNet with the given block and stage depths."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), _bn(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for stage, (width, depth) in enumerate(zip([64, 128, 256, 512], depths)):
        for i in range(depth):
            layers.append(block(c_in, width, 2 if i == 0 and stage > 0 else 1))
            c_in = width * expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1000)]
    return nn.Sequential(*layers)


class Detector(nn.Module):
    """A small FPN-style detector: strided backbone, lateral 1x1s, top-down sums, 3x3 heads."""

    def __init__(self) -> None:
        super().__init__()
        chans = [16, 32, 64, 128, 256]
        stages, c_in = [], 3
        for c in chans:
            stages.append(nn.Sequential(nn.Conv2d(c_in, c, 3, 2, 1, bias=False), _bn(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1, bias=False), _bn(c), nn.ReLU()))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList(nn.Conv2d(c, 64, 1) for c in chans[2:])
        self.smooth = nn.ModuleList(nn.Conv2d(64, 64, 3, 1, 1) for _ in chans[2:])
        self.head = nn.ModuleList(nn.Conv2d(64, 18, 3, 1, 1) for _ in chans[2:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        lat = [conv(f) for conv, f in zip(self.lateral, feats[2:])]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + nn.functional.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [h(s(p)) for h, s, p in zip(self.head, self.smooth, lat)]


def export_onnx(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """Export in eval mode with the TorchScript-based exporter (batch norms folded into the convs)."""
    torch.onnx.export(model.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17)
    return path


DEVICE = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"


def inspect(path: Path, *extra: str) -> tuple[float, dict]:
    """Run `lipcheck inspect` in a fresh process (on DEVICE); return (wall seconds, JSON report)."""
    out = path.with_suffix(".json")
    start = time.perf_counter()
    command = [sys.executable, "-m", "lipcheck", "inspect", str(path), "-f", "json", "-o", str(out), "--device", DEVICE, *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    wall = time.perf_counter() - start
    return wall, json.loads(out.read_text())


def ort_forward_seconds(path: Path, shape: tuple[int, ...], runs: int = 10) -> float:
    """Median wall time of one onnxruntime forward pass (default threads)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_rows(report: dict) -> list[tuple[str, int, float, bool, int]]:
    """(name, smallest input side, relative width, converged, iterations) of each sized conv."""
    rows = []
    for layer in report["layers"]:
        lip = layer.get("lipschitz")
        size = layer.get("input_size")
        if not size or not lip or lip.get("lower") is None or len(layer["shape"]) < 3:
            continue
        width = (lip["upper"] - lip["lower"]) / lip["upper"]
        rows.append((layer["name"], min(size), width, bool(layer["converged"]), int(layer["iterations"])))
    return rows


def cpu_name() -> str:
    """The CPU's model name from lscpu (empty where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    """Build the models, run every contender, print a markdown section."""
    quick = "--quick" in sys.argv
    torch.manual_seed(0)
    print(f"- machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; load average at start {os.getloadavg()[0]:.1f}")
    if DEVICE != "cpu":
        print(f"- lipcheck runs with --device {DEVICE}: {torch.cuda.get_device_name(torch.device(DEVICE))}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        r50 = export_onnx(resnet(Bottleneck, [3, 4, 6, 3], 4), (1, 3, 224, 224), root / "resnet50.onnx")
        one = export_onnx(nn.Sequential(nn.Conv2d(3, 8, 1)), (1, 3, 224, 224), root / "one.onnx")
        forward = ort_forward_seconds(r50, (1, 3, 224, 224))
        # The median of three: the start-up's empirical lower-bound search sometimes skips its ascent
        # (a first forward pass timed slow), which moves a single run by most of a second.
        base = statistics.median(inspect(one)[0] for _ in range(3))
        runs = [inspect(r50) for _ in range(1 if quick else 3)]
        wall, report = sorted(runs, key=lambda run: run[0])[len(runs) // 2]  # the median run
        rows = conv_rows(report)
        beyond = wall - base
        print(f"- onnxruntime forward pass of the ResNet-50 at 224: {forward * 1e3:.1f} ms (median of 10)")
        print(f"- one-conv model, same command (fixed start-up, median of 3): {base:.2f} s")
        print(f"- ResNet-50 runs: {', '.join(f'{run[0]:.2f}' for run in runs)} s (the table gives the median)\n")
        print("| model | convs with operator interval | wall s | beyond start-up s | in forward passes | max width ≥14 px | max width 7 px | converged |")
        print("|---|---|---|---|---|---|---|---|")
        big = [w for _, s, w, _, _ in rows if s >= 14]
        small = [w for _, s, w, _, _ in rows if s < 14]
        print(
            f"| ResNet-50 ONNX 224 | {len(rows)} | {wall:.2f} | {beyond:.2f} | {beyond / forward:.0f} | "
            f"{max(big):.2e} | {max(small) if small else float('nan'):.2e} | "
            f"{sum(c for *_, c, _ in rows)}/{len(rows)} |"
        )
        all_convs = sum(1 for layer in report["layers"] if len(layer["shape"]) >= 3)
        two_sided = sum(1 for layer in report["layers"] if len(layer["shape"]) >= 3 and layer.get("lipschitz") and layer["lipschitz"].get("lower") is not None)
        print(f"\nResNet-50: {all_convs} convs, {two_sided} two-sided; graph bound {report['bound']['upper']}")
        from lipcheck.api import inspect as inspect_api
        from lipcheck.settings import Settings

        start = time.perf_counter()
        inspect_api(r50, settings=Settings(lower=False, device=DEVICE))
        print(f"ResNet-50 in this process without the network's empirical lower bound: {time.perf_counter() - start:.2f} s")
        if quick:
            return
        det = export_onnx(Detector(), (1, 3, 800, 608), root / "detector.onnx")
        wall_d, rep_d = inspect(det)
        rows_d = conv_rows(rep_d)
        print(
            f"| detector ONNX 800x608 | {len(rows_d)} | {wall_d:.2f} | {wall_d - base:.2f} | | "
            f"{max(w for _, _, w, _, _ in rows_d):.2e} | | {sum(c for *_, c, _ in rows_d)}/{len(rows_d)} |"
        )
        r18 = resnet(Basic, [2, 2, 2, 2], 1).eval()
        onnx18 = export_onnx(r18, (1, 3, 64, 64), root / "resnet18.onnx")
        wall_o, _ = inspect(onnx18)
        ts = root / "resnet18.pt"
        torch.jit.trace(r18, torch.randn(1, 3, 64, 64)).save(str(ts))
        wall_t, rep_t = inspect(ts, "--input-shape", "1x3x64x64")
        print(f"| ResNet-18 ONNX 64 px | | {wall_o:.2f} | {wall_o - base:.2f} | | | | |")
        print(f"| ResNet-18 TorchScript 64 px, --input-shape | {len(conv_rows(rep_t))} | {wall_t:.2f} | {wall_t - base:.2f} | | | | |")
        real = Path(__file__).resolve().parent / ".corpus" / "layout_cdla.onnx"
        if real.exists():  # python bench/fetch_corpus.py puts it there (a PyPI wheel's PicoDet, 37 depthwise convs)
            wall_r, rep_r = inspect(real)
            rows_r = conv_rows(rep_r)
            print(
                f"| layout_cdla (real PicoDet, 800x608) | {len(rows_r)} | {wall_r:.2f} | {wall_r - base:.2f} | | "
                f"{max(w for _, _, w, _, _ in rows_r):.2e} | | {sum(c for *_, c, _ in rows_r)}/{len(rows_r)} |"
            )
    print(f"\n- load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
