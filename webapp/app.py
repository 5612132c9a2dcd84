"""The app factory: create_app() builds the app, loads and warms up the model."""
from __future__ import annotations

from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from webapp import admission, config, metrics, ratelimit, responses, security, service
from webapp.uploads import InMemoryRequest

csrf = CSRFProtect()


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app and load, check and warm up the model before it takes requests."""
    app = Flask(__name__)
    config.load(app, test_config)
    app.request_class = InMemoryRequest
    if int(app.config["TRUSTED_PROXIES"]) > 0:
        # The client's address, as the proxies in front saw it, keys the rate limit.
        hops = int(app.config["TRUSTED_PROXIES"])
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops)

    service.init_app(app)

    from webapp import api, health, views

    metrics.init_app(app)
    # Before CSRF, so a client over its limit is refused without its upload being parsed.
    ratelimit.init_app(app)
    admission.init_app(app, service.service_of(app).gate, ratelimit.LIMITED_ENDPOINTS)
    csrf.init_app(app)
    csrf.exempt(api.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    responses.init_app(app)
    security.init_app(app)
    return app
