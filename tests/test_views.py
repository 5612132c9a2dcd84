"""The HTML form and result page, and that they agree with the API."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests import images, nonlesion


def _upload(data: bytes, name: str = "lesion.jpg", **fields: str) -> dict[str, object]:
    return {"image": (io.BytesIO(data), name), **fields}


def test_form_works_without_javascript_and_offers_the_camera(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in page and 'method="post"' in page
    assert 'accept="image/*"' in page and 'name="image"' in page
    # Scripts only enhance: one same-origin file, nothing inline (the CSP forbids it anyway).
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/app.js" defer>']
    assert "<script src=\"/static/app.js\" defer></script>" in page
    assert client.get("/static/app.js").status_code == 200
    assert "not a diagnosis" in page.lower()


def test_form_offers_view_counts_in_words(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    assert '<option value="dihedral" selected>8 views (turned and flipped)</option>' in page
    assert "4 views (flipped)" in page and "1 view (as uploaded)" in page
    assert "8 is recommended" in page
    assert "in 3 ways" not in page


def test_result_page_shows_probability_label_spread_heatmap_and_model(
        client: FlaskClient, lesion_jpeg_bytes: bytes) -> None:
    response = client.post("/predict", data=_upload(lesion_jpeg_bytes, tta="flips"),
                           content_type="multipart/form-data")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert re.search(r"Melanoma probability: <data class=\"probability\" value=\"[0-9.]+\">"
                     r"(\d{1,2}%|under 1%|over 99%)</data>", page)
    assert "when the probability is 50% or more (the mark on the bar)" in page
    assert re.search(r'<line class="mark" x1="50.00"', page), "threshold mark on the meter"
    assert "The model looked at 4 views (the photo flipped left-right and upside down)" in page
    assert "Across" not in page and "&plusmn;" not in page
    assert page.count('src="data:image/jpeg;base64,') == 1  # the user's own photo
    assert page.count('src="data:image/png;base64,') == 2  # heatmap layer + model input
    assert 'alt="Heatmap over your photo' in page
    assert 'width="320" height="240"' in page, "the photo keeps its own 4:3 aspect"
    assert "tiny, version 1 (trained)" in page
    assert "Demo model, not trained" not in page
    assert "not a diagnosis" in page.lower()
    assert response.headers["Cache-Control"] == "no-store"


def test_result_page_offers_downloads_named_after_the_upload(
        client: FlaskClient, lesion_jpeg_bytes: bytes) -> None:
    page = client.post("/predict", data=_upload(lesion_jpeg_bytes, "../My mole (1).JPG"),
                       content_type="multipart/form-data").get_data(as_text=True)
    assert "Result for My-mole-1.JPG" in page and "My mole (1)" not in page
    links = dict(re.findall(r'<a download="([^"]+)" href="data:([^;]+);base64,', page))
    assert links == {"My-mole-1-result.json": "application/json",
                     "My-mole-1-report.pdf": "application/pdf",
                     "My-mole-1-heatmap.jpg": "image/jpeg"}
    encoded = re.search(r'download="My-mole-1-result.json" href="data:application/json;'
                        r'base64,([^"]+)"', page)
    assert encoded is not None
    body = json.loads(base64.b64decode(encoded[1]))
    shown = float(re.search(r'class="probability" value="([0-9.e-]+)"', page)[1])
    assert body["probability"] == pytest.approx(shown, abs=1e-6)
    assert body["warnings"] == [] and "disclaimer" in body
    report = re.search(r'href="data:application/pdf;base64,([^"]+)"', page)
    assert report is not None and base64.b64decode(report[1]).startswith(b"%PDF")


@pytest.mark.parametrize("kind, code", [("landscape", "not_a_lesion"), ("text", "not_a_lesion")])
def test_result_page_warns_above_the_score_when_the_photo_is_no_lesion(
        client: FlaskClient, kind: str, code: str) -> None:
    data = images.encode(nonlesion.GENERATORS[kind](seed=3), ".png")
    page = client.post("/predict", data=_upload(data, f"{kind}.png"),
                       content_type="multipart/form-data").get_data(as_text=True)
    assert f'data-code="{code}"' in page
    assert page.index('class="warnings"') < page.index('class="score')


def test_get_predict_redirects_to_the_form(client: FlaskClient) -> None:
    for path, target in (("/predict", "/"), ("/patient/predict", "/patient")):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["Location"] == target


@pytest.mark.parametrize("training_data, heading, note", [
    ("", "not trained", "untrained placeholder"),
    ("2000 synthetic dermoscopy images", "trained on computer-drawn lesions",
     "never seen a real lesion"),
])
def test_demo_models_get_a_prominent_banner(tmp_path: Path, lesion_jpeg_bytes: bytes,
                                            training_data: str, heading: str,
                                            note: str) -> None:
    from tests.conftest import export_tiny
    from webapp.app import create_app

    demo = export_tiny(tmp_path, "demo", demo=True, training_data=training_data)
    client = create_app({"TESTING": True, "MODEL_PATH": str(demo),
                         "WTF_CSRF_ENABLED": False}).test_client()
    for page in (client.get("/"), client.post("/predict", data=_upload(lesion_jpeg_bytes),
                                              content_type="multipart/form-data")):
        text = page.get_data(as_text=True)
        # A labelled region, read when reached, not an alert announced on every page load.
        assert '<section class="demo-banner" aria-labelledby="demo-banner-title">' in text
        assert f'<h2 id="demo-banner-title">Demo model, {heading}</h2>' in text
        assert 'role="alert"' not in text
    api = client.post("/api/v1/predict", data=_upload(lesion_jpeg_bytes)).get_json()
    assert api["demo"] is True and api["model"]["demo"] is True
    assert note in api["disclaimer"]
    assert "not a diagnosis" in api["disclaimer"]


def test_api_page_has_curl_lines_spec_and_openapi_link(client: FlaskClient) -> None:
    page = client.get("/api").get_data(as_text=True)
    assert "curl -F image=@lesion.jpg http://localhost/api/v1/predict" in page
    assert "curl -F images=@back.jpg" in page and "/api/v1/patient" in page
    assert 'href="/api/v1/openapi.json"' in page
    assert "<th scope=\"row\">input_size</th><td><code>64</code>" in page
    assert 'href="/api"' in client.get("/").get_data(as_text=True), "linked from the UI"


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


def test_form_and_api_give_the_same_answer(client: FlaskClient,
                                           lesion_jpeg_bytes: bytes) -> None:
    api = client.post("/api/v1/predict", data=_upload(lesion_jpeg_bytes, tta="none")).get_json()
    page = client.post("/predict", data=_upload(lesion_jpeg_bytes, tta="none"),
                       content_type="multipart/form-data").get_data(as_text=True)
    shown = re.search(r'<data class="probability" value="([0-9.e-]+)">', page)
    assert shown is not None
    assert float(shown.group(1)) == pytest.approx(api["probability"], abs=1e-6)
    assert f"so its call is “{api['label']}”" in page


def _patient_upload(named: list[tuple[str, bytes]]) -> dict[str, object]:
    return {"images": [(io.BytesIO(data), name) for name, data in named]}


def _patient_set() -> list[tuple[str, bytes]]:
    alike = [(f"mole-{i}.jpg", images.encode(images.lesion_rgb(400, 300, seed=i), ".jpg"))
             for i in range(3)]
    odd = ("odd.jpg", images.encode(images.atypical_lesion_rgb(400, 300, seed=9), ".jpg"))
    return alike[:1] + [odd] + alike[1:]


def test_patient_page_ranks_by_probability_and_flags_the_odd_one(client: FlaskClient) -> None:
    response = client.post("/patient", data=_patient_upload(_patient_set()),
                           content_type="multipart/form-data")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "4 lesions of one person, compared" in page
    assert "The odd one out: odd.jpg" in page
    shown = [float(p) for p in re.findall(r'<tr data-probability="([0-9.e-]+)"', page)]
    assert len(shown) == 4 and shown == sorted(shown, reverse=True)
    assert re.search(r'class="odd">\s*<th scope="row"><span class="file">odd.jpg</span>', page)
    assert page.count('src="data:image/jpeg;base64,') == 4


@pytest.mark.parametrize("count, status, message", [
    (1, 400, "choose at least 2 photos"),
    (7, 413, "send at most 6 photos"),
])
def test_patient_form_bounds_the_number_of_photos(client: FlaskClient, count: int,
                                                  status: int, message: str) -> None:
    photo = images.encode(images.lesion_rgb(64, 64), ".jpg")
    response = client.post("/patient", data=_patient_upload([("a.jpg", photo)] * count),
                           content_type="multipart/form-data")
    assert response.status_code == status
    page = response.get_data(as_text=True)
    assert message in page and 'name="images"' in page and 'role="alert"' in page
