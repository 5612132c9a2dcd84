"""Prometheus /metrics: requests, latency, inference time, errors by kind, model identity,
in one process and summed across gunicorn workers in multiprocess mode."""
from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from devtools.server import LiveServer, Upload, start_server
from webapp.service import service_of


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _scrape(app: Flask) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reply = app.test_client().get("/metrics")
    assert reply.status_code == 200
    assert reply.content_type.startswith("text/plain")
    return _samples(reply.get_data(as_text=True))


def test_metrics_count_requests_latency_inference_and_errors(app: Flask,
                                                             lesion_jpeg_bytes: bytes) -> None:
    client = app.test_client()
    before = _scrape(app)
    for _ in range(3):
        reply = client.post("/api/v1/predict",
                            data={"image": (io.BytesIO(lesion_jpeg_bytes), "a.jpg")})
        assert reply.status_code == 200
    assert client.post("/api/v1/predict",
                       data={"image": (io.BytesIO(b"%PDF-1.4"), "a.jpg")}).status_code == 415
    assert client.get("/no/such/page").status_code == 404
    after = _scrape(app)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    predict = {"method": "POST", "endpoint": "/api/v1/predict"}
    assert grew("melanoma_http_requests_total", status="200", **predict) == 3
    assert grew("melanoma_http_requests_total", status="415", **predict) == 1
    # Unknown paths share one label, so scanners cannot grow the series without bound.
    assert grew("melanoma_http_requests_total", method="GET", endpoint="unmatched",
                status="404") == 1
    assert grew("melanoma_http_request_duration_seconds_count",
                endpoint="/api/v1/predict") == 4
    assert grew("melanoma_http_request_duration_seconds_sum", endpoint="/api/v1/predict") > 0
    for stage in ("decode", "inference", "total"):
        assert grew("melanoma_inference_seconds_count", stage=stage) == 3
    assert grew("melanoma_inference_seconds_sum", stage="inference") > 0
    assert grew("melanoma_errors_total", kind="unsupported_media_type") == 1
    assert grew("melanoma_errors_total", kind="not_found") == 1


def test_metrics_name_the_model(app: Flask) -> None:
    spec = service_of(app).spec
    samples = _scrape(app)
    identity = [dict(labels) for (name, labels), value in samples.items()
                if name == "melanoma_model_info" and value == 1]
    assert {"name": spec.name, "version": spec.version, "architecture": spec.architecture,
            "checkpoint_sha256": spec.checkpoint_sha256,
            "demo": str(spec.demo).lower()} in identity


def test_metrics_page_is_not_cached(app: Flask) -> None:
    assert app.test_client().get("/metrics").headers["Cache-Control"] == "no-store"


@pytest.mark.slow
def test_multiprocess_metrics_sum_workers_and_survive_their_death(
        tiny_onnx_model: Path, tmp_path: Path, lesion_jpeg_bytes: bytes) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "stale_counter_1.db").write_bytes(b"left by a previous run")
    server: LiveServer = start_server(tiny_onnx_model, tmp_path / "server",
                                      {"MELANOMA_WORKERS": "2",
                                       "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        workers = server.wait_for_workers(2)
        assert not (metrics_dir / "stale_counter_1.db").exists(), "start must wipe the dir"
        for _ in range(6):
            assert server.post_api([Upload("a.jpg", lesion_jpeg_bytes)]).status == 200
        # Every worker dies; a per-process registry would forget everything they counted.
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        server.wait_for_workers(2, exclude=workers)
        for _ in range(4):  # whichever new worker answers, it reports the same sum
            samples = _samples(server.get("/metrics").text)
            assert _value(samples, "melanoma_http_requests_total", method="POST",
                          endpoint="/api/v1/predict", status="200") == 6
            assert _value(samples, "melanoma_inference_seconds_count", stage="total") == 6
            assert any(name == "melanoma_model_info" for name, _ in samples)
    finally:
        server.stop()
