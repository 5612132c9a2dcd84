"""A grid of generated lesions, benign on the left and melanoma on the right, for looking at.

    python -m training.contact_sheet docs/synthetic-contact-sheet.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from training.synthetic import render_lesion


def contact_sheet(rows: int, columns: int, size: int, seed: int) -> np.ndarray:
    """RGB uint8 grid; the left half of the columns benign, the right half melanoma."""
    gap = max(2, size // 64)
    sheet = np.full((rows * (size + gap) + gap, columns * (size + gap) + gap, 3), 255, np.uint8)
    for row in range(rows):
        for column in range(columns):
            melanoma = column >= columns // 2
            rgb, mask = render_lesion(np.random.default_rng([seed, row, column]), melanoma, size)
            y, x = gap + row * (size + gap), gap + column * (size + gap)
            sheet[y:y + size, x:x + size] = rgb
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="PNG or JPEG file to write")
    parser.add_argument("--rows", type=int, default=4, help="rows of lesions")
    parser.add_argument("--columns", type=int, default=8, help="columns (half benign)")
    parser.add_argument("--size", type=int, default=160, help="side of each image")
    parser.add_argument("--seed", type=int, default=1, help="seed")
    args = parser.parse_args(argv)
    sheet = contact_sheet(args.rows, args.columns, args.size, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.output), sheet[..., ::-1])
    print(f"wrote {args.output}: benign left, melanoma right")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
