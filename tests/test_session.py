"""Opening the ONNX Runtime session, with and without the optimised-graph cache."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from inference import preprocess, session
from inference.classifier import Classifier
from inference.errors import ModelLoadError


@pytest.fixture
def model(tiny_onnx_model: Path, tmp_path: Path) -> Path:
    """A private copy, so tests may touch its timestamps."""
    copy = tmp_path / "model.onnx"
    copy.write_bytes(tiny_onnx_model.read_bytes())
    return copy


def _outputs(opened: object) -> list[np.ndarray]:
    batch = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    return opened.run(None, {"image": batch})  # type: ignore[attr-defined]


def test_first_start_saves_the_optimised_graph_and_later_starts_use_it(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    reference = _outputs(session.open_session(model))
    first = session.open_session(model, cache_dir=cache)
    saved = sorted(p.name for p in cache.iterdir())
    assert saved == [f"model-{session.cache_key(model)}.ort"]

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr(session, "_build", no_rebuild)
    second = session.open_session(model, cache_dir=cache)
    for ours, expected in zip(_outputs(second), reference, strict=True):
        np.testing.assert_array_equal(ours, expected)
    assert _outputs(first)[0].shape == reference[0].shape
    metadata = second.get_modelmeta().custom_metadata_map
    assert "melanoma_model_spec" in metadata


def test_a_new_model_file_gets_a_new_entry_and_the_old_one_goes(
        model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    session.open_session(model, cache_dir=cache)
    old_key = session.cache_key(model)
    os.utime(model, ns=(1, 1))
    assert session.cache_key(model) != old_key
    session.open_session(model, cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == [f"model-{session.cache_key(model)}.ort"]


def test_a_corrupt_cache_entry_is_replaced(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / f"model-{session.cache_key(model)}.ort"
    entry.write_bytes(b"garbage")
    opened = session.open_session(model, cache_dir=cache)
    assert _outputs(opened)[0].shape == (2, 1)
    assert entry.stat().st_size > 1000


def test_an_unusable_cache_directory_does_not_stop_the_server(
        model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    opened = session.open_session(model, cache_dir=blocker / "cache")
    assert _outputs(opened)[0].shape == (2, 1)


def test_a_broken_model_is_still_refused_with_a_cache(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        session.open_session(broken, cache_dir=tmp_path / "cache")


def test_classifier_from_the_cache_predicts_like_one_without(
        model: Path, tmp_path: Path, lesion_jpeg_bytes: bytes) -> None:
    plain = Classifier(model)
    Classifier(model, cache_dir=tmp_path / "cache")  # fills the cache
    cached = Classifier(model, cache_dir=tmp_path / "cache")
    cached.warm_up()
    image = preprocess.decode_image(lesion_jpeg_bytes)
    assert cached.predict(image).probability == pytest.approx(
        plain.predict(image).probability, abs=1e-7)
