"""The real gunicorn entry point: serves predictions, and refuses to start on a bad model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.server import Upload, start_server

REPO = Path(__file__).resolve().parent.parent


def test_gunicorn_serves_predictions_of_large_uploads_leaving_no_file(
        tiny_onnx_model: Path, tmp_path: Path) -> None:
    from tests import images

    spool = tmp_path / "tmp"
    spool.mkdir()
    server = start_server(tiny_onnx_model, tmp_path / "logs", {"TMPDIR": str(spool)})
    # Nothing at all: not even onnxruntime's telemetry `.ses` file (inference/runtime.py).
    # (Unnamed temp files would not show here; tests/test_uploads.py catches those.)
    assert os.listdir(spool) == []
    try:
        # Over Werkzeug's 500 KB threshold, where it would otherwise spool to a temp file.
        big = images.encode(images.lesion_rgb(1600, 1200, seed=1), ".png")
        assert len(big) > 600_000
        reply = server.post_api([Upload("../../etc/passwd.png", big, "image/png")])
        assert reply.status == 200, reply.text
        body = reply.json()
        assert 0 <= body["probability"] <= 1 and len(body["tta"]["views"]) == 8
        assert os.listdir(spool) == []
        assert "passwd" not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("problem, expected", [
    ("missing", "model file not found"),
    ("no_secret", "MELANOMA_SECRET_KEY is not set"),
])
def test_gunicorn_refuses_to_start_with_one_clear_line(
        tiny_onnx_model: Path, tmp_path: Path, problem: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELANOMA_")}
    env["MELANOMA_BIND"] = "127.0.0.1:0"
    env["MELANOMA_MODEL_PATH"] = str(tiny_onnx_model)
    if problem == "missing":
        env["MELANOMA_MODEL_PATH"] = str(tmp_path / "absent.onnx")
        env["MELANOMA_SECRET_KEY"] = "test"
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    refusals = [line for line in output.splitlines()
                if line.startswith("error: refusing to start: ")]
    assert len(refusals) == 1 and expected in refusals[0], output
    assert "Traceback" not in output
