"""Decoded pixels of any layout -> RGB uint8, in integer maths, a band of rows at a time.

A decoded 16-bit RGBA image is 8 bytes a pixel and its RGB8 result 3: the result is
written into the front of the decoded buffer itself, band by band, so converting costs
no second full-size array and no float copy, only a few MB of temporaries per band.
"""
from __future__ import annotations

import numpy as np

from inference.errors import InvalidImage

BAND_BYTES = 4 << 20


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """An upright (H, W, 3) RGB uint8 array from what OpenCV decoded (BGR order).

    Alpha is composited over white; 16-bit values become round(v / 257), floats in [0, 1]
    round(v * 255): exactly what float maths gives, without a float copy of the image.
    """
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise InvalidImage(f"images with {image.dtype} pixels are not supported",
                           code="undecodable_image")
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    if channels not in (1, 2, 3, 4):
        raise InvalidImage(f"images with {channels} channels are not supported",
                           code="undecodable_image")
    source = np.ascontiguousarray(image)
    output = _output_buffer(source)
    rows = max(1, BAND_BYTES // (width * channels * source.itemsize))
    for top in range(0, height, rows):
        # The band's result is a new array before it lands in `output`: writing in place
        # overwrites only bytes this band has already read.
        output[top:top + rows] = _band_to_rgb8(source[top:top + rows])
    return output


def _output_buffer(source: np.ndarray) -> np.ndarray:
    height, width = source.shape[:2]
    needed = height * width * 3
    if source.nbytes < needed:
        return np.empty((height, width, 3), np.uint8)
    return source.reshape(-1).view(np.uint8)[:needed].reshape(height, width, 3)


def _band_to_rgb8(band: np.ndarray) -> np.ndarray:
    eight = _to_uint8(band)
    channels = eight.shape[2]
    if channels == 1:
        return np.repeat(eight, 3, axis=2)
    if channels == 2:
        return _over_white(np.repeat(eight[:, :, :1], 3, axis=2), eight[:, :, 1])
    rgb = np.ascontiguousarray(eight[:, :, 2::-1])
    return rgb if channels == 3 else _over_white(rgb, eight[:, :, 3])


def _to_uint8(band: np.ndarray) -> np.ndarray:
    if band.dtype == np.uint8:
        return band
    if band.dtype == np.uint16:
        # floor((v + 128) / 257) == round(v / 257): 257 is odd, so there are no ties.
        return ((band.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return (np.clip(band, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    weight = alpha.astype(np.uint32)[:, :, None]
    blended = (rgb.astype(np.uint32) * weight + 255 * (255 - weight) + 127) // 255
    return blended.astype(np.uint8)
