"""The served label follows the model's own threshold, in the API and on the form."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from evaluation.model_file import write_threshold


def _client(model: Path) -> FlaskClient:
    from webapp.app import create_app

    return create_app({"TESTING": True, "MODEL_PATH": str(model),
                       "WTF_CSRF_ENABLED": False}).test_client()


def _api(client: FlaskClient, data: bytes) -> dict[str, object]:
    reply = client.post("/api/v1/predict?tta=none", data={"image": (io.BytesIO(data), "a.jpg")})
    assert reply.status_code == 200
    body: dict[str, object] = reply.get_json()
    return body


@pytest.fixture(scope="module")
def served_probability(tiny_onnx_model: Path, lesion_jpeg_bytes: bytes) -> float:
    probability = _api(_client(tiny_onnx_model), lesion_jpeg_bytes)["probability"]
    assert isinstance(probability, float) and 0.05 < probability < 0.95
    return probability


@pytest.mark.parametrize("offset, label", [(-0.04, "melanoma"), (+0.04, "benign")])
def test_label_flips_at_the_models_own_threshold(
        tiny_onnx_model: Path, tmp_path: Path, lesion_jpeg_bytes: bytes,
        served_probability: float, offset: float, label: str) -> None:
    # One threshold on each side of this image's probability: a server that compared
    # with 0.5, or with anything but the spec's threshold, gets one of the two wrong.
    threshold = round(served_probability + offset, 4)
    model = Path(shutil.copy(tiny_onnx_model, tmp_path / "model.onnx"))
    write_threshold(model, threshold)
    client = _client(model)

    body = _api(client, lesion_jpeg_bytes)
    assert body["threshold"] == threshold
    assert (body["label"], body["positive"]) == (label, label == "melanoma")

    page = client.post("/predict", data={"image": (io.BytesIO(lesion_jpeg_bytes), "a.jpg"),
                                         "tta": "none"},
                       content_type="multipart/form-data").get_data(as_text=True)
    side = "at or above" if label == "melanoma" else "below"
    assert f"This one is {side} that mark, so its call is “{label}”" in page
