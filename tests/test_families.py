"""timm families beside the resnest package: detection, naming, ambiguity, parity, heatmap."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from export import architectures, to_onnx
from export.demo import write_lightning_checkpoint
from export.errors import ExportError
from export.timm_runtime import import_timm
from tests import images
from tests.producers import export, max_probability_gap, spread_weights
from inference import preprocess
from inference.classifier import Classifier
from inference.tta import views_for

TOLERANCE = 1e-4


def _timm(name: str, num_classes: int = 1, seed: int = 0, size: int = 32) -> Any:
    torch.manual_seed(seed)
    model = import_timm().create_model(name, pretrained=False, num_classes=num_classes)
    return spread_weights(model, size, seed)


def _meta_state(name: str) -> dict[str, torch.Tensor]:
    """Weights of the right keys and shapes, without memory: enough for detection."""
    with torch.device("meta"):
        return architectures.ARCHITECTURES[name].build(1).state_dict()


@pytest.mark.parametrize("name, hparams, expected", [
    ("seresnext50_32x4d", {}, "seresnext50_32x4d"),
    ("resnet50d", {"image_size": 32}, "resnet50d"),
    ("tf_efficientnet_b0", {"model_name": "tf_efficientnet_b0_ns"}, "tf_efficientnet_b0_ns"),
])
def test_timm_families_export_with_parity_to_timm(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
        hparams: dict[str, object], expected: str) -> None:
    model = _timm(name)
    checkpoint = write_lightning_checkpoint(tmp_path / f"{name}.ckpt", model.state_dict(),
                                            hparams)
    spec = export(checkpoint, tmp_path / f"{name}.onnx", "--input-size", "32")
    assert (spec.architecture, spec.architecture_library) == (expected, "timm")
    assert f"architecture: timm {expected}" in capsys.readouterr().out
    assert max_probability_gap(tmp_path / f"{name}.onnx", model, 32) <= TOLERANCE


@pytest.mark.parametrize("name, message", [
    ("resnest50d", "resnest package resnest50_fast_2s1x64d, resnest package resnest50 = "
                   "timm resnest50d"),
    ("tf_efficientnet_b2", "timm tf_efficientnet_b2 = timm tf_efficientnet_b2_ns, "
                           "timm efficientnet_b2"),
])
def test_networks_the_weights_cannot_tell_apart_are_named_by_their_own_libraries(
        name: str, message: str) -> None:
    with pytest.raises(ExportError) as refused:
        architectures.choose(None, _meta_state(name), 1)
    assert f"fits several architectures ({message})" in str(refused.value)


@pytest.mark.parametrize("name, hint, expected", [
    ("resnest50d", "resnest50d", ("timm", "resnest50d")),
    ("resnest50d", "resnest50", ("resnest", "resnest50")),
    ("resnest50d", "timm/resnest50d.in1k", ("timm", "resnest50d")),
    ("tf_efficientnet_b2", "efficientnet_b2", ("timm", "efficientnet_b2")),
    ("resnest101e", None, ("resnest", "resnest101")),  # one network under two names
])
def test_hyper_parameters_settle_ambiguity(name: str, hint: str | None,
                                           expected: tuple[str, str]) -> None:
    chosen = architectures.choose(None, _meta_state(name), 1, hint=hint)
    assert (chosen.library, chosen.name) == expected


def test_a_hint_the_weights_contradict_is_refused() -> None:
    with pytest.raises(ExportError, match="says it is timm resnest26d, but its weights do not"):
        architectures.choose(None, _meta_state("resnest50d"), 1, hint="resnest26d")


def test_ambiguous_checkpoint_is_one_line_naming_each_candidate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "b0.pth"
    torch.save(_timm("tf_efficientnet_b0").state_dict(), checkpoint)
    assert to_onnx.main([str(checkpoint), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "(timm tf_efficientnet_b0 = timm tf_efficientnet_b0_ns, timm efficientnet_b0)" in err
    assert not (tmp_path / "m.onnx").exists()


def test_a_head_that_is_not_pooling_plus_one_linear_layer_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "mnv3.pth"
    model = import_timm().create_model("mobilenetv3_small_050", pretrained=False, num_classes=1)
    torch.save(model.state_dict(), checkpoint)
    code = to_onnx.main([str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--arch",
                         "mobilenetv3_small_050", "--input-size", "32"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "head is not global average pooling + one linear layer" in err


@pytest.mark.parametrize("pair", [
    ("resnest50d", "resnest50"),
    ("resnest50d_1s4x24d", "resnest50_fast_1s4x24d"),
    ("resnest50d_4s2x40d", "resnest50_fast_4s2x40d"),
    pytest.param(("resnest101e", "resnest101"), marks=pytest.mark.slow),
])
def test_networks_listed_as_one_compute_the_same_function(pair: tuple[str, str]) -> None:
    first, second = (architectures.ARCHITECTURES[name].build(1).eval() for name in pair)
    torch.manual_seed(4)
    for tensor in first.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(torch.randn_like(tensor) * 0.1 + (1.0 if tensor.ndim == 1 else 0.0))
    second.load_state_dict(first.state_dict(), strict=True)
    image = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(first(image).numpy(), second(image).numpy(), atol=1e-5)
    assert set(pair) <= set(architectures.EQUIVALENT[pair[0]])


def test_cam_equals_autograd_grad_cam_on_a_timm_efficientnet(tmp_path: Path) -> None:
    model = _timm("efficientnet_b0", seed=3, size=64)
    with torch.no_grad():  # a head that sees evidence somewhere, so the map is not all zero
        model.get_classifier().weight.abs_()
    checkpoint = tmp_path / "b0.pth"
    torch.save(model.state_dict(), checkpoint)
    export(checkpoint, tmp_path / "b0.onnx", "--arch", "efficientnet_b0", "--input-size", "64")
    classifier = Classifier(tmp_path / "b0.onnx")
    seen = preprocess.fit_to_input(images.lesion_rgb(300, 200, seed=9), classifier.spec)
    batch = preprocess.to_model_input(seen[None], classifier.spec)

    features = model.forward_features(torch.from_numpy(batch))
    logit = model.forward_head(features)[0, 0]
    (gradient,) = torch.autograd.grad(logit, features)
    alphas = gradient.mean(dim=(2, 3), keepdim=True)
    grad_cam = torch.relu((alphas * features).sum(dim=1))[0].detach().numpy()
    grad_cam /= grad_cam.max()

    _, onnx_features = classifier.run_batch(batch)
    ours = classifier.activation_map(onnx_features, views_for("none"))
    np.testing.assert_allclose(ours, grad_cam, atol=1e-4)


@pytest.mark.slow
def test_registry_tensor_counts_match_timm() -> None:
    """Detection skips candidates by tensor count; a timm upgrade must not silently break it."""
    for arch in architectures.ARCHITECTURES.values():
        with torch.device("meta"):
            count = len(arch.build(1).state_dict())
        assert count == arch.keys, arch.label


@pytest.mark.slow
@pytest.mark.parametrize("name, hparams", [
    ("resnest50d", {"arch": "resnest50d"}),
    ("tf_efficientnet_b3_ns", {"arch": "tf_efficientnet_b3_ns"}),
    ("seresnext50_32x4d", {}),
    ("resnet50d", {}),
])
def test_full_size_export_per_family(tmp_path: Path, name: str,
                                     hparams: dict[str, object]) -> None:
    model = _timm(name, size=128)
    checkpoint = write_lightning_checkpoint(tmp_path / f"{name}.ckpt", model.state_dict(),
                                            {**hparams, "image_size": 128})
    spec = export(checkpoint, tmp_path / f"{name}.onnx")
    assert (spec.architecture, spec.input_size) == (name, 128)
    assert max_probability_gap(tmp_path / f"{name}.onnx", model, 128) <= TOLERANCE
