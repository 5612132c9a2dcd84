"""The JSON blueprint: /api/v1/predict and /api/v1/model."""
from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from webapp.model_spec import ModelSpec
from webapp.service import Analysis, current_service
from webapp.uploads import read_flag, read_image

bp = Blueprint("api", __name__, url_prefix="/api/v1")

DISCLAIMER = ("Research demo, not a medical device and not a diagnosis. Any concerning skin "
              "lesion must be examined by a dermatologist.")


@bp.post("/predict")
def predict() -> Response:
    policy = request.values.get("tta") or current_app.config["DEFAULT_TTA"]
    want_heatmap = read_flag(request, "heatmap", False)
    service = current_service()
    analysis = service.predict(read_image(request), policy, want_heatmap=want_heatmap)
    return jsonify(serialise(analysis, service.spec))


@bp.get("/model")
def model() -> Response:
    return jsonify(current_service().spec.as_dict())


def serialise(analysis: Analysis, spec: ModelSpec) -> dict[str, Any]:
    prediction = analysis.prediction
    body: dict[str, Any] = {
        "probability": round(prediction.probability, 6),
        "label": prediction.label,
        "positive": prediction.positive,
        "threshold": spec.threshold,
        "tta": {
            "policy": prediction.policy,
            "views": [{"name": name, "probability": round(p, 6)}
                      for name, p in prediction.views],
            "spread": round(prediction.spread, 6),
        },
        "image": {"width": prediction.image_width, "height": prediction.image_height},
        "model": {"name": spec.name, "version": spec.version,
                  "architecture": spec.architecture, "demo": spec.demo},
        "demo": spec.demo,
        "timing_ms": dict(analysis.timing_ms),
        "disclaimer": DISCLAIMER,
    }
    if analysis.heatmap_png is not None:
        body["heatmap_png_base64"] = base64.b64encode(analysis.heatmap_png).decode("ascii")
    return body
