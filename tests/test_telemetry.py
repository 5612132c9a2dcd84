"""onnxruntime's telemetry stays off in every process that imports it: one module imports
onnxruntime after setting ORT_DISABLE_TELEMETRY=1, the unit sets it too, and a server and
an export leave no device id, event database or session file behind."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.server import REPO, start_server
from devtools.stack import host_files, unit_settings
from infra.host.render import UNIT_NAME

RUNTIME_MODULE = REPO / "inference" / "runtime.py"
SOURCE_DIRS = ("inference", "webapp", "export", "evaluation", "bench", "infra", "devtools", "tests")


def _imports_onnxruntime(path: Path) -> bool:
    """Whether the file imports onnxruntime without first importing inference.runtime.

    Only the exporter's quantisation modules import `onnxruntime.quantization` themselves
    (it needs the onnx package, which the server lacks); they import inference.runtime first.
    """
    runtime_first = False
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (
                node.module == "inference.runtime"
                or (node.module == "inference" and any(a.name == "runtime" for a in node.names))):
            runtime_first = True
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "onnxruntime"
                                                for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == \
                "onnxruntime" and not runtime_first:
            return True
    return False


def _telemetry_state(home: Path, tmp: Path) -> list[str]:
    left = [str(p) for p in (home / ".cache").rglob("*") if "Microsoft" in str(p)]
    return left + [str(p) for p in tmp.rglob("*.ses")]


def _clean_env(home: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update({"HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache")})
    return env


def test_only_the_runtime_module_imports_onnxruntime() -> None:
    importers = sorted(str(path.relative_to(REPO)) for folder in SOURCE_DIRS
                       for path in (REPO / folder).rglob("*.py")
                       if _imports_onnxruntime(path))
    assert importers == [str(RUNTIME_MODULE.relative_to(REPO))]
    assert "ORT_DISABLE_TELEMETRY" in RUNTIME_MODULE.read_text()


def test_the_unit_switches_telemetry_off(tmp_path: Path) -> None:
    unit = unit_settings(host_files(tmp_path)[UNIT_NAME])
    assert unit["Environment:ORT_DISABLE_TELEMETRY"] == "1"


def test_tests_run_with_telemetry_off() -> None:
    assert os.environ.get("ORT_DISABLE_TELEMETRY") == "1"


@pytest.mark.slow
def test_a_server_leaves_no_telemetry_state(tiny_onnx_model: Path, tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {"HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache")}
    # Not inherited from the test run: the app itself must switch it off.
    server = start_server(tiny_onnx_model, tmp_path / "logs", env,
                          unset=["ORT_DISABLE_TELEMETRY"])
    try:
        assert server.get("/readyz").status == 200
    finally:
        server.stop()
    assert _telemetry_state(home, tmp) == []


@pytest.mark.slow
def test_an_export_leaves_no_telemetry_state(tiny_checkpoint: Path, tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    # The command line a user runs, so nothing of the test run (conftest) is imported.
    result = subprocess.run([sys.executable, "export/to_onnx.py", str(tiny_checkpoint),
                             "--output", str(tmp_path / "telemetry.onnx")], cwd=REPO,
                            env=_clean_env(home, tmp), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "telemetry.onnx").is_file()
    assert _telemetry_state(home, tmp) == []
