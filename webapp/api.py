"""The JSON blueprint: predictions for one photo or one patient's several, the spec, OpenAPI."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from webapp import openapi, ratelimit, results
from webapp.service import current_service
from webapp.multi_upload import read_images
from webapp.uploads import read_flag, read_image

bp = Blueprint("api", __name__, url_prefix="/api/v1")

DISCLAIMER = results.DISCLAIMER
# What an anonymous client needs to read a prediction. File names, paths, tool versions
# and provenance stay in the export's CLI output and provenance file.
PUBLIC_SPEC_FIELDS = ("name", "version", "architecture", "input_size", "output_kind",
                      "melanoma_index", "labels", "threshold", "demo", "trained", "origin",
                      "resize", "interpolation", "color_order", "mean", "std", "schema_version",
                      "architecture_library", "architecture_aliases", "checkpoint_weights",
                      "training_data", "held_out", "jpeg_reduced_decode_min_ratio")
# What an ensemble's members may say publicly: no checkpoint file names.
PUBLIC_MEMBER_FIELDS = ("architecture", "architecture_library", "input_size", "weight",
                        "weights", "output_kind")



@bp.post("/predict")
def predict() -> Response:
    policy = request.values.get("tta") or current_app.config["DEFAULT_TTA"]
    want_heatmap = read_flag(request, "heatmap", False)
    service = current_service()
    analysis = service.predict(read_image(request), policy, want_heatmap=want_heatmap)
    return _no_store(jsonify(results.single(analysis, service.spec, want_heatmap)))


@bp.post("/patient")
def patient() -> Response:
    policy = request.values.get("tta") or current_app.config["DEFAULT_TTA"]
    want_heatmap = read_flag(request, "heatmap", False)
    uploads = read_images(request, int(current_app.config["MAX_PATIENT_IMAGES"]))
    ratelimit.charge(len(uploads))
    service = current_service()
    lesions = results.patient(uploads, policy, service,
                              int(current_app.config["MAX_PATIENT_PIXELS"]))
    return _no_store(jsonify(results.patient_body(lesions, service.spec, want_heatmap)))


@bp.get("/model")
def model() -> Response:
    service = current_service()
    spec = service.spec
    fields = spec.as_dict()
    public = {name: fields[name] for name in PUBLIC_SPEC_FIELDS if name in fields}
    chunks = service.classifier.chunks
    # How TTA views run within the memory budget; the budget and sizes stay in the log.
    memory = {"views_per_run": chunks.views_per_run, "fits_budget": chunks.fits}
    members = [{name: member[name] for name in PUBLIC_MEMBER_FIELDS} for member in spec.members]
    return jsonify({**public, **results.precision_block(spec),
                    "precision_choice": service.choice.as_dict(), "memory": memory,
                    "ensemble_size": len(members) or 1, "members": members})


@bp.get("/openapi.json")
def openapi_document() -> Response:
    return jsonify(openapi.document(request.host_url,
                                    int(current_app.config["MAX_CONTENT_LENGTH"]),
                                    int(current_app.config["MAX_PATIENT_IMAGES"])))


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
