"""Uploads are held in memory: Werkzeug's spooling to temporary files is switched off."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import flask
import pytest
import werkzeug.formparser

from tests import images


@pytest.fixture
def no_temp_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every tempfile entry point fail loudly, and record who tried."""
    attempts: list[str] = []

    def refuse(name: str):
        def _refuse(*args: object, **kwargs: object) -> None:
            attempts.append(name)
            raise AssertionError(f"tempfile.{name} called while handling an upload")
        return _refuse

    for name in ("TemporaryFile", "SpooledTemporaryFile", "NamedTemporaryFile", "mkstemp",
                 "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse(name))
    # Werkzeug imported its own references to these at import time.
    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile",
                        refuse("SpooledTemporaryFile"))
    return attempts


def _big_upload() -> dict[str, object]:
    data = images.encode(images.lesion_rgb(1600, 1200, seed=2), ".png")
    assert len(data) > 600_000  # over Werkzeug's 500 KB in-memory threshold
    return {"image": (io.BytesIO(data), "big.png")}


def test_large_upload_never_touches_a_temporary_file(
        tiny_onnx_model: Path, no_temp_files: list[str]) -> None:
    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model)})
    response = app.test_client().post("/api/v1/predict", data=_big_upload())
    assert response.status_code == 200, response.get_data(as_text=True)
    assert no_temp_files == []


def test_the_check_above_catches_werkzeugs_default_spooling(
        tiny_onnx_model: Path, no_temp_files: list[str]) -> None:
    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model)})
    app.request_class = flask.Request  # what a stock Flask app does
    with pytest.raises(AssertionError, match="called while handling an upload"):
        app.test_client().post("/api/v1/predict", data=_big_upload())
    assert no_temp_files == ["SpooledTemporaryFile"]
