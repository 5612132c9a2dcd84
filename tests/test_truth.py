"""Outputs checked against the generator's ground truth: rankings, heatmaps, evaluation CLI.

The fast tests use the tiny exported model; the slow ones use the default demo model that
`make model` builds and caches in models/ (built here once if missing)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from evaluation.cli import main as evaluation_main
from tests import images
from training.synthetic import generate_dataset, render_lesion
from training.truth import check_against_truth, heatmap_agreement


def test_heatmap_agreement_finds_a_peak_on_the_mask_and_its_overlap() -> None:
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    on = np.zeros((4, 4), np.float32)
    on[1:3, 1:3] = 1.0
    off = np.zeros((4, 4), np.float32)
    off[0, 3] = 1.0
    hit, iou = heatmap_agreement(on, mask)
    miss, low = heatmap_agreement(off, mask)
    assert hit and not miss
    assert iou > 0.5 > low


def test_evaluation_cli_prints_auc_with_a_patient_bootstrap_on_a_generated_set(
        tiny_onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = generate_dataset(tmp_path / "held-out", 30, seed=77, size=64,
                            melanoma_fraction=0.3)
    assert evaluation_main(["evaluate", "--model", str(tiny_onnx_model), "--labels",
                            str(data.labels_csv), "--images", str(data.images),
                            "--bootstrap", "100", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "95% CI (bootstrap by patient)" in out
    row = re.search(r"\| onnx none \| (\d\.\d{4}) \| (\d\.\d{4})-(\d\.\d{4}) \|", out)
    assert row is not None
    auc, low, high = (float(value) for value in row.groups())
    assert low <= auc <= high


@pytest.mark.slow
def test_default_model_ranks_held_out_melanomas_first_and_looks_at_the_lesion(
        full_demo_model: Path) -> None:
    report = check_against_truth(full_demo_model, images=400, seed=77)
    print(report)
    assert report.melanomas >= 25
    assert report.auc_single >= 0.95
    assert report.auc_tta >= report.auc_single - 0.005  # TTA not worse (rank noise aside)
    assert report.heatmap_hit_rate >= 0.9
    assert report.heatmap_iou > 0.2


@pytest.mark.slow
def test_api_and_form_score_a_drawn_melanoma_above_the_threshold_and_a_naevus_below(
        full_demo_model: Path) -> None:
    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(full_demo_model),
                      "WTF_CSRF_ENABLED": False})
    client: FlaskClient = app.test_client()
    answers = {}
    for melanoma, seed in ((True, 1234), (False, 4321)):
        rgb, _ = render_lesion(np.random.default_rng(seed), melanoma, 256)
        jpeg = images.encode(rgb, ".jpg")
        api = client.post("/api/v1/predict", data={"image": (_io(jpeg), "lesion.jpg")})
        assert api.status_code == 200
        answers[melanoma] = api.get_json()
        page = client.post("/predict", data={"image": (_io(jpeg), "lesion.jpg")})
        assert page.status_code == 200
        assert ("melanoma" if melanoma else "benign") in page.get_data(as_text=True).lower()
    assert answers[True]["positive"] and not answers[False]["positive"]
    assert answers[True]["probability"] > answers[True]["threshold"] > \
        answers[False]["probability"]
    assert "computer-drawn" in answers[True]["disclaimer"]


def _io(data: bytes):  # type: ignore[no-untyped-def]
    import io

    return io.BytesIO(data)
