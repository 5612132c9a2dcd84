"""The evaluation CLI end to end on a tiny exported model and synthetic lesion photos."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from evaluation import metrics
from evaluation.cli import main
from tests import images
from inference import preprocess
from inference.classifier import Classifier
from inference.model_spec import SPEC_METADATA_KEY, read_spec_file

NAMES = [f"ISIC_{index:07d}" for index in range(10)]
TARGETS = [0, 1, 0, 1, 1, 0, 0, 1, 0, 1]


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("isic")
    folder = root / "train"
    folder.mkdir()
    for index, name in enumerate(NAMES):
        photo = images.lesion_rgb(200 + 17 * index, 150 + 9 * index, seed=index)
        extension = ".png" if index == 3 else ".jpg"
        (folder / f"{name}{extension}").write_bytes(images.encode(photo, extension))
    labels = root / "train.csv"
    with labels.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image_name", "patient_id", "sex", "target"])
        for index, (name, target) in enumerate(zip(NAMES, TARGETS, strict=True)):
            writer.writerow([name, f"IP_{index // 2}", "female", target])
    return labels, folder


@pytest.fixture
def model_copy(tiny_onnx_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(tiny_onnx_model, tmp_path / "model.onnx"))


def _evaluate(model: Path, labelled_set: tuple[Path, Path], tmp_path: Path,
              *extra: str) -> dict:
    labels, folder = labelled_set
    report = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(model), "--labels", str(labels),
                 "--images", str(folder), "--bootstrap", "200", "--quiet",
                 "--json", str(report), *extra]) == 0
    return json.loads(report.read_text())


def test_submission_has_every_image_scored_like_the_server(
        tiny_onnx_model: Path, labelled_set: tuple[Path, Path], tmp_path: Path) -> None:
    _, folder = labelled_set
    output = tmp_path / "out" / "submission.csv"
    assert main(["score", "--model", str(tiny_onnx_model), "--images", str(folder),
                 "--output", str(output), "--quiet"]) == 0
    rows = list(csv.DictReader(output.open()))
    assert [row["image_name"] for row in rows] == NAMES
    server = Classifier(tiny_onnx_model)
    png = server.predict(preprocess.decode_image((folder / f"{NAMES[3]}.png").read_bytes()))
    assert float(rows[3]["target"]) == pytest.approx(png.probability, abs=1e-8)


def test_evaluation_reports_auc_with_and_without_tta_from_the_same_scores(
        tiny_onnx_model: Path, labelled_set: tuple[Path, Path], tmp_path: Path) -> None:
    report = _evaluate(tiny_onnx_model, labelled_set, tmp_path)
    assert set(report["results"]) == {"onnx none", "onnx dihedral"}
    assert report["bootstrap"]["unit"] == "patient" and report["patients"] == 5
    _, folder = labelled_set
    submission = tmp_path / "submission.csv"
    main(["score", "--model", str(tiny_onnx_model), "--images", str(folder),
          "--output", str(submission), "--tta", "none", "--quiet"])
    scores = [float(row["target"]) for row in csv.DictReader(submission.open())]
    single = report["results"]["onnx none"]
    assert single["auc"] == pytest.approx(metrics.roc_auc(TARGETS, scores), abs=1e-6)
    low, high = single["auc_ci95"]
    assert 0.0 <= low <= high <= 1.0
    confusion = single["confusion"]
    assert confusion["tp"] + confusion["fn"] == sum(TARGETS)
    assert confusion["tn"] + confusion["fp"] == len(TARGETS) - sum(TARGETS)


def test_pytorch_checkpoint_agrees_with_the_onnx_model(
        tiny_onnx_model: Path, tiny_checkpoint: Path, labelled_set: tuple[Path, Path],
        tmp_path: Path) -> None:
    report = _evaluate(tiny_onnx_model, labelled_set, tmp_path, "--checkpoint",
                       str(tiny_checkpoint), "--tta", "flips")
    assert report["agreement"]["max_abs_diff_probability"] < 1e-5
    assert report["agreement"]["same_decision_fraction"] == 1.0
    assert abs(report["agreement"]["auc_difference"]) < 1e-9


def test_picked_threshold_is_written_into_the_spec_and_nothing_else_changes(
        model_copy: Path, labelled_set: tuple[Path, Path], tmp_path: Path) -> None:
    before = onnx.load(str(model_copy))
    spec_before = read_spec_file(model_copy)
    report = _evaluate(model_copy, labelled_set, tmp_path, "--target-sensitivity", "1.0",
                       "--write-threshold")
    picked = report["picked_threshold"]
    assert picked["sensitivity"] == 1.0 and picked["written"]
    after = onnx.load(str(model_copy))
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    others = [(p.key, p.value) for p in before.metadata_props if p.key != SPEC_METADATA_KEY]
    assert [(p.key, p.value) for p in after.metadata_props
            if p.key != SPEC_METADATA_KEY] == others
    spec_after = read_spec_file(model_copy)
    assert spec_after.threshold == picked["threshold"] != spec_before.threshold
    assert spec_after.as_dict() | {"threshold": spec_before.threshold} == spec_before.as_dict()
    assert Classifier(model_copy).spec.threshold == picked["threshold"]
    assert not list(model_copy.parent.glob(".*partial"))


def test_threshold_not_written_without_the_flag(
        model_copy: Path, labelled_set: tuple[Path, Path], tmp_path: Path) -> None:
    data = model_copy.read_bytes()
    report = _evaluate(model_copy, labelled_set, tmp_path, "--target-sensitivity", "0.6")
    assert not report["picked_threshold"]["written"]
    assert model_copy.read_bytes() == data


def test_missing_image_is_named_and_fails(tiny_onnx_model: Path, labelled_set: tuple[Path, Path],
                                          tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    labels, _ = labelled_set
    folder = tmp_path / "partial"
    shutil.copytree(labelled_set[1], folder)
    (folder / f"{NAMES[4]}.jpg").unlink()
    code = main(["evaluate", "--model", str(tiny_onnx_model), "--labels", str(labels),
                 "--images", str(folder), "--quiet"])
    assert code == 1
    assert NAMES[4] in capsys.readouterr().err


def test_labels_without_target_column_are_refused(
        tiny_onnx_model: Path, labelled_set: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "test.csv"
    labels.write_text("image_name,patient_id\nISIC_0000000,IP_0\n")
    assert main(["evaluate", "--model", str(tiny_onnx_model), "--labels", str(labels),
                 "--images", str(labelled_set[1]), "--quiet"]) == 1
    assert "target" in capsys.readouterr().err


def test_corrupt_image_in_folder_fails_with_its_name(
        tiny_onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "test"
    folder.mkdir()
    (folder / "ISIC_good.jpg").write_bytes(images.encode(images.lesion_rgb(), ".jpg"))
    (folder / "ISIC_bad.jpg").write_bytes(images.encode(images.lesion_rgb(), ".jpg")[:600])
    assert main(["score", "--model", str(tiny_onnx_model), "--images", str(folder),
                 "--output", str(tmp_path / "s.csv"), "--quiet"]) == 1
    assert "ISIC_bad.jpg" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_probabilities_vary_between_images(tiny_onnx_model: Path,
                                           labelled_set: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    submission = tmp_path / "submission.csv"
    main(["score", "--model", str(tiny_onnx_model), "--images", str(labelled_set[1]),
          "--output", str(submission), "--quiet"])
    scores = np.array([float(r["target"]) for r in csv.DictReader(submission.open())])
    assert np.all((scores > 0) & (scores < 1)) and scores.std() > 1e-4


def test_scoring_decodes_and_runs_each_image_once_for_every_policy(
        tiny_onnx_model: Path, labelled_set: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from evaluation import scoring

    _, folder = labelled_set
    files = [(name, next(folder.glob(f"{name}.*"))) for name in NAMES[:4]]
    classifier = Classifier(tiny_onnx_model)
    batches: list[int] = []
    decodes: list[int] = []
    run_batch, decode = classifier.run_batch, preprocess.decode_image
    monkeypatch.setattr(classifier, "run_batch",
                        lambda batch: batches.append(len(batch)) or run_batch(batch))
    monkeypatch.setattr(preprocess, "decode_image",
                        lambda data, *a: decodes.append(1) or decode(data, *a))
    scores = scoring.score_files(classifier, files, ["none", "flips", "dihedral"],
                                 progress=False)
    assert batches == [8] * 4 and len(decodes) == 4
    monkeypatch.undo()
    for (_, path), none, flips in zip(files, scores.by_policy["none"],
                                      scores.by_policy["flips"], strict=True):
        image = preprocess.decode_image(path.read_bytes())
        assert none == pytest.approx(classifier.predict(image, "none").probability, abs=1e-6)
        assert flips == pytest.approx(classifier.predict(image, "flips").probability, abs=1e-6)


def test_scoring_in_two_processes_gives_the_same_scores_to_the_last_digit(
        tiny_onnx_model: Path, labelled_set: tuple[Path, Path]) -> None:
    from evaluation import scoring

    _, folder = labelled_set
    files = sorted((path.stem, path) for path in folder.iterdir())
    assert len(files) > scoring._CHUNK, "more files than one task, so both processes work"
    one = scoring.score_in_parallel(tiny_onnx_model, files, ["none", "dihedral"], workers=1,
                                    progress=False)
    two = scoring.score_in_parallel(tiny_onnx_model, files, ["none", "dihedral"], workers=2,
                                    progress=False)
    assert two == one
    assert two.names == tuple(name for name, _ in files)


def test_submission_is_the_same_whatever_the_number_of_workers(
        tiny_onnx_model: Path, labelled_set: tuple[Path, Path], tmp_path: Path) -> None:
    _, folder = labelled_set
    outputs = []
    for workers in (1, 2):
        output = tmp_path / f"submission-{workers}.csv"
        assert main(["score", "--model", str(tiny_onnx_model), "--images", str(folder),
                     "--output", str(output), "--quiet", "--workers", str(workers)]) == 0
        outputs.append(output.read_text())
    assert outputs[0] == outputs[1]
