"""Same-shaped layers certified together keep their order and their exact-SVD containment."""

from __future__ import annotations

from pathlib import Path

import torch

from lipcheck.api import inspect
from lipcheck.spectral import layer as layer_module
from tests.reference import exact_sigma


def test_interleaved_shapes_are_batched_and_reported_in_file_order(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(5)
    weights = {f"block{i}.{kind}.weight": torch.randn(*shape, generator=g)
               for i in range(4) for kind, shape in (("a", (48, 32)), ("b", (32, 48)), ("c", (48, 32)))}
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
