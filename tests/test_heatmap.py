"""Class-activation maps without a model: weighting, clipping, merging, colouring."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from webapp import heatmap
from webapp.tta import views_for


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


def test_overlay_is_red_where_evidence_is_and_blue_where_none() -> None:
    image = np.full((32, 32, 3), 128, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[:, 2:] = 1.0
    blended = heatmap.overlay(image, cam)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    left, right = blended[16, 2].astype(int), blended[16, 29].astype(int)
    assert left[2] > left[0], "no evidence is blue"
    assert right[0] > right[2], "evidence is red (RGB order)"
    np.testing.assert_array_equal(heatmap.overlay(image, cam, opacity=0.0), image)


def test_png_round_trips_in_rgb_order() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 255
    png = heatmap.encode_png(image)
    assert png.startswith(b"\x89PNG")
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize("opacity", [0.25, 0.75])
def test_opacity_mixes_image_and_colour(opacity: float) -> None:
    image = np.full((8, 8, 3), 200, np.uint8)
    colour = heatmap.overlay(image, np.ones((2, 2), np.float32), opacity=1.0).astype(float)
    mixed = heatmap.overlay(image, np.ones((2, 2), np.float32), opacity=opacity)
    np.testing.assert_allclose(mixed, np.round(200 * (1 - opacity) + colour * opacity),
                               atol=1)


def test_out_of_range_evidence_is_clipped_not_wrapped_around() -> None:
    image = np.full((16, 16, 3), 100, np.uint8)
    np.testing.assert_array_equal(heatmap.overlay(image, np.full((2, 2), 3.0, np.float32)),
                                  heatmap.overlay(image, np.ones((2, 2), np.float32)))
    np.testing.assert_array_equal(heatmap.overlay(image, np.full((2, 2), -3.0, np.float32)),
                                  heatmap.overlay(image, np.zeros((2, 2), np.float32)))
