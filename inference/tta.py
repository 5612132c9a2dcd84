"""Test-time augmentation: named sets of flips/transposes and how their results merge."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.errors import BadOption


@dataclass(frozen=True)
class View:
    """Transpose first (swap H and W), then flip; each of the 8 symmetries of the square."""

    name: str
    transpose: bool = False
    flip_horizontal: bool = False
    flip_vertical: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Transform an (H, W, ...) array the way this view shows it to the model."""
        if self.transpose:
            image = np.swapaxes(image, 0, 1)
        if self.flip_horizontal:
            image = image[:, ::-1]
        if self.flip_vertical:
            image = image[::-1]
        return image

    def invert(self, image: np.ndarray) -> np.ndarray:
        """Map an (H, W, ...) array seen in this view back to the original orientation."""
        if self.flip_vertical:
            image = image[::-1]
        if self.flip_horizontal:
            image = image[:, ::-1]
        if self.transpose:
            image = np.swapaxes(image, 0, 1)
        return image


_IDENTITY = View("original")
_FLIPS = (_IDENTITY, View("flip-h", flip_horizontal=True), View("flip-v", flip_vertical=True),
          View("rotate-180", flip_horizontal=True, flip_vertical=True))
# The 8 flips/transposes used by the winning SIIM-ISIC 2020 solution.
_DIHEDRAL = _FLIPS + (
    View("transpose", transpose=True),
    View("rotate-90", transpose=True, flip_horizontal=True),
    View("rotate-270", transpose=True, flip_vertical=True),
    View("anti-transpose", transpose=True, flip_horizontal=True, flip_vertical=True),
)

POLICIES: dict[str, tuple[View, ...]] = {
    "none": (_IDENTITY,),
    "flips": _FLIPS,
    "dihedral": _DIHEDRAL,
}
DEFAULT_POLICY = "dihedral"


def views_for(policy: str) -> tuple[View, ...]:
    try:
        return POLICIES[policy]
    except KeyError:
        raise BadOption(f"unknown TTA policy {policy!r}; choose one of "
                        f"{', '.join(POLICIES)}") from None


def make_batch(image: np.ndarray, views: tuple[View, ...]) -> np.ndarray:
    """Stack every view of one (S, S, 3) image into a (V, S, S, 3) batch."""
    return np.stack([view.apply(image) for view in views])


def merge_probabilities(probabilities: np.ndarray) -> float:
    """Views vote by the mean of their probabilities."""
    return float(np.mean(probabilities))
