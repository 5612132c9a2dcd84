"""The patient view's ranking: by probability, and by distance from the patient's others."""
from __future__ import annotations

import numpy as np

from inference import patient


def test_the_lesion_unlike_the_others_is_the_odd_one_out() -> None:
    rng = np.random.default_rng(0)
    typical = rng.random(64)
    pooled = np.stack([typical + rng.normal(0, 0.02, 64) for _ in range(4)]
                      + [rng.random(64)])
    standings = patient.standings([0.2, 0.3, 0.1, 0.25, 0.05], pooled)
    assert [s.odd_one_out for s in standings] == [False] * 4 + [True]
    assert standings[4].difference_rank == 1 and standings[4].relative > 1.5
    assert [s.probability_rank for s in standings] == [3, 1, 4, 2, 5]


def test_no_odd_one_out_when_all_look_alike_or_too_few_to_compare() -> None:
    rng = np.random.default_rng(1)
    alike = np.stack([np.ones(32) + rng.normal(0, 0.02, 32) for _ in range(5)])
    assert not any(s.odd_one_out for s in patient.standings([0.1] * 5, alike))
    two = np.stack([np.ones(32), rng.random(32)])
    assert not any(s.odd_one_out for s in patient.standings([0.1, 0.2], two))


def test_distance_ignores_overall_feature_scale() -> None:
    rng = np.random.default_rng(2)
    pooled = rng.random((4, 16))
    assert np.allclose(patient.differences(pooled), patient.differences(pooled * 7.0))
