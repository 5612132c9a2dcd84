"""Liveness and readiness for load balancers and process managers."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from webapp.service import current_service

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "alive"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    service = current_service()
    readiness = service.readiness()
    if not readiness.ready:
        return jsonify({"status": "not ready", "reason": readiness.reason}), 503
    return jsonify({"status": "ready", "model": service.spec.display_name,
                    "demo": service.spec.demo}), 200
