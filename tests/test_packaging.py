"""pyproject.toml: the groups read real pins, the console scripts start what they name."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DYNAMIC = PROJECT["tool"]["setuptools"]["dynamic"]
GROUP_FILES = {"dependencies": DYNAMIC["dependencies"]["file"],
               **{name: spec["file"]
                  for name, spec in DYNAMIC["optional-dependencies"].items()}}


def test_every_group_the_issue_names_is_there() -> None:
    assert {"serve", "export", "train", "dev"} <= set(DYNAMIC["optional-dependencies"])


@pytest.mark.parametrize("name", sorted({f for files in GROUP_FILES.values() for f in files}))
def test_group_files_hold_only_pinned_requirements(name: str) -> None:
    """setuptools reads these lines as they are: no `-r` includes or pip options."""
    lines = [line.split("#", 1)[0].strip() for line in (REPO / name).read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line]
    assert requirements
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "=="
               for r in requirements), requirements


def test_serving_dependencies_carry_no_training_framework() -> None:
    names = {Requirement(line).name for line in (REPO / "requirements.txt").read_text()
             .splitlines() if line.strip() and not line.startswith("#")}
    assert not names & {"torch", "tensorflow", "tensorflow-cpu", "keras", "timm", "lightning"}


@pytest.mark.parametrize("script", sorted(PROJECT["project"]["scripts"]))
def test_console_script_names_a_callable(script: str) -> None:
    module, _, function = PROJECT["project"]["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_melanoma_serve_starts_gunicorn_with_the_shipped_config(tiny_onnx_model: Path) -> None:
    env = {**os.environ, "MELANOMA_MODEL_PATH": str(tiny_onnx_model),
           "MELANOMA_SECRET_KEY": "x" * 32}
    result = subprocess.run([sys.executable, "-m", "webapp.serve", "--print-config"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wsgi_app" in result.stdout and "webapp.wsgi:app" in result.stdout
    assert "gthread" in result.stdout


def test_export_script_keeps_working_by_path() -> None:
    result = subprocess.run([sys.executable, "export/to_onnx.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "checkpoint" in result.stdout
