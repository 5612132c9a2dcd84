"""Class-activation maps without a model: weighting, clipping, merging, PNG encoding."""
from __future__ import annotations

import cv2
import numpy as np

from inference import heatmap
from inference.tta import views_for


def test_maps_weight_channels_and_clip_negative_evidence() -> None:
    features = np.zeros((1, 2, 2, 2), np.float32)
    features[0, 0] = [[1, 2], [3, 4]]
    features[0, 1] = [[1, 1], [1, 1]]
    maps = heatmap.activation_maps(features, np.array([1.0, -2.0], np.float32))
    np.testing.assert_array_equal(maps[0], [[0, 0], [1, 2]])


def test_merge_undoes_each_view_then_averages() -> None:
    cam = np.arange(16, dtype=np.float32).reshape(4, 4)
    cam[0, 0] = 100.0
    views = views_for("dihedral")
    seen = np.stack([view.apply(cam) for view in views])
    np.testing.assert_allclose(heatmap.merge_maps(seen, views), cam)
    half = seen.copy()
    half[1:] = 0
    np.testing.assert_allclose(heatmap.merge_maps(half, views), cam / len(views))


def test_normalise_scales_the_peak_to_one_and_keeps_an_empty_map_empty() -> None:
    np.testing.assert_allclose(heatmap.normalise(np.array([[0.5, 2.0]])), [[0.25, 1.0]])
    np.testing.assert_allclose(heatmap.normalise(np.array([[0.1, 0.4]])), [[0.25, 1.0]])
    assert not heatmap.normalise(np.zeros((2, 2))).any()


def test_png_round_trips_in_rgb_order() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 255
    png = heatmap.encode_png(image)
    assert png.startswith(b"\x89PNG")
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, image)
