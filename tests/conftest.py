"""Shared fixtures: the repository root and a CLI runner that runs lipcheck as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
