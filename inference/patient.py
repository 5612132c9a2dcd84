"""The patient view: several lesions of one person, ranked by probability and by oddness.

The ISIC 2020 "ugly duckling" idea: most naevi of one person look alike, so the lesion
that differs most from that person's others deserves a closer look. Difference is measured
in the model's own pooled-feature space, each lesion against the mean of the others.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_FOR_COMPARISON = 3
# A lesion is "the odd one out" when it is this many times further from the others than
# the typical lesion of the same patient is.
ODD_RATIO = 1.5


@dataclass(frozen=True)
class Standing:
    """Where one lesion stands among the patient's others."""

    difference: float          # cosine distance to the mean of the other lesions
    relative: float            # difference / the median lesion's difference
    probability_rank: int      # 1 = highest melanoma probability
    difference_rank: int       # 1 = most unlike the others
    odd_one_out: bool


def differences(pooled: np.ndarray) -> np.ndarray:
    """(N, C) pooled features -> (N,) each lesion's cosine distance to the mean of the others."""
    unit = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    count = unit.shape[0]
    if count < 2:
        return np.zeros(count)
    total = unit.sum(axis=0)
    others = (total[None, :] - unit) / (count - 1)
    others /= np.maximum(np.linalg.norm(others, axis=1, keepdims=True), 1e-12)
    return np.clip(1.0 - (unit * others).sum(axis=1), 0.0, 2.0)


def standings(probabilities: Sequence[float], pooled: np.ndarray) -> list[Standing]:
    """Each lesion's ranks and whether it stands out, in upload order."""
    distance = differences(pooled)
    typical = float(np.median(distance)) if distance.size else 0.0
    relative = distance / typical if typical > 0 else np.ones_like(distance)
    by_probability = _ranks(-np.asarray(probabilities, dtype=np.float64))
    by_difference = _ranks(-distance)
    oddest = int(np.argmax(distance)) if distance.size else -1
    comparable = len(probabilities) >= MIN_FOR_COMPARISON
    return [Standing(float(distance[i]), float(relative[i]), int(by_probability[i]),
                     int(by_difference[i]),
                     comparable and i == oddest and bool(relative[i] >= ODD_RATIO))
            for i in range(len(probabilities))]


def _ranks(keys: np.ndarray) -> np.ndarray:
    ranks = np.empty(keys.size, dtype=np.int64)
    ranks[np.argsort(keys, kind="stable")] = np.arange(1, keys.size + 1)
    return ranks
