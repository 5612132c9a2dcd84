"""The synthetic dermoscopy generator: deterministic, ISIC layout, masks that match the lesion."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from evaluation.dataset import read_labels
from training import synthetic
from training.synthetic import generate_dataset, plan_dataset, render_lesion


def _digest(folder: Path) -> str:
    hashed = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            hashed.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return hashed.hexdigest()


@pytest.mark.parametrize("melanoma", [False, True])
def test_render_lesion_returns_rgb_and_a_mask_of_a_darker_lesion(melanoma: bool) -> None:
    rgb, mask = render_lesion(3, melanoma, 96)
    assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == bool
    assert 0.01 < mask.mean() < 0.6
    luma = rgb.astype(float).mean(axis=2)
    ring = ~mask
    ring[:20], ring[-20:], ring[:, :20], ring[:, -20:] = False, False, False, False
    assert luma[mask].mean() < luma[ring].mean() - 10


def test_render_lesion_is_deterministic_by_seed() -> None:
    first, first_mask = render_lesion(11, True, 64)
    again, again_mask = render_lesion(np.random.default_rng(11), True, 64)
    other, _ = render_lesion(12, True, 64)
    assert np.array_equal(first, again) and np.array_equal(first_mask, again_mask)
    assert not np.array_equal(first, other)


def test_melanomas_show_more_colours_and_asymmetry_than_naevi_on_average() -> None:
    def spread(melanoma: bool) -> float:
        values = []
        for seed in range(12):
            rgb, mask = render_lesion(seed, melanoma, 96)
            values.append(float(rgb[mask].astype(float).std(axis=0).mean()))
        return float(np.mean(values))

    assert spread(True) > spread(False) + 5


def test_dataset_has_the_isic_layout_that_evaluation_reads(tmp_path: Path) -> None:
    result = generate_dataset(tmp_path / "set", 40, seed=5, size=64, melanoma_fraction=0.1)
    assert result.count == 40
    with result.labels_csv.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == synthetic.CSV_COLUMNS
    assert len(rows) == 40
    labelled = read_labels(result.labels_csv, result.images)
    assert len(labelled) == 40 and all(item.patient_id for item in labelled)
    assert all((result.masks / f"{row['image_name']}.png").is_file() for row in rows)
    patients = {row["patient_id"] for row in rows}
    assert len(patients) < 40  # several lesions per patient


def test_same_seed_writes_the_same_bytes_and_workers_do_not_change_them(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", 12, seed=9, size=48)
    generate_dataset(tmp_path / "b", 12, seed=9, size=48, workers=2)
    generate_dataset(tmp_path / "c", 12, seed=10, size=48)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_plan_keeps_melanoma_rare_and_patients_grouped() -> None:
    records = plan_dataset(3000, seed=1)
    share = np.mean([r.target for r in records])
    assert 0.03 < share < 0.09
    per_patient: dict[str, int] = {}
    for record in records:
        per_patient[record.patient_id] = per_patient.get(record.patient_id, 0) + 1
    assert max(per_patient.values()) <= 10 and np.mean(list(per_patient.values())) > 2
    flipped = sum(r.target != r.melanoma for r in records)
    assert 0 < flipped < 30


def test_cli_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synthetic.main([str(tmp_path), "--images", "5", "--size", "48", "--quiet"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert len(list((tmp_path / "jpeg").glob("*.jpg"))) == 5
