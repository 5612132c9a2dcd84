"""Class-activation maps from the graph's feature output, without gradients.

For global-average-pool + linear, the melanoma logit is mean_hw(sum_c w_c F_c) + b,
so sum_c w_c F_c is where the evidence sits; Grad-CAM on that layer gives the
same map up to scale.
"""
from __future__ import annotations

import cv2
import numpy as np

from webapp.tta import View


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


def overlay(image_rgb: np.ndarray, cam: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] map, upsampled to the image, over it with a blue-to-red colour scale."""
    height, width = image_rgb.shape[:2]
    resized = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    levels = (np.clip(resized, 0.0, 1.0) * 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = image_rgb.astype(np.float32) * (1 - opacity) + colour.astype(np.float32) * opacity
    return blended.round().astype(np.uint8)


def encode_png(image_rgb: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()
