"""The HTML blueprint: an upload form that works without JavaScript, and the result page."""
from __future__ import annotations

import base64

from flask import Blueprint, Response, current_app, render_template, request

from webapp import tta
from webapp.classifier import Classifier
from webapp.uploads import read_flag, read_image

bp = Blueprint("views", __name__)


def classifier() -> Classifier:
    return current_app.extensions["classifier"]


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.post("/predict")
def predict() -> Response:
    policy = request.form.get("tta") or current_app.config["DEFAULT_TTA"]
    want_heatmap = read_flag(request, "heatmap", True)
    prediction = classifier().predict(read_image(request), policy=policy,
                                      want_heatmap=want_heatmap, want_input_image=True)
    page = render_template(
        "result.html", prediction=prediction,
        views=prediction.views,
        input_image=_data_uri(prediction.model_input_png),
        heatmap_image=_data_uri(prediction.heatmap_png))
    response = Response(page)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_context_processor
def _model_context() -> dict[str, object]:
    model = current_app.extensions.get("classifier")
    return {"spec": model.spec if model else None, "policies": list(tta.POLICIES),
            "default_policy": current_app.config["DEFAULT_TTA"]}


def _data_uri(png: bytes | None) -> str | None:
    # Results are never stored, so images travel inside the page itself.
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None
