"""Image-quality warnings: unsuitable photos are named, clear lesion photos are not."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests import images, nonlesion
from inference import quality


def _codes(image: np.ndarray) -> list[str]:
    return [w.code for w in quality.check(image)]


@pytest.mark.parametrize("seed", range(3))
def test_a_clear_lesion_photo_gets_no_warning(seed: int) -> None:
    assert _codes(images.lesion_rgb(640, 480, seed=seed)) == []


@pytest.mark.parametrize("make, code", [
    (lambda im: cv2.GaussianBlur(im, (0, 0), 12), "blurry"),
    (lambda im: (im * 0.15).astype(np.uint8), "too_dark"),
    (lambda im: np.clip(im.astype(int) + 120, 0, 255).astype(np.uint8), "too_bright"),
    (lambda im: np.zeros_like(im) + np.array([205, 160, 140], np.uint8), "low_contrast"),
])
def test_unusable_photos_are_named(make: object, code: str) -> None:
    photo = make(images.lesion_rgb(640, 480, seed=1))  # type: ignore[operator]
    assert code in _codes(photo)


def test_a_tiny_lesion_in_a_wide_frame_is_named() -> None:
    skin = np.full((600, 800, 3), (205, 160, 140), np.uint8)
    cv2.circle(skin, (400, 300), 9, (80, 50, 40), -1)
    assert _codes(skin) == ["lesion_too_small"]


@pytest.mark.parametrize("kind", ["landscape", "text", "objects"])
def test_photos_without_skin_colours_are_not_lesions(kind: str) -> None:
    for seed in range(3):
        assert "not_a_lesion" in _codes(nonlesion.GENERATORS[kind](seed=seed))


def test_generated_dermoscopy_is_rarely_warned() -> None:
    from training.synthetic import render_lesion

    warned = [bool(quality.check(render_lesion(90_000 + i, melanoma=i % 10 == 0, size=128)[0]))
              for i in range(40)]
    # Measured on 100 held-out images at 256 px: 1 warned (a faint lesion, lesion_too_small).
    assert sum(warned) <= 2, sum(warned)


def test_a_12_megapixel_photo_costs_the_same_as_a_small_one() -> None:
    assert quality.measure(images.lesion_rgb(4000, 3000, seed=2)).sharpness == pytest.approx(
        quality.measure(images.lesion_rgb(4000, 3000, seed=2)[::4, ::4]).sharpness, rel=0.5)
