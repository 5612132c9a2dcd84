"""gunicorn's entry point: a clear one-line refusal instead of a traceback when unservable."""
from __future__ import annotations

import sys

from webapp.app import create_app
from inference.classifier import ModelLoadError
from webapp.config import ConfigError

try:
    app = create_app()
except (ModelLoadError, ConfigError) as error:
    print(f"error: refusing to start: {error}", file=sys.stderr, flush=True)
    # gunicorn treats exit status 4 as "application failed to load" and stops, not retries.
    raise SystemExit(4) from None
