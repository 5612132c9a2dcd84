"""Prometheus metrics at /metrics: requests, latency, inference time, errors, model identity.

gunicorn runs one worker by default, so each process's own registry is the whole truth;
a worker recycled by max_requests restarts its counters, which Prometheus' rate() treats
as an ordinary counter reset. With more workers, set PROMETHEUS_MULTIPROC_DIR (an empty
directory, wiped by gunicorn.conf.py at start): every worker then writes its samples there
and /metrics sums them, whichever worker answers the scrape. nginx only lets the host
itself reach /metrics.
"""
from __future__ import annotations

import os
import time
from typing import Mapping

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from inference.model_spec import ModelSpec

REQUESTS = Counter("melanoma_http_requests_total", "HTTP requests answered",
                   ["method", "endpoint", "status"])
LATENCY = Histogram("melanoma_http_request_duration_seconds",
                    "Time from request start to response, per endpoint", ["endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                             30.0))
INFERENCE = Histogram("melanoma_inference_seconds",
                      "Time per prediction stage (decode, preprocess, inference, heatmap, "
                      "total)", ["stage"],
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
ERRORS = Counter("melanoma_errors_total", "Refused or failed requests by kind", ["kind"])
# An Info metric cannot be aggregated across processes; a constant gauge can.
MODEL = Gauge("melanoma_model_info", "The model this server runs (value is always 1)",
              ["name", "version", "architecture", "checkpoint_sha256", "demo"],
              multiprocess_mode="max")


def count_error(kind: str) -> None:
    """Count one refused or failed request; `kind` is the error code clients see."""
    ERRORS.labels(kind=kind).inc()


def observe_stages(timing_ms: Mapping[str, float]) -> None:
    """Record one prediction's stage timings (webapp/service.py measures them)."""
    for stage, milliseconds in timing_ms.items():
        INFERENCE.labels(stage=stage).observe(milliseconds / 1000.0)


def describe_model(spec: ModelSpec) -> None:
    """Publish which model this process serves."""
    MODEL.labels(name=spec.name, version=spec.version, architecture=spec.architecture,
                 checkpoint_sha256=spec.checkpoint_sha256, demo=str(spec.demo).lower()).set(1)


def init_app(app: Flask) -> None:
    """Time every request and serve /metrics."""
    @app.before_request
    def _start_clock() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        # The rule, not the raw path: a scan of random URLs must not grow label sets.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(method=request.method, endpoint=endpoint,
                        status=str(response.status_code)).inc()
        if started is not None:
            LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        return response

    app.add_url_rule("/metrics", "metrics", _metrics, methods=["GET"])


def _metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
