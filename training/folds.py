"""Patient-grouped, stratified folds: no patient's lesions on both sides of a split."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def assign_folds(targets: Sequence[int], patients: Sequence[str], n_folds: int,
                 seed: int) -> np.ndarray:
    """The fold (0..n_folds-1) of every image; each patient in exactly one fold.

    Images without a patient id count as patients of their own."""
    groups = [patient or f"__image_{index}" for index, patient in enumerate(patients)]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(targets), -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(targets)),
                                                         np.asarray(targets), groups)):
        folds[held_out] = fold
    return folds
