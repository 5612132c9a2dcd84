"""One pigmented lesion with its ground-truth mask, drawn from dermoscopic traits.

Benign naevi: symmetric, regular border, one or two browns, regular network fading at the
edge, regular globules. Melanoma: asymmetric, irregular or notched border, three or more
colours, atypical network, peripheral dots, streaks, blue-white veil, regression, vessels.
Which traits a lesion gets depends on a latent severity, so the classes overlap.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from training.noise import fractal_noise, smooth_noise, smoothstep

PALETTE: dict[str, tuple[float, float, float]] = {
    "tan": (0.76, 0.55, 0.38),
    "light_brown": (0.62, 0.40, 0.25),
    "dark_brown": (0.36, 0.21, 0.12),
    "black": (0.11, 0.08, 0.08),
    "blue_grey": (0.40, 0.45, 0.56),
    "red": (0.80, 0.38, 0.38),
    "white": (0.88, 0.85, 0.84),
}
BENIGN_COLOURS = ("tan", "light_brown", "dark_brown")
# Added in this order as a lesion gets more colours.
ATYPICAL_COLOURS = ("black", "blue_grey", "dark_brown", "red", "white")


@dataclass(frozen=True)
class LesionTraits:
    """What a lesion looks like, decided before anything is drawn."""

    radius: float            # mean radius as a fraction of the image side
    centre: tuple[float, float]
    elongation: float        # ellipse axis ratio, >= 1 (symmetric)
    angle: float
    asymmetry: float         # amplitude of the low, odd harmonics of the outline
    roughness: float         # amplitude of the high harmonics (irregular border)
    notches: int
    colours: tuple[str, ...]
    network: str             # none | regular | atypical
    globules: str            # none | regular | peripheral
    streaks: bool
    veil: bool
    regression: bool
    vessels: bool
    edge_width: float        # fade at the border, as a fraction of the radius


def draw_traits(rng: np.random.Generator, severity: float, base_colours: tuple[str, str],
                radius: float, elongation: float) -> LesionTraits:
    """Traits for a lesion of the given severity (0 = banal naevus, 1 = florid melanoma)."""
    s = float(np.clip(severity, 0.0, 1.0))
    count = int(np.clip(round(1 + 4.2 * s + rng.normal(0, 0.3)), 1, 6))
    colours = list(base_colours[: min(count, 2)])
    for extra in ATYPICAL_COLOURS:
        if len(colours) >= count:
            break
        if extra not in colours:
            colours.append(extra)
    network = "none" if rng.random() < 0.25 else ("atypical" if rng.random() < s else "regular")
    globules = ("peripheral" if rng.random() < 0.8 * s else
                "regular" if rng.random() < 0.45 else "none")
    return LesionTraits(
        radius=radius * rng.uniform(0.85, 1.15) * (1.0 + 0.7 * s),
        centre=(rng.uniform(0.38, 0.62), rng.uniform(0.38, 0.62)),
        elongation=elongation * rng.uniform(0.95, 1.05),
        angle=rng.uniform(0, np.pi),
        asymmetry=0.02 + 0.26 * s * rng.uniform(0.6, 1.3),
        roughness=0.006 + 0.06 * s ** 1.5 * rng.uniform(0.5, 1.5),
        notches=int(rng.poisson(2.5 * s ** 2)),
        colours=tuple(colours),
        network=network,
        globules=globules,
        streaks=bool(rng.random() < 0.55 * s ** 2),
        veil=bool(rng.random() < s ** 1.1),
        regression=bool(rng.random() < 0.55 * s ** 2),
        vessels=bool(rng.random() < 0.35 * s ** 2),
        edge_width=float(np.clip(0.28 - 0.22 * s + rng.normal(0, 0.03), 0.04, 0.35)),
    )


def paint_lesion(rng: np.random.Generator, skin: np.ndarray, traits: LesionTraits
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Paint the lesion onto `skin` (float RGB); returns (image, boolean lesion mask)."""
    size = skin.shape[0]
    rho, theta = _outline(rng, size, traits)
    mask = rho <= 1.0
    darkness = 0.55 + 0.45 * float(skin.mean()) / 0.65
    colour = _base_colour(rng, size, traits, rho, theta) * min(darkness, 1.0)
    colour = _network(rng, colour, rho, traits)
    colour = _veil_and_regression(rng, colour, rho, traits)
    alpha = _alpha(rng, rho, theta, traits)
    image = skin * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    image = _dots_and_streaks(rng, image, rho, theta, traits)
    if traits.vessels:
        image = _vessels(rng, image, rho)
    return np.clip(image, 0.0, 1.0), mask


def _outline(rng: np.random.Generator, size: int, traits: LesionTraits
             ) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius (1 on the border) and angle of every pixel."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = traits.centre[0] * size, traits.centre[1] * size
    dx, dy = xx - cx, yy - cy
    cos, sin = np.cos(traits.angle), np.sin(traits.angle)
    u, v = dx * cos + dy * sin, (-dx * sin + dy * cos) * traits.elongation
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k in (1, 2, 3):
        radius += traits.asymmetry / k * rng.uniform(0.5, 1.0) * np.cos(k * theta
                                                                         + rng.uniform(0, 6.3))
    for k in range(4, 16):
        radius += traits.roughness * rng.uniform(0.2, 1.0) / np.sqrt(k - 3) * np.cos(
            k * theta + rng.uniform(0, 6.3))
    for _ in range(traits.notches):
        centre, width = rng.uniform(-np.pi, np.pi), rng.uniform(0.08, 0.25)
        gap = np.angle(np.exp(1j * (theta - centre)))
        radius -= rng.uniform(0.08, 0.2) * np.exp(-(gap / width) ** 2)
    radius *= traits.radius * size
    return np.hypot(u, v) / np.maximum(radius, 1.0), theta


def _base_colour(rng: np.random.Generator, size: int, traits: LesionTraits, rho: np.ndarray,
                 theta: np.ndarray) -> np.ndarray:
    colours = [np.asarray(PALETTE[name], np.float32) for name in traits.colours]
    if len(colours) <= 2:
        # Symmetric: concentric, darker or lighter centre, fading out.
        outer, inner = colours[0], colours[-1]
        t = smoothstep(0.15, 0.95, rho + 0.06 * smooth_noise(rng, size, 4))
        if rng.random() < 0.5:
            t = 1.0 - t
        mixed = inner * (1 - t[..., None]) + outer * t[..., None]
        return mixed * (1.0 + 0.05 * fractal_noise(rng, size, 8, 3))[..., None]
    # Patchy, eccentric zones of several colours.
    direction = rng.uniform(0, 2 * np.pi)
    drift = rho * np.cos(theta - direction)
    weights = []
    for index in range(len(colours)):
        field = fractal_noise(rng, size, cells=3.0, octaves=3)
        field += 1.6 * drift * (index / max(1, len(colours) - 1) - 0.5)
        weights.append(field * 1.8)
    stacked = np.stack(weights, -1)
    stacked = np.exp(stacked - stacked.max(-1, keepdims=True))
    stacked /= stacked.sum(-1, keepdims=True)
    mixed = np.einsum("hwk,kc->hwc", stacked, np.stack(colours)).astype(np.float32)
    return mixed * (1.0 + 0.07 * fractal_noise(rng, size, 8, 3))[..., None]


def _alpha(rng: np.random.Generator, rho: np.ndarray, theta: np.ndarray,
           traits: LesionTraits) -> np.ndarray:
    """Opacity of the pigment: a soft fade at the border, abrupt in places for atypia."""
    width = traits.edge_width * (1.0 + 0.6 * np.cos(theta * rng.integers(1, 4)
                                                    + rng.uniform(0, 6.3)) * traits.asymmetry)
    width = np.clip(width, 0.02, 0.5)
    return 1.0 - smoothstep(0.0, 1.0, (rho - (1.0 - width)) / (width * 1.15))


def _voronoi_edges(rng: np.random.Generator, size: int, spacing: float,
                   irregular: bool) -> np.ndarray:
    """Boundaries between cells around seed points: the holes and lines of a network."""
    if irregular:
        count = int((size / spacing) ** 2)
        seeds = rng.uniform(0, size, (count, 2))
    else:
        grid = np.arange(spacing / 2, size, spacing)
        gx, gy = np.meshgrid(grid, grid)
        seeds = np.stack([gx.ravel(), gy.ravel()], 1)
        seeds[:, 0] += (np.arange(seeds.shape[0]) // grid.size % 2) * spacing / 2
        seeds += rng.normal(0, spacing * 0.22, seeds.shape)
    points = np.full((size, size), 255, np.uint8)
    inside = np.clip(seeds.astype(int), 0, size - 1)
    points[inside[:, 1], inside[:, 0]] = 0
    _, labels = cv2.distanceTransformWithLabels(points, cv2.DIST_L2, 3,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    edges = np.zeros((size, size), np.float32)
    edges[:, :-1] += labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] += labels[:-1, :] != labels[1:, :]
    return np.clip(edges, 0, 1)


def _network(rng: np.random.Generator, colour: np.ndarray, rho: np.ndarray,
             traits: LesionTraits) -> np.ndarray:
    if traits.network == "none":
        return colour
    size = colour.shape[0]
    atypical = traits.network == "atypical"
    spacing = size * traits.radius * (rng.uniform(0.12, 0.2) if not atypical else
                                      rng.uniform(0.12, 0.3))
    lines = _voronoi_edges(rng, size, max(3.0, spacing), atypical)
    if atypical:
        lines = cv2.dilate(lines, np.ones((2, 2), np.uint8)) * rng.uniform(0.8, 1.0)
        patches = smoothstep(-0.2, 0.1, smooth_noise(rng, size, 5))  # ends abruptly
        extent = (rho < 1.0) * patches
        ink: np.ndarray = np.asarray(PALETTE["black" if rng.random() < 0.5 else "dark_brown"],
                                     np.float32)
    else:
        extent = 1.0 - smoothstep(0.5, 1.0, rho)  # fades towards the edge
        ink = colour * 0.55
    lines = cv2.GaussianBlur(lines, (0, 0), max(0.5, size / 400)) * extent
    strength = (0.75 if atypical else 0.5) * lines[..., None]
    return colour * (1 - strength) + ink * strength


def _veil_and_regression(rng: np.random.Generator, colour: np.ndarray, rho: np.ndarray,
                         traits: LesionTraits) -> np.ndarray:
    size = colour.shape[0]
    if traits.veil:
        area = smoothstep(0.2, 0.9, smooth_noise(rng, size, 3.0) + 0.6 - rho) * (rho < 1.0)
        veil = np.asarray((0.50, 0.56, 0.68), np.float32) + 0.06 * fractal_noise(
            rng, size, 6, 3)[..., None]
        amount = 0.7 * area[..., None]
        colour = colour * (1 - amount) + veil * amount
    if traits.regression:
        area = smoothstep(0.3, 0.9, smooth_noise(rng, size, 3.0) + 0.4 - 0.5 * rho) * (rho < 1)
        scar = np.asarray((0.86, 0.76, 0.74), np.float32)
        colour = colour * (1 - 0.6 * area[..., None]) + scar * 0.6 * area[..., None]
        pepper = (rng.random((size, size)) < 0.02).astype(np.float32)
        pepper = cv2.GaussianBlur(pepper, (0, 0), max(0.6, size / 300)) * 3.0 * area
        grey = np.asarray((0.38, 0.40, 0.47), np.float32)
        amount = np.clip(pepper, 0, 0.8)[..., None]
        colour = colour * (1 - amount) + grey * amount
    return colour


def _dots_and_streaks(rng: np.random.Generator, image: np.ndarray, rho: np.ndarray,
                      theta: np.ndarray, traits: LesionTraits) -> np.ndarray:
    size = image.shape[0]
    ink = np.zeros((size, size), np.float32)
    tone = np.zeros((size, size, 3), np.float32)
    radius_px = traits.radius * size
    if traits.globules != "none":
        peripheral = traits.globules == "peripheral"
        band = ((rho > 0.7) & (rho < 1.12)) if peripheral else (rho < 0.8)
        if peripheral:
            sector = rng.uniform(-np.pi, np.pi)
            band &= np.cos(theta - sector) > rng.uniform(-0.3, 0.4)
        candidates = np.argwhere(band)
        count = int(rng.integers(8, 30))
        if candidates.size:
            picks = candidates[rng.integers(0, len(candidates), count)]
            base = 0.06 if not peripheral else 0.03
            for y, x in picks:
                r = radius_px * (base * rng.uniform(0.9, 1.1) if not peripheral else
                                 rng.uniform(0.02, 0.09))
                cv2.circle(ink, (int(x), int(y)), max(1, int(round(r))), 1.0, -1, cv2.LINE_AA)
            name = "dark_brown" if not peripheral else ("black" if rng.random() < 0.6
                                                         else "dark_brown")
            tone[:] = PALETTE[name]
    if traits.streaks:
        sector, spread = rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 1.4)
        cx, cy = traits.centre[0] * size, traits.centre[1] * size
        for _ in range(int(rng.integers(4, 10))):
            angle = sector + rng.uniform(-spread, spread) / 2
            border = _border_distance(rho, (cx, cy), angle, radius_px)
            length = radius_px * rng.uniform(0.2, 0.45)
            begin = (cx + 0.8 * border * np.cos(angle), cy + 0.8 * border * np.sin(angle))
            end = (cx + (border + length) * np.cos(angle), cy + (border + length) * np.sin(angle))
            width = max(1, int(round(size / 200)))
            cv2.line(ink, _pt(begin), _pt(end), 1.0, width, cv2.LINE_AA)
            if rng.random() < 0.4:  # a pseudopod's bulbous tip
                cv2.circle(ink, _pt(end), width, 1.0, -1, cv2.LINE_AA)
        if not tone.any():
            tone[:] = PALETTE["dark_brown"]
    amount = np.clip(cv2.GaussianBlur(ink, (0, 0), max(0.5, size / 500)), 0, 1)[..., None] * 0.9
    return image * (1 - amount) + tone * amount


def _vessels(rng: np.random.Generator, image: np.ndarray, rho: np.ndarray) -> np.ndarray:
    size = image.shape[0]
    ink = np.zeros((size, size), np.float32)
    candidates = np.argwhere(rho < 0.9)
    if not candidates.size:
        return image
    for _ in range(int(rng.integers(3, 9))):
        y, x = candidates[rng.integers(0, len(candidates))]
        steps = rng.normal(0, size / 60, (int(rng.integers(4, 9)), 2)).cumsum(0)
        points = (np.array([x, y]) + steps).astype(np.int32)
        cv2.polylines(ink, [points], False, 1.0, 1, cv2.LINE_AA)
    amount = np.clip(ink, 0, 1)[..., None] * 0.7
    return image * (1 - amount) + np.asarray((0.72, 0.18, 0.22), np.float32) * amount


def _border_distance(rho: np.ndarray, centre: tuple[float, float], angle: float,
                     radius_px: float) -> float:
    """Distance from the centre to the outline along one direction."""
    size = rho.shape[0]
    steps = np.linspace(0, 2.5 * radius_px, 64)
    xs = np.clip((centre[0] + steps * np.cos(angle)).astype(int), 0, size - 1)
    ys = np.clip((centre[1] + steps * np.sin(angle)).astype(int), 0, size - 1)
    inside = np.nonzero(rho[ys, xs] <= 1.0)[0]
    return float(steps[inside[-1]]) if inside.size else radius_px


def _pt(xy: tuple[float, float]) -> tuple[int, int]:
    return int(round(xy[0])), int(round(xy[1]))
