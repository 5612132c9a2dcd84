"""ROC AUC with a bootstrap interval, and the operating point at a threshold."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: float
    specificity: float
    true_positives: int
    false_negatives: int
    true_negatives: int
    false_positives: int


def roc_auc(targets: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    y = np.asarray(targets, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs at least one positive and one negative")
    # Mann-Whitney U over average ranks: ties between a positive and a negative count half.
    ranks = rankdata(s, method="average")
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auc_interval(targets: Sequence[int] | np.ndarray,
                           scores: Sequence[float] | np.ndarray,
                           groups: Sequence[str] | None = None, resamples: int = 1000,
                           confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the AUC over resamples of the set.

    With `groups` (patient ids) whole patients are resampled: one patient's lesions are
    not independent, and resampling images alone would make the interval too narrow.
    """
    y = np.asarray(targets, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    keys = np.asarray(groups if groups is not None and all(groups) else range(len(y)))
    _, members, counts = np.unique(keys, return_inverse=True, return_counts=True)
    # Rows sorted by unit: unit u owns by_unit[starts[u]:starts[u] + counts[u]].
    by_unit = np.argsort(members, kind="stable")
    starts = np.cumsum(counts) - counts
    values = []
    for _ in range(resamples):
        chosen = rng.integers(0, len(counts), len(counts))
        sizes = counts[chosen]
        first = np.cumsum(sizes) - sizes
        rows = by_unit[np.repeat(starts[chosen] - first, sizes) + np.arange(sizes.sum())]
        if 0 < y[rows].sum() < len(rows):  # a resample with one class has no AUC
            values.append(roc_auc(y[rows], s[rows]))
    if not values:
        raise ValueError("no bootstrap resample had both classes; the set is too small")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def operating_point(targets: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                    threshold: float) -> OperatingPoint:
    """Sensitivity and specificity when `score >= threshold` is called positive (as served)."""
    y = np.asarray(targets, dtype=bool)
    called = np.asarray(scores, dtype=np.float64) >= threshold
    tp, fn = int((called & y).sum()), int((~called & y).sum())
    tn, fp = int((~called & ~y).sum()), int((called & ~y).sum())
    return OperatingPoint(threshold, tp / max(1, tp + fn), tn / max(1, tn + fp), tp, fn, tn, fp)


def threshold_for_sensitivity(targets: Sequence[int] | np.ndarray,
                              scores: Sequence[float] | np.ndarray,
                              sensitivity: float) -> float:
    """The highest threshold whose sensitivity on this set is at least `sensitivity`.

    Highest, because among thresholds that catch enough melanomas it calls the fewest
    benign lesions positive.
    """
    if not 0.0 < sensitivity <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {sensitivity}")
    y = np.asarray(targets, dtype=bool)
    positive_scores = np.sort(np.asarray(scores, dtype=np.float64)[y])[::-1]
    if len(positive_scores) == 0:
        raise ValueError("the set has no positives, so sensitivity is undefined")
    needed = int(np.ceil(sensitivity * len(positive_scores) - 1e-9))
    return float(positive_scores[max(needed, 1) - 1])
