"""TEMPORARY until the refactor branch's service lands: prediction + arrays for the UI."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from flask import current_app

from webapp import insight as insight_mod
from webapp import ood, preprocess, tta, visuals as visuals_mod
from webapp.classifier import Classifier


@dataclass(frozen=True)
class Analysis:
    prediction: Any
    timing_ms: Mapping[str, float]
    insight: insight_mod.Insight
    visuals: visuals_mod.Visuals | None


def classifier() -> Classifier:
    return current_app.extensions["classifier"]


def analyse(data: bytes, policy: str, want_visuals: bool = True,
            max_side: int = 640) -> Analysis:
    model = classifier()
    prediction = model.predict(data, policy=policy, want_heatmap=False)
    image = preprocess.decode_image(data, model.max_image_pixels)
    views = tta.views_for(policy)
    seen = preprocess.fit_to_input(image, model.spec)
    _, features = model.run_batch(preprocess.to_model_input(tta.make_batch(seen, views),
                                                            model.spec))
    reference = getattr(model, "_ood", None)
    if reference is None:
        metadata = model._session.get_modelmeta().custom_metadata_map
        reference = ood.load(metadata) or False
        model._ood = reference  # type: ignore[attr-defined]
    found = insight_mod.explain(image, np.asarray(features), views, model._cam_weights,
                                model._cam_bias, reference or None)
    shown = visuals_mod.render(image, seen, found.grid, model.spec, max_side) \
        if want_visuals else None
    return Analysis(prediction, prediction.timing_ms, found, shown)
