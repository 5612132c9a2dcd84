"""The OpenAPI 3.1 description of the JSON API, built from the running app's own limits."""
from __future__ import annotations

from typing import Any

from inference import tta

_WARNING_CODES = ["not_a_lesion", "blurry", "too_dark", "too_bright", "low_contrast",
                  "lesion_too_small"]


def document(base_url: str, max_bytes: int, max_images: int) -> dict[str, Any]:
    """The API description; `base_url` is where this server answers."""
    image_part = {"type": "string", "format": "binary",
                  "description": "JPEG, PNG, WebP, TIFF, BMP or GIF"}
    options = [
        {"name": "tta", "in": "query", "required": False,
         "description": "Which views to analyse: " + ", ".join(
             f"{name} ({len(views)} view{'s' if len(views) > 1 else ''})"
             for name, views in tta.POLICIES.items()),
         "schema": {"type": "string", "enum": list(tta.POLICIES),
                    "default": tta.DEFAULT_POLICY}},
        {"name": "heatmap", "in": "query", "required": False,
         "description": "Include the photo with its heatmap as a base64 PNG",
         "schema": {"type": "boolean", "default": False}},
    ]
    errors = {str(status): {"$ref": f"#/components/responses/{name}"} for status, name in (
        (400, "BadRequest"), (413, "TooLarge"), (415, "Unsupported"), (422, "InvalidImage"),
        (429, "TooMany"), (503, "Busy"))}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Melanoma risk check API", "version": "1",
                 "description": "Research tool, not a medical device and not a diagnosis. "
                                "Images are processed in memory and never stored."},
        "servers": [{"url": base_url.rstrip("/")}],
        "paths": {
            "/api/v1/predict": {"post": {
                "summary": "Melanoma probability, warnings and heatmap for one photo",
                "parameters": options,
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["image"],
                               "properties": {"image": image_part}}}},
                    "description": f"At most {max_bytes} bytes in all"},
                "responses": {"200": {"description": "The analysis", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
                    **errors}}},
            "/api/v1/patient": {"post": {
                "summary": "Several lesions of one person, ranked by probability and oddness",
                "parameters": options[:1],
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["images"], "properties": {
                        "images": {"type": "array", "items": image_part,
                                   "minItems": 1, "maxItems": max_images}}}}},
                    "description": f"Repeat the `images` part, at most {max_images} times "
                                   f"and {max_bytes} bytes in all"},
                "responses": {"200": {"description": "Each lesion, in upload order",
                                      "content": {"application/json": {"schema": {
                                          "$ref": "#/components/schemas/Patient"}}}},
                              **errors}}},
            "/api/v1/model": {"get": {
                "summary": "The model's spec: preprocessing, threshold, provenance",
                "responses": {"200": {"description": "The spec embedded in the model",
                                      "content": {"application/json": {
                                          "schema": {"$ref": "#/components/schemas/Model"}}}}}}},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1",
                                      "content": {"application/json": {}}}}}},
        },
        "components": {"schemas": _schemas(), "responses": _error_responses()},
    }


def _schemas() -> dict[str, Any]:
    probability = {"type": "number", "minimum": 0, "maximum": 1}
    warning = {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string", "examples": _WARNING_CODES},
        "message": {"type": "string"}}}
    result = {"type": "object", "required": ["probability", "label", "positive", "threshold",
                                             "warnings", "tta", "model", "disclaimer"],
              "properties": {
                  "probability": probability, "label": {"type": "string"},
                  "positive": {"type": "boolean"}, "threshold": probability,
                  "warnings": {"type": "array", "items": warning},
                  "tta": {"type": "object"}, "image": {"type": "object"},
                  "heatmap": {"type": "object", "description": "Each region's own melanoma "
                              "probability on the model's feature grid (rows of columns), "
                              "upright, on the same 0..1 scale as `probability`"},
                  "out_of_distribution": {"type": ["object", "null"]},
                  "model": {"type": "object"}, "demo": {"type": "boolean"},
                  "timing_ms": {"type": "object"}, "disclaimer": {"type": "string"},
                  "heatmap_png_base64": {"type": "string", "contentEncoding": "base64",
                                         "contentMediaType": "image/png"}}}
    lesion = {"allOf": [{"$ref": "#/components/schemas/Result"}, {"type": "object",
              "properties": {"filename": {"type": "string"}, "standing": {
                  "type": "object", "properties": {
                      "difference": {"type": "number"}, "relative": {"type": "number"},
                      "probability_rank": {"type": "integer"},
                      "difference_rank": {"type": "integer"},
                      "odd_one_out": {"type": "boolean"}}}}}]}
    patient = {"type": "object", "properties": {
        "lesions": {"type": "array", "items": {"$ref": "#/components/schemas/Lesion"}},
        "odd_one_out": {"type": ["integer", "null"],
                        "description": "Index (upload order) of the lesion most unlike the "
                                       "others, when one stands out"},
        "disclaimer": {"type": "string"}}}
    error = {"type": "object", "required": ["error", "message"],
             "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}
    model = {"type": "object", "required": ["name", "version", "origin", "trained", "demo",
                                            "threshold", "labels", "input_size"],
             "properties": {
                 "origin": {"enum": ["untrained_demo", "demo_trained_on_drawn_lesions",
                                     "user_model"],
                            "description": "What the weights are: the demo with random "
                                           "weights (its scores mean nothing), the demo trained "
                                           "only on computer-drawn lesions, or a model "
                                           "exported from someone's own checkpoint"},
                 "trained": {"type": "boolean",
                             "description": "false only for the untrained demo"},
                 "demo": {"type": "boolean", "description": "one of the two demos"},
                 "threshold": probability, "labels": {"type": "array"},
                 "input_size": {"type": "integer"}, "name": {"type": "string"},
                 "version": {"type": "string"},
                 "precision_choice": {"type": "object", "description": "Why this file "
                                      "(fp32, or the INT8 model beside it) is served: the "
                                      "reason, the CPU's 8-bit dot-product flags and, where "
                                      "measured, both files' milliseconds per batch"},
                 "memory": {"type": "object", "description": "How many TTA views run at once "
                            "within the server's memory budget"},
                 "ensemble_size": {"type": "integer", "description": "1 for one network; N "
                                   "for an ensemble whose N members' probabilities are "
                                   "averaged (weighted)"},
                 "members": {"type": "array", "description": "An ensemble's members: "
                             "architecture, input size, weight in the average"}}}
    return {"Result": result, "Lesion": lesion, "Patient": patient, "Error": error,
            "Model": model}


def _error_responses() -> dict[str, Any]:
    described = {"BadRequest": "Missing or malformed upload or option",
                 "TooLarge": "Upload larger than the server accepts",
                 "Unsupported": "Not an image, or not multipart/form-data",
                 "InvalidImage": "An image that cannot be decoded or is too small",
                 "TooMany": "Rate limit reached", "Busy": "Server busy; see Retry-After"}
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {name: {"description": text, "content": content} for name, text in described.items()}
