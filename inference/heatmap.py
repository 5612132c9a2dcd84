"""Class-activation maps from the graph's feature output, without gradients.

For global-average-pool + linear, the melanoma logit is mean_hw(sum_c w_c F_c) + b,
so sum_c w_c F_c is where the evidence sits; Grad-CAM on that layer gives the
same map up to scale.
"""
from __future__ import annotations

import cv2
import numpy as np

from inference.tta import View


def activation_maps(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(V, C, h, w) features and (C,) melanoma weights -> (V, h, w) maps, negatives clipped."""
    maps = np.einsum("vchw,c->vhw", features, weights, optimize=True)
    return np.maximum(maps, 0.0)


def merge_maps(maps: np.ndarray, views: tuple[View, ...]) -> np.ndarray:
    """Undo each view's flips/transposes, then average, so maps agree on orientation."""
    upright = [view.invert(single) for single, view in zip(maps, views, strict=True)]
    return np.mean(np.stack(upright), axis=0)


def normalise(cam: np.ndarray) -> np.ndarray:
    peak = float(cam.max())
    return cam / peak if peak > 0 else np.zeros_like(cam)


def encode_png(image_rgb: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


# The honest map: one fixed scale for every photo, tied to the melanoma logit.
# Since logit = mean_hw(sum_c w_c F_c) + b, each cell's sum_c w_c F_c + b is the logit the
# photo would get if every cell looked like that one; its sigmoid is a probability on the
# same 0..1 scale as the answer, so a 25% photo cannot light up like a 90% one.
COLORMAP = cv2.COLORMAP_VIRIDIS
COLORMAP_NAME = "viridis"


def local_probabilities(features: np.ndarray, weights: np.ndarray, bias: float,
                        views: tuple[View, ...]) -> np.ndarray:
    """(V, C, h, w) features -> (h, w) upright map of each cell's own melanoma probability."""
    maps = np.einsum("vchw,c->vhw", features, weights, optimize=True)
    logits = merge_maps(maps, views).astype(np.float64) + bias
    return 1.0 / (1.0 + np.exp(-logits))


def colour_levels(levels: np.ndarray) -> np.ndarray:
    """[0, 1] values -> RGB uint8 colours of the colour-blind-safe map."""
    grey = (np.clip(levels, 0.0, 1.0) * 255).round().astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, COLORMAP), cv2.COLOR_BGR2RGB)


def colour_stops(count: int = 9) -> list[tuple[float, str]]:
    """(offset, '#rrggbb') pairs along the map, for the page's colour bar."""
    positions = np.linspace(0.0, 1.0, count)
    colours = colour_levels(positions.reshape(1, -1)).reshape(-1, 3)
    return [(float(p), "#%02x%02x%02x" % tuple(int(c) for c in rgb))
            for p, rgb in zip(positions, colours, strict=True)]


def photo_overlay(grid: np.ndarray, width: int, height: int,
                  region: tuple[int, int, int, int]) -> np.ndarray:
    """An RGBA (height, width) layer: the map's colours over `region` (x, y, w, h), clear elsewhere.

    The region is the part of the photo the model saw, so the map lands where it came from
    even when the model's square input was a squashed or cropped version of the photo.
    """
    x, y, w, h = region
    layer = np.zeros((height, width, 4), np.uint8)
    if w <= 0 or h <= 0:
        return layer
    smooth = cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    layer[y:y + h, x:x + w, :3] = colour_levels(smooth)
    layer[y:y + h, x:x + w, 3] = 255
    return layer


def blend(image_rgb: np.ndarray, layer_rgba: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The photo with the RGBA layer laid over it at `opacity`."""
    alpha = layer_rgba[:, :, 3:4].astype(np.float32) / 255.0 * opacity
    mixed = image_rgb.astype(np.float32) * (1 - alpha) + layer_rgba[:, :, :3] * alpha
    return mixed.round().astype(np.uint8)


def encode_rgba_png(layer_rgba: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(layer_rgba, cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()
