"""AUC, its bootstrap interval and operating points, against brute force and hand-made cases."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from evaluation import metrics


def _pairwise_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    positives, negatives = scores[targets == 1], scores[targets == 0]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0
            for p, n in itertools.product(positives, negatives)]
    return float(np.mean(wins))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 60)
    targets[:2] = (0, 1)
    scores = rng.integers(0, 8, 60) / 8.0  # many ties on purpose
    assert metrics.roc_auc(targets, scores) == pytest.approx(_pairwise_auc(targets, scores))


def test_auc_is_one_for_perfect_ranking_and_zero_for_reversed() -> None:
    targets = [0, 0, 1, 1]
    assert metrics.roc_auc(targets, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc(targets, [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_auc_refuses_a_single_class() -> None:
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.roc_auc([1, 1], [0.2, 0.3])


def test_bootstrap_interval_brackets_auc_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        targets = rng.integers(0, 2, n)
        return targets, targets * 0.8 + rng.normal(0, 1, n)

    small, large = sample(80), sample(2000)
    low_s, high_s = metrics.bootstrap_auc_interval(*small, resamples=300)
    low_l, high_l = metrics.bootstrap_auc_interval(*large, resamples=300)
    assert low_l <= metrics.roc_auc(*large) <= high_l
    assert high_l - low_l < (high_s - low_s) / 2


def test_bootstrap_by_patient_is_wider_when_a_patients_lesions_agree() -> None:
    rng = np.random.default_rng(2)
    patient_targets = rng.integers(0, 2, 40)
    patient_scores = patient_targets * 0.5 + rng.normal(0, 1, 40)
    targets, scores = np.repeat(patient_targets, 10), np.repeat(patient_scores, 10)
    groups = [f"IP_{i}" for i in np.repeat(np.arange(40), 10)]
    by_image = metrics.bootstrap_auc_interval(targets, scores, None, 300)
    by_patient = metrics.bootstrap_auc_interval(targets, scores, groups, 300)
    assert by_patient[1] - by_patient[0] > 2 * (by_image[1] - by_image[0])


def test_operating_point_calls_score_at_threshold_positive() -> None:
    point = metrics.operating_point([0, 0, 1, 1, 1], [0.1, 0.5, 0.5, 0.7, 0.2], threshold=0.5)
    assert (point.true_positives, point.false_negatives) == (2, 1)
    assert (point.true_negatives, point.false_positives) == (1, 1)
    assert point.sensitivity == pytest.approx(2 / 3)
    assert point.specificity == pytest.approx(0.5)


@pytest.mark.parametrize("wanted, expected", [(1.0, 0.2), (0.75, 0.6), (0.5, 0.7), (0.2, 0.9)])
def test_threshold_for_sensitivity_is_the_highest_that_reaches_it(wanted: float,
                                                                  expected: float) -> None:
    targets = [1, 1, 1, 1, 0, 0]
    scores = [0.9, 0.7, 0.6, 0.2, 0.65, 0.1]
    threshold = metrics.threshold_for_sensitivity(targets, scores, wanted)
    assert threshold == expected
    assert metrics.operating_point(targets, scores, threshold).sensitivity >= wanted
