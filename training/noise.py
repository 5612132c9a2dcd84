"""Smooth random fields, the raw material of skin texture and lesion patterns."""
from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, size: int, cells: float) -> np.ndarray:
    """A zero-mean, unit-variance field of `size` x `size` varying over about `cells` blobs."""
    grid = max(2, int(round(cells)) + 1)
    coarse = rng.standard_normal((grid, grid)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def fractal_noise(rng: np.random.Generator, size: int, cells: float = 3.0,
                  octaves: int = 4, persistence: float = 0.5) -> np.ndarray:
    """Octaves of `smooth_noise`, normalised to zero mean and unit variance."""
    total = np.zeros((size, size), np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        total += amplitude * smooth_noise(rng, size, cells * 2 ** octave)
        amplitude *= persistence
    return (total - total.mean()) / (total.std() + 1e-6)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
