"""Headers every response carries: no inline script, no framing, no sniffing, no referrer;
and the one place that says what may be cached (only static assets)."""
from __future__ import annotations

from flask import Flask, Response, request

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    # Results are rendered inline as data: URIs because nothing is stored server-side.
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))


def init_app(app: Flask) -> None:
    @app.after_request
    def _secure_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Permissions-Policy", "geolocation=(), microphone=()")
        # Results, errors, metrics and pages with a CSRF token are private to one request;
        # only the static assets may be kept by browsers and proxies.
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        return response
