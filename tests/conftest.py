"""Shared fixtures: the repository root and a CLI runner that runs lipcheck as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        proc = subprocess.run(
            [sys.executable, "-m", "lipcheck", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1"},
            timeout=300,
        )
        return proc.returncode, proc.stdout, proc.stderr

    return run


@pytest.fixture
def cli(capsys, monkeypatch):  # type: ignore[no-untyped-def]
    """Run the CLI in this process (fast; same code path as the console script).

    Returns (exit code, stdout, stderr). ``run_cli`` is for what needs a real process boundary.
    """
    from lipcheck.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    for name in list(os.environ):
        if name.startswith("LIPCHECK_") or name == "GITHUB_STEP_SUMMARY":
            monkeypatch.delenv(name)

    def run(*args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        out, err = capsys.readouterr()
        return code, out, err

    return run
