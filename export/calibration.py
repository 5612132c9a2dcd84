"""Images for calibrating and checking an INT8 model: a folder, or the ISIC layout.

The ISIC layout is `DIR/train.csv` (image_name, target[, patient_id]) beside `DIR/jpeg/train/`
(or `DIR/jpeg/`); labels come with it. A plain folder of .jpg/.png has none. The set is split
by a hash of each name, so calibration and held-out images never overlap and the split does
not depend on the order files were written in.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from inference import runtime  # noqa: F401  (telemetry off before onnxruntime loads)
from onnxruntime.quantization import CalibrationDataReader  # noqa: E402

from evaluation.dataset import DatasetError, list_images, read_labels
from export.errors import ExportError
from inference import preprocess, tta
from inference.model_spec import ModelSpec


@dataclass(frozen=True)
class SourceImage:
    name: str
    path: Path
    target: int | None = None
    patient_id: str = ""


@dataclass(frozen=True)
class ImageSplit:
    calibration: tuple[SourceImage, ...]
    held_out: tuple[SourceImage, ...]
    source: str

    @property
    def labelled(self) -> bool:
        return bool(self.held_out) and all(i.target is not None for i in self.held_out)


def read_images(directory: Path) -> tuple[list[SourceImage], str]:
    """Every image under `directory`, with labels when it has the ISIC layout."""
    labels = directory / "train.csv"
    try:
        if labels.is_file():
            folder = directory / "jpeg" / "train"
            folder = folder if folder.is_dir() else directory / "jpeg"
            rows = read_labels(labels, folder)
            return ([SourceImage(r.name, r.path, r.target, r.patient_id) for r in rows],
                    f"ISIC layout {labels} + {folder}")
        return [SourceImage(name, path) for name, path in list_images(directory)], \
            f"folder {directory}"
    except DatasetError as error:
        raise ExportError(f"calibration images: {error}") from None


def split_images(directory: Path, calibration_size: int, held_out_size: int) -> ImageSplit:
    """`calibration_size` images to calibrate on, up to `held_out_size` others to check on."""
    images, source = read_images(directory)
    ordered = sorted(images, key=lambda i: hashlib.sha256(i.name.encode()).hexdigest())
    if len(ordered) <= calibration_size:
        raise ExportError(f"calibration images: {source} holds {len(ordered)} images; "
                          f"{calibration_size} calibrate and at least one more is needed "
                          "to measure fidelity")
    # Held-out images are taken from the end, so they stay the same whatever the
    # calibration size (when there are enough images for both).
    start = max(calibration_size, len(ordered) - held_out_size)
    return ImageSplit(tuple(ordered[:calibration_size]), tuple(ordered[start:]), source)


def model_input(image: SourceImage, spec: ModelSpec,
                views: tuple[tta.View, ...] = tta.POLICIES["none"]) -> np.ndarray:
    """The (V, 3, S, S) batch the server would build from this file: the same
    `preprocess.prepare` its decode sandbox runs (reduced-scale JPEG decoding included)."""
    seen = preprocess.prepare(image.path.read_bytes(), spec).image
    return preprocess.to_model_input(tta.make_batch(seen, views), spec)


class ImageReader(CalibrationDataReader):
    """Feeds calibration images to onnxruntime's calibrator, preprocessed as served."""

    def __init__(self, images: tuple[SourceImage, ...], spec: ModelSpec,
                 batch_size: int = 8) -> None:
        self._images, self._spec, self._batch_size = images, spec, batch_size
        self._batches: Iterator[dict[str, np.ndarray]] = self._generate()

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self._images), self._batch_size):
            chunk = self._images[start:start + self._batch_size]
            batch = np.concatenate([model_input(image, self._spec) for image in chunk])
            yield {self._spec.input_name: batch}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._generate()
