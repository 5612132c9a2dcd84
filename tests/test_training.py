"""The training pipeline on a shallow network and tiny generated images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.pipeline import ExportRequest, export_checkpoint
from tests.conftest import TINY_ARCH
from training.augment import Augment
from training.folds import assign_folds
from training.data import StageSampler, read_soft_targets
from training.module import operating_threshold, platt_scaling, warmup_cosine
from training.synthetic import generate_dataset, plan_dataset
from training.train import TrainConfig, epoch_plan, fit, main


def test_folds_keep_each_patient_on_one_side_and_spread_melanomas() -> None:
    records = plan_dataset(600, seed=3, melanoma_fraction=0.1)
    folds = assign_folds([r.target for r in records], [r.patient_id for r in records], 5, 0)
    for patient in {r.patient_id for r in records}:
        assert len({int(f) for r, f in zip(records, folds, strict=True)
                    if r.patient_id == patient}) == 1
    positives = [sum(r.target for r, f in zip(records, folds, strict=True) if f == k)
                 for k in range(5)]
    assert min(positives) >= 0.5 * max(positives) > 0


def test_warm_up_then_cosine_decay() -> None:
    factors = [warmup_cosine(step, 10, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] < 0.05


def test_threshold_flags_the_asked_share_of_melanomas() -> None:
    targets = np.array([0] * 50 + [1] * 10)
    scores = np.concatenate([np.linspace(0, 0.5, 50), np.linspace(0.3, 0.9, 10)])
    threshold = operating_threshold(targets, scores, 0.9)
    assert (scores[targets == 1] >= threshold).mean() == pytest.approx(0.9)


def test_augment_keeps_shape_and_is_reproducible() -> None:
    image = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    first = Augment()(np.random.default_rng(5), image)
    again = Augment()(np.random.default_rng(5), image)
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, image)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("train")
    data = generate_dataset(root / "data", 48, seed=4, size=48, melanoma_fraction=0.25)
    threads = torch.get_num_threads()
    try:
        result = fit(TrainConfig(labels=data.labels_csv, images=data.images,
                                 out_dir=root / "ckpt", arch=TINY_ARCH, image_size=48,
                                 stages=((32, 1), (48, 1)), batch_size=8, folds=3,
                                 progress=False, extra_hparams={"training_data": "tiny"},
                                 threads=1))
        # Training computes on the configured threads, whatever the machine's core count.
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= result.val_auc <= 1.0 and result.train_images + result.val_images == 48
    return result.checkpoint, result.threshold


def test_checkpoint_is_lightning_format_with_the_export_settings(
        tiny_run: tuple[Path, float]) -> None:
    checkpoint, threshold = tiny_run
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hparams = saved["hyper_parameters"]
    assert hparams["arch"] == TINY_ARCH and hparams["image_size"] == 48
    assert tuple(hparams["mean"]) == (0.485, 0.456, 0.406)
    assert hparams["threshold"] == threshold and 0 < threshold < 1
    assert all(key.startswith(("model.", "loss.")) for key in saved["state_dict"])


def test_export_reads_the_trained_checkpoint_with_no_flags(
        tiny_run: tuple[Path, float], tmp_path: Path) -> None:
    checkpoint, threshold = tiny_run
    result = export_checkpoint(ExportRequest(checkpoint=checkpoint,
                                             output=tmp_path / "m.onnx"))
    assert result.spec.architecture == TINY_ARCH and result.spec.input_size == 48
    assert result.spec.threshold == pytest.approx(threshold)
    assert result.sources["input_size"].startswith("checkpoint")


def test_training_is_deterministic_by_seed(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "data", 24, seed=8, size=32, melanoma_fraction=0.3)
    weights = []
    for run in ("a", "b"):
        result = fit(TrainConfig(labels=data.labels_csv, images=data.images,
                                 out_dir=tmp_path / run, arch=TINY_ARCH, image_size=32,
                                 stages=((32, 1),), batch_size=8, folds=3, progress=False))
        state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
        weights.append(state["state_dict"]["model.fc.weight"])
    assert torch.equal(weights[0], weights[1])


def test_cli_reports_the_best_checkpoint(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = generate_dataset(tmp_path / "data", 24, seed=2, size=32, melanoma_fraction=0.3)
    assert main(["--labels", str(data.labels_csv), "--images", str(data.images),
                 "--out", str(tmp_path / "run"), "--arch", TINY_ARCH, "--image-size", "32",
                 "--epochs", "1", "--batch-size", "8", "--folds", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "best checkpoint" in out and "val AUC" in out
    assert list((tmp_path / "run").glob("*.ckpt"))


def test_stages_may_be_fractions_of_an_epoch() -> None:
    assert epoch_plan(((64, 1.5), (128, 0.25))) == [(64, 1.0), (64, 0.5), (128, 0.25)]
    with pytest.raises(ValueError, match="positive"):
        epoch_plan(((64, 0),))


def test_stage_sampler_draws_the_stage_share_without_repeats() -> None:
    sampler = StageSampler(10, [1.0, 0.25], seed=3)
    whole = list(sampler)
    sampler.set_epoch(1)
    quarter = list(sampler)
    assert sorted(whole) == list(range(10))
    assert len(sampler) == 3 and len(quarter) == 3 and len(set(quarter)) == 3


def test_platt_scaling_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, 20_000)
    targets = (rng.random(logits.size) < 1 / (1 + np.exp(-(0.5 * logits - 1.0)))).astype(int)
    scale, shift = platt_scaling(targets, logits)
    assert scale == pytest.approx(0.5, abs=0.05) and shift == pytest.approx(-1.0, abs=0.08)
    assert platt_scaling(np.zeros(5, int), logits[:5]) == (1.0, 0.0)


def test_soft_targets_come_from_a_column_within_zero_and_one(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "d", 12, seed=3, size=32, melanoma_fraction=0.3)
    atypia = read_soft_targets(data.labels_csv, "atypia")
    assert len(atypia) == 12 and all(0 <= v <= 1 for v in atypia.values())
    with pytest.raises(ValueError, match="no column"):
        read_soft_targets(data.labels_csv, "severity")
    bad = tmp_path / "bad.csv"
    bad.write_text("image_name,target,atypia\nISIC_1,0,1.5\n")
    with pytest.raises(ValueError, match="within"):
        read_soft_targets(bad, "atypia")


def test_graded_targets_train_and_the_saved_head_is_calibrated(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "data", 40, seed=6, size=32, melanoma_fraction=0.3)
    result = fit(TrainConfig(labels=data.labels_csv, images=data.images,
                             out_dir=tmp_path / "run", arch=TINY_ARCH, image_size=32,
                             stages=((32, 1), (32, 0.5)), batch_size=8, folds=3,
                             validate_every=2, soft_target="atypia", progress=False))
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1  # validated once, after the second (half) epoch
    calibration = saved["hyper_parameters"]["calibration"]
    assert calibration["scale"] != 1.0 and calibration["shift"] != 0.0
