"""One path for every upload: the worker moves bytes, the decode sandbox parses them.

The sandbox's fork server is a fresh interpreter, so replacing the header reader and the
decoders in this process (the worker) leaves the sandbox's copies alone: a route that still
parses an upload's bytes in the worker fails here.
"""
from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import cv2
import pytest
from flask import Flask
from flask.testing import FlaskClient

from inference import image_header, pixels, preprocess
from tests import bombs, images
from webapp.admission import InferenceGate
from webapp.app import create_app
from webapp.errors import Overloaded
from webapp.service import service_of

UPLOAD_ROUTES = ("/api/v1/predict", "/predict", "/api/v1/patient", "/patient")
PARSERS: tuple[Callable[..., object], ...] = (
    image_header.read_header, preprocess.decode_image, preprocess.prepare,
    preprocess.jpeg_scale, pixels.to_rgb8)


def _photo(seed: int) -> bytes:
    return images.encode(images.lesion_rgb(seed=seed), ".jpg")


def _body(route: str, photos: list[tuple[str, bytes]]) -> dict[str, object]:
    if route.endswith("patient"):
        return {"images": [(io.BytesIO(data), name) for name, data in photos]}
    ((name, data),) = photos
    return {"image": (io.BytesIO(data), name)}


def _forbidden(*args: object, **kwargs: object) -> object:
    raise AssertionError("an upload's bytes were parsed in the worker, outside the sandbox")


@pytest.fixture
def worker_without_parsers(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """The app (model loaded, warmed up) with every parser of upload bytes in this process
    replaced by one that fails: by code object, so every name bound to them is caught."""
    for parser in PARSERS:
        monkeypatch.setattr(parser, "__code__", _forbidden.__code__)
    monkeypatch.setattr(cv2, "imdecode", _forbidden)
    return app


@pytest.mark.parametrize("route", UPLOAD_ROUTES)
def test_no_route_parses_an_upload_in_the_worker(worker_without_parsers: Flask,
                                                 route: str) -> None:
    # Before: the patient routes read each photo's header in the worker (AssertionError, 500).
    client = worker_without_parsers.test_client()
    photos = [("a.jpg", _photo(1))] if not route.endswith("patient") else [
        ("a.jpg", _photo(1)), ("b.jpg", _photo(2)), ("c.jpg", _photo(3))]
    response = client.post(f"{route}?tta=none", data=_body(route, photos))
    assert response.status_code == 200, response.get_data(as_text=True)[:400]


def test_the_replaced_parsers_do_fail_in_the_worker(worker_without_parsers: Flask) -> None:
    """The check above can fail: a parser called here raises."""
    with pytest.raises(AssertionError, match="outside the sandbox"):
        image_header.read_header(_photo(1))
    with pytest.raises(AssertionError, match="outside the sandbox"):
        preprocess.decode_image(_photo(1))


@pytest.mark.parametrize("route", ("/api/v1/patient", "/patient"))
@pytest.mark.parametrize("name", sorted(bombs.CRAFTED_HEADERS))
def test_crafted_header_beside_good_photos_is_refused_naming_it(client: FlaskClient, route: str,
                                                                name: str) -> None:
    photos = [("good-1.jpg", _photo(1)), (f"{name}.tif", bombs.CRAFTED_HEADERS[name]()),
              ("good-2.jpg", _photo(2))]
    response = client.post(route, data=_body(route, photos))
    assert 400 <= response.status_code < 500
    assert f"{name}.tif" in response.get_data(as_text=True)


def test_filename_with_a_line_break_is_refused_not_dropped(client: FlaskClient) -> None:
    # Before: 200, with that photo silently missing from the analysis.
    boundary = "seam"
    parts = b""
    for index, filename in enumerate(("a.jpg", "b\r\nc.jpg", "d.jpg")):
        parts += (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                  f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n').encode()
        parts += _photo(index) + b"\r\n"
    parts += f"--{boundary}--\r\n".encode()
    response = client.post("/api/v1/patient", data=parts,
                           content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "malformed_part" and "file name" in body["message"]


def test_patient_request_costs_one_rate_token_per_photo(tiny_onnx_model: object) -> None:
    app = create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model),
                      "WTF_CSRF_ENABLED": False, "RATELIMIT_PER_MINUTE": 4})
    client = app.test_client()
    photos = [("a.jpg", _photo(1)), ("b.jpg", _photo(2)), ("c.jpg", _photo(3))]
    assert client.post("/api/v1/patient?tta=none",
                       data=_body("/api/v1/patient", photos)).status_code == 200
    # Before: a patient request cost one allowance, so this single prediction went through.
    assert client.post("/api/v1/predict?tta=none",
                       data=_body("/api/v1/predict", photos[:1])).status_code == 200
    refused = client.post("/api/v1/predict?tta=none", data=_body("/api/v1/predict", photos[:1]))
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    over = client.post("/api/v1/patient?tta=none", data=_body("/api/v1/patient", photos))
    assert over.status_code == 429 and over.get_json()["error"] == "rate_limited"


def _hold(gate: InferenceGate, predictions: int, release: threading.Event) -> threading.Thread:
    """A request of `predictions` that holds the gate's slot until `release` is set."""
    admitted = threading.Event()

    def run() -> None:
        with gate.admit(predictions):
            admitted.set()
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert admitted.wait(5)
    return thread


def test_gate_counts_a_patient_request_as_its_photos() -> None:
    gate = InferenceGate(max_running=1, max_waiting=2, wait_timeout=2.0)
    for _ in range(30):
        gate.record(0.5)
    release = threading.Event()
    holder = _hold(gate, 6, release)
    try:
        started = time.monotonic()
        # Six predictions ahead at 0.5 s each: 3 s of work, past the 2 s a request may wait.
        with pytest.raises(Overloaded) as refused:
            with gate.admit(1):
                pass
        assert time.monotonic() - started < 0.5, "refused up front, not after waiting"
        assert refused.value.retry_after >= 3
    finally:
        release.set()
        holder.join()
    with gate.admit(1):
        pass


def test_gate_admits_while_the_work_ahead_fits_the_wait() -> None:
    gate = InferenceGate(max_running=1, max_waiting=2, wait_timeout=2.0)
    for _ in range(30):
        gate.record(0.5)
    release = threading.Event()
    holder = _hold(gate, 2, release)
    threading.Timer(0.3, release.set).start()
    with gate.admit(6):
        assert release.is_set()
    holder.join()


def test_admitted_request_keeps_its_slot_past_the_queue_timeout() -> None:
    """Work is never done and then thrown away: a long patient request runs to its end."""
    gate = InferenceGate(max_running=1, max_waiting=2, wait_timeout=0.2)
    done = []
    with gate.admit(6):
        for _ in range(6):
            time.sleep(0.1)
            done.append(1)
    assert len(done) == 6


@pytest.fixture
def served_app(tiny_onnx_model: object) -> Iterator[Flask]:
    yield create_app({"TESTING": True, "MODEL_PATH": str(tiny_onnx_model),
                      "WTF_CSRF_ENABLED": False})


def test_readyz_tells_of_a_frozen_decoder_and_recovers_by_itself(served_app: Flask) -> None:
    # Before: /readyz stayed 200 while every upload waited 8 s and got 422.
    client = served_app.test_client()
    assert client.get("/readyz").status_code == 200
    decoder = service_of(served_app)._decoder
    assert decoder._server is not None
    frozen = decoder._server.pid
    os.kill(frozen, signal.SIGSTOP)
    try:
        reply = client.get("/readyz")
        assert reply.status_code == 503 and "decoder" in reply.get_json()["reason"]
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/readyz").status_code == 200
        photo = _body("/api/v1/predict", [("a.jpg", _photo(1))])
        assert client.post("/api/v1/predict?tta=none", data=photo).status_code == 200
    finally:
        try:
            os.kill(frozen, signal.SIGKILL)
        except ProcessLookupError:
            pass
