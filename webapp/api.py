"""The JSON blueprint: /api/v1/predict and /api/v1/model."""
from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from webapp.classifier import Prediction
from webapp.uploads import read_flag, read_image
from webapp.views import classifier

bp = Blueprint("api", __name__, url_prefix="/api/v1")

DISCLAIMER = ("Research demo, not a medical device and not a diagnosis. Any concerning skin "
              "lesion must be examined by a dermatologist.")
DEMO_NOTE = ("Demo model: trained only on computer-drawn (synthetic) dermoscopy images; it has "
             "never seen a real lesion.")


@bp.post("/predict")
def predict() -> Response:
    policy = request.values.get("tta") or current_app.config["DEFAULT_TTA"]
    want_heatmap = read_flag(request, "heatmap", False)
    prediction = classifier().predict(read_image(request), policy=policy,
                                      want_heatmap=want_heatmap)
    response = jsonify(serialise(prediction))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/model")
def model() -> Response:
    return jsonify(classifier().spec.as_dict())


def serialise(prediction: Prediction) -> dict[str, Any]:
    body: dict[str, Any] = {
        "probability": round(prediction.probability, 6),
        "label": prediction.label,
        "positive": prediction.positive,
        "threshold": prediction.threshold,
        "tta": {
            "policy": prediction.policy,
            "views": [{"name": name, "probability": round(p, 6)}
                      for name, p in prediction.views],
            "spread": round(prediction.spread, 6),
        },
        "image": {"width": prediction.image_width, "height": prediction.image_height},
        "model": {"name": prediction.model_name, "version": prediction.model_version,
                  "architecture": prediction.architecture, "demo": prediction.demo},
        "demo": prediction.demo,
        "timing_ms": dict(prediction.timing_ms),
        "disclaimer": f"{DEMO_NOTE} {DISCLAIMER}" if prediction.demo else DISCLAIMER,
    }
    if prediction.heatmap_png is not None:
        body["heatmap_png_base64"] = base64.b64encode(prediction.heatmap_png).decode("ascii")
    return body
