"""Two hosts of one stack, one secret: a form fetched from one host posts to the other.

The apps are built the way the host builds them: from MELANOMA_* in the environment, which
the unit loads from /etc/melanoma/secret.env (bootstrap.sh writes it from Secrets Manager).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from flask import Flask

BASE = "https://melanoma.example.org"


def _host(monkeypatch: pytest.MonkeyPatch, model: Path, secret_env_line: str) -> Flask:
    from webapp.app import create_app

    key, value = secret_env_line.strip().split("=", 1)
    monkeypatch.setenv(key, value)
    monkeypatch.setenv("MELANOMA_MODEL_PATH", str(model))
    return create_app()


def _form_on_a_posted_to_b(host_a: Flask, host_b: Flask, image: bytes) -> tuple[int, str]:
    browser_a, browser_b = host_a.test_client(), host_b.test_client()
    page = browser_a.get("/", base_url=BASE).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    session = browser_a.get_cookie("session", domain="melanoma.example.org")
    assert session is not None
    # The load balancer sends the browser's next request, cookie and all, to the other host.
    browser_b.set_cookie("session", session.value, domain=session.domain)
    answer = browser_b.post(
        "/predict",
        base_url=BASE,
        data={"image": (io.BytesIO(image), "lesion.jpg"), "csrf_token": token[1]},
        content_type="multipart/form-data",
        headers={"Referer": f"{BASE}/"},
    )
    return answer.status_code, answer.get_data(as_text=True)


def test_a_form_from_one_host_posts_to_another_with_the_shared_secret(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx_model: Path, lesion_jpeg_bytes: bytes
) -> None:
    line = "MELANOMA_SECRET_KEY=" + "a1" * 32
    host_a = _host(monkeypatch, tiny_onnx_model, line)
    host_b = _host(monkeypatch, tiny_onnx_model, line)
    status, body = _form_on_a_posted_to_b(host_a, host_b, lesion_jpeg_bytes)
    assert status == 200, body


def test_hosts_with_their_own_secrets_refuse_each_others_forms(
    monkeypatch: pytest.MonkeyPatch, tiny_onnx_model: Path, lesion_jpeg_bytes: bytes
) -> None:
    host_a = _host(monkeypatch, tiny_onnx_model, "MELANOMA_SECRET_KEY=" + "a1" * 32)
    host_b = _host(monkeypatch, tiny_onnx_model, "MELANOMA_SECRET_KEY=" + "b2" * 32)
    status, body = _form_on_a_posted_to_b(host_a, host_b, lesion_jpeg_bytes)
    assert status == 400 and "form expired" in body
