"""ISIC-layout images as tensors: read, resize, augment, normalise."""
from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from evaluation.dataset import LabelledImage
from training.augment import Augment
from inference.preprocess import resize

# How images are fitted to the training size, recorded in the checkpoint for the server
# (inference/preprocess.py) to fit uploads the same way: area averaging when shrinking, which
# does not alias a large photo and matches a JPEG decoded at reduced scale.
INTERPOLATION = "area"


@dataclass(frozen=True)
class Normalise:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        pixels = (image.astype(np.float32) / 255.0 - mean) / std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def read_soft_targets(labels_csv: Path, column: str) -> dict[str, float]:
    """A graded target in [0, 1] per image_name (e.g. the generator's `atypia`)."""
    with labels_csv.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or column not in rows[0]:
        raise ValueError(f"{labels_csv} has no column {column!r} to use as soft targets")
    values = {row["image_name"].strip(): float(row[column]) for row in rows}
    if not all(0.0 <= v <= 1.0 for v in values.values()):
        raise ValueError(f"soft targets in {column!r} must lie within [0, 1]")
    return values


def read_rgb(path: Path, size: int) -> np.ndarray:
    """The whole image resized to size x size (never cropped), RGB uint8, as the server does."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ValueError(f"cannot decode {path}")
    return resize(image, size, size, INTERPOLATION)


class LesionDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Labelled images at `size` px; augmented when `augment` is given.

    Images are decoded once at `load_size` and kept in memory when `cache` is set (the
    CPU demo); `size` may change between epochs (progressive resizing)."""

    def __init__(self, items: Sequence[LabelledImage], load_size: int, normalise: Normalise,
                 augment: Augment | None = None, seed: int = 0, cache: bool = True,
                 soft_targets: dict[str, float] | None = None) -> None:
        self.items = list(items)
        # What the loss sees: the 0/1 label, or a graded target where one is given.
        self.train_targets = [soft_targets[i.name] if soft_targets else float(i.target)
                              for i in self.items]
        self.load_size = load_size
        self.size = load_size
        self.normalise = normalise
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, np.ndarray] = {}
        self._keep = cache

    def __len__(self) -> int:
        return len(self.items)

    def targets(self) -> list[int]:
        return [item.target for item in self.items]

    def image(self, index: int) -> np.ndarray:
        if index in self._cache:
            return self._cache[index]
        image = read_rgb(self.items[index].path, self.load_size)
        if self._keep:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image(index)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image = self.augment(rng, image)
        if image.shape[0] != self.size:
            image = resize(image, self.size, self.size, INTERPOLATION)
        target = torch.tensor([self.train_targets[index]])
        return self.normalise(image), target


class StageSampler(Sampler[int]):
    """A fresh random order each epoch, cut to the current stage's share of the set, so a
    stage can run a fraction of an epoch (a short fine-tune at the serving size)."""

    def __init__(self, size: int, fractions: Sequence[float], seed: int) -> None:
        self.size = size
        self.fractions = list(fractions)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        fraction = self.fractions[min(self.epoch, len(self.fractions) - 1)]
        return max(1, math.ceil(fraction * self.size))

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(
            self.seed * 1000 + self.epoch))
        return iter(order[: len(self)].tolist())
