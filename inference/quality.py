"""Image-quality checks that say when a score should not be trusted, before anyone reads it.

Each check looks at the decoded photo at a fixed working size, so a 12 MP photo costs
the same as a small one. Thresholds were set on generated lesions (tests/test_quality.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORKING_SIDE = 256


@dataclass(frozen=True)
class ImageWarning:
    """One reason to doubt a result; `code` is stable for API clients, `message` is for people."""

    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Measures:
    brightness: float        # median luma of the lit pixels, 0..255
    dark_fraction: float     # share of pixels under 30 (a dermoscope's dark corners count)
    clipped_fraction: float  # share of pixels over 245
    sharpness: float         # Laplacian energy relative to the image's own contrast
    skin_fraction: float     # share of the lit pixels with skin or lesion colours
    lesion_fraction: float   # share of the area unlike the surrounding skin, largest blob
    contrast: float          # std of luma


def measure(image_rgb: np.ndarray) -> Measures:
    """The numbers the checks are made of, computed on a small copy of the photo."""
    small = _working_copy(image_rgb)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV_FULL)
    lit = grey >= 30
    contrast = float(grey.std())
    laplacian = cv2.Laplacian(cv2.GaussianBlur(grey, (3, 3), 0), cv2.CV_32F)
    sharpness = float(laplacian.std()) / max(contrast, 1.0)
    brightness = float(np.median(grey[lit])) if lit.any() else float(grey.mean())
    return Measures(
        brightness=brightness, dark_fraction=float(1.0 - lit.mean()),
        clipped_fraction=float((grey > 245).mean()), sharpness=sharpness,
        skin_fraction=_skin_fraction(hsv, lit), lesion_fraction=_lesion_fraction(small, lit),
        contrast=contrast)


def check(image_rgb: np.ndarray) -> tuple[ImageWarning, ...]:
    """Every quality warning that applies to this photo, most serious first."""
    m = measure(image_rgb)
    found: list[ImageWarning] = []
    dark = m.brightness < 40 or m.dark_fraction > 0.75
    bright = m.brightness > 225 or m.clipped_fraction > 0.4
    # Bad exposure washes colours out, so only a photo with almost no skin colour at all is
    # called "not a lesion" when it is also too dark or too bright.
    if m.skin_fraction < (0.03 if dark or bright else 0.4):
        found.append(ImageWarning(
            "not_a_lesion", "This does not look like a close-up of skin: few parts of the "
            "photo have skin or lesion colours. The score below means nothing for this image."))
    if dark:
        found.append(ImageWarning(
            "too_dark", "The photo is very dark; details of the lesion are lost. Retake it "
            "in better light."))
    if bright:
        found.append(ImageWarning(
            "too_bright", "The photo is overexposed; parts of it are pure white. Retake it "
            "without direct flash or glare."))
    if m.sharpness < 0.06 and m.contrast >= 4:
        found.append(ImageWarning(
            "blurry", "The photo is blurred; edges and structures the model relies on are "
            "not visible. Hold the camera still and focus on the lesion."))
    if not (found or dark or bright):
        if 0 < m.lesion_fraction < 0.005:
            found.append(ImageWarning(
                "lesion_too_small", "The lesion covers a tiny part of the photo. Move closer "
                "or crop so the lesion fills most of the frame."))
        elif m.lesion_fraction == 0 and m.contrast < 8:
            found.append(ImageWarning(
                "low_contrast", "The photo is almost uniform; no lesion stands out from the "
                "background."))
    return tuple(found)


def _working_copy(image_rgb: np.ndarray) -> np.ndarray:
    height, width = image_rgb.shape[:2]
    scale = WORKING_SIDE / max(height, width)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image_rgb, size, interpolation=interpolation)


def _skin_fraction(hsv: np.ndarray, lit: np.ndarray) -> float:
    # Skin of every tone, brown/black pigment, pink and red all sit in the red-orange hues;
    # grey paper, sky, foliage and most objects do not. Dermoscope corners are dark: ignored.
    hue, saturation = hsv[:, :, 0].astype(np.int32), hsv[:, :, 1]
    warm = (hue <= 40) | (hue >= 235)  # OpenCV's FULL hue: 0..255 for 0..360 degrees
    skin = warm & (saturation >= 25) & (saturation <= 235)
    if lit.sum() < 0.1 * lit.size:
        return 1.0  # too dark to judge colours; too_dark says so instead
    return float((skin & lit).sum() / lit.sum())


def _lesion_fraction(small_rgb: np.ndarray, lit: np.ndarray) -> float:
    # A lesion differs in colour from the skin around it, darker or (pale naevi) lighter:
    # pixels far from the photo's median colour in CIELAB, the largest connected blob.
    if not lit.any():
        return 0.0
    lab = cv2.cvtColor(small_rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    skin = np.median(lab[lit], axis=0)
    distance = np.linalg.norm(lab - skin, axis=2)
    unlike = ((distance > 12) & lit).astype(np.uint8)
    unlike = cv2.morphologyEx(unlike, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(unlike, connectivity=8)
    largest = int(stats[1:, cv2.CC_STAT_AREA].max()) if count > 1 else 0
    return largest / unlike.size
