"""The augmentations ISIC solutions use: flips, transposes, scale and colour jitter."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augment:
    """Random label-preserving changes to an RGB uint8 image."""

    scale: tuple[float, float] = (0.8, 1.2)
    shift: float = 0.08
    brightness: float = 0.12
    contrast: float = 0.12
    saturation: float = 0.12

    def __call__(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            image = image[:, ::-1]
        if rng.random() < 0.5:
            image = image[::-1]
        if rng.random() < 0.5:
            image = image.transpose(1, 0, 2)
        image = self._affine(rng, np.ascontiguousarray(image))
        return self._colour(rng, image)

    def _affine(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        size = image.shape[0]
        scale = rng.uniform(*self.scale)
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-20, 20), scale)
        matrix[:, 2] += rng.uniform(-self.shift, self.shift, 2) * size
        return cv2.warpAffine(image, matrix, (image.shape[1], size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)

    def _colour(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        pixels = image.astype(np.float32)
        grey = pixels.mean(axis=2, keepdims=True)
        pixels = grey + (pixels - grey) * (1 + rng.uniform(-self.saturation, self.saturation))
        mean = pixels.mean()
        pixels = mean + (pixels - mean) * (1 + rng.uniform(-self.contrast, self.contrast))
        pixels *= 1 + rng.uniform(-self.brightness, self.brightness)
        return np.clip(pixels, 0, 255).astype(np.uint8)
