"""Keras and TensorFlow models (.keras, .h5, SavedModel) through export and the served API.

Every model here is written by TensorFlow itself; the reference is Keras's own `predict` on
pixels prepared by Keras's own `preprocess_input`.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from export import to_onnx
from inference import preprocess, tta
from inference.model_spec import read_spec_file
from tests import images, keras_models
from tests.producers import export

CONVENTIONS = {"efficientnet": "in-graph", "xception": "tf"}
# (family, format, input size, pixel convention): every format, size and convention once.
SERVED_CASES = [
    ("efficientnet", "keras", 256, "in-graph"),
    ("efficientnet", "h5", 384, "in-graph"),
    ("efficientnet", "savedmodel", 512, "in-graph"),
    ("xception", "keras", 256, "tf"),
    ("xception", "h5", 384, "caffe"),
    ("xception", "savedmodel", 512, "torch"),
    ("efficientnet", "tf-savedmodel", 256, "in-graph"),
]
SERVED_TOLERANCE = 1e-3


def _build(family: str, size: int, convention: str) -> Any:
    if family == "efficientnet":
        return keras_models.efficientnet_like(size)
    return keras_models.xception_like(size, convention)


def _flags(convention: str) -> list[str]:
    return [] if convention == "in-graph" else ["--keras-preprocessing", convention]


def _client(model: Path) -> FlaskClient:
    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(model), "WTF_CSRF_ENABLED": False})
    return app.test_client()


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = to_onnx.main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("family", "fmt", "size", "convention"), SERVED_CASES)
def test_served_answers_match_keras_predict(tmp_path: Path, family: str, fmt: str, size: int,
                                            convention: str) -> None:
    model = _build(family, size, convention)
    saved = keras_models.save(model, tmp_path, family, fmt)
    spec = export(saved, tmp_path / "model.onnx", *_flags(convention))
    assert spec.input_size == size
    assert float(spec.parity["max_abs_diff_probability"]) <= 1e-4  # type: ignore[arg-type]
    keras_input = keras_models.preprocess_input(convention)
    client = _client(tmp_path / "model.onnx")
    views = tta.views_for("dihedral")
    seen: list[float] = []
    for photo in keras_models.photos(size):
        body = client.post("/api/v1/predict?heatmap=true", data={
            "image": (io.BytesIO(images.encode(photo, ".png")), "lesion.png")}).get_json()
        expected = keras_models.predict(
            model, keras_input(np.stack([view.apply(photo) for view in views])))[:, -1]
        served = np.array([view["probability"] for view in body["tta"]["views"]])
        assert np.abs(served - expected).max() <= SERVED_TOLERANCE
        assert abs(body["probability"] - expected.mean()) <= SERVED_TOLERANCE
        assert np.asarray(body["heatmap"]["grid"]).size and body["heatmap_png_base64"]
        seen.extend(expected)
    # Answers that differ between images and views, so agreement within 1e-3 means something.
    assert np.ptp(seen) > 0.05


def test_in_graph_normalisation_is_never_applied_twice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = keras_models.efficientnet_like(256)
    saved = keras_models.save(model, tmp_path, "effnet", "keras")
    spec = export(saved, tmp_path / "model.onnx")
    photo = images.lesion_rgb(256, 256)
    fed = preprocess.to_model_input(photo[None], spec)[0].transpose(1, 2, 0)
    np.testing.assert_allclose(fed, photo, atol=1e-3)  # the graph gets the 0-255 pixels
    imagenet = preprocess_imagenet(photo)
    raw, twice = (keras_models.predict(model, x[None])[0, 0] for x in (photo, imagenet))
    assert abs(raw - twice) > 0.01  # normalising twice would change the answer
    for flags in (["--keras-preprocessing", "tf"],
                  ["--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"]):
        code, err = _run(capsys, str(saved), "-o", str(tmp_path / "twice.onnx"), *flags)
        assert code == 1 and "second time" in err and err.count("\n") == 1
    assert not (tmp_path / "twice.onnx").exists()


def preprocess_imagenet(photo: np.ndarray) -> np.ndarray:
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((photo / 255.0 - mean) / std).astype(np.float32)


def test_unknown_pixel_convention_is_refused_naming_the_choices(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = keras_models.save(keras_models.xception_like(128), tmp_path, "xc", "h5")
    code, err = _run(capsys, str(saved), "-o", str(tmp_path / "xc.onnx"))
    assert code == 1 and err.count("\n") == 1
    assert "--keras-preprocessing" in err and "--mean" in err
    assert all(f"{name}:" in err for name in ("in-graph", "tf", "caffe", "torch"))
    assert not (tmp_path / "xc.onnx").exists()


@pytest.mark.parametrize("family", sorted(CONVENTIONS))
def test_heatmap_equals_grad_cam_from_gradient_tape(tmp_path: Path, family: str) -> None:
    from inference.classifier import Classifier

    convention = CONVENTIONS[family]
    model = _build(family, 256, convention)
    saved = keras_models.save(model, tmp_path, family, "keras")
    export(saved, tmp_path / "model.onnx", *_flags(convention))
    classifier = Classifier(tmp_path / "model.onnx")
    views = tta.views_for("none")
    lit = 0
    for photo in keras_models.photos(256):
        _, batch = classifier.preprocess(photo, views)
        _, features = classifier.run_batch(batch)
        served = classifier.activation_map(features, views)
        cam = keras_models.grad_cam(model, keras_models.preprocess_input(convention)(photo[None]),
                                    "top", classifier.spec.melanoma_column)[0]
        # Both are normalised to their peak; a photo with no melanoma evidence anywhere
        # gives an empty map in both.
        np.testing.assert_allclose(served, cam / cam.max() if cam.max() > 0 else cam, atol=1e-3)
        lit += int(cam.max() > 0 and np.ptp(cam / cam.max()) > 0.2)
    assert lit >= 2  # maps with structure, neither empty nor flat


def _flatten(layers: Any, x: Any) -> Any:
    return layers.Dense(1, activation="sigmoid")(layers.Flatten()(x))


def _max_pool(layers: Any, x: Any) -> Any:
    return layers.Dense(1, activation="sigmoid")(layers.GlobalMaxPooling2D()(x))


def _hidden_dense(layers: Any, x: Any) -> Any:
    hidden = layers.Dense(8, activation="relu")(layers.GlobalAveragePooling2D()(x))
    return layers.Dense(1, activation="sigmoid")(hidden)


def _three_classes(layers: Any, x: Any) -> Any:
    return layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(x))


def _logit_only(layers: Any, x: Any) -> Any:
    return layers.Dense(1)(layers.GlobalAveragePooling2D()(x))


@pytest.mark.parametrize(("head", "reason"), [
    (_flatten, "not GlobalAveragePooling2D + Dense"),
    (_max_pool, "not GlobalAveragePooling2D + Dense"),
    (_hidden_dense, "not linear"),
    (_three_classes, "unsupported head: softmax over 3 outputs"),
    (_logit_only, "does not end in sigmoid or softmax"),
], ids=["flatten", "global-max-pool", "hidden-dense", "three-classes", "logit-output"])
def test_heads_without_a_class_activation_map_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], head: Any, reason: str) -> None:
    saved = keras_models.save(keras_models.head_model(64, head), tmp_path, "m", "keras")
    code, err = _run(capsys, str(saved), "-o", str(tmp_path / "m.onnx"),
                     "--keras-preprocessing", "tf")
    assert code == 1 and reason in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_unreadable_keras_inputs_are_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = keras_models.save(keras_models.xception_like(64), tmp_path, "xc", "keras")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(saved.read_bytes()[:2000])
    folder = tmp_path / "not_a_savedmodel"
    folder.mkdir()
    for path, reason in ((truncated, "not a readable Keras or TensorFlow model"),
                         (folder, "not a TensorFlow SavedModel")):
        code, err = _run(capsys, str(path), "-o", str(tmp_path / "x.onnx"))
        assert code == 1 and reason in err and err.count("\n") == 1
    code, err = _run(capsys, str(saved), "-o", str(tmp_path / "x.onnx"), "--arch", "resnest50d")
    assert code == 1 and "--arch" in err


def test_parity_failure_publishes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from export import keras_graph

    original = keras_graph.ServedGraph.run

    def drifted(self: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = original(self, batch)
        return logits, features + 0.05

    monkeypatch.setattr(keras_graph.ServedGraph, "run", drifted)
    saved = keras_models.save(keras_models.efficientnet_like(64), tmp_path, "e", "keras")
    code, err = _run(capsys, str(saved), "-o", str(tmp_path / "e.onnx"))
    assert code == 1 and "ONNX Runtime disagrees with Keras" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.keras"]


@pytest.mark.slow
def test_full_size_efficientnet_b3_at_384_serves_keras_predictions(tmp_path: Path) -> None:
    k = keras_models.keras()
    base = k.applications.EfficientNetB3(weights=None, include_top=False,
                                         input_shape=(384, 384, 3))
    pooled = k.layers.Dropout(0.3)(k.layers.GlobalAveragePooling2D()(base.output))
    model = k.Model(base.input, k.layers.Dense(1, activation="sigmoid")(pooled))
    saved = keras_models.save(model, tmp_path, "efficientnet_b3", "keras")
    spec = export(saved, tmp_path / "b3.onnx")
    assert (spec.input_size, spec.mean, spec.feature_channels) == (384, (0.0, 0.0, 0.0), 1536)
    client = _client(tmp_path / "b3.onnx")
    for photo in keras_models.photos(384)[:2]:
        body = client.post("/api/v1/predict?tta=none&heatmap=true", data={
            "image": (io.BytesIO(images.encode(photo, ".png")), "lesion.png")}).get_json()
        expected = keras_models.predict(model, photo[None].astype(np.float32))[0, 0]
        assert abs(body["probability"] - expected) <= SERVED_TOLERANCE
        assert body["heatmap_png_base64"]
    assert read_spec_file(tmp_path / "b3.onnx").checkpoint_format.startswith("Keras 3 .keras")


def test_a_fine_tuned_base_model_gives_the_architecture_its_name(tmp_path: Path) -> None:
    k = keras_models.keras()
    base = keras_models.head_model(64, lambda layers, x: layers.Conv2D(8, 1)(x))
    base.name = "xception"
    image = k.Input((64, 64, 3))
    pooled = k.layers.GlobalAveragePooling2D()(base(image))
    model = k.Model(image, k.layers.Dense(1, activation="sigmoid")(pooled))
    saved = keras_models.save(model, tmp_path, "finetuned", "keras")
    spec = export(saved, tmp_path / "m.onnx", "--keras-preprocessing", "tf")
    assert (spec.architecture, spec.architecture_library) == ("xception", "keras")
