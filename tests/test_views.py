"""The HTML form and result page, and that they agree with the API."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests import images


def _upload(data: bytes, name: str = "lesion.jpg", **fields: str) -> dict[str, object]:
    return {"image": (io.BytesIO(data), name), **fields}


def test_form_works_without_javascript_and_offers_the_camera(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in page and 'method="post"' in page
    assert 'accept="image/*"' in page and 'name="image"' in page
    assert "<script" not in page
    assert "not a diagnosis" in page.lower()


def test_result_page_shows_probability_label_spread_heatmap_and_model(
        client: FlaskClient, lesion_jpeg_bytes: bytes) -> None:
    response = client.post("/predict", data=_upload(lesion_jpeg_bytes, tta="flips"),
                           content_type="multipart/form-data")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert re.search(r"Melanoma probability: <data class=\"probability\" value=\"[0-9.]+\">"
                     r"\d+\.\d%</data>", page)
    assert "Model's call:" in page and "threshold of 50.0%" in page
    assert "Across 4 views (flips)" in page
    assert page.count('src="data:image/png;base64,') == 2  # model input + heatmap
    assert 'alt="Heatmap' in page
    assert "tiny 1 (resnest14_fast_4s1x64d, 64px)" in page
    assert "Demo model, trained on computer-drawn lesions" not in page
    assert "not a diagnosis" in page.lower()
    assert response.headers["Cache-Control"] == "no-store"


def test_demo_models_get_a_prominent_banner(tmp_path: Path, lesion_jpeg_bytes: bytes) -> None:
    from tests.conftest import export_tiny
    from webapp.app import create_app

    demo = export_tiny(tmp_path, "demo", demo=True)
    client = create_app({"TESTING": True, "MODEL_PATH": str(demo),
                         "WTF_CSRF_ENABLED": False}).test_client()
    for page in (client.get("/"), client.post("/predict", data=_upload(lesion_jpeg_bytes),
                                              content_type="multipart/form-data")):
        text = page.get_data(as_text=True)
        assert 'class="demo-banner" role="alert"' in text
        assert "trained on computer-drawn lesions" in text
    api = client.post("/api/v1/predict", data=_upload(lesion_jpeg_bytes)).get_json()
    assert api["demo"] is True and api["model"]["demo"] is True
    assert "never seen a real lesion" in api["disclaimer"]
    assert "not a diagnosis" in api["disclaimer"]


@pytest.mark.parametrize("policy", ["none", "flips", "dihedral"])
def test_form_and_api_agree_on_the_probability(client: FlaskClient, policy: str) -> None:
    data = images.encode(images.lesion_rgb(500, 380, seed=12), ".jpg")
    page = client.post("/predict", data=_upload(data, tta=policy),
                       content_type="multipart/form-data").get_data(as_text=True)
    form_probability = float(re.search(r'class="probability" value="([0-9.e-]+)"', page)[1])
    api = client.post(f"/api/v1/predict?tta={policy}", data=_upload(data)).get_json()
    assert api["probability"] == pytest.approx(form_probability, abs=1e-6)


@pytest.mark.parametrize("data, name, message, status", [
    (b"", "empty.jpg", "the uploaded file is empty", 400),
    (b"%PDF-1.4 not an image", "scan.jpg", "the file is a PDF document", 415),
])
def test_form_rerenders_with_the_reason_on_bad_uploads(
        client: FlaskClient, data: bytes, name: str, message: str, status: int) -> None:
    response = client.post("/predict", data=_upload(data, name),
                           content_type="multipart/form-data")
    page = response.get_data(as_text=True)
    assert response.status_code == status
    assert message in page and 'role="alert"' in page
    assert 'name="image"' in page  # the form is there to try again


def test_form_requires_a_csrf_token(tiny_onnx_model: Path, lesion_jpeg_bytes: bytes) -> None:
    from webapp.app import create_app

    client = create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model)}).test_client()
    refused = client.post("/predict", data=_upload(lesion_jpeg_bytes),
                          content_type="multipart/form-data")
    assert refused.status_code == 400 and "form expired" in refused.get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(True))[1]
    accepted = client.post("/predict", data=_upload(lesion_jpeg_bytes, csrf_token=token),
                           content_type="multipart/form-data")
    assert accepted.status_code == 200
    # The API is for scripts, not browsers with cookies: no CSRF token needed there.
    assert client.post("/api/v1/predict", data=_upload(lesion_jpeg_bytes)).status_code == 200


def test_unknown_pages_get_an_html_error_page(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert "There is no page at this address." in response.get_data(as_text=True)


def test_static_stylesheet_is_served(client: FlaskClient) -> None:
    assert client.get("/static/style.css").status_code == 200


def test_app_factory_shares_one_classifier(app: Flask) -> None:
    from webapp import api, views

    with app.app_context():
        assert views.classifier() is api.classifier() is app.extensions["classifier"]
