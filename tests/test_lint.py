"""Lint and type checks run with the suite, so style drift fails CI like a bug would."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_accepts_the_export_and_serving_code() -> None:
    result = _run("mypy", "--ignore-missing-imports", "--no-error-summary", "export", "webapp")
    assert result.returncode == 0, result.stdout + result.stderr
