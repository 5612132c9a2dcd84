"""Security headers on every response, errors included; no-store on results; no inline
script anywhere; a secret key that must be set outside debug and testing."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from devtools.server import REPO
from webapp.app import create_app
from webapp.config import ConfigError

TEMPLATES = REPO / "webapp" / "templates"


def _requests(app: Flask, image: bytes) -> dict[str, TestResponse]:
    client = app.test_client()

    def upload(path: str, data: bytes) -> TestResponse:
        return client.post(path, data={"image": (io.BytesIO(data), "a.jpg")})

    return {
        "index": client.get("/"),
        "healthz": client.get("/healthz"),
        "readyz": client.get("/readyz"),
        "model": client.get("/api/v1/model"),
        "metrics": client.get("/metrics"),
        "static": client.get("/static/style.css"),
        "not_found": client.get("/nothing-here"),
        "api_not_found": client.get("/api/v1/nothing"),
        # GET /predict redirects to the form (results are never stored); PUT is refused.
        "method_not_allowed": client.put("/predict"),
        "form_result": upload("/predict", image),
        "api_result": upload("/api/v1/predict", image),
        "form_error": upload("/predict", b"GIF89a"),
        "api_error": upload("/api/v1/predict", b"not an image"),
    }


@pytest.fixture(scope="module")
def responses(tiny_onnx_model: Path, lesion_jpeg_bytes: bytes) -> dict[str, TestResponse]:
    app = create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model),
                      "WTF_CSRF_ENABLED": False})
    return _requests(app, lesion_jpeg_bytes)


def test_every_kind_of_response_was_exercised(responses: dict[str, TestResponse]) -> None:
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {"index": 200, "healthz": 200, "readyz": 200, "model": 200,
                        "metrics": 200, "static": 200, "not_found": 404, "api_not_found": 404,
                        "method_not_allowed": 405, "form_result": 200, "api_result": 200,
                        "form_error": 422, "api_error": 415}


@pytest.mark.parametrize("name", ["index", "healthz", "readyz", "model", "metrics", "static",
                                  "not_found", "api_not_found", "method_not_allowed",
                                  "form_result", "api_result", "form_error", "api_error"])
def test_response_carries_security_headers(responses: dict[str, TestResponse],
                                           name: str) -> None:
    headers = responses[name].headers
    policy = {directive.split()[0]: directive.split()[1:]
              for directive in headers["Content-Security-Policy"].split("; ")}
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"], "no inline or eval'd script may run"
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] in ("no-referrer", "same-origin")
    assert headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("name", ["form_result", "api_result", "form_error", "api_error",
                                  "metrics"])
def test_results_are_never_cached(responses: dict[str, TestResponse], name: str) -> None:
    assert "no-store" in responses[name].headers["Cache-Control"]


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.html")))
def test_templates_hold_no_inline_script_or_style(template: str) -> None:
    source = (TEMPLATES / template).read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", source), "inline <script> is blocked by CSP"
    assert not re.search(r"\son[a-z]+\s*=", source), "inline event handlers are blocked by CSP"
    assert "<style" not in source and " style=" not in source
    assert "javascript:" not in source


def test_app_refuses_to_start_without_a_secret_outside_debug(tiny_onnx_model: Path) -> None:
    with pytest.raises(ConfigError, match="MELANOMA_SECRET_KEY"):
        create_app({"MODEL_PATH": str(tiny_onnx_model)})
    assert create_app({"MODEL_PATH": str(tiny_onnx_model), "DEBUG": True}).secret_key


@pytest.mark.slow
def test_wsgi_entry_point_exits_4_without_a_secret(tiny_onnx_model: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELANOMA_")}
    env["MELANOMA_MODEL_PATH"] = str(tiny_onnx_model)
    result = subprocess.run([sys.executable, "-c", "import webapp.wsgi"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 4
    assert "refusing to start" in result.stderr and "MELANOMA_SECRET_KEY" in result.stderr
