"""The user's own photo for display, and where in it the model's square input came from."""
from __future__ import annotations

import cv2
import numpy as np

from inference.model_spec import ModelSpec
from inference.preprocess import PHOTO_MAX_SIDE

DISPLAY_SIDE = PHOTO_MAX_SIDE


def for_display(image_rgb: np.ndarray, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """The photo in its own aspect, no longer than `max_side` on its long side."""
    height, width = image_rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return image_rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)


def seen_region(width: int, height: int, spec: ModelSpec) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the photo that `preprocess.fit_to_input` turned into the model input."""
    size = spec.input_size
    if spec.resize == "resize":
        return 0, 0, width, height
    scale = 1.0
    if spec.resize == "shorter-side-resize+center-crop" or min(height, width) < size:
        scale = size / min(height, width)
    side = min(width, height, round(size / scale))
    return (width - side) // 2, (height - side) // 2, side, side


def scale_region(region: tuple[int, int, int, int], factor: float) -> tuple[int, int, int, int]:
    return tuple(round(v * factor) for v in region)  # type: ignore[return-value]


def encode_jpeg(image_rgb: np.ndarray, quality: int = 85) -> bytes:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buffer.tobytes()
