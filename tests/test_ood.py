"""Out-of-distribution warnings from the model's own features against recorded references."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests import images, nonlesion
from inference import ood


def test_scores_are_low_inside_the_reference_cloud_and_high_outside() -> None:
    rng = np.random.default_rng(0)
    centre = rng.random(256)
    inside = centre + rng.normal(0, 0.05, (200, 256))
    reference = ood.fit(inside)
    held = reference.scores(centre + rng.normal(0, 0.05, (50, 256)))
    outside = reference.scores(rng.random((50, 256)))
    assert (held > reference.threshold).mean() <= 0.04
    assert (outside > reference.threshold).all()
    assert reference.check(centre) is None
    warning = reference.check(rng.random(256))
    assert warning is not None and warning.code == "not_a_lesion"


def test_reference_statistics_survive_the_metadata_round_trip() -> None:
    rng = np.random.default_rng(1)
    reference = ood.fit(rng.random((40, 64)))
    again = ood.OodReference.from_json(reference.to_json())
    probe = rng.random((5, 64))
    assert np.allclose(again.scores(probe), reference.scores(probe), rtol=1e-4)
    assert ood.load({}) is None


@pytest.mark.parametrize("text", ["{", '{"mean": "!!"}', json.dumps({"images": 3})])
def test_unreadable_statistics_are_refused(text: str) -> None:
    with pytest.raises(ood.ReferenceError):
        ood.OodReference.from_json(text)


def test_too_few_reference_images_are_refused() -> None:
    with pytest.raises(ood.ReferenceError, match="at least 20"):
        ood.fit(np.ones((5, 8)))


@pytest.fixture(scope="module")
def model_with_reference(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
                         ) -> Path:
    """The tiny model exported with --reference-images over generated dermoscopy."""
    from export import to_onnx
    from training.synthetic import render_lesion

    folder = tmp_path_factory.mktemp("reference-images")
    for i in range(60):
        pixels, _ = render_lesion(1_000 + i, melanoma=i % 10 == 0, size=128)
        (folder / f"ISIC_{i:04d}.jpg").write_bytes(images.encode(pixels, ".jpg"))
    (folder / "notes.txt").write_text("ignored: not an image")
    output = tmp_path_factory.mktemp("reference-model") / "tiny-ref.onnx"
    assert to_onnx.main([str(tiny_checkpoint), "--output", str(output),
                         "--reference-images", str(folder)]) == 0
    return output


def test_export_records_reference_statistics_and_keeps_provenance_true(
        model_with_reference: Path) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(model_with_reference)).metadata_props}
    reference = ood.OodReference.from_json(props[ood.METADATA_KEY])
    assert reference.images == 60 and reference.threshold > 0
    record = json.loads(model_with_reference.with_name(
        model_with_reference.name + ".provenance.json").read_text())
    assert record["onnx_sha256"] == hashlib.sha256(model_with_reference.read_bytes()).hexdigest()
    assert record["ood_reference"]["images"] == 60


def test_export_refuses_an_empty_reference_folder(tiny_checkpoint: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from export import to_onnx

    empty = tmp_path / "empty"
    empty.mkdir()
    assert to_onnx.main([str(tiny_checkpoint), "--output", str(tmp_path / "m.onnx"),
                         "--reference-images", str(empty)]) == 1
    assert "no images" in capsys.readouterr().err


@pytest.fixture(params=["tiny export with --reference-images", "default demo model"])
def warning_model(request: pytest.FixtureRequest, model_with_reference: Path) -> Path:
    """The tiny model given reference images at export, and the model `make model` builds
    (its reference statistics come from drawn lesions, export/demo_model.py)."""
    if request.param == "default demo model":
        return Path(request.getfixturevalue("full_demo_model"))
    return model_with_reference


def test_lesions_pass_and_non_lesion_photos_are_warned(warning_model: Path) -> None:
    from training.synthetic import render_lesion
    from webapp.app import create_app

    client = create_app({"TESTING": True, "MODEL_PATH": str(warning_model)}).test_client()

    def warned(pixels: np.ndarray) -> bool:
        body = client.post("/api/v1/predict?tta=none", data={
            "image": (io.BytesIO(images.encode(pixels, ".png")), "x.png")}).get_json()
        assert body["out_of_distribution"]["score"] >= 0
        return "not_a_lesion" in [w["code"] for w in body["warnings"]]

    held_out = [render_lesion(70_000 + i, melanoma=i % 10 == 0, size=128)[0]
                for i in range(20)]
    others = [nonlesion.GENERATORS[kind](seed=seed)
              for kind in nonlesion.KINDS for seed in range(5)]
    false_alarms = sum(warned(p) for p in held_out)
    caught = sum(warned(p) for p in others)
    print(f"false alarms {false_alarms}/20, caught {caught}/20")
    assert false_alarms <= 1 and caught >= 18
