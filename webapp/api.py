"""The JSON blueprint: /api/v1/predict and /api/v1/model."""
from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from webapp.classifier import Prediction
from webapp.model_spec import ModelSpec
from webapp.uploads import read_flag, read_image
from webapp.views import classifier

bp = Blueprint("api", __name__, url_prefix="/api/v1")

DISCLAIMER = ("Research demo, not a medical device and not a diagnosis. Any concerning skin "
              "lesion must be examined by a dermatologist.")


@bp.post("/predict")
def predict() -> Response:
    policy = request.values.get("tta") or current_app.config["DEFAULT_TTA"]
    want_heatmap = read_flag(request, "heatmap", False)
    prediction = classifier().predict(read_image(request), policy=policy,
                                      want_heatmap=want_heatmap)
    body = serialise(prediction)
    body["model"].update(precision_block(classifier().spec))
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/model")
def model() -> Response:
    return jsonify(classifier().spec.as_dict())


def precision_block(spec: ModelSpec) -> dict[str, Any]:
    """What the model runs in and, for INT8, its measured fidelity against fp32."""
    block: dict[str, Any] = {"precision": spec.precision}
    if spec.fidelity_summary:
        block["fidelity_vs_fp32"] = spec.fidelity_summary
    return block


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
        "disclaimer": DISCLAIMER,
    }
    if prediction.heatmap_png is not None:
        body["heatmap_png_base64"] = base64.b64encode(prediction.heatmap_png).decode("ascii")
    return body
