"""The one place that decides whether an error becomes an HTML page or JSON."""
from __future__ import annotations

from flask import Flask, Response, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from webapp import metrics
from inference.errors import ClientError
from webapp.errors import Overloaded

_FRIENDLY = {
    400: "The request could not be understood.",
    404: "There is no page at this address.",
    405: "This address does not accept that method.",
    413: "The upload is larger than this server accepts.",
    429: "Too many requests; slow down and try again shortly.",
}


_FORMS = {"views.predict": "index.html", "views.patient_predict": "patient.html",
          "views.example": "index.html", "views.patient_example": "patient.html"}


def wants_json() -> bool:
    return request.path.startswith("/api/")


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> Response:
    metrics.count_error(code)
    if wants_json():
        response = jsonify({"error": code, "message": message})
    elif request.endpoint in _FORMS:
        # A failed form post re-renders the form with the reason, keeping the user in place.
        response = Response(render_template(_FORMS[request.endpoint], error=message))
    else:
        response = Response(render_template("error.html", status=status, message=message))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _size(limit: int) -> str:
    mib = 1024 * 1024
    return f"{limit // mib} MB" if limit >= mib else f"{limit // 1024} KB"


def init_app(app: Flask) -> None:
    @app.errorhandler(ClientError)
    def _client_error(error: ClientError) -> Response:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        return error_response(error.status, error.code, error.message, headers)

    @app.errorhandler(Overloaded)
    def _overloaded(error: Overloaded) -> Response:
        return error_response(503, "overloaded", "The server is busy analysing other images; "
                              f"try again in {error.retry_after} s.",
                              {"Retry-After": str(error.retry_after)})

    @app.errorhandler(CSRFError)
    def _csrf(error: CSRFError) -> Response:
        return error_response(400, "csrf_failed", "The form expired or did not come from this "
                              "site; reload the page and upload again.")

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        status = error.code or 500
        message = _FRIENDLY.get(status, error.description or "Request failed.")
        if status == 413:
            message = (f"The upload is larger than the {_size(app.config['MAX_CONTENT_LENGTH'])} "
                       "this server accepts.")
        code = (error.name or "error").lower().replace(" ", "_")
        return error_response(status, code, message)
