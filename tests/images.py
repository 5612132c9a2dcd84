"""Synthetic lesion-like photos for tests: generated, never downloaded or committed."""
from __future__ import annotations

import io

import cv2
import numpy as np


def lesion_rgb(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    """A skin-coloured background with an irregular dark blob, asymmetric on purpose."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (205, 160, 140)
    noise = rng.normal(0, 6, (height, width, 3))
    centre = (int(width * 0.42), int(height * 0.55))
    axes = (max(4, width // 5), max(3, height // 7))
    cv2.ellipse(image, centre, axes, 25, 0, 360, (90, 55, 45), -1)
    cv2.circle(image, (centre[0] + axes[0] // 2, centre[1] - axes[1] // 2), max(2, axes[1] // 2),
               (50, 30, 25), -1)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def encode(image_rgb: np.ndarray, extension: str = ".jpg", **params: int) -> bytes:
    flags: list[int] = []
    if extension == ".jpg":
        flags = [cv2.IMWRITE_JPEG_QUALITY, params.get("quality", 92)]
    channels = image_rgb.shape[2] if image_rgb.ndim == 3 else 1
    if channels == 3:
        image = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    elif channels == 4:
        image = cv2.cvtColor(image_rgb, cv2.COLOR_RGBA2BGRA)
    else:
        image = image_rgb
    ok, buffer = cv2.imencode(extension, image, flags)
    assert ok, extension
    return buffer.tobytes()


def jpeg_with_exif_orientation(image_rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose pixels are stored rotated, with the EXIF tag that says how to undo it."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    stream = io.BytesIO()
    Image.fromarray(image_rgb).save(stream, "JPEG", quality=95, exif=exif.tobytes())
    return stream.getvalue()


def atypical_lesion_rgb(width: int = 400, height: int = 300, seed: int = 0) -> np.ndarray:
    """A lesion unlike `lesion_rgb`'s: irregular, black and blue-grey on darker skin."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (150, 105, 80)
    outline = np.array([[0.3, 0.3], [0.7, 0.25], [0.8, 0.6], [0.55, 0.85], [0.2, 0.7]])
    cv2.fillPoly(image, [(outline * [width, height]).astype(np.int32)], (30, 30, 60))
    cv2.circle(image, (width // 2, height // 2), max(2, height // 6), (120, 130, 170), -1)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def clear_truth_cases(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first clearly atypical melanoma and clearly banal naevus of a drawn plan (RGB),
    chosen by the generator's truth, not by any model's answer."""
    from training.synthetic import plan_dataset, render_record

    records = plan_dataset(200, seed, 0.3, label_noise=0.0)
    melanoma = next(r for r in records if r.melanoma and r.atypia > 0.7)
    naevus = next(r for r in records if not r.melanoma and r.atypia < 0.15)
    return render_record(melanoma, 256)[0], render_record(naevus, 256)[0]


def truth_cases(seed: int, count: int, size: int = 256
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`count` clearly atypical melanomas and `count` clearly banal naevi of a drawn plan
    (RGB), chosen by the generator's truth, not by any model's answer."""
    from training.synthetic import plan_dataset, render_record

    records = plan_dataset(max(400, 10 * count), seed, 0.3, label_noise=0.0)
    melanomas = [r for r in records if r.melanoma and r.atypia > 0.7][:count]
    naevi = [r for r in records if not r.melanoma and r.atypia < 0.15][:count]
    assert len(melanomas) == len(naevi) == count, "the plan holds too few clear cases"
    return ([render_record(r, size)[0] for r in melanomas],
            [render_record(r, size)[0] for r in naevi])
