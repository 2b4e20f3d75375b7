"""Shared fixtures: the repository root and a CLI runner that runs lipcheck as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import os

import pytest
from hypothesis import settings

# In CI the property tests explore the same examples every run, so a red build is reproducible.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


@pytest.fixture
def run_cli():
    """Run ``python -m lipcheck ARGS`` in a subprocess; return (exit code, stdout, stderr)."""

    def run(*args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
        proc = subprocess.run([sys.executable, "-m", "lipcheck", *args], cwd=cwd, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1"}, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr

    return run
