"""Skin as a dermatoscope sees it: Fitzpatrick I-VI tones, mottling, creases and pores."""
from __future__ import annotations

import cv2
import numpy as np

from training.noise import fractal_noise, smooth_noise

# Linear RGB in [0, 1] of skin under a dermatoscope's white LEDs (slightly warm, saturated
# by the immersion fluid), from type I (very fair) to VI (deeply pigmented).
FITZPATRICK_RGB: dict[int, tuple[float, float, float]] = {
    1: (0.93, 0.76, 0.70),
    2: (0.89, 0.69, 0.58),
    3: (0.80, 0.58, 0.45),
    4: (0.66, 0.45, 0.32),
    5: (0.47, 0.31, 0.21),
    6: (0.30, 0.20, 0.14),
}
FITZPATRICK_WEIGHTS = (0.12, 0.30, 0.26, 0.16, 0.10, 0.06)


def draw_skin_type(rng: np.random.Generator) -> int:
    return int(rng.choice(6, p=FITZPATRICK_WEIGHTS)) + 1


def render_skin(rng: np.random.Generator, size: int, skin_type: int,
                tint: np.ndarray) -> np.ndarray:
    """A float32 RGB skin patch: base tone, mottled erythema and melanin, creases, pores."""
    base = np.asarray(FITZPATRICK_RGB[skin_type], np.float32) * tint
    mottle = fractal_noise(rng, size, cells=2.5, octaves=4)
    redness = np.clip(smooth_noise(rng, size, 3.0), 0.0, None)
    image = np.broadcast_to(base, (size, size, 3)).copy()
    image *= (1.0 + 0.05 * mottle)[..., None]
    # Erythema: more red, less green and blue.
    image *= (1.0 + 0.07 * redness[..., None] * np.array([0.4, -0.6, -0.5], np.float32))
    image *= 1.0 - 0.04 * _creases(rng, size)[..., None]
    image *= 1.0 - 0.05 * _pores(rng, size)[..., None]
    return np.clip(image, 0.0, 1.0)


def _creases(rng: np.random.Generator, size: int) -> np.ndarray:
    """Skin lines: two families of faint, roughly parallel wavy lines."""
    canvas = np.zeros((size, size), np.float32)
    for _ in range(2):
        angle = rng.uniform(0, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        spacing = size * rng.uniform(0.05, 0.12)
        for offset in np.arange(-size, size, spacing):
            t = np.linspace(-size, size, 24)
            wobble = rng.normal(0, spacing * 0.15, t.size).cumsum() * 0.3
            points = (size / 2 + np.outer(t, direction) + np.outer(offset + wobble, normal))
            cv2.polylines(canvas, [points.astype(np.int32)], False, float(rng.uniform(0.4, 1)),
                          1, cv2.LINE_AA)
    return cv2.GaussianBlur(canvas, (0, 0), max(0.6, size / 300))


def _pores(rng: np.random.Generator, size: int) -> np.ndarray:
    canvas = np.zeros((size, size), np.float32)
    count = int(size * size / 900)
    xy = rng.integers(0, size, (count, 2))
    canvas[xy[:, 1], xy[:, 0]] = rng.uniform(0.5, 1.0, count)
    return cv2.GaussianBlur(canvas, (0, 0), max(0.7, size / 350)) * 4.0
