"""The default model: built by the normal export path from a deterministic demo checkpoint."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from export import demo_model
from export.demo import write_demo_checkpoint
from tests.conftest import TINY_ARCH
from webapp.model_spec import read_spec_file


def test_demo_checkpoint_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    # torch.save names the archive's folder after the file, so compare same-named files.
    first = write_demo_checkpoint(tmp_path / "a" / "demo.ckpt", TINY_ARCH, 64)
    second = write_demo_checkpoint(tmp_path / "b" / "demo.ckpt", TINY_ARCH, 64)
    assert hashlib.sha256(first.read_bytes()).digest() == \
        hashlib.sha256(second.read_bytes()).digest()
    other_seed = write_demo_checkpoint(tmp_path / "c" / "demo.ckpt", TINY_ARCH, 64, seed=1)
    assert other_seed.read_bytes() != first.read_bytes()


def test_demo_model_is_labelled_untrained_and_built_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "default.onnx"
    args = ["--output", str(output), "--arch", TINY_ARCH, "--input-size", "64"]
    assert demo_model.main(args) == 0
    spec = read_spec_file(output)
    assert spec.demo and not spec.trained
    assert spec.name == "demo-untrained" and "NOT trained" in spec.provenance
    assert spec.checkpoint_format == "lightning (prefix 'model.')"
    built = output.stat().st_mtime_ns
    capsys.readouterr()
    assert demo_model.main(args) == 0
    assert "already built" in capsys.readouterr().out
    assert output.stat().st_mtime_ns == built


def test_a_corrupt_cached_demo_model_is_rebuilt(tmp_path: Path) -> None:
    output = tmp_path / "default.onnx"
    output.write_bytes(b"half a model")
    args = ["--output", str(output), "--arch", TINY_ARCH, "--input-size", "64"]
    assert demo_model.main(args) == 0
    assert read_spec_file(output).demo
