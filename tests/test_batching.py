"""Same-shaped layers certified together keep their order and their exact-SVD containment, and
running batches side by side leaves the caller's torch thread settings as they were."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lipcheck.api import inspect
from lipcheck.formats import load
from lipcheck.settings import Settings
from lipcheck.spectral import layer as layer_module
from lipcheck.spectral.layer import estimate_all
from tests.conftest import SAMPLES
from tests.reference import exact_sigma


def test_interleaved_shapes_are_batched_and_reported_in_file_order(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(5)
    weights = {
        f"block{i}.{kind}.weight": torch.randn(*shape, generator=g) for i in range(4) for kind, shape in (("a", (48, 32)), ("b", (32, 48)), ("c", (48, 32)))
    }
    weights["block1.b.weight"][0, 0] = float("nan")  # one bad layer inside a batch
    path = tmp_path / "m.pt"
    torch.save(weights, path)
    seen: list[list[int]] = []
    original = layer_module._batches

    def spy(layers, device):  # type: ignore[no-untyped-def]
        batches = original(layers, device)
        seen.extend(batches)
        return batches

    monkeypatch.setattr(layer_module, "_batches", spy)
    report = inspect(path)
    assert max(len(b) for b in seen) > 1  # same shapes did share an iteration
    assert [entry.name for entry in report.layers] == list(weights)
    for entry in report.layers:
        if entry.name == "block1.b.weight":
            assert entry.sigma is None and entry.lipschitz is None
            continue
        exact = exact_sigma(weights[entry.name])
        assert entry.sigma is not None and entry.sigma_upper is not None
        assert entry.sigma <= exact <= entry.sigma_upper <= exact * (1 + 1e-6)


def _fresh_thread_count() -> int:
    """torch's thread count as a thread started now sees it."""
    found: list[int] = []
    thread = threading.Thread(target=lambda: found.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return found[0]


@pytest.fixture
def two_threads():  # type: ignore[no-untyped-def]
    """Batches run side by side only with several threads; restore the count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


@pytest.mark.parametrize("sample", ["mlp.pt", "cnn.onnx"])
def test_the_callers_thread_count_holds_during_progress_and_after(sample: str, two_threads: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[int, int]] = []  # (the caller's count, a new thread's count) at each progress call
    in_batches: list[tuple[str, int]] = []
    original = layer_module._estimate_batch

    def spy(*args):  # type: ignore[no-untyped-def]
        in_batches.append((threading.current_thread().name, torch.get_num_threads()))
        return original(*args)

    monkeypatch.setattr(layer_module, "_estimate_batch", spy)
    inspect(SAMPLES / sample, progress=lambda done, total, layer: seen.append((torch.get_num_threads(), _fresh_thread_count())))
    assert len(seen) >= 2 and all(counts == (two_threads, two_threads) for counts in seen)
    assert torch.get_num_threads() == two_threads and _fresh_thread_count() == two_threads
    workers = [count for name, count in in_batches if name.startswith("lipcheck")]
    assert len(workers) == len(in_batches) >= 2  # the batches did run side by side...
    assert all(count == 1 for count in workers)  # ...each single-threaded, so rounding does not depend on the schedule


def test_an_abandoned_or_failing_estimate_leaves_the_thread_count(two_threads: int) -> None:
    layers = load(SAMPLES / "mlp.pt").layers
    found = estimate_all(layers, Settings())
    next(found)
    assert torch.get_num_threads() == two_threads and _fresh_thread_count() == two_threads
    found.close()
    assert torch.get_num_threads() == two_threads and _fresh_thread_count() == two_threads

    def fail() -> torch.Tensor:
        raise ValueError("unreadable weight")

    broken = [replace(layers[0], load=fail), *layers[1:]]
    with pytest.raises(ValueError, match="unreadable weight"):
        list(estimate_all(broken, Settings()))
    assert torch.get_num_threads() == two_threads and _fresh_thread_count() == two_threads
