"""Fold ensembles: several checkpoints into one verified model, served like one network."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from export import to_onnx
from export.demo import write_lightning_checkpoint
from export.ensemble import area_matrix
from export.model_file import rewrite_metadata
from export.timm_runtime import import_timm
from inference import preprocess
from inference.classifier import Classifier
from inference.errors import ModelLoadError
from inference.model_spec import IMAGENET_MEAN, IMAGENET_STD, SPEC_METADATA_KEY, read_spec_file
from inference.tta import views_for
from tests import images
from tests.producers import spread_weights

TOLERANCE = 1e-4
# Two folds of one network at 64 px (sigmoid) and an EfficientNet at 96 px trained on BGR with
# its own statistics (softmax): sizes, grids (2 and 3 cells), heads and colours all differ.
MEMBERS: tuple[tuple[str, str, int, int, dict[str, Any]], ...] = (
    ("fold0.ckpt", "resnet18", 1, 64, {}),
    ("fold1.ckpt", "resnet18", 1, 64, {}),
    ("effnet.ckpt", "efficientnet_b0", 2, 96,
     {"color_order": "BGR", "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.2, 0.3]}),
)
WEIGHTS = (1.0, 1.0, 2.0)


def _network(name: str, classes: int, seed: int, size: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = import_timm().create_model(name, pretrained=False, num_classes=classes)
    model = spread_weights(model, size, seed)
    with torch.no_grad():  # evidence somewhere, so the maps are not all zero
        model.get_classifier().weight.abs_()
    return model.eval()


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("folds")
    made = []
    for seed, (filename, name, classes, size, extra) in enumerate(MEMBERS):
        network = _network(name, classes, seed, size)
        hparams = {"model_name": name, "image_size": size, **extra}
        path = write_lightning_checkpoint(directory / filename, network.state_dict(), hparams)
        made.append({"path": path, "network": network, "size": size, "classes": classes,
                     "color_order": extra.get("color_order", "RGB"),
                     "mean": extra.get("mean", IMAGENET_MEAN),
                     "std": extra.get("std", IMAGENET_STD)})
    return made


@pytest.fixture(scope="module")
def ensemble(members: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("ensemble") / "folds.onnx"
    code = to_onnx.main([*(str(m["path"]) for m in members), "-o", str(output),
                         "--weights", *map(str, WEIGHTS)])
    assert code == 0
    return output


def _member_probability(member: dict[str, Any], seen_rgb: np.ndarray) -> float:
    """What the member's own network says about the ensemble's input, prepared independently:
    OpenCV's area resampling of the square image, then the member's colours and statistics."""
    pixels = seen_rgb.astype(np.float32) / 255.0
    if member["size"] != pixels.shape[0]:
        pixels = cv2.resize(pixels, (member["size"], member["size"]),
                            interpolation=cv2.INTER_AREA)
    if member["color_order"] == "BGR":
        pixels = pixels[..., ::-1]
    normalised = (pixels - np.asarray(member["mean"])) / np.asarray(member["std"])
    batch = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)[None]))
    with torch.inference_mode():
        logits = member["network"](batch.float()).double()
    if member["classes"] == 1:
        return float(torch.sigmoid(logits[0, 0]))
    return float(torch.softmax(logits, dim=1)[0, 1])


def test_the_spec_lists_every_member_with_its_weight_size_and_parity(
        ensemble: Path, members: list[dict[str, Any]]) -> None:
    spec = read_spec_file(ensemble)
    assert spec.architecture == "ensemble of 3 models"
    assert spec.architecture_label == "ensemble of 3 models: resnet18 x2, efficientnet_b0 x1"
    assert spec.input_size == 96
    assert (spec.color_order, spec.mean, spec.std) == ("BGR", (0.5, 0.45, 0.4), (0.25, 0.2, 0.3))
    assert [m["input_size"] for m in spec.members] == [64, 64, 96]
    np.testing.assert_allclose(spec.member_weights, [0.25, 0.25, 0.5])
    sha = [m["checkpoint_sha256"] for m in spec.members]
    assert sha == [read_sha(m["path"]) for m in members]
    assert all(m["parity"]["max_abs_diff_probability"] <= TOLERANCE for m in spec.members)
    assert spec.parity["batch_sizes"] == [1, 8]
    assert spec.feature_channels == 512 + 512 + 1280
    provenance = json.loads(ensemble.with_name(ensemble.name + ".provenance.json").read_text())
    assert provenance["spec"]["members"][2]["checkpoint_name"] == "effnet.ckpt"


def read_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_served_probability_is_the_weighted_mean_of_each_member_on_its_own_input(
        ensemble: Path, members: list[dict[str, Any]]) -> None:
    classifier = Classifier(ensemble)
    classifier.warm_up()
    for seed in range(3):
        photo = images.lesion_rgb(320, 240, seed=seed)
        seen = preprocess.fit_to_input(photo, classifier.spec)
        expected = sum(w * _member_probability(m, seen)
                       for w, m in zip(classifier.spec.member_weights, members, strict=True))
        served = classifier.predict(photo, "none").probability
        assert abs(served - expected) <= TOLERANCE, (seed, served, expected)


def test_the_heatmap_is_the_weighted_mean_of_the_members_grad_cams(
        ensemble: Path, members: list[dict[str, Any]]) -> None:
    classifier = Classifier(ensemble)
    seen = preprocess.fit_to_input(images.lesion_rgb(300, 200, seed=9), classifier.spec)
    batch = preprocess.to_model_input(seen[None], classifier.spec)
    _, features = classifier.run_batch(batch)
    ours = classifier.activation_map(features, views_for("none"))

    grid = features.shape[-1]
    combined = np.zeros((grid, grid))
    for weight, member in zip(classifier.spec.member_weights, members, strict=True):
        combined += weight * _grad_cam_in_logit_units(member, seen, grid)
    expected = np.maximum(combined, 0.0)
    assert expected.max() > 0
    # float32 sums over 2,304 channels whose terms cancel: 1e-3 of the peak (a wrong weight,
    # grid or member order moves cells by tenths).
    np.testing.assert_allclose(ours, expected / expected.max(), atol=1e-3)


def _grad_cam_in_logit_units(member: dict[str, Any], seen_rgb: np.ndarray,
                             grid: int) -> np.ndarray:
    """Grad-CAM of the member's melanoma log-odds on its last feature map, with the channel
    weights summed (not averaged) over the cells so members of different grids share one
    scale, before the ReLU (applied once, to the ensemble), resampled to the common grid."""
    pixels = seen_rgb.astype(np.float32) / 255.0
    if member["size"] != pixels.shape[0]:
        pixels = cv2.resize(pixels, (member["size"],) * 2, interpolation=cv2.INTER_AREA)
    if member["color_order"] == "BGR":
        pixels = pixels[..., ::-1]
    normalised = (pixels - np.asarray(member["mean"])) / np.asarray(member["std"])
    batch = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])).float()
    network = member["network"]
    features = network.forward_features(batch)
    logits = network.forward_head(features)[0]
    log_odds = logits[0] if member["classes"] == 1 else logits[1] - logits[0]
    (gradient,) = torch.autograd.grad(log_odds, features)
    alphas = gradient.sum(dim=(2, 3), keepdim=True)
    cam = (alphas * features).sum(dim=1)[0].detach().double().numpy()
    resample = area_matrix(grid, cam.shape[0])
    return resample @ cam @ resample.T


def test_area_resampling_keeps_the_mean_and_equals_pooling_for_whole_factors() -> None:
    rng = np.random.default_rng(0)
    for size_in, size_out in ((2, 3), (3, 2), (4, 12), (12, 16), (16, 12), (96, 64)):
        matrix = area_matrix(size_out, size_in)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
        values = rng.normal(size=(size_in, size_in))
        np.testing.assert_allclose((matrix @ values @ matrix.T).mean(), values.mean())
    values = rng.normal(size=(8, 8)).astype(np.float32)
    pooled = cv2.resize(values, (4, 4), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(area_matrix(4, 8) @ values @ area_matrix(4, 8).T, pooled,
                               atol=1e-6)


def test_api_and_page_say_ensemble_of_n_models(ensemble: Path) -> None:
    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(ensemble),
                      "WTF_CSRF_ENABLED": False})
    client = app.test_client()
    model = client.get("/api/v1/model").get_json()
    assert model["architecture"] == "ensemble of 3 models"
    assert model["ensemble_size"] == 3
    assert [m["weight"] for m in model["members"]] == [0.25, 0.25, 0.5]
    assert not any("checkpoint_name" in m for m in model["members"])
    photo = io.BytesIO()
    Image.fromarray(images.lesion_rgb(300, 200, seed=2)).save(photo, "JPEG", quality=95)
    page = client.post("/predict", data={"image": (io.BytesIO(photo.getvalue()), "lesion.jpg")},
                       content_type="multipart/form-data")
    assert page.status_code == 200
    assert "ensemble of 3 models: resnet18 x2, efficientnet_b0 x1" in page.get_data(as_text=True)
    answer = client.post("/api/v1/predict?heatmap=1",
                         data={"image": (io.BytesIO(photo.getvalue()), "lesion.jpg")},
                         content_type="multipart/form-data").get_json()
    assert answer["model"]["architecture"] == "ensemble of 3 models"
    assert np.asarray(answer["heatmap"]["grid"]).shape == (3, 3)


def test_a_file_whose_member_weights_were_altered_is_refused(
        ensemble: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(ensemble.read_bytes())
    props = {p.key: p.value for p in onnx.load(str(tampered)).metadata_props}
    spec = json.loads(props[SPEC_METADATA_KEY])
    spec["members"][0]["weight"], spec["members"][2]["weight"] = 0.5, 0.25
    rewrite_metadata(tampered, {SPEC_METADATA_KEY: json.dumps(spec)})
    with pytest.raises(ModelLoadError, match="the file was altered"):
        Classifier(tampered).warm_up()


@pytest.mark.parametrize("extra, message", [
    (["--weights", "1", "2"], "--weights gives 2 values for 3 checkpoints"),
    (["--weights", "1", "-1", "1"], "--weights must all be positive"),
    (["--input-size", "64", "96"], "--input-size takes one value for all members or one per"),
    (["--resize", "center-crop", "--threshold", "0.4"], None),
])
def test_ensemble_flags_are_checked(members: list[dict[str, Any]], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], extra: list[str],
                                    message: str | None) -> None:
    output = tmp_path / "e.onnx"
    code = to_onnx.main([*(str(m["path"]) for m in members), "-o", str(output), *extra])
    if message is None:
        assert code == 0
        spec = read_spec_file(output)
        assert (spec.resize, spec.threshold) == ("center-crop", 0.4)
        return
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert message in error
    assert len(error.splitlines()) == 1
    assert not output.exists()


def test_members_that_disagree_on_threshold_or_fit_are_refused_in_one_line(
        members: list[dict[str, Any]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    network = members[0]["network"]
    odd = write_lightning_checkpoint(tmp_path / "odd.ckpt", network.state_dict(),
                                     {"model_name": "resnet18", "image_size": 64,
                                      "threshold": 0.3})
    assert to_onnx.main([str(members[0]["path"]), str(odd), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "the members' thresholds differ (0.3, 0.5); pass --threshold" in \
        capsys.readouterr().err
    cropped = write_lightning_checkpoint(tmp_path / "crop.ckpt", network.state_dict(),
                                         {"model_name": "resnet18", "image_size": 64,
                                          "resize": "center-crop"})
    assert to_onnx.main([str(members[0]["path"]), str(cropped), "-o",
                         str(tmp_path / "y.onnx")]) == 1
    assert "the members fit photos differently (resize: center-crop, resize)" in \
        capsys.readouterr().err


def test_one_checkpoint_with_ensemble_flags_is_a_usage_error(
        members: list[dict[str, Any]]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        to_onnx.main([str(members[0]["path"]), "--weights", "1"])
    assert exit_info.value.code == 2
