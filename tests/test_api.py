"""The JSON API: predictions, the model spec, health, and errors as JSON with the right status."""
from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from inference.model_spec import read_spec_file
from webapp.service import service_of


def _upload(data: bytes, name: str = "lesion.jpg") -> dict[str, object]:
    return {"image": (io.BytesIO(data), name)}


def test_predict_returns_everything_a_client_needs(client: FlaskClient,
                                                   lesion_jpeg_bytes: bytes) -> None:
    response = client.post("/api/v1/predict", data=_upload(lesion_jpeg_bytes))
    body = response.get_json()
    assert response.status_code == 200
    assert 0.0 <= body["probability"] <= 1.0
    assert body["label"] in ("benign", "melanoma")
    assert body["positive"] == (body["probability"] >= body["threshold"])
    assert body["tta"]["policy"] == "dihedral" and len(body["tta"]["views"]) == 8
    assert body["tta"]["spread"] >= 0
    assert body["model"] == {"name": "tiny", "version": "1",
                             "architecture": "resnest14_fast_4s1x64d", "demo": False,
                             "precision": "fp32"}
    assert body["demo"] is False
    assert body["timing_ms"]["total"] > 0 and body["timing_ms"]["inference"] > 0
    assert body["image"] == {"width": 320, "height": 240}
    assert "not a diagnosis" in body["disclaimer"]
    assert "heatmap_png_base64" not in body
    assert body["warnings"] == []
    grid = np.asarray(body["heatmap"]["grid"])
    assert grid.ndim == 2 and ((grid >= 0) & (grid <= 1)).all()
    assert response.headers["Cache-Control"] == "no-store"


def test_heatmap_is_an_optional_png(client: FlaskClient, lesion_jpeg_bytes: bytes) -> None:
    body = client.post("/api/v1/predict?heatmap=true&tta=none",
                       data=_upload(lesion_jpeg_bytes)).get_json()
    png = base64.b64decode(body["heatmap_png_base64"])
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (240, 320, 3), "drawn over the photo, in the photo's own aspect"
    assert len(body["tta"]["views"]) == 1


def test_options_may_come_as_form_fields(client: FlaskClient, lesion_jpeg_bytes: bytes) -> None:
    data = {**_upload(lesion_jpeg_bytes), "tta": "flips", "heatmap": "1"}
    body = client.post("/api/v1/predict", data=data).get_json()
    assert body["tta"]["policy"] == "flips" and "heatmap_png_base64" in body


def test_model_endpoint_returns_the_public_part_of_the_embedded_spec(
        client: FlaskClient, tiny_onnx_model: Path) -> None:
    body = client.get("/api/v1/model").get_json()
    spec = read_spec_file(tiny_onnx_model).as_dict()
    # Everything shown is the spec's own value (precision is derived from its quantization
    # record); what is held back: tests/test_anonymous_clients
    assert body.pop("precision") == "fp32"
    # Derived at start from the memory budget (inference/memory.py), not from the spec.
    assert body.pop("memory") == {"views_per_run": 8, "fits_budget": True}
    # Decided at start (inference/precision.py): no INT8 model lies beside this one.
    assert "no INT8 model beside it" in body.pop("precision_choice")["reason"]
    assert body == {name: spec[name] for name in body}
    assert body["input_size"] == 64 and body["trained"] is True
    assert body["origin"] == "user_model"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"


@contextmanager
def _hung_model(app: Flask) -> Iterator[threading.Event]:
    """Predictions block inside the network until the yielded event is set."""
    release = threading.Event()
    classifier = service_of(app).classifier
    real = classifier.run_batch

    def hang(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        release.wait(30)
        return real(batch)

    classifier.run_batch = hang  # type: ignore[method-assign]
    try:
        yield release
    finally:
        release.set()
        del classifier.run_batch


def _post_in_background(app: Flask, data: bytes) -> tuple[threading.Thread, list[int]]:
    statuses: list[int] = []
    thread = threading.Thread(target=lambda: statuses.append(
        app.test_client().post("/api/v1/predict", data=_upload(data)).status_code))
    thread.start()
    return thread, statuses


def _until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_readiness_fails_while_a_prediction_is_stuck_and_recovers(
        tiny_onnx_model: Path, lesion_jpeg_bytes: bytes) -> None:
    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model),
                      "STUCK_AFTER_SECONDS": 0.2})
    client = app.test_client()
    with _hung_model(app) as release:
        thread, statuses = _post_in_background(app, lesion_jpeg_bytes)
        assert _until(lambda: client.get("/readyz").status_code == 503)
        body = client.get("/readyz").get_json()
        assert body["status"] == "not ready" and "running for" in body["reason"]
        release.set()
        thread.join(30)
    assert statuses == [200]
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("request_kwargs, status, error", [
    ({"data": {}}, 415, "unsupported_content_type"),
    ({"data": {"file": (io.BytesIO(b"x"), "a.jpg")}}, 400, "missing_image"),
    ({"data": {"image": [(io.BytesIO(b"a"), "a.jpg"), (io.BytesIO(b"b"), "b.jpg")]}}, 400,
     "multiple_images"),
    ({"data": {"image": (io.BytesIO(b""), "a.jpg")}}, 400, "empty_image"),
    ({"data": {"image": (io.BytesIO(b"<html>hi</html>"), "a.jpg")}}, 415,
     "unsupported_media_type"),
    ({"data": b'{"image": "base64..."}', "content_type": "application/json"}, 415,
     "unsupported_content_type"),
])
def test_bad_requests_get_json_errors_with_the_right_status(
        client: FlaskClient, request_kwargs: dict[str, object], status: int,
        error: str) -> None:
    response = client.post("/api/v1/predict", **request_kwargs)
    body = response.get_json()
    assert response.status_code == status, body
    assert body["error"] == error and body["message"]


def test_missing_field_message_names_what_was_sent(client: FlaskClient) -> None:
    body = client.post("/api/v1/predict",
                       data={"photo": (io.BytesIO(b"x"), "a.jpg")}).get_json()
    assert "expected a file in the field 'image'" in body["message"]
    assert "'photo'" in body["message"]


@pytest.mark.parametrize("query, message", [
    ("tta=spin", "unknown TTA policy 'spin'"),
    ("heatmap=maybe", "heatmap must be true or false"),
])
def test_bad_options_are_400_with_a_reason(client: FlaskClient, lesion_jpeg_bytes: bytes,
                                           query: str, message: str) -> None:
    response = client.post(f"/api/v1/predict?{query}", data=_upload(lesion_jpeg_bytes))
    assert response.status_code == 400 and message in response.get_json()["message"]


def test_oversized_body_is_413_json(tiny_onnx_model: Path) -> None:
    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model),
                      "MAX_CONTENT_LENGTH": 100_000})
    response = app.test_client().post("/api/v1/predict",
                                      data=_upload(b"\xff\xd8" + b"\0" * 200_000))
    assert response.status_code == 413
    assert response.get_json() == {"error": "request_entity_too_large", "message":
                                   "The upload is larger than the 97 KB this server accepts."}


def test_unknown_api_route_is_json_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/nope")
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"


def test_wrong_method_is_json_405(client: FlaskClient) -> None:
    response = client.get("/api/v1/predict")
    assert response.status_code == 405 and response.get_json()["error"] == "method_not_allowed"


def test_saturated_server_answers_503_with_retry_after_then_recovers(
        tiny_onnx_model: Path, lesion_jpeg_bytes: bytes) -> None:
    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model),
                      "MAX_RUNNING": 1, "MAX_WAITING": 1, "QUEUE_TIMEOUT": 0.2})
    client = app.test_client()
    with _hung_model(app) as release:
        thread, statuses = _post_in_background(app, lesion_jpeg_bytes)
        assert _until(lambda: service_of(app).gate.longest_running() > 0)
        response = client.post("/api/v1/predict", data=_upload(lesion_jpeg_bytes))
        assert response.status_code == 503
        assert response.get_json()["error"] == "overloaded"
        assert int(response.headers["Retry-After"]) >= 1
        release.set()
        thread.join(30)
    assert statuses == [200], "the prediction that held the slot is still answered"
    assert client.post("/api/v1/predict", data=_upload(lesion_jpeg_bytes)).status_code == 200


@pytest.mark.parametrize("kind, code", [("landscape", "not_a_lesion"), ("text", "not_a_lesion"),
                                        ("blurred", "blurry"), ("dark", "too_dark"),
                                        ("bright", "too_bright")])
def test_unsuitable_photos_come_with_warnings(client: FlaskClient, kind: str, code: str) -> None:
    from tests import images, nonlesion

    lesion = images.lesion_rgb(480, 360, seed=2)
    made = {"blurred": lambda: cv2.GaussianBlur(lesion, (0, 0), 10),
            "dark": lambda: (lesion * 0.15).astype(np.uint8),
            "bright": lambda: np.clip(lesion.astype(int) + 120, 0, 255).astype(np.uint8),
            "landscape": lambda: nonlesion.landscape(seed=5),
            "text": lambda: nonlesion.text_page(seed=5)}[kind]()
    body = client.post("/api/v1/predict?tta=none",
                       data=_upload(images.encode(made, ".png"), f"{kind}.png")).get_json()
    codes = [w["code"] for w in body["warnings"]]
    assert code in codes
    assert all(set(w) == {"code", "message"} and w["message"] for w in body["warnings"])


def _patient(named: list[tuple[str, bytes]]) -> dict[str, object]:
    return {"images": [(io.BytesIO(data), name) for name, data in named]}


def test_patient_endpoint_ranks_lesions_and_names_the_odd_one(client: FlaskClient) -> None:
    from tests import images

    named = [(f"mole-{i}.jpg", images.encode(images.lesion_rgb(400, 300, seed=i), ".jpg"))
             for i in range(3)]
    named.insert(1, ("odd.jpg", images.encode(images.atypical_lesion_rgb(seed=4), ".jpg")))
    response = client.post("/api/v1/patient?tta=none", data=_patient(named))
    body = response.get_json()
    assert response.status_code == 200
    assert [lesion["filename"] for lesion in body["lesions"]] == [n for n, _ in named]
    assert body["odd_one_out"] == 1 and body["lesions"][1]["standing"]["odd_one_out"] is True
    assert body["lesions"][1]["standing"]["difference_rank"] == 1
    ranks = sorted(lesion["standing"]["probability_rank"] for lesion in body["lesions"])
    assert ranks == [1, 2, 3, 4]
    by_rank = sorted(body["lesions"], key=lambda lesion: lesion["standing"]["probability_rank"])
    assert [x["probability"] for x in by_rank] == sorted(
        [x["probability"] for x in by_rank], reverse=True)
    assert all("warnings" in lesion for lesion in body["lesions"])


def test_patient_endpoint_bounds_count_pixels_and_names_the_bad_file(
        tiny_onnx_model: Path) -> None:
    from tests import images
    from webapp.app import create_app

    client = create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model),
                         "MAX_PATIENT_IMAGES": 3, "MAX_PATIENT_PIXELS": 500_000}).test_client()
    small = images.encode(images.lesion_rgb(200, 150), ".jpg")
    big = images.encode(images.lesion_rgb(640, 480), ".jpg")
    cases = [
        ([("a.jpg", small)] * 4, 413, "too_many_images"),
        ([("a.jpg", big), ("b.jpg", big)], 413, "images_too_large"),
        ([("a.jpg", small), ("notes.jpg", b"hello, not a photo")], 415, "unsupported_media_type"),
        ([("a.jpg", small), ("empty.jpg", b"")], 400, "empty_image"),
    ]
    for named, status, error in cases:
        response = client.post("/api/v1/patient", data=_patient(named))
        body = response.get_json()
        assert response.status_code == status and body["error"] == error, body
    named_error = client.post("/api/v1/patient", data=_patient(cases[2][0])).get_json()
    assert named_error["message"].startswith("notes.jpg: ")


def test_openapi_document_describes_every_endpoint(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {"/api/v1/predict", "/api/v1/patient", "/api/v1/model",
                                      "/api/v1/openapi.json"}
    result = document["components"]["schemas"]["Result"]
    assert "warnings" in result["required"]
    assert document["servers"] == [{"url": "http://localhost"}]
    maximum = document["paths"]["/api/v1/patient"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]["images"]["maxItems"]
    assert maximum == 6
