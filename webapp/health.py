"""Liveness and readiness for load balancers and process managers."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "alive"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    model = current_app.extensions.get("classifier")
    if model is None or not model.ready:
        return jsonify({"status": "not ready", "reason": "model not loaded or not warmed up"}), 503
    return jsonify({"status": "ready", "model": model.spec.display_name,
                    "demo": model.spec.demo}), 200
