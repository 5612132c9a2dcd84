"""Settings: defaults here, overridden by MELANOMA_* environment variables or a test config."""
from __future__ import annotations

from typing import Any

from flask import Flask

from webapp.capacity import Capacity
from inference.model_spec import DEFAULT_MAX_IMAGE_PIXELS

_CAPACITY = Capacity()

DEFAULTS: dict[str, Any] = {
    "MODEL_PATH": "models/default.onnx",
    # auto: serve the INT8 model beside MODEL_PATH where it passed its fidelity gate and
    # runs faster on this CPU (inference/precision.py); fp32: never; int8: whenever gated.
    "MODEL_PRECISION": "auto",
    "SECRET_KEY": None,
    "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
    "MAX_IMAGE_PIXELS": DEFAULT_MAX_IMAGE_PIXELS,
    "INTRA_OP_THREADS": 1,
    # MiB the whole server may use, which sizes the chunks TTA views run in
    # (inference/memory.py); 0: 90% of the memory cgroup's limit, unbounded without one.
    "MEMORY_BUDGET_MB": 0,
    # Where optimised graphs are kept between starts (inference/session.py); None: no cache.
    "MODEL_CACHE_DIR": None,
    # gunicorn's threads follow from these (webapp/capacity.py); set them, not threads.
    "MAX_RUNNING": _CAPACITY.max_running,
    "MAX_WAITING": _CAPACITY.max_waiting,
    "QUEUE_TIMEOUT": _CAPACITY.queue_timeout,
    # /readyz fails while a prediction has held its slot this long: the worker is stuck.
    "STUCK_AFTER_SECONDS": 60.0,
    "DEFAULT_TTA": "dihedral",
    "RATELIMIT_PER_MINUTE": 0,
    # The form's cookie is never sent on another site's cross-site POST; `Secure` is added
    # per request over HTTPS (webapp/security.py).
    "SESSION_COOKIE_SAMESITE": "Lax",
    # Reverse proxies (nginx, a load balancer) whose X-Forwarded-For names the client.
    "TRUSTED_PROXIES": 0,
}


class ConfigError(RuntimeError):
    """The app is configured in a way that must not reach production."""


def load(app: Flask, test_config: dict[str, Any] | None) -> None:
    app.config.from_mapping(DEFAULTS)
    if test_config is None:
        # Environment values arrive as JSON where they parse (numbers, booleans), else strings.
        app.config.from_prefixed_env("MELANOMA")
    else:
        app.config.from_mapping(test_config)
    _require_secret_key(app)


def _require_secret_key(app: Flask) -> None:
    if app.config["SECRET_KEY"]:
        return
    if app.debug or app.testing:
        app.config["SECRET_KEY"] = "insecure-development-key"
        return
    raise ConfigError("MELANOMA_SECRET_KEY is not set; the form's CSRF protection needs a "
                      "secret. Generate one with: python -c 'import secrets; "
                      "print(secrets.token_hex(32))'")
