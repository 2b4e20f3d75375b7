"""Sharded checkpoints (index json + shards) and model folders."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lipcheck.api import inspect
from lipcheck.errors import LipcheckError
from tests.reference import exact_sigma


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {f"layers.{i}.weight": torch.randn(16, 16) for i in range(12)} | {"embed.weight": torch.randn(50, 16), "layers.0.bias": torch.randn(16)}


def _shard(folder: Path, state: dict[str, torch.Tensor], kind: str, shards: int = 3) -> Path:
    names = sorted(state)
    weight_map = {}
    for index in range(shards):
        part = {n: state[n].contiguous() for n in names[index::shards]}
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors" if kind == "safetensors" else f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
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


def _zip_bomb(path: Path) -> None:
    """A torch-looking zip whose one entry inflates 200 MiB of zeros from about 200 KiB."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as handle:
            chunk = b"\0" * (1 << 20)
            for _ in range(200):
                handle.write(chunk)


def _huge_safetensors(path: Path) -> None:
    """A safetensors header declaring a 10^12-element weight over 16 bytes of data."""
    header = b'{"layers.0.weight": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 16]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)


@pytest.mark.parametrize(("kind", "build", "words"), [("bin", _zip_bomb, "zip bomb"), ("safetensors", _huge_safetensors, "safetensors")])
@pytest.mark.parametrize("command", ["inspect", "check"])
def test_a_hostile_shard_meets_the_single_file_guard(
    cli,
    tmp_path: Path,
    kind: str,
    build,
    words: str,  # type: ignore[no-untyped-def]
    command: str,
) -> None:
    index = _shard(tmp_path, _state(), kind)
    shard = tmp_path / json.loads(index.read_text())["weight_map"]["layers.0.weight"]
    build(shard)
    single = tmp_path / "single" / shard.name
    single.parent.mkdir()
    single.write_bytes(shard.read_bytes())
    extra = ["--fail-above", "10"] if command == "check" else []
    code, out, err = cli(command, str(index), *extra)
    assert code == 2 and err.count("\n") == 1 and err.startswith("lipcheck: error: "), (out, err)
    assert words in err and "Traceback" not in err + out
    code, _, single_err = cli(command, str(single), *extra)
    assert code == 2
    assert err.replace(os.path.realpath(shard), "SHARD").replace(str(shard), "SHARD") == single_err.replace(os.path.realpath(single), "SHARD").replace(
        str(single), "SHARD"
    )  # word for word  # the same guard, word for word
