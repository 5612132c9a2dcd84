"""Decoding any reasonable photo upright into RGB, and fitting it to the spec's input."""
from __future__ import annotations

import dataclasses
import struct
import zlib

import cv2
import numpy as np
import pytest

from tests import images
from inference.errors import InvalidImage, UnsupportedImageType
from inference.image_header import read_header
from inference.model_spec import ModelSpec
from inference.preprocess import decode_image, fit_to_input, to_model_input

SPEC = ModelSpec(architecture="resnest14_fast_4s1x64d", input_size=64, output_kind="sigmoid",
                 melanoma_index=0, checkpoint_sha256="0" * 64, demo=True)


def _close(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """Same picture, compared after a blur so codec noise does not count but layout does."""
    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (7, 7), 0).astype(int)
    return a.shape == b.shape and float(np.abs(blur(a) - blur(b)).mean()) < tolerance


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return images.lesion_rgb(200, 120)


def test_jpeg_decodes_to_rgb_not_bgr(photo: np.ndarray) -> None:
    decoded = decode_image(images.encode(photo, ".jpg", quality=98))
    assert decoded.shape == photo.shape
    assert _close(decoded, photo, 2)
    # The background is skin-coloured: red channel highest. Swapped channels would flip it.
    assert decoded[2, 2, 0] > decoded[2, 2, 2]


@pytest.mark.parametrize("extension", [".png", ".webp", ".bmp", ".tiff", ".gif"])
def test_lossless_and_common_formats_decode_to_the_same_pixels(
        photo: np.ndarray, extension: str) -> None:
    decoded = decode_image(images.encode(photo, extension))
    assert decoded.shape == photo.shape and decoded.dtype == np.uint8
    tolerance = 3 if extension == ".gif" else 1  # GIF is palette-quantised
    assert _close(decoded, photo, tolerance)


@pytest.mark.parametrize("orientation, undo", [
    (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, 1)), (8, lambda a: np.rot90(a, -1)),
])
def test_exif_orientation_is_applied(photo: np.ndarray, orientation: int, undo) -> None:
    stored = np.ascontiguousarray(undo(photo))  # how a phone stores a rotated shot
    decoded = decode_image(images.jpeg_with_exif_orientation(stored, orientation))
    assert decoded.shape == photo.shape
    assert _close(decoded, photo, 2)


def test_grayscale_becomes_three_equal_channels(photo: np.ndarray) -> None:
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    decoded = decode_image(images.encode(gray, ".png"))
    assert decoded.shape == (*gray.shape, 3)
    assert np.array_equal(decoded[..., 0], gray) and np.array_equal(decoded[..., 2], gray)


def test_sixteen_bit_png_scales_to_eight_bit(photo: np.ndarray) -> None:
    deep = photo.astype(np.uint16) * 257
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    assert ok
    assert np.array_equal(decode_image(buffer.tobytes()), photo)


def test_transparent_pixels_are_composited_over_white(photo: np.ndarray) -> None:
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    decoded = decode_image(images.encode(rgba, ".png"))
    assert decoded.shape == photo.shape
    assert (decoded[:10, :10] == 255).all()
    assert np.array_equal(decoded[50:, 50:], photo[50:, 50:])


def test_cmyk_jpeg_is_converted(photo: np.ndarray) -> None:
    from io import BytesIO

    from PIL import Image

    stream = BytesIO()
    Image.fromarray(photo).convert("CMYK").save(stream, "JPEG", quality=95)
    decoded = decode_image(stream.getvalue())
    assert decoded.shape == photo.shape
    assert _close(decoded, photo, 12)


def test_palette_png_decodes(photo: np.ndarray) -> None:
    from io import BytesIO

    from PIL import Image

    stream = BytesIO()
    Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE).save(stream, "PNG")
    assert _close(decode_image(stream.getvalue()), photo, 12)


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def test_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(InvalidImage, match="30000x30000") as caught:
        decode_image(_png_header_only(30000, 30000) + b"\x00" * 100)
    assert caught.value.status == 413


@pytest.mark.parametrize("payload, what", [
    (b"%PDF-1.7\n...", "PDF"), (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
    (b"<!DOCTYPE html><html></html>", "HTML"), (b"just some text", "not an image format"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00", "HEIC"),
])
def test_non_images_are_named_in_the_error(payload: bytes, what: str) -> None:
    with pytest.raises(UnsupportedImageType, match=what):
        decode_image(payload)


@pytest.mark.parametrize("extension", [".jpg", ".png"])
def test_truncated_files_are_refused_not_half_scored(photo: np.ndarray, extension: str) -> None:
    data = images.encode(photo, extension)
    with pytest.raises(InvalidImage, match="truncated"):
        decode_image(data[: len(data) * 2 // 3])


def test_tiny_images_are_refused() -> None:
    with pytest.raises(InvalidImage, match="only 1x1"):
        decode_image(images.encode(np.zeros((1, 1, 3), np.uint8), ".png"))


def test_empty_upload_is_refused() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("extension, expected", [
    (".jpg", "JPEG"), (".png", "PNG"), (".gif", "GIF"), (".bmp", "BMP"), (".webp", "WebP"),
    (".tiff", "TIFF")])
def test_header_reports_format_and_size(photo: np.ndarray, extension: str, expected: str) -> None:
    header = read_header(images.encode(photo, extension))
    assert (header.format, header.width, header.height) == (expected, 200, 120)


def test_resize_policy_stretches_the_whole_image_never_crops() -> None:
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, :20] = 255  # a white band at the left edge must survive a resize
    fitted = fit_to_input(wide, SPEC)
    assert fitted.shape == (64, 64, 3)
    assert fitted[:, 0].mean() > 200


def test_center_crop_policies_keep_the_middle() -> None:
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, :20] = 255
    for policy in ("center-crop", "shorter-side-resize+center-crop"):
        fitted = fit_to_input(wide, dataclasses.replace(SPEC, resize=policy))
        assert fitted.shape == (64, 64, 3)
        assert fitted[:, 0].mean() == 0, policy


def test_normalisation_follows_spec_mean_std_and_colour_order() -> None:
    pixel = np.zeros((1, 1, 1, 3), np.uint8)
    pixel[..., 0] = 255  # pure red
    rgb = to_model_input(pixel, SPEC)
    assert rgb.shape == (1, 3, 1, 1) and rgb.dtype == np.float32
    assert rgb[0, 0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)
    bgr = to_model_input(pixel, dataclasses.replace(SPEC, color_order="BGR"))
    assert bgr[0, 2, 0, 0] == pytest.approx((1 - 0.406) / 0.225, rel=1e-5)
