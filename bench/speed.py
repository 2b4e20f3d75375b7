"""Benchmark: `lipcheck inspect` vs exact per-layer SVD vs WeightWatcher, side by side in one run.

    python bench/speed.py                      # BERT-base and ResNet-50 shapes
    python bench/speed.py --big                # also the >2 GB safetensors file (memory)

Each contender runs as its own process on the same safetensors file (bench/data/, built with
seeded weights by bench/shapes.py), so wall time includes Python, torch's import and loading, and
peak RSS is the process's own (os.wait4). Errors are against a float64 SVD of every layer (the
reshaped weight in torch's spectral_norm convention, as lipcheck's `sigma`). WeightWatcher runs
when it is installed (`pip install -c constraints.txt weightwatcher`); its `analyze()` with
defaults is the closest peer tool. Prints markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import write  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
PY = sys.executable

SVD_SCRIPT = r"""
import json, sys, time
import torch
from safetensors import safe_open
names = json.load(open(sys.argv[2]))
out = {}
start = time.perf_counter()
with safe_open(sys.argv[1], framework="pt") as f:
    for name in names:
        w = f.get_tensor(name)
        out[name] = float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2))
json.dump({"sigma": out, "compute_s": time.perf_counter() - start}, open(sys.argv[3], "w"))
"""

LC_SCRIPT = r"""
import json, sys, time
from lipcheck.api import inspect
start = time.perf_counter()
inspect(sys.argv[1])
json.dump({"compute_s": time.perf_counter() - start}, open(sys.argv[2], "w"))
"""

WW_SCRIPT = r"""
import json, sys, time, logging
import torch
from safetensors import safe_open
import weightwatcher as ww
logging.disable(logging.WARNING)
names = json.load(open(sys.argv[2]))
root = torch.nn.Module()
with safe_open(sys.argv[1], framework="pt") as f:
    for name in names:
        w = f.get_tensor(name)
        if w.dim() == 2:
            m = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        else:
            m = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], bias=False)
        with torch.no_grad():
            m.weight.copy_(w)
        root.add_module(name.replace(".", "_"), m)
start = time.perf_counter()
details = ww.WeightWatcher(model=root).analyze()
elapsed = time.perf_counter() - start
sv = {}
for _, row in details.iterrows():
    sv[str(row["name"])] = float(row["sv_max"])
json.dump({"sv_max": sv, "compute_s": elapsed}, open(sys.argv[3], "w"))
"""


def run(cmd: list[str]) -> tuple[float, float, int]:
    """Run a command under GNU time; return wall seconds, peak RSS in MiB and the exit code.

    GNU time forks the command from its own small process: a child forked straight from this
    one would inherit this process's peak RSS (Linux keeps ru_maxrss across fork and exec).
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        peak_kib = int(rss.read().split()[-1])
    if proc.returncode not in (0, 1):
        print(proc.stderr[-2000:], file=sys.stderr)
    return wall, peak_kib / 1024.0, proc.returncode


def exact_sigmas(path: Path, names: list[str]) -> dict[str, float]:
    """The float64 SVD reference for every layer."""
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in names:
            w = f.get_tensor(name).to(torch.float64)
            out[name] = float(torch.linalg.svdvals(w.reshape(w.shape[0], -1))[0])
    return out


def measure(cmd: list[str], repeat: int, out: Path | None = None) -> tuple[float, float, float | None, dict | None]:
    """Run a command ``repeat`` times; return the median wall s, the largest peak RSS, the median
    ``compute_s`` it wrote to ``out`` (if any) and the last run's ``out`` contents."""
    walls, rsss, computes = [], [], []
    data = None
    for _ in range(repeat):
        wall, rss, code = run(cmd)
        if code not in (0, 1):
            raise SystemExit(f"failed (exit {code}): {' '.join(cmd[:4])} ...")
        walls.append(wall)
        rsss.append(rss)
        if out is not None:
            data = json.loads(out.read_text())
            computes.append(data["compute_s"])
    return statistics.median(walls), max(rsss), (statistics.median(computes) if computes else None), data


def bench_model(model: str, with_svd: bool, tmp: Path, repeat: int) -> list[str]:
    """Run the contenders on one model; return markdown lines."""
    path = write(model, DATA / f"{model}.safetensors")
    size_gb = path.stat().st_size / 1e9
    report_path = tmp / f"{model}.json"
    lc_wall, lc_rss, _, _ = measure([PY, "-m", "lipcheck", "inspect", str(path), "-f", "json", "-o", str(report_path)], repeat)
    report = json.loads(report_path.read_text())
    layers = report["layers"]
    names = [layer["name"] for layer in layers]
    lines = [
        f"### {model}: {len(names)} layers, {size_gb:.2f} GB safetensors ({len(report['skipped'])} tensors skipped as embeddings); medians of {repeat} runs",
        "",
        "| contender | wall s (process) | compute s | peak RSS MiB | max rel. error of σ | certified |",
        "|---|---|---|---|---|---|",
    ]
    idle_wall, idle_rss, _, _ = measure([PY, "-c", "import torch"], repeat)
    exact = exact_sigmas(path, names) if with_svd else None
    wide = max((ly["sigma_upper"] - ly["sigma"]) / ly["sigma_upper"] for ly in layers)
    if exact is not None:
        low = max((exact[ly["name"]] - ly["sigma"]) / exact[ly["name"]] for ly in layers)
        inside = all(ly["sigma"] <= exact[ly["name"]] <= ly["sigma_upper"] for ly in layers)
        err = f"{low:.1e} (interval width ≤ {wide:.1e}, contains exact: {'all' if inside else 'NO'})"
    else:
        err = f"— (interval width ≤ {wide:.1e})"
    timing = tmp / "lc.json"
    _, _, lc_compute, _ = measure([PY, "-c", LC_SCRIPT, str(path), str(timing)], repeat, timing)
    lines.append(f"| lipcheck inspect | {lc_wall:.2f} | {lc_compute:.2f} | {lc_rss:.0f} | {err} | yes |")
    if with_svd:
        names_file = tmp / "names.json"
        names_file.write_text(json.dumps(names))
        out = tmp / "svd.json"
        wall, rss, compute, svd = measure([PY, "-c", SVD_SCRIPT, str(path), str(names_file), str(out)], repeat, out)
        e = max(abs(svd["sigma"][n] - exact[n]) / exact[n] for n in names)  # type: ignore[index]
        lines.append(f"| exact SVD (torch.linalg.matrix_norm ord=2, float32) | {wall:.2f} | {compute:.2f} | {rss:.0f} | {e:.1e} | no |")
        lines.append(f"| *lipcheck speed-up over exact SVD* | {wall / lc_wall:.1f}× | {compute / lc_compute:.1f}× | | | |")
        try:
            import weightwatcher
        except ImportError:
            lines.append("| WeightWatcher | not installed | | | | |")
        else:
            out = tmp / "ww.json"
            wall, rss, compute, ww = measure([PY, "-c", WW_SCRIPT, str(path), str(names_file), str(out)], 1, out)
            dense = [n for n in names if n.replace(".", "_") in ww["sv_max"] and len(layers[names.index(n)]["shape"]) == 2]
            e_ww = max((abs(ww["sv_max"][n.replace(".", "_")] - exact[n]) / exact[n] for n in dense), default=float("nan"))  # type: ignore[index]
            lines.append(
                f"| WeightWatcher {weightwatcher.__version__} analyze() (one run) | {wall:.2f} | {compute:.2f} | {rss:.0f} | {e_ww:.1e} (dense layers) | no |"
            )
    lines.append(f"| idle `python -c 'import torch'` | {idle_wall:.2f} | | {idle_rss:.0f} | | |")
    lines.append("")
    lines.append(
        f"lipcheck peak RSS above idle torch: {lc_rss - idle_rss:.0f} MiB. Compute s: lipcheck.inspect() or the "
        "SVD loop (load included) timed inside the process, after imports."
    )
    lines.append("")
    return lines


def main() -> None:
    """Build the models if needed, run every contender, print markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also inspect the >2 GB file (no SVD: memory only)")
    parser.add_argument("--models", nargs="*", default=["bert-base", "resnet50"])
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (medians reported)")
    args = parser.parse_args()
    start = time.perf_counter()
    version = subprocess.run([PY, "-m", "lipcheck", "--version"], capture_output=True, text=True).stdout.strip()
    t = time.perf_counter()
    subprocess.run([PY, "-m", "lipcheck", "--version"], capture_output=True)
    version_s = time.perf_counter() - t
    print(
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {version}"
    )
    print(f"- `lipcheck --version`: {version_s:.2f} s")
    print()
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            print("\n".join(bench_model(model, with_svd=True, tmp=Path(tmp), repeat=args.repeat)))
        if args.big:
            print("\n".join(bench_model("big-transformer", with_svd=False, tmp=Path(tmp), repeat=1)))
    print(f"(benchmark total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
