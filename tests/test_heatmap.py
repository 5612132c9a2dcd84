"""The honest heatmap: one fixed scale tied to the melanoma logit, over the user's own photo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import images
from inference import heatmap, preprocess, tta
from webapp import photo
from inference.model_spec import ModelSpec


def test_cells_average_to_the_models_own_logit(tiny_onnx_model: Path) -> None:
    from inference.classifier import Classifier

    model = Classifier(tiny_onnx_model)
    views = tta.views_for("dihedral")
    image = images.lesion_rgb(320, 240, seed=3)
    _, batch = model.preprocess(image, views)
    logits, features = model.run_batch(batch)
    grid = model.explain(image, features, views).grid
    cell_logits = np.log(grid / (1 - grid))
    assert cell_logits.mean() == pytest.approx(float(logits[:, 0].mean()), abs=1e-3)


def test_the_scale_is_not_stretched_to_each_images_maximum() -> None:
    views = tta.views_for("none")
    weights = np.ones(4, np.float32)
    features = np.zeros((1, 4, 2, 2), np.float32)
    features[0, :, 0, 0] = 0.5  # one cell with a little more evidence than the rest
    faint = heatmap.local_probabilities(features, weights, -3.0, views)
    strong = heatmap.local_probabilities(features, weights, 1.0, views)
    assert faint.max() < 0.3, "a low-scoring photo gets no bright spot"
    assert strong.min() > 0.7
    assert heatmap.colour_levels(faint)[0, 0].tolist() != heatmap.colour_levels(strong)[0, 0] \
        .tolist()


def test_the_colour_map_is_viridis_dark_to_light() -> None:
    stops = heatmap.colour_stops(3)
    assert [offset for offset, _ in stops] == [0.0, 0.5, 1.0]
    assert stops[0][1] == "#440154" and stops[-1][1] == "#fde725"


@pytest.mark.parametrize("resize, region", [
    ("resize", (0, 0, 640, 480)),
    ("center-crop", (80, 0, 480, 480)),
    ("shorter-side-resize+center-crop", (80, 0, 480, 480)),
])
def test_the_map_lands_on_the_part_of_the_photo_the_model_saw(
        resize: str, region: tuple[int, int, int, int]) -> None:
    spec = ModelSpec(architecture="a", input_size=64, output_kind="sigmoid", melanoma_index=0,
                     checkpoint_sha256="0" * 64, demo=False, resize=resize)  # type: ignore[arg-type]
    if resize == "center-crop":
        region = (288, 208, 64, 64)  # a plain crop of the model's size from the centre
    assert photo.seen_region(640, 480, spec) == region
    layer = heatmap.photo_overlay(np.full((2, 2), 0.5), 640, 480, region)
    x, y, w, h = region
    assert layer.shape == (480, 640, 4)
    assert (layer[y:y + h, x:x + w, 3] == 255).all() and layer[:, :, 3].sum() == 255 * w * h
    assert preprocess.fit_to_input(np.zeros((480, 640, 3), np.uint8), spec).shape == (64, 64, 3)
