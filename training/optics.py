"""What the dermatoscope and the skin's surface add: hairs, gel bubbles, ruler, glare,
the circular field with its vignetting, blur and sensor noise."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Optics:
    """One device and one patient's habits, shared by all of that patient's images."""

    field: bool              # circular field of view with black corners
    field_radius: float      # fraction of the side
    vignetting: float
    hair_density: float      # expected hairs per image
    hair_colour: float       # 0 dark .. 1 light (grey/blond)
    bubble_rate: float
    ruler_rate: float
    glare_rate: float
    blur: float              # Gaussian sigma per 256 px
    tint: tuple[float, float, float]


def draw_optics(rng: np.random.Generator) -> Optics:
    return Optics(
        field=bool(rng.random() < 0.6),
        field_radius=float(rng.uniform(0.47, 0.62)),
        vignetting=float(rng.uniform(0.15, 0.45)),
        hair_density=float(rng.choice([0.0, 1.0, 3.0, 8.0], p=[0.3, 0.3, 0.25, 0.15])),
        hair_colour=float(rng.random() ** 3),
        bubble_rate=float(rng.uniform(0.0, 2.5)),
        ruler_rate=float(rng.choice([0.0, 0.6], p=[0.75, 0.25])),
        glare_rate=float(rng.uniform(0.0, 0.8)),
        blur=float(rng.uniform(0.4, 1.3)),
        tint=(1.0, float(rng.uniform(0.96, 1.03)), float(rng.uniform(0.93, 1.06))),
    )


def apply_optics(rng: np.random.Generator, image: np.ndarray, optics: Optics) -> np.ndarray:
    """Everything between the skin and the JPEG, in the order light meets it."""
    size = image.shape[0]
    image = _hairs(rng, image, optics)
    image = _bubbles(rng, image, int(rng.poisson(optics.bubble_rate)))
    if rng.random() < optics.glare_rate:
        image = _glare(rng, image)
    image = cv2.GaussianBlur(image, (0, 0), optics.blur * size / 256)
    image = _field(rng, image, optics)
    if rng.random() < optics.ruler_rate:
        image = _ruler(rng, image)
    image = image + rng.normal(0, 0.012, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def _hairs(rng: np.random.Generator, image: np.ndarray, optics: Optics) -> np.ndarray:
    size = image.shape[0]
    count = int(rng.poisson(optics.hair_density))
    if count == 0:
        return image
    ink = np.zeros((size, size), np.float32)
    for _ in range(count):
        start = rng.uniform(-0.2, 1.2, 2) * size
        angle = rng.uniform(0, 2 * np.pi)
        length = size * rng.uniform(0.3, 1.2)
        bend = rng.normal(0, 0.15) * length
        t = np.linspace(0, 1, 32)[:, None]
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        points = start + t * length * direction + (4 * t * (1 - t)) * bend * normal
        width = max(1, int(round(size / rng.uniform(120, 260))))
        cv2.polylines(ink, [points.astype(np.int32)], False, 1.0, width, cv2.LINE_AA)
    colour = np.asarray((0.09, 0.07, 0.06), np.float32) * (1 - optics.hair_colour) \
        + np.asarray((0.62, 0.55, 0.45), np.float32) * optics.hair_colour
    amount = np.clip(ink, 0, 1)[..., None] * 0.85
    return image * (1 - amount) + colour * amount


def _bubbles(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    size = image.shape[0]
    for _ in range(count):
        centre = rng.uniform(0.05, 0.95, 2) * size
        radius = size * rng.uniform(0.012, 0.07)
        rim = np.zeros((size, size), np.float32)
        cv2.circle(rim, _pt(centre), int(radius), 1.0, max(1, int(radius / 6)), cv2.LINE_AA)
        shadow = np.zeros((size, size), np.float32)
        cv2.circle(shadow, _pt(centre + 1.5), int(radius * 1.08), 1.0, max(1, int(radius / 8)),
                   cv2.LINE_AA)
        inner = np.zeros((size, size), np.float32)
        cv2.circle(inner, _pt(centre), max(1, int(radius * 0.9)), 1.0, -1, cv2.LINE_AA)
        image = image * (1 - 0.35 * shadow[..., None])
        image = image + 0.06 * inner[..., None]
        image = image * (1 - 0.7 * rim[..., None]) + 0.97 * 0.7 * rim[..., None]
    return image


def _glare(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    size = image.shape[0]
    spots = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        centre = rng.uniform(0.1, 0.9, 2) * size
        axes = (int(size * rng.uniform(0.01, 0.05)), int(size * rng.uniform(0.005, 0.025)))
        cv2.ellipse(spots, _pt(centre), axes, rng.uniform(0, 180), 0, 360, 1.0, -1,
                    cv2.LINE_AA)
    spots = cv2.GaussianBlur(spots, (0, 0), size / 150)[..., None] * rng.uniform(0.5, 0.9)
    return image * (1 - spots) + spots


def _field(rng: np.random.Generator, image: np.ndarray, optics: Optics) -> np.ndarray:
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.normal(0, size * 0.02, 2)
    radius = size * (optics.field_radius if optics.field else 0.75)
    r = np.hypot(xx - centre[0], yy - centre[1]) / radius
    shade = 1.0 - optics.vignetting * np.clip(r, 0, 1) ** 3
    image = image * shade[..., None]
    if optics.field:
        edge = np.clip((1.0 - r) * radius / max(1.0, size / 120), 0, 1)[..., None]
        black = np.float32(rng.uniform(0.0, 0.04))
        image = image * edge + black * (1 - edge)
    return image


def _ruler(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    size = image.shape[0]
    ink = np.zeros((size, size), np.float32)
    side = rng.integers(4)
    offset = int(size * rng.uniform(0.12, 0.2))
    step = size / rng.uniform(18, 30)
    for index, position in enumerate(np.arange(size * 0.2, size * 0.8, step)):
        tick = int(size * (0.05 if index % 5 == 0 else 0.025))
        a, b = (int(position), offset), (int(position), offset + tick)
        if side % 2:
            a, b = (a[1], a[0]), (b[1], b[0])
        if side >= 2:
            a, b = (size - 1 - a[0], size - 1 - a[1]), (size - 1 - b[0], size - 1 - b[1])
        cv2.line(ink, a, b, 1.0, max(1, size // 256), cv2.LINE_AA)
    colour = np.asarray((0.12, 0.10, 0.22), np.float32)
    amount = ink[..., None] * 0.8
    return image * (1 - amount) + colour * amount


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))
