"""Outputs checked against the generator's ground truth: heatmap agreement, the evaluation
CLI (tiny model), and the shipped default model on a freshly drawn held-out set: ranking,
heatmap on the lesion, form and API answers either side of the threshold.
`python -m training.truth MODEL` prints the same numbers for any model."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from evaluation.cli import main as evaluation_main
from tests import images
from training.synthetic import generate_dataset
from training.truth import TruthReport, check_against_truth, heatmap_agreement


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


# The shipped default model (trained on drawn lesions) against the generator's truth.
TRUTH_IMAGES = 200
TRUTH_SEED = 4242  # its own seed: neither the training set's (2020) nor the reference's


@pytest.fixture(scope="module")
def truth_report(full_demo_model: Path) -> TruthReport:
    # A third melanomas so 200 images hold ~65 of them: the AUC and hit rate are then
    # measured on enough positives to mean something, at a CI-sized cost.
    report = check_against_truth(full_demo_model, TRUTH_IMAGES, TRUTH_SEED,
                                 melanoma_fraction=0.33)
    print(report)
    return report


@pytest.mark.slow
def test_default_model_ranks_held_out_melanomas_above_naevi(truth_report: TruthReport) -> None:
    assert truth_report.melanomas >= 40
    assert truth_report.auc_single >= 0.95
    # TTA must not cost ranking (a tolerance of half a point for 65 positives).
    assert truth_report.auc_tta >= truth_report.auc_single - 0.005


@pytest.mark.slow
def test_default_model_heatmap_peaks_on_the_lesion(truth_report: TruthReport) -> None:
    assert truth_report.heatmap_hit_rate >= 0.90
    assert truth_report.heatmap_iou >= 0.3


@pytest.mark.slow
def test_form_and_api_score_a_drawn_melanoma_above_the_threshold_and_a_naevus_below(
        full_demo_model: Path) -> None:
    from webapp.app import create_app
    from inference.model_spec import read_spec_file

    threshold = read_spec_file(full_demo_model).threshold
    client = create_app({"TESTING": True, "MODEL_PATH": str(full_demo_model),
                         "WTF_CSRF_ENABLED": False}).test_client()
    melanoma, naevus = images.clear_truth_cases(TRUTH_SEED + 1)
    for pixels, above in ((melanoma, True), (naevus, False)):
        png = images.encode(pixels, ".png")
        api = client.post("/api/v1/predict", data={"image": (io.BytesIO(png), "l.png")})
        assert api.status_code == 200
        body = api.get_json()
        assert (body["probability"] > threshold) is above
        assert body["positive"] is above
        page = client.post("/predict", data={"image": (io.BytesIO(png), "l.png")})
        assert page.status_code == 200
        shown = re.search(r'<data class="probability" value="([0-9.e-]+)"',
                          page.get_data(as_text=True))
        assert shown is not None
        assert float(shown.group(1)) == pytest.approx(body["probability"], abs=1e-6)
        assert ("Demo model trained on drawn lesions: this number says nothing about real "
                "skin.") in page.get_data(as_text=True)
