"""Bytes -> decoded RGB image -> model input, driven only by the model spec.

Every decode is budgeted before it starts: the header gives width x height x channels x
bytes per channel (plus a progressive JPEG's coefficients), and an image whose
decoding would need more than the budget is refused with a 413 naming the numbers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from inference.image_header import ImageHeader, read_header
from inference.model_spec import DEFAULT_MAX_IMAGE_PIXELS
# What a decode may hold at its peak (see decoded_bytes): 44 MP of RGB PNG fits, 49 MP of
# RGBA does not; large JPEGs are decoded at reduced scale and fit whatever their size.
DEFAULT_MAX_DECODED_BYTES = 256 << 20
# Our header checks and decoded-bytes budget are the limit; OpenCV's own pixel cap (read
# once, at its first import) would only turn a MAX_IMAGE_PIXELS above its default into 500s.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 40))
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from inference.errors import InvalidImage  # noqa: E402
from inference.model_spec import ModelSpec  # noqa: E402
from inference.pixels import to_rgb8  # noqa: E402

MIN_IMAGE_SIDE = 32
# The photo kept beside the model's input (ModelView.photo): enough for a result page,
# small enough that a decode child hands back at most 1.2 MB.
PHOTO_MAX_SIDE = 640
# INTER_LINEAR_EXACT is bilinear like cv2.INTER_LINEAR (what albumentations trains with) but
# rounds identically along both axes, so a transposed photo gives the transposed input and
# dihedral TTA is exactly invariant to how the photo was turned.
_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR_EXACT, "area": cv2.INTER_AREA,
                  "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
_REDUCED_JPEG = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may cost, checked from the header before any pixel is allocated."""

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES


@dataclass(frozen=True)
class ModelView:
    """The square image the model sees, the upload's upright size in pixels, and the
    upright photo shrunk to at most PHOTO_MAX_SIDE pixels a side (for display and quality)."""

    image: np.ndarray
    width: int
    height: int
    photo: np.ndarray
    # CPU the decoding process spent, where it ran in a child of its own (decode_sandbox).
    child_cpu_ms: float = 0.0


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                 jpeg_scale: int = 1) -> np.ndarray:
    """Decode an upload held in memory into an upright RGB uint8 array (H, W, 3).

    Sizes and structure are checked from the header first, so a decompression bomb is
    refused before any pixel is allocated. `jpeg_scale` (2, 4 or 8) decodes a JPEG at
    that fraction of its size, straight from the DCT coefficients.
    """
    if not data:
        raise InvalidImage("the uploaded file is empty", code="empty_image", status=400)
    header = read_header(data)
    _check_dimensions(header, max_pixels)
    _check_complete(header, data)
    scale = jpeg_scale if header.format == "JPEG" else 1
    _check_budget(header, scale, max_decoded_bytes)
    if header.has_alpha:
        flags = cv2.IMREAD_UNCHANGED
    elif scale > 1:
        flags = (_REDUCED_JPEG[scale] & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB
    else:
        # Converts greyscale, CMYK and 16-bit rows to RGB8 as they are read, and applies
        # the EXIF orientation.
        flags = cv2.IMREAD_COLOR_RGB
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        image = None
    if image is None:
        raise _undecodable(header)
    return to_rgb8(image) if flags == cv2.IMREAD_UNCHANGED else image


def prepare(data: bytes, spec: ModelSpec, limits: DecodeLimits = DecodeLimits()) -> ModelView:
    """Decode an upload and fit it to the model: the whole path from bytes to input image."""
    header = read_header(data) if data else None
    scale = jpeg_scale(header, spec, limits) if header is not None else 1
    image = decode_image(data, limits.max_pixels, limits.max_decoded_bytes, scale)
    assert header is not None
    width, height = header.width, header.height
    # EXIF orientation may have turned the photo: report it the way up it was decoded.
    if (image.shape[1] > image.shape[0]) != (width > height) and width != height:
        width, height = height, width
    return ModelView(fit_to_input(image, spec), width, height, shrink(image, PHOTO_MAX_SIDE))


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image scaled down (area-averaged) so its longer side is at most `max_side`."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def jpeg_scale(header: ImageHeader, spec: ModelSpec, limits: DecodeLimits) -> int:
    """How much smaller than stored to decode a JPEG: 1, 2, 4 or 8.

    Where the spec allows it, the largest reduction that keeps the shorter side at its
    multiple of the input; otherwise full size, or the least reduction that fits the
    memory budget (a 50 MP photo is worth answering at half size rather than refusing).
    """
    if header.format != "JPEG" or spec.resize == "center-crop":
        return 1
    shorter = min(header.width, header.height)
    ratio = spec.jpeg_reduced_decode_min_ratio
    if ratio > 0:
        needed = ratio * spec.input_size
        wanted = next((scale for scale in (8, 4, 2) if shorter / scale >= needed), 1)
    else:
        wanted = 1
    return next((scale for scale in (1, 2, 4, 8) if scale >= wanted and
                 decoded_bytes(header, scale) <= limits.max_decoded_bytes), wanted)


def decoded_bytes(header: ImageHeader, scale: int = 1) -> int:
    """Memory the decoder holds at its peak for this image, from the header alone."""
    width, height = -(-header.width // scale), -(-header.height // scale)
    if header.has_alpha:
        output = width * height * header.channels * header.bytes_per_channel
    else:
        output = width * height * 3
    # OpenCV's imdecode fills a buffer of its own and copies it out: the output twice.
    return 2 * output + 2 * header.coefficients


def _check_budget(header: ImageHeader, scale: int, max_decoded_bytes: int) -> None:
    needed = decoded_bytes(header, scale)
    if needed > max_decoded_bytes:
        depth = f"{8 * header.bytes_per_channel}-bit " if header.has_alpha else ""
        alpha = "with alpha " if header.has_alpha else ""
        raise InvalidImage(
            f"decoding this {header.width}x{header.height} {depth}{header.format} {alpha}"
            f"would need {needed / 2**20:.0f} MiB; the limit is "
            f"{max_decoded_bytes / 2**20:.0f} MiB. Upload a smaller or 8-bit RGB image",
            code="image_too_large", status=413)


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


def resize(image: np.ndarray, width: int, height: int, interpolation: str) -> np.ndarray:
    """`image` at width x height by a spec's interpolation name.

    "area" averages every source pixel into the one it shrinks to (no aliasing, so a photo
    decoded at 1/8 scale and one decoded in full give nearly the same input); OpenCV's area
    mode repeats pixels when it enlarges, so "area" enlarges bilinearly, as PIL's box filter
    and torchvision's antialiased resize do.
    """
    flag = _INTERPOLATION[interpolation]
    if interpolation == "area" and (width > image.shape[1] or height > image.shape[0]):
        flag = _INTERPOLATION["bilinear"]
    return cv2.resize(image, (width, height), interpolation=flag)


def fit_to_input(image: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The square RGB image the model sees, by the spec's resize policy."""
    size = spec.input_size
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    if spec.resize == "resize":
        return resize(image, size, size, spec.interpolation)
    if spec.resize == "shorter-side-resize+center-crop" or min(height, width) < size:
        scale = size / min(height, width)
        width, height = max(size, round(width * scale)), max(size, round(height * scale))
        image = resize(image, width, height, spec.interpolation)
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
