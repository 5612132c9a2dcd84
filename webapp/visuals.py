"""The pictures a result shows: the user's photo, the map laid over it, the model's input."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from inference import heatmap

from webapp import photo
from inference.model_spec import ModelSpec

DEFAULT_OPACITY = 0.4


@dataclass(frozen=True, eq=False)
class Visuals:
    photo_jpeg: bytes      # the photo in its own aspect, display size
    width: int
    height: int
    overlay_png: bytes     # RGBA map, same size, clear where the model did not look
    blended: np.ndarray    # photo + map at DEFAULT_OPACITY, for downloads, report and API
    model_input_png: bytes

    @cached_property
    def blended_jpeg(self) -> bytes:
        return photo.encode_jpeg(self.blended, 90)

    @property
    def blended_png(self) -> bytes:
        return heatmap.encode_png(self.blended)


def render(image_rgb: np.ndarray, original_size: tuple[int, int], seen: np.ndarray,
           grid: np.ndarray, spec: ModelSpec, max_side: int = photo.DISPLAY_SIDE) -> Visuals:
    """Everything drawn once per response; nothing is kept after it.

    `image_rgb` may be a shrunk copy of the upload (the decode sandbox hands back at most
    640 px a side); `original_size` (width, height) locates the model's crop in it.
    """
    shown = photo.for_display(image_rgb, max_side)
    height, width = shown.shape[:2]
    region = photo.scale_region(photo.seen_region(*original_size, spec),
                                width / original_size[0])
    layer = heatmap.photo_overlay(grid, width, height, region)
    return Visuals(
        photo_jpeg=photo.encode_jpeg(shown), width=width, height=height,
        overlay_png=heatmap.encode_rgba_png(layer),
        blended=heatmap.blend(shown, layer, DEFAULT_OPACITY),
        model_input_png=heatmap.encode_png(seen))
