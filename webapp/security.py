"""Headers every response carries (no inline script, no framing, no sniffing, the referrer
only to ourselves), the one place that says what may be cached (only static assets), a
session cookie that is Secure over HTTPS, and redirects that never repeat the Host header."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from flask import Flask, Response, request
from flask.sessions import SecureCookieSessionInterface

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


# Browsers send the page's address to this origin only. Flask-WTF's strict check over HTTPS
# needs that Referer on the form post; no other site ever learns a page address.
REFERRER_POLICY = "same-origin"


class _SessionInterface(SecureCookieSessionInterface):
    """The session cookie gets `Secure` whenever the request came over HTTPS.

    Behind the load balancer that is every request (ProxyFix reads X-Forwarded-Proto);
    `make serve` on plain http://127.0.0.1 keeps working.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def init_app(app: Flask) -> None:
    app.session_interface = _SessionInterface()

    @app.after_request
    def _secure_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", REFERRER_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Permissions-Policy", "geolocation=(), microphone=()")
        # Results, errors, metrics and pages with a CSRF token are private to one request;
        # only the static assets may be kept by browsers and proxies.
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        if response.location:
            response.location = _path_only(response.location)
            if response.status_code in (301, 302, 303, 307, 308):
                response.set_data(b"")  # Werkzeug's page repeats the absolute URL
        return response


def _path_only(location: str) -> str:
    # Werkzeug's own redirects (merged slashes) are absolute URLs built from the Host
    # header; every redirect here stays on this site, so the path is all a browser needs.
    # One leading slash: "//host/..." would be read as another site.
    parts = urlsplit(location)
    return urlunsplit(("", "", "/" + parts.path.lstrip("/"), parts.query, parts.fragment))
