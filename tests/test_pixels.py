"""Pixel conversion to RGB8: exact integer maths, and no full-size temporary."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from inference.pixels import BAND_BYTES, to_rgb8


@pytest.mark.parametrize(("dtype", "channels"), [(np.uint16, 4), (np.uint8, 4), (np.uint16, 3),
                                                 (np.float32, 4)])
def test_conversion_needs_no_full_size_copy(dtype: type, channels: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1500, 1600, channels)).astype(dtype)
    if dtype is np.float32:
        image /= 255.0
    tracemalloc.start()
    try:
        rgb = to_rgb8(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rgb.shape == (1500, 1600, 3) and rgb.dtype == np.uint8
    # Temporaries of a few bands, never a copy of the image (7-38 MB here).
    assert peak < 12 * BAND_BYTES, f"peak {peak / 2**20:.1f} MiB"


def test_alpha_composites_over_white_like_float_maths() -> None:
    rng = np.random.default_rng(1)
    bgra = rng.integers(0, 256, (300, 200, 4), dtype=np.uint8)
    weight = bgra[:, :, 3:].astype(np.float64) / 255.0
    expected = np.round(bgra[:, :, 2::-1] * weight + 255.0 * (1.0 - weight)).astype(np.uint8)
    assert np.array_equal(to_rgb8(bgra.copy()), expected)


def test_greyscale_and_grey_alpha_become_rgb() -> None:
    grey = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    rgb = to_rgb8(grey)
    assert rgb.shape == (64, 64, 3)
    assert np.array_equal(rgb[:, :, 0], np.round(grey / 257.0).astype(np.uint8))
    grey_alpha = np.dstack([np.full((8, 8), 10, np.uint8), np.zeros((8, 8), np.uint8)])
    assert (to_rgb8(grey_alpha) == 255).all()
