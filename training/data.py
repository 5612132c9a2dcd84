"""ISIC-layout images as tensors: read, resize, augment, normalise."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from evaluation.dataset import LabelledImage
from training.augment import Augment


@dataclass(frozen=True)
class Normalise:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        pixels = (image.astype(np.float32) / 255.0 - mean) / std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def read_rgb(path: Path, size: int) -> np.ndarray:
    """The whole image resized to size x size (never cropped), RGB uint8, as the server does."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {path}")
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)[..., ::-1]


class LesionDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Labelled images at `size` px; augmented when `augment` is given.

    Images are decoded once at `load_size` and kept in memory when `cache` is set (the
    CPU demo); `size` may change between epochs (progressive resizing)."""

    def __init__(self, items: Sequence[LabelledImage], load_size: int, normalise: Normalise,
                 augment: Augment | None = None, seed: int = 0, cache: bool = True) -> None:
        self.items = list(items)
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
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        target = torch.tensor([float(self.items[index].target)])
        return self.normalise(image), target
