"""The explain stage: quality and out-of-distribution warnings, the honest heatmap grid and the
pooled features a patient view compares, from one prediction's arrays."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference import heatmap, quality
from inference.ood import OodReference
from inference.quality import ImageWarning
from inference.tta import View


@dataclass(frozen=True, eq=False)
class Insight:
    warnings: tuple[ImageWarning, ...]
    grid: np.ndarray            # (h, w) each cell's own melanoma probability, upright
    pooled: np.ndarray          # (C,) pooled features of the upright view
    ood_score: float | None     # None: the model carries no reference statistics

    @property
    def warning_codes(self) -> tuple[str, ...]:
        return tuple(w.code for w in self.warnings)


def explain(image_rgb: np.ndarray, features: np.ndarray, views: tuple[View, ...],
            cam_weights: np.ndarray, cam_bias: float,
            reference: OodReference | None) -> Insight:
    """Warnings about the photo and the model's view of it, plus the map and features."""
    found = list(quality.check(image_rgb))
    upright = next(i for i, v in enumerate(views)
                   if not (v.transpose or v.flip_horizontal or v.flip_vertical))
    pooled = features[upright].mean(axis=(1, 2))
    score = None
    if reference is not None:
        score = float(reference.scores(pooled)[0])
        ood_warning = reference.check(pooled)
        if ood_warning is not None and ood_warning.code not in {w.code for w in found}:
            found.insert(0, ood_warning)
    grid = heatmap.local_probabilities(features, cam_weights, cam_bias, views)
    return Insight(tuple(found), grid, pooled, score)
