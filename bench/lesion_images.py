"""Simple synthetic lesion photos in the ISIC layout, for calibration and fidelity runs.

A stand-in for real dermoscopy: varied skin tones, lesion sizes, shapes, colours, hairs and
vignetting, so activations cover a realistic range. Labels follow a crude ABCD-like rule
(several colours and an irregular outline -> 1); they exercise the AUC plumbing, nothing more.

    python -m bench.lesion_images /tmp/lesions --count 2100
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np

SKIN_BGR = ((180, 200, 235), (150, 175, 220), (120, 150, 200), (90, 120, 170), (60, 85, 130),
            (40, 60, 95))
LESION_BGR = ((60, 90, 150), (35, 55, 100), (25, 30, 45), (130, 110, 100), (70, 60, 170),
              (220, 220, 225))


def lesion_bgr(rng: np.random.Generator, width: int = 600, height: int = 450,
               ) -> tuple[np.ndarray, int]:
    """One photo (BGR uint8) and its crude label."""
    skin = np.array(SKIN_BGR[rng.integers(len(SKIN_BGR))], np.float32)
    image = np.empty((height, width, 3), np.float32)
    image[:] = skin + rng.normal(0, 8, 3)
    centre = (int(width * rng.uniform(0.3, 0.7)), int(height * rng.uniform(0.3, 0.7)))
    radius = min(width, height) * rng.uniform(0.08, 0.35)
    points = 24
    irregular = rng.uniform(0.02, 0.35)
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    radii = radius * (1 + irregular * rng.standard_normal(points)) * \
        (1 + rng.uniform(0, 0.5) * np.cos(angles - rng.uniform(0, np.pi)))
    outline = np.stack([centre[0] + radii * np.cos(angles),
                        centre[1] + radii * np.sin(angles)], 1).astype(np.int32)
    colours = int(rng.integers(1, 5))
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [outline], 255)
    base = np.array(LESION_BGR[rng.integers(3)], np.float32)
    image[mask > 0] = image[mask > 0] * 0.3 + base * 0.7
    for _ in range(colours - 1):
        blob = (int(centre[0] + rng.normal(0, radius / 2)),
                int(centre[1] + rng.normal(0, radius / 2)))
        colour = LESION_BGR[rng.integers(len(LESION_BGR))]
        cv2.circle(image, blob, int(radius * rng.uniform(0.1, 0.4)), colour, -1)
    for _ in range(int(rng.integers(0, 6))):  # hairs
        start = rng.integers(0, (width, height))
        end = rng.integers(0, (width, height))
        cv2.line(image, tuple(int(v) for v in start), tuple(int(v) for v in end),
                 (20, 20, 25), int(rng.integers(1, 3)))
    image = np.asarray(cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 3.0)), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    distance = np.hypot((xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2))
    image *= np.clip(1.25 - rng.uniform(0.2, 0.6) * distance ** 2, 0.2, 1.0)[..., None]
    image += rng.normal(0, rng.uniform(2, 8), image.shape).astype(np.float32)
    label = int(colours >= 3 and irregular > 0.15)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_isic_folder(folder: Path, count: int, seed: int = 0, width: int = 600,
                      height: int = 450) -> Path:
    """`folder/jpeg/train/ISIC_*.jpg` and `folder/train.csv` (image_name,patient_id,target)."""
    images = folder / "jpeg" / "train"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        image, label = lesion_bgr(rng, width, height)
        name = f"ISIC_{seed:02d}{index:06d}"
        cv2.imwrite(str(images / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        rows.append({"image_name": name, "patient_id": f"IP_{index // 4:06d}", "target": label})
    with (folder / "train.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["image_name", "patient_id", "target"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the ISIC layout is written")
    parser.add_argument("--count", type=int, default=2100, help="images to draw")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    write_isic_folder(args.folder, args.count, args.seed)
    print(f"wrote {args.count} images to {args.folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
