"""Offer a real server far more than it can do: it must answer 503 + Retry-After quickly,
stay alive and bounded in memory, and serve a normal request afterwards."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import images
from devtools.procs import rss_mib
from devtools.server import LiveServer, Upload, serve
from devtools.load import hammer, save_report, summary

pytestmark = pytest.mark.slow

CLIENTS = 30
SECONDS = 5.0
QUEUE_TIMEOUT = 3.0
PHOTO = images.encode(images.lesion_rgb(1200, 900, seed=11), ".jpg")


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    yield from serve(tiny_onnx_model, tmp_path_factory.mktemp("overload-server"),
                     {"MELANOMA_MAX_RUNNING": "1", "MELANOMA_MAX_WAITING": "2",
                      "MELANOMA_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT)})


def test_overload_answers_503_with_retry_after_and_recovers(server: LiveServer) -> None:
    (worker,) = server.worker_pids()
    assert server.post_api([Upload("warm.jpg", PHOTO)]).status == 200
    baseline_rss = rss_mib(worker)
    peak_rss = baseline_rss
    health_seconds: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak_rss
        while not stop.is_set():
            peak_rss = max(peak_rss, rss_mib(worker))
            health_seconds.append(server.get("/healthz", timeout=10).seconds)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    outcomes = hammer(lambda: server.post_api([Upload("x.jpg", PHOTO)], timeout=20),
                      CLIENTS, SECONDS)
    stop.set()
    watcher.join(15)

    report = summary(outcomes, SECONDS)
    report.update(clients=CLIENTS, seconds=SECONDS, rss_baseline_mib=round(baseline_rss, 1),
                  rss_peak_mib=round(peak_rss, 1),
                  healthz_max_s=round(max(health_seconds), 3))
    save_report("overload", report)

    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 503}, f"only 200 and 503 are acceptable under load: {report}"
    busy = [o for o in outcomes if o.status == 503]
    assert len(busy) > len(outcomes) // 2, "the load must exceed what the server can do"
    assert any(o.status == 200 for o in outcomes), "admitted requests must still be served"
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in busy)
    busy_seconds = sorted(o.seconds for o in busy)
    # Refusals are quick: not held until the queue timeout, let alone a client timeout.
    assert busy_seconds[len(busy_seconds) // 2] < 1.0
    assert busy_seconds[-1] < QUEUE_TIMEOUT + 2
    assert max(o.seconds for o in outcomes) < QUEUE_TIMEOUT + 5
    assert max(health_seconds) < 2.0, "health checks must get through during overload"
    assert peak_rss - baseline_rss < 100

    assert server.alive() and server.worker_pids() == [worker], "the worker must not die"
    after = server.post_api([Upload("after.jpg", PHOTO)])
    assert after.status == 200 and 0.0 <= after.json()["probability"] <= 1.0
    assert server.get("/readyz").status == 200


def test_overload_503_body_says_when_to_retry(server: LiveServer) -> None:
    outcomes: list[tuple[int, dict[str, object], str | None]] = []

    def send() -> None:
        reply = server.post_api([Upload("x.jpg", PHOTO)], timeout=20)
        if reply.status == 503:
            outcomes.append((reply.status, reply.json(), reply.headers.get("retry-after")))

    threads = [threading.Thread(target=send) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes, "30 simultaneous uploads must overflow a queue of 2"
    _, body, retry_after = outcomes[0]
    assert body["error"] == "overloaded"
    assert f"try again in {retry_after} s" in str(body["message"])
