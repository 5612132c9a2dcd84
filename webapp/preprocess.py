"""Bytes -> decoded RGB image -> model input, driven only by the model spec."""
from __future__ import annotations

import os

from webapp.image_header import ImageHeader, read_header
from webapp.model_spec import DEFAULT_MAX_IMAGE_PIXELS
# OpenCV reads this once, at its first import: a second line of defence behind read_header.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_IMAGE_PIXELS))
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from webapp.errors import InvalidImage  # noqa: E402
from webapp.model_spec import ModelSpec  # noqa: E402

MIN_IMAGE_SIDE = 32
# INTER_LINEAR_EXACT is bilinear like cv2.INTER_LINEAR (what albumentations trains with) but
# rounds identically along both axes, so a transposed photo gives the transposed input and
# dihedral TTA is exactly invariant to how the photo was turned.
_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR_EXACT, "area": cv2.INTER_AREA,
                  "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an upload held in memory into an upright RGB uint8 array (H, W, 3).

    Sizes are checked from the header first, so a decompression bomb is refused
    before any pixel is allocated.
    """
    if not data:
        raise InvalidImage("the uploaded file is empty", code="empty_image", status=400)
    header = read_header(data)
    _check_dimensions(header, max_pixels)
    _check_complete(header, data)
    buffer = np.frombuffer(data, dtype=np.uint8)
    if header.format == "JPEG":
        # IMREAD_COLOR applies the EXIF orientation and converts CMYK and grayscale JPEGs.
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        if image is None:
            raise _undecodable(header)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise _undecodable(header)
    return _to_rgb8(image)


def _check_dimensions(header: ImageHeader, max_pixels: int) -> None:
    if header.pixels > max_pixels:
        raise InvalidImage(
            f"the image is {header.width}x{header.height} pixels "
            f"({header.pixels / 1e6:.0f} MP); the limit is {max_pixels / 1e6:.0f} MP",
            code="image_too_large", status=413)
    if min(header.width, header.height) < MIN_IMAGE_SIDE:
        raise InvalidImage(
            f"the image is only {header.width}x{header.height} pixels; a lesion photo needs "
            f"at least {MIN_IMAGE_SIDE} pixels a side", code="image_too_small")


def _check_complete(header: ImageHeader, data: bytes) -> None:
    # Decoders fill a cut-off file with grey and carry on; a half image must not be scored.
    truncated = (
        (header.format == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"))
        or (header.format == "PNG" and b"IEND" not in data[-64:]))
    if truncated:
        raise InvalidImage(f"the {header.format} file is truncated (it ends before the image "
                           "does); upload the complete file", code="truncated_image")


def _undecodable(header: ImageHeader) -> InvalidImage:
    return InvalidImage(f"the {header.format} file could not be decoded; it is corrupt or "
                        "uses a variant we cannot read", code="undecodable_image")


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InvalidImage(f"images with {image.dtype} pixels are not supported",
                           code="undecodable_image")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:
        gray, alpha = image[:, :, 0], image[:, :, 1]
        return _over_white(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), alpha)
    if channels == 4:
        return _over_white(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), image[:, :, 3])
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    weight = alpha.astype(np.float32)[:, :, None] / 255.0
    blended = rgb.astype(np.float32) * weight + 255.0 * (1.0 - weight)
    return blended.round().astype(np.uint8)


def fit_to_input(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The square RGB image the model sees, by the spec's resize policy."""
    size = spec.input_size
    interpolation = _INTERPOLATION[spec.interpolation]
    height, width = image.shape[:2]
    if spec.resize == "resize":
        return cv2.resize(image, (size, size), interpolation=interpolation)
    if spec.resize == "shorter-side-resize+center-crop" or min(height, width) < size:
        scale = size / min(height, width)
        width, height = max(size, round(width * scale)), max(size, round(height * scale))
        image = cv2.resize(image, (width, height), interpolation=interpolation)
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def to_model_input(views: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """(V, S, S, 3) RGB uint8 views -> (V, 3, S, S) float32, normalised as in training."""
    if spec.color_order == "BGR":
        views = views[..., ::-1]
    scaled = views.astype(np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    inverse_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
    normalised = (scaled - mean) * inverse_std
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))
