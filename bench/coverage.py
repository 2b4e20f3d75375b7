"""Coverage over real models: per model, layers found, the network bound and how it was found or the first blocking node,
a float64 sampled lower ratio where a bound exists, and the time taken.

    python bench/fetch_corpus.py && python bench/coverage.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.fetch_corpus import fetch  # noqa: E402
from lipcheck.api import inspect  # noqa: E402
from lipcheck.settings import Settings  # noqa: E402


def sampled_ratio(path: Path, shape: tuple[int, ...], samples: int = 4) -> float | None:
    """max ‖f(x+δ) − f(x)‖/‖δ‖ over a few random pairs, in float64 (a lower bound of the true constant)."""
    import onnx

    from lipcheck.graph.evaluate import Float64Model

    try:
        model = Float64Model(onnx.load(str(path)))
    except Exception:
        return None
    rng = np.random.default_rng(0)
    best = 0.0
    for _ in range(samples):
        x = rng.normal(size=shape)
        d = rng.normal(size=shape) * 1e-3
        a, b = model([x]), model([x + d])
        num = float(np.sqrt(sum(np.sum((p - q) ** 2) for p, q in zip(a, b) if p.dtype.kind == "f")))
        best = max(best, num / float(np.linalg.norm(d)))
    return best


def main() -> None:
    corpus = {e["file"]: e for e in json.loads((HERE / "corpus.json").read_text())["models"]}
    for path in fetch(HERE / ".corpus"):
        entry = corpus[str(path.relative_to(HERE / ".corpus"))]
        shape = tuple(entry["input_shape"]) if entry.get("input_shape") else None
        start = time.perf_counter()
        try:
            report = inspect(path, settings=Settings(input_shape=(shape,) if shape else None, lower=False))
        except Exception as exc:
            print(f"{path.name:45s} error: {type(exc).__name__}: {exc}")
            continue
        took = time.perf_counter() - start
        upper = report.bound.upper
        if upper is not None:
            ratio = sampled_ratio(path, shape) if shape else None
            what = f"{report.bound.method} {upper:.4g}" + (f" ≥ sampled {ratio:.4g}" if ratio is not None else "")
        else:
            what = "none: " + (report.bound.blocking[0] if report.bound.blocking else "?")[:110]
        print(f"{path.name:45s} layers {len(report.layers):4d}  {what}  ({took:.1f} s)")


if __name__ == "__main__":
    main()
