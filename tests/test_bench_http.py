"""The HTTP benchmark drives the real gunicorn server with the real `hey` load generator."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import http_load


def test_http_benchmark_reports_latency_throughput_and_worker_memory(
        tiny_onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "http.json"
    assert http_load.main(["--model", str(tiny_onnx_model), "--requests", "12",
                           "--concurrency", "2", "--json", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["errors"] == 0 and report["statuses"] == {"200": 12}
    assert report["throughput_rps"] > 0
    assert report["latency_p50_s"] <= report["latency_p95_s"] <= report["latency_p99_s"]
    assert 0 < report["worker_rss_mib"] <= report["worker_peak_rss_mib"]
    assert "| throughput (req/s) |" in capsys.readouterr().out


def test_overload_beyond_the_queue_is_counted_as_errors(tiny_onnx_model: Path,
                                                         tmp_path: Path) -> None:
    output = tmp_path / "http.json"
    # 1 running + 2 queued is the shipped gate; 12 connections at once must see some 503s.
    assert http_load.main(["--model", str(tiny_onnx_model), "--requests", "36",
                           "--concurrency", "12",
                           "--json", str(output)]) == 1
    report = json.loads(output.read_text())
    assert report["errors"] == report["statuses"].get("503", 0) > 0


def test_missing_load_generator_is_reported(tiny_onnx_model: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert http_load.main(["--model", str(tiny_onnx_model), "--hey", "no-such-hey"]) == 1
    assert "hey" in capsys.readouterr().err
