"""The optional external-data layout (export/external_data.py) serves identical numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from export import external_data
from tests import images
from inference.classifier import Classifier
from inference.model_spec import read_spec_file
from webapp.service import PredictionService


def test_split_model_predicts_bit_identically_and_keeps_its_spec(tiny_onnx_model: Path,
                                                                 tmp_path: Path) -> None:
    split = tmp_path / "split" / "tiny.onnx"
    assert external_data.main([str(tiny_onnx_model), "--output", str(split)]) == 0
    data = split.with_name("tiny.onnx.data")
    assert data.stat().st_size > 10 * split.stat().st_size
    assert read_spec_file(split) == read_spec_file(tiny_onnx_model)
    single, divided = Classifier(tiny_onnx_model), Classifier(split)
    divided.warm_up()
    photo = images.encode(images.lesion_rgb(seed=3), ".jpg")
    a = PredictionService(single).predict(photo, want_heatmap=True)
    b = PredictionService(divided).predict(photo, want_heatmap=True)
    assert a.prediction.view_probabilities == b.prediction.view_probabilities
    assert a.heatmap_png == b.heatmap_png
    original = onnx.load(str(tiny_onnx_model))
    reloaded = onnx.load(str(split))
    for left, right in zip(original.graph.initializer, reloaded.graph.initializer,
                           strict=True):
        assert np.array_equal(onnx.numpy_helper.to_array(left),
                              onnx.numpy_helper.to_array(right))


def test_split_refuses_to_overwrite(tiny_onnx_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"keep me")
    assert external_data.main([str(tiny_onnx_model), "--output", str(target)]) == 1
    assert target.read_bytes() == b"keep me"
    assert external_data.main([str(tiny_onnx_model), "--output", str(tiny_onnx_model)]) == 1
