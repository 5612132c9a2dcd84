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


# Every package of the project (training/ once it lands); the tests are checked with them.
PACKAGES = [name for name in ("inference", "export", "webapp", "evaluation", "bench", "infra",
                              "training")
            if (REPO / name / "__init__.py").exists()]
# Written after the type checks were in place: held to --strict.
STRICT = ["webapp/service.py", "webapp/admission.py", "inference/model_spec.py",
          "inference/classifier.py", "webapp/health.py", "webapp/api.py", "webapp/views.py",
          "export/publish.py", "export/keras_source.py", "export/keras_graph.py",
          "export/keras_pixels.py", "export/keras_export.py"]


def test_mypy_accepts_every_package() -> None:
    assert {"inference", "export", "webapp", "evaluation", "bench", "infra"} <= set(PACKAGES)
    result = _run("mypy", "--ignore-missing-imports", "--no-error-summary", *PACKAGES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_accepts_the_new_code() -> None:
    result = _run("mypy", "--strict", "--ignore-missing-imports", "--follow-imports=silent",
                  "--no-error-summary", *STRICT)
    assert result.returncode == 0, result.stdout + result.stderr
