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

from webapp.model_spec import read_spec_file
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
                             "architecture": "resnest14_fast_4s1x64d", "demo": False}
    assert body["demo"] is False
    assert body["timing_ms"]["total"] > 0 and body["timing_ms"]["inference"] > 0
    assert body["image"] == {"width": 320, "height": 240}
    assert "not a diagnosis" in body["disclaimer"]
    assert "heatmap_png_base64" not in body
    assert response.headers["Cache-Control"] == "no-store"


def test_heatmap_is_an_optional_png(client: FlaskClient, lesion_jpeg_bytes: bytes) -> None:
    body = client.post("/api/v1/predict?heatmap=true&tta=none",
                       data=_upload(lesion_jpeg_bytes)).get_json()
    png = base64.b64decode(body["heatmap_png_base64"])
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (64, 64, 3)
    assert len(body["tta"]["views"]) == 1


def test_options_may_come_as_form_fields(client: FlaskClient, lesion_jpeg_bytes: bytes) -> None:
    data = {**_upload(lesion_jpeg_bytes), "tta": "flips", "heatmap": "1"}
    body = client.post("/api/v1/predict", data=data).get_json()
    assert body["tta"]["policy"] == "flips" and "heatmap_png_base64" in body


def test_model_endpoint_returns_the_embedded_spec(client: FlaskClient,
                                                  tiny_onnx_model: Path) -> None:
    body = client.get("/api/v1/model").get_json()
    assert body == read_spec_file(tiny_onnx_model).as_dict()
    assert body["input_size"] == 64 and body["trained"] is True


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
