"""Sharded checkpoints (index json + shards) and model folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lipcheck.api import inspect
from lipcheck.errors import LipcheckError
from tests.reference import exact_sigma


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {f"layers.{i}.weight": torch.randn(16, 16) for i in range(12)} | {
        "embed.weight": torch.randn(50, 16), "layers.0.bias": torch.randn(16)}


def _shard(folder: Path, state: dict[str, torch.Tensor], kind: str, shards: int = 3) -> Path:
    names = sorted(state)
    weight_map = {}
    for index in range(shards):
        part = {n: state[n].contiguous() for n in names[index::shards]}
        file = (f"model-{index + 1:05d}-of-{shards:05d}.safetensors" if kind == "safetensors"
                else f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin")
        if kind == "safetensors":
            save_file(part, str(folder / file))
        else:
            torch.save(part, folder / file)
        weight_map.update({n: file for n in part})
    index_name = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index_name).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder / index_name


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_shards_read_through_the_index_and_the_folder(tmp_path: Path, kind: str) -> None:
    state = _state()
    index = _shard(tmp_path, state, kind)
    for target in (index, tmp_path):
        report = inspect(target)
        assert [layer.name for layer in report.layers] == [f"layers.{i}.weight" for i in range(12)]  # natural order
        for layer in report.layers:
            assert layer.sigma == pytest.approx(exact_sigma(state[layer.name]), rel=1e-5)
        assert [s.name for s in report.skipped] == ["embed.weight"]
        assert report.model_format == f"sharded {'safetensors' if kind == 'safetensors' else 'state_dict'}"


def test_shard_outside_the_folder_or_missing(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    index = _shard(tmp_path, _state(), "safetensors")
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = "../elsewhere.safetensors"
    index.write_text(json.dumps(data))
    code, _, err = cli("inspect", str(index))
    assert code == 2 and "outside its folder" in err and err.count("\n") == 1
    data["weight_map"][first] = "model-00009-of-00009.safetensors"
    index.write_text(json.dumps(data))
    code, _, err = cli("inspect", str(index))
    assert code == 2 and "is missing" in err


def test_folder_with_several_models_asks_which(tmp_path: Path) -> None:
    torch.save({"a.weight": torch.eye(2)}, tmp_path / "one.pt")
    torch.save({"a.weight": torch.eye(2)}, tmp_path / "two.pt")
    with pytest.raises(LipcheckError, match="several model files"):
        inspect(tmp_path)
    (tmp_path / "two.pt").unlink()
    assert inspect(tmp_path).layers[0].name == "a.weight"
