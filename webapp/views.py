"""The HTML blueprint: an upload form that works without JavaScript, and the result page."""
from __future__ import annotations

import base64

from flask import Blueprint, current_app, render_template, request

from webapp import tta
from webapp.service import current_service
from webapp.uploads import read_flag, read_image

bp = Blueprint("views", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.post("/predict")
def predict() -> str:
    policy = request.form.get("tta") or current_app.config["DEFAULT_TTA"]
    want_heatmap = read_flag(request, "heatmap", True)
    analysis = current_service().predict(read_image(request), policy,
                                         want_heatmap=want_heatmap, want_input_image=True)
    return render_template(
        "result.html", prediction=analysis.prediction, views=analysis.prediction.views,
        timing_ms=analysis.timing_ms,
        input_image=_data_uri(analysis.model_input_png),
        heatmap_image=_data_uri(analysis.heatmap_png))


@bp.app_context_processor
def _model_context() -> dict[str, object]:
    # Every page reads the model's facts (threshold, labels, demo) from its spec alone.
    return {"spec": current_service().spec, "policies": list(tta.POLICIES),
            "default_policy": current_app.config["DEFAULT_TTA"]}


def _data_uri(png: bytes | None) -> str | None:
    # Results are never stored, so images travel inside the page itself.
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None
