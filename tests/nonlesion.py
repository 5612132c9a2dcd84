"""Generated photos that are not skin lesions: landscapes, text pages, faces and objects.

Used to check the out-of-distribution and quality warnings; generated, never downloaded.
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

KINDS = ("landscape", "text", "face", "objects")


def landscape(width: int = 480, height: int = 360, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    horizon = int(height * rng.uniform(0.35, 0.6))
    for row in range(horizon):
        t = row / max(horizon, 1)
        image[row] = (int(90 + 80 * t), int(150 + 60 * t), int(230 - 10 * t))
    image[horizon:] = (int(rng.integers(40, 90)), int(rng.integers(110, 160)), 50)
    for _ in range(3):
        centre = (int(rng.integers(0, width)), horizon + int(rng.integers(-10, 40)))
        axes = (int(rng.integers(width // 6, width // 2)), int(rng.integers(20, 60)))
        cv2.ellipse(image, centre, axes, 0, 180, 360,
                    (int(rng.integers(30, 80)), int(rng.integers(90, 140)), 40), -1)
    cv2.circle(image, (int(width * rng.uniform(0.1, 0.9)), int(horizon * 0.3)),
               int(rng.integers(12, 30)), (255, 240, 180), -1)
    return _noisy(image, rng)


def text_page(width: int = 480, height: int = 360, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), int(rng.integers(225, 250)), np.uint8)
    words = "the quick brown fox jumps over a lazy dog lorem ipsum dolor sit amet".split()
    y = 30
    while y < height - 10:
        line = " ".join(rng.choice(words, size=6))
        cv2.putText(image, line, (12, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1,
                    cv2.LINE_AA)
        y += int(rng.integers(22, 30))
    return _noisy(image, rng, 3)


def face(width: int = 480, height: int = 360, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (int(rng.integers(60, 200)), int(rng.integers(60, 200)), int(rng.integers(60, 200)))
    skin = (int(rng.integers(150, 235)), int(rng.integers(110, 180)), int(rng.integers(90, 150)))
    cx, cy = width // 2, height // 2
    cv2.ellipse(image, (cx, cy), (width // 6, height // 3), 0, 0, 360, skin, -1)
    cv2.ellipse(image, (cx, cy - height // 4), (width // 6 + 8, height // 8), 0, 180, 360,
                (40, 30, 20), -1)
    for dx in (-1, 1):
        cv2.ellipse(image, (cx + dx * width // 14, cy - height // 16), (14, 7), 0, 0, 360,
                    (250, 250, 250), -1)
        cv2.circle(image, (cx + dx * width // 14, cy - height // 16), 5, (40, 30, 20), -1)
    cv2.ellipse(image, (cx, cy + height // 7), (width // 20, 8), 0, 0, 180, (150, 50, 60), 3)
    cv2.line(image, (cx, cy - 5), (cx - 6, cy + 25), (120, 80, 60), 2)
    return _noisy(image, rng)


def objects(width: int = 480, height: int = 360, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (int(rng.integers(100, 220)),) * 3
    for _ in range(int(rng.integers(3, 7))):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, y), (x + int(rng.integers(30, 150)),
                                          y + int(rng.integers(30, 150))), colour, -1)
        else:
            cv2.circle(image, (x, y), int(rng.integers(15, 70)), colour, -1)
    return _noisy(image, rng)


GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "landscape": landscape, "text": text_page, "face": face, "objects": objects}


def _noisy(image: np.ndarray, rng: np.random.Generator, sigma: float = 5.0) -> np.ndarray:
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)
