"""Exact geometry of fitting a photo to the input, and the exact size limits of decoding.

Written against surviving mutants of inference/preprocess.py: each test pins a number a
user would notice (which pixels the model sees, which sizes are refused, with which code).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from tests import images
from inference.errors import InvalidImage
from inference.model_spec import ModelSpec
from inference.preprocess import MIN_IMAGE_SIDE, decode_image, fit_to_input

SPEC = ModelSpec(architecture="resnest14_fast_4s1x64d", input_size=64, output_kind="sigmoid",
                 melanoma_index=0, checkpoint_sha256="0" * 64, demo=True)
RNG = np.random.default_rng(5)
PHOTO = RNG.integers(0, 256, (200, 300, 3), dtype=np.uint8)


def test_center_crop_of_a_large_photo_is_its_exact_middle() -> None:
    fitted = fit_to_input(PHOTO, dataclasses.replace(SPEC, resize="center-crop"))
    np.testing.assert_array_equal(fitted, PHOTO[68:132, 118:182])


def test_center_crop_of_a_small_photo_enlarges_it_first() -> None:
    small = PHOTO[:40, :50]
    fitted = fit_to_input(small, dataclasses.replace(SPEC, resize="center-crop"))
    enlarged = cv2.resize(small, (80, 64), interpolation=cv2.INTER_LINEAR_EXACT)
    np.testing.assert_array_equal(fitted, enlarged[:, 8:72])


def test_shorter_side_resize_scales_both_sides_then_crops_the_middle() -> None:
    fitted = fit_to_input(PHOTO, dataclasses.replace(
        SPEC, resize="shorter-side-resize+center-crop", input_size=50))
    resized = cv2.resize(PHOTO, (75, 50), interpolation=cv2.INTER_LINEAR_EXACT)
    np.testing.assert_array_equal(fitted, resized[:, 12:62])


@pytest.mark.parametrize("name, flag", [("bilinear", cv2.INTER_LINEAR_EXACT),
                                        ("area", cv2.INTER_AREA),
                                        ("bicubic", cv2.INTER_CUBIC),
                                        ("nearest", cv2.INTER_NEAREST)])
def test_resize_uses_the_specs_interpolation(name: str, flag: int) -> None:
    spec = dataclasses.replace(SPEC, interpolation=name)
    np.testing.assert_array_equal(fit_to_input(PHOTO, spec),
                                  cv2.resize(PHOTO, (64, 64), interpolation=flag))
    cropped = fit_to_input(PHOTO, dataclasses.replace(
        spec, resize="shorter-side-resize+center-crop"))
    np.testing.assert_array_equal(
        cropped, cv2.resize(PHOTO, (96, 64), interpolation=flag)[:, 16:80])


def test_the_smallest_side_allowed_is_accepted_and_one_less_refused() -> None:
    edge = images.encode(np.zeros((MIN_IMAGE_SIDE, 40, 3), np.uint8), ".png")
    assert decode_image(edge).shape == (MIN_IMAGE_SIDE, 40, 3)
    with pytest.raises(InvalidImage) as caught:
        decode_image(images.encode(np.zeros((MIN_IMAGE_SIDE - 1, 40, 3), np.uint8), ".png"))
    assert (caught.value.code, caught.value.status) == ("image_too_small", 422)
    assert "only 40x31 pixels" in caught.value.message


def test_the_pixel_limit_is_inclusive_and_named_in_megapixels() -> None:
    data = images.encode(np.zeros((1000, 2000, 3), np.uint8), ".png")
    assert decode_image(data, max_pixels=2_000_000).shape == (1000, 2000, 3)
    with pytest.raises(InvalidImage) as caught:
        decode_image(data, max_pixels=1_999_999)
    assert (caught.value.code, caught.value.status) == ("image_too_large", 413)
    assert caught.value.message == ("the image is 2000x1000 pixels (2 MP); the limit is 2 MP")


def test_an_empty_upload_is_a_400_with_its_own_code() -> None:
    with pytest.raises(InvalidImage) as caught:
        decode_image(b"")
    assert (caught.value.code, caught.value.status) == ("empty_image", 400)


def test_sixteen_bit_values_scale_exactly_to_eight_bit() -> None:
    deep = np.zeros((40, 40, 3), np.uint16)
    deep[..., 0], deep[..., 1], deep[..., 2] = 65535, 257 * 100, 300
    decoded = decode_image(images.encode(deep, ".png"))
    np.testing.assert_array_equal(decoded[0, 0], [255, 100, 1])


def test_half_transparent_pixels_blend_with_white() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 3] = 102  # 40 % opaque black over white
    decoded = decode_image(images.encode(rgba, ".png"))
    np.testing.assert_array_equal(decoded[0, 0], [153, 153, 153])


def test_a_truncated_upload_has_its_own_code() -> None:
    data = images.encode(PHOTO, ".jpg")
    with pytest.raises(InvalidImage) as caught:
        decode_image(data[: len(data) // 2])
    assert caught.value.code == "truncated_image"
