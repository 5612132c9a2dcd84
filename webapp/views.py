"""The HTML blueprint: upload forms that work without JavaScript, results, the API page."""
from __future__ import annotations

import base64
import json

from flask import (Blueprint, Response, current_app, redirect, render_template, request,
                   url_for)
from werkzeug.wrappers import Response as BaseResponse

from inference import heatmap, tta

from webapp import examples, ratelimit, report, results, wording
from webapp.service import current_service
from webapp.multi_upload import (DEFAULT_MAX_IMAGES, DEFAULT_MAX_TOTAL_PIXELS, NamedUpload,
                                 read_images, upload_name)
from webapp.uploads import read_image

bp = Blueprint("views", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.post("/predict")
def predict() -> Response:
    data = read_image(request)
    return _result_page(data, wording.display_name(upload_name(request, "image")))


@bp.post("/example")
def example() -> Response:
    """One of the drawn lesions shown on the form, analysed like an upload."""
    chosen = examples.named(request.form.get("example", ""))
    return _result_page(chosen.read(), chosen.file)


def _result_page(data: bytes, filename: str) -> Response:
    policy = request.form.get("tta") or current_app.config["DEFAULT_TTA"]
    service = current_service()
    analysis = service.predict(data, policy, want_heatmap=True)
    spec = service.spec
    body = results.single(analysis, spec)
    assert analysis.visuals is not None
    page = render_template(
        "result.html", prediction=analysis.prediction, insight=analysis.insight,
        visuals=analysis.visuals, timing_ms=analysis.timing_ms, filename=filename,
        stem=wording.file_stem(filename), result_json=_json_bytes(body),
        report_pdf=report.render(results.report_content(analysis, spec, filename),
                                 analysis.visuals.blended_jpeg),
        colour_stops=heatmap.colour_stops(), ood_threshold=_ood_threshold())
    return _no_store(page)


@bp.get("/predict")
def predict_form() -> BaseResponse:
    # Results are never stored, so a refreshed or bookmarked result has nothing to show.
    return redirect(url_for("views.index"), code=303)


@bp.get("/patient")
def patient() -> str:
    return render_template("patient.html")


@bp.post("/patient")
def patient_predict() -> Response:
    uploads = read_images(request, int(current_app.config["MAX_PATIENT_IMAGES"]), min_images=2)
    return _patient_page(uploads)


@bp.post("/patient/example")
def patient_example() -> Response:
    """The drawn lesions, compared as one person's."""
    drawn = examples.all_examples()[:int(current_app.config["MAX_PATIENT_IMAGES"])]
    return _patient_page([NamedUpload(example.file, example.read()) for example in drawn])


def _patient_page(uploads: list[NamedUpload]) -> Response:
    policy = request.form.get("tta") or current_app.config["DEFAULT_TTA"]
    ratelimit.charge(len(uploads))
    service = current_service()
    lesions = results.patient(uploads, policy, service,
                              int(current_app.config["MAX_PATIENT_PIXELS"]))
    odd = next((lesion for lesion in lesions if lesion.standing.odd_one_out), None)
    ordered = sorted(lesions, key=lambda lesion: lesion.standing.probability_rank)
    page = render_template("patient_result.html", lesions=ordered, odd=odd,
                           result_json=_json_bytes(results.patient_body(lesions, service.spec)),
                           colour_stops=heatmap.colour_stops())
    return _no_store(page)


@bp.get("/patient/predict")
def patient_form() -> BaseResponse:
    return redirect(url_for("views.patient"), code=303)


@bp.get("/api")
def api_page() -> str:
    return render_template("api.html", base_url=request.host_url)


@bp.app_context_processor
def _model_context() -> dict[str, object]:
    # Every page reads the model's facts (threshold, labels, demo) from its spec alone.
    return {"spec": current_service().spec, "policies": list(tta.POLICIES),
            "default_policy": current_app.config["DEFAULT_TTA"],
            "max_bytes": int(current_app.config["MAX_CONTENT_LENGTH"]),
            "max_count": int(current_app.config["MAX_PATIENT_IMAGES"]), "min_count": 2,
            "examples": examples.all_examples()}


@bp.app_template_filter("data_uri")
def _data_uri(data: bytes, mime: str) -> str:
    # Results are never stored, so images and downloads travel inside the page itself.
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _ood_threshold() -> float | None:
    reference = current_service().classifier.ood_reference
    return reference.threshold if reference else None


def _json_bytes(body: object) -> bytes:
    return json.dumps(body, indent=2).encode("utf-8")


def _no_store(page: str) -> Response:
    response = Response(page)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.record_once
def _defaults(state: object) -> None:
    # Settable like every other key (MELANOMA_MAX_PATIENT_IMAGES=...); defaults live here.
    config = state.app.config  # type: ignore[attr-defined]
    config.setdefault("MAX_PATIENT_IMAGES", DEFAULT_MAX_IMAGES)
    config.setdefault("MAX_PATIENT_PIXELS", DEFAULT_MAX_TOTAL_PIXELS)


bp.add_app_template_filter(wording.percent, "pct")
bp.add_app_template_filter(wording.policy_label, "policy_label")
bp.add_app_template_filter(wording.view_words, "view_words")
bp.add_app_template_filter(wording.warning_title, "warning_title")
bp.add_app_template_filter(wording.model_words, "model_words")
bp.add_app_template_filter(wording.number_meaning, "number_meaning")
bp.add_app_template_filter(
    lambda probabilities, policy: wording.agreement(probabilities, policy), "agreement")
bp.add_app_template_filter(
    lambda positive, spec: wording.threshold_sentence(positive, spec.threshold, spec.labels),
    "threshold_words")
