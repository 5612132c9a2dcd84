"""The pictures a result shows: the user's photo, the map laid over it, the model's input."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from webapp import heatmap, photo
from webapp.model_spec import ModelSpec

DEFAULT_OPACITY = 0.5


@dataclass(frozen=True)
class Visuals:
    photo_jpeg: bytes      # the photo in its own aspect, display size
    width: int
    height: int
    overlay_png: bytes     # RGBA map, same size, clear where the model did not look
    blended_png: bytes     # photo + map at DEFAULT_OPACITY, for downloads and the API
    model_input_png: bytes


def render(image_rgb: np.ndarray, seen: np.ndarray, grid: np.ndarray,
           spec: ModelSpec) -> Visuals:
    """Everything drawn once per response; nothing is kept after it."""
    shown = photo.for_display(image_rgb)
    height, width = shown.shape[:2]
    region = photo.scale_region(photo.seen_region(image_rgb.shape[1], image_rgb.shape[0], spec),
                                width / image_rgb.shape[1])
    layer = heatmap.photo_overlay(grid, width, height, region)
    return Visuals(
        photo_jpeg=photo.encode_jpeg(shown), width=width, height=height,
        overlay_png=heatmap.encode_rgba_png(layer),
        blended_png=heatmap.encode_png(heatmap.blend(shown, layer, DEFAULT_OPACITY)),
        model_input_png=heatmap.encode_png(seen))
