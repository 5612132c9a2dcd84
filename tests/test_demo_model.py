"""The default model: trained by the training pipeline on synthetic lesions, then exported
through the normal export path, built once and cached."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from export import demo_model
from export.demo import write_demo_checkpoint
from tests.conftest import TINY_ARCH
from inference.model_spec import read_spec_file

TINY_BUILD = ["--arch", TINY_ARCH, "--input-size", "32", "--images", "40", "--stages", "32:1",
              "--reduced-decode-photos", "2", "--quiet"]


def test_seeded_checkpoint_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    # torch.save names the archive's folder after the file, so compare same-named files.
    first = write_demo_checkpoint(tmp_path / "a" / "demo.ckpt", TINY_ARCH, 64)
    second = write_demo_checkpoint(tmp_path / "b" / "demo.ckpt", TINY_ARCH, 64)
    assert hashlib.sha256(first.read_bytes()).digest() == \
        hashlib.sha256(second.read_bytes()).digest()
    other_seed = write_demo_checkpoint(tmp_path / "c" / "demo.ckpt", TINY_ARCH, 64, seed=1)
    assert other_seed.read_bytes() != first.read_bytes()


def test_demo_model_says_it_was_trained_on_synthetic_lesions_and_is_built_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "default.onnx"
    assert demo_model.main(["--output", str(output), *TINY_BUILD]) == 0
    spec = read_spec_file(output)
    assert spec.demo and spec.name == "demo-synthetic"
    assert "never seen a real lesion" in spec.provenance
    assert "synthetic" in spec.training_data and "40" in spec.training_data
    assert 0.0 <= spec.held_out["auc"] <= 1.0 and spec.held_out["images"] > 0
    assert spec.checkpoint_format == "lightning (prefix 'model.')"
    assert spec.interpolation == "area"
    assert spec.jpeg_reduced_decode_fidelity["photos"] == 2
    assert spec.jpeg_reduced_decode_min_ratio == spec.jpeg_reduced_decode_fidelity["min_ratio"]
    assert "trained in" in capsys.readouterr().out
    assert (tmp_path / "demo-checkpoint.ckpt").is_file()
    built = output.stat().st_mtime_ns
    assert demo_model.main(["--output", str(output), *TINY_BUILD]) == 0
    assert "already built" in capsys.readouterr().out
    assert output.stat().st_mtime_ns == built


def test_a_corrupt_cached_demo_model_is_rebuilt(tmp_path: Path) -> None:
    output = tmp_path / "default.onnx"
    output.write_bytes(b"half a model")
    assert demo_model.main(["--output", str(output), *TINY_BUILD]) == 0
    assert read_spec_file(output).demo


def test_untrained_build_for_benchmarks_is_labelled_untrained(tmp_path: Path) -> None:
    output = tmp_path / "default.onnx"
    assert demo_model.main(["--output", str(output), "--arch", TINY_ARCH, "--input-size", "64",
                            "--untrained"]) == 0
    spec = read_spec_file(output)
    assert spec.demo and spec.name == "demo-untrained" and "NOT trained" in spec.provenance
    assert (tmp_path / "demo-checkpoint.ckpt").is_file()
