"""The classifier: refuses bad models at start, batches TTA in one call, explains itself."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.architectures import ARCHITECTURES
from tests import images
from tests.conftest import TINY_ARCH
from inference import preprocess
from inference.classifier import Classifier, ModelLoadError
from inference.tta import make_batch, views_for
from inference.model_spec import CAM_WEIGHTS_METADATA_KEY, SPEC_METADATA_KEY, encode_cam_weights


@pytest.fixture(scope="module")
def classifier(tiny_onnx_model: Path) -> Classifier:
    model = Classifier(tiny_onnx_model)
    model.warm_up()
    return model


def _rewrite(source: Path, target: Path, change) -> Path:
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    change(props)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


def test_all_tta_views_go_through_one_onnx_runtime_call(
        classifier: Classifier, lesion_jpeg_bytes: bytes, monkeypatch: pytest.MonkeyPatch,
        ) -> None:
    calls: list[tuple[int, ...]] = []
    real = classifier.run_batch
    monkeypatch.setattr(classifier, "run_batch",
                        lambda batch: calls.append(batch.shape) or real(batch))
    prediction = classifier.predict(preprocess.decode_image(lesion_jpeg_bytes), "dihedral")
    assert calls == [(8, 3, 64, 64)]
    assert len(prediction.view_probabilities) == 8
    assert prediction.probability == pytest.approx(np.mean(prediction.view_probabilities))
    assert prediction.spread == pytest.approx(np.std(prediction.view_probabilities))


def test_label_follows_the_spec_threshold(classifier: Classifier,
                                          lesion_jpeg_bytes: bytes) -> None:
    prediction = classifier.predict(preprocess.decode_image(lesion_jpeg_bytes), "none")
    assert prediction.positive == (prediction.probability >= classifier.spec.threshold)
    assert prediction.label == classifier.spec.labels[int(prediction.positive)]


def test_dihedral_result_is_invariant_to_flipping_the_input(classifier: Classifier) -> None:
    photo = images.lesion_rgb(240, 240, seed=3)
    upright = classifier.predict(photo, "dihedral")
    for flipped in (photo[:, ::-1], photo[::-1], np.swapaxes(photo, 0, 1)):
        other = classifier.predict(np.ascontiguousarray(flipped), "dihedral")
        assert other.probability == pytest.approx(upright.probability, abs=1e-6)
    single = classifier.predict(np.ascontiguousarray(photo[:, ::-1]), "none")
    assert single.probability != pytest.approx(upright.view_probabilities[0], abs=1e-9)


def test_heatmap_views_are_mapped_back_before_averaging(classifier: Classifier) -> None:
    """The merged map of a flipped photo is the flipped merged map of the original."""
    photo = images.lesion_rgb(64, 64, seed=4)
    views = views_for("dihedral")

    def merged(image: np.ndarray) -> np.ndarray:
        seen = preprocess.fit_to_input(image, classifier.spec)
        _, features = classifier.run_batch(
            preprocess.to_model_input(make_batch(seen, views), classifier.spec))
        return classifier.activation_map(features, views)

    original = merged(photo)
    mirrored = merged(np.ascontiguousarray(photo[:, ::-1]))
    assert original.max() == pytest.approx(1.0)
    np.testing.assert_allclose(mirrored, original[:, ::-1], atol=1e-4)


def test_cam_matches_autograd_grad_cam_on_the_pytorch_model(
        classifier: Classifier, tiny_checkpoint: Path) -> None:
    network = ARCHITECTURES[TINY_ARCH].build(1).eval()
    state = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    network.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    seen = preprocess.fit_to_input(images.lesion_rgb(300, 200, seed=9), classifier.spec)
    batch = preprocess.to_model_input(seen[None], classifier.spec)

    captured: dict[str, torch.Tensor] = {}
    network.layer4.register_forward_hook(lambda m, i, out: captured.update(features=out))
    logit = network(torch.from_numpy(batch))[0, 0]
    features = captured["features"]
    (gradient,) = torch.autograd.grad(logit, features)
    alphas = gradient.mean(dim=(2, 3), keepdim=True)
    grad_cam = torch.relu((alphas * features).sum(dim=1))[0].detach().numpy()
    grad_cam /= grad_cam.max()

    _, onnx_features = classifier.run_batch(batch)
    ours = classifier.activation_map(onnx_features, views_for("none"))
    np.testing.assert_allclose(ours, grad_cam, atol=1e-4)
    assert np.corrcoef(ours.ravel(), grad_cam.ravel())[0, 1] > 0.999


def test_refuses_a_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found"):
        Classifier(tmp_path / "absent.onnx")


def test_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"definitely not protobuf" * 10)
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        Classifier(path)


def test_refuses_a_model_without_a_spec(tiny_onnx_model: Path, tmp_path: Path) -> None:
    bare = _rewrite(tiny_onnx_model, tmp_path / "bare.onnx", lambda props: props.clear())
    with pytest.raises(ModelLoadError, match="carries no spec"):
        Classifier(bare)


@pytest.mark.parametrize("field, value, message", [
    ("input_size", 128, "input 'image' is .* spec says \\[N, 3, 128, 128\\]"),
    ("output_kind", "softmax", "spec says 2 classes"),
    ("feature_channels", 512, "spec says 512 channels"),
])
def test_refuses_a_spec_that_contradicts_the_graph(
        tiny_onnx_model: Path, tmp_path: Path, field: str, value: object, message: str) -> None:
    def edit(props: dict[str, str]) -> None:
        spec = json.loads(props[SPEC_METADATA_KEY])
        spec[field] = value
        if field == "output_kind":
            spec["melanoma_index"] = 1
        props[SPEC_METADATA_KEY] = json.dumps(spec)

    with pytest.raises(ModelLoadError, match=message):
        Classifier(_rewrite(tiny_onnx_model, tmp_path / "lying.onnx", edit))


def test_refuses_cam_weights_that_do_not_belong_to_the_graph(
        tiny_onnx_model: Path, tmp_path: Path) -> None:
    def edit(props: dict[str, str]) -> None:
        props[CAM_WEIGHTS_METADATA_KEY] = encode_cam_weights(np.ones(2048, np.float32), 0.0)

    model = Classifier(_rewrite(tiny_onnx_model, tmp_path / "swapped.onnx", edit))
    with pytest.raises(ModelLoadError, match="do not reproduce the graph's logits"):
        model.warm_up()
    assert not model.warmed_up
