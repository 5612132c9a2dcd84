"""48 people upload at once to the shipped configuration (rendered nginx site, shipped
gunicorn.conf.py and defaults, the unit's memory limit, one CPU, the full-size model): the
excess get 503 + Retry-After within a second, nobody waits past their timeout, health checks
stay answered, and the server is alive and serving afterwards."""
from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.load import Outcome, save_report, summary
from devtools.procs import percentile
from devtools.server import LiveServer, Upload
from devtools.stack import serve_stack
from tests import images
from webapp.capacity import Capacity

pytestmark = pytest.mark.slow

CLIENTS = 48
CLIENT_TIMEOUT_S = 30.0
PHOTO = images.encode(images.lesion_rgb(1200, 900, seed=11), ".jpg")


@pytest.fixture(scope="module")
def stack(full_demo_model: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LiveServer]:
    yield from serve_stack(full_demo_model, tmp_path_factory.mktemp("overload-stack"))


def _burst(stack: LiveServer, path: str = "/api/v1/predict") -> list[tuple[Outcome, str]]:
    """CLIENTS uploads released together, each from its own loopback address (a person).

    With `path` another route: the same clients asking something cheap (the baseline).
    """
    barrier = threading.Barrier(CLIENTS)
    outcomes: list[tuple[Outcome, str]] = []
    lock = threading.Lock()
    begin = time.perf_counter()

    def client(index: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            source = f"127.0.1.{index + 1}"
            reply = (stack.post_api([Upload("x.jpg", PHOTO)], timeout=CLIENT_TIMEOUT_S,
                                    source=source) if path == "/api/v1/predict"
                     else stack.get(path, timeout=CLIENT_TIMEOUT_S, source=source))
            outcome = Outcome(started - begin, reply.seconds, reply.status,
                              reply.headers.get("retry-after"))
            text = reply.text
        except OSError as error:  # no answer within the client's timeout, or a reset
            outcome = Outcome(started - begin, time.perf_counter() - started, 0, None,
                              type(error).__name__)
            text = ""
        with lock:
            outcomes.append((outcome, text))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S + 30)
    return outcomes


def test_48_concurrent_uploads_get_quick_503s_and_the_server_survives(
        stack: LiveServer) -> None:
    (worker,) = stack.worker_pids()
    assert stack.cgroup is not None
    assert stack.post_api([Upload("warm.jpg", PHOTO)]).status == 200
    # The same 48 clients asking for the model description: what this machine, shared with
    # whatever else runs on it, needs for a request that does no work at all.
    baseline = statistics.median(o.seconds for o, _ in _burst(stack, "/api/v1/model"))
    health_seconds: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            health_seconds.append(stack.get("/healthz", timeout=10,
                                            source="127.0.2.1").seconds)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    results = _burst(stack)
    stop.set()
    watcher.join(15)
    outcomes = [outcome for outcome, _ in results]
    busy = [o for o in outcomes if o.status == 503]

    report = summary(outcomes, max(o.started + o.seconds for o in outcomes))
    report.update(clients=CLIENTS, baseline_median_s=round(baseline, 4),
                  capacity=str(Capacity.from_environ(stack.env)),
                  cgroup_peak_mib=round(stack.cgroup.peak_mib(), 1),
                  oom_kills=stack.cgroup.oom_kills(),
                  healthz_max_s=max(health_seconds), healthz_p95_s=percentile(
                      health_seconds, 0.95))
    save_report("overload", report)

    assert {o.status for o in outcomes} <= {200, 503}, report
    assert len(outcomes) == CLIENTS
    capacity = Capacity.from_environ(stack.env)
    # Served: those admitted at once, plus a few admitted as earlier ones finished.
    assert len(busy) >= CLIENTS - 3 * (capacity.max_running + capacity.max_waiting), report
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in busy)
    # Refusals come at once: the typical one within a second of what a request doing no
    # work takes here, and none after waiting in the queue.
    refusal_seconds = [o.seconds for o in busy]
    assert statistics.median(refusal_seconds) < baseline + 1.0, report
    assert max(refusal_seconds) < min(baseline + 3.0, capacity.queue_timeout), report
    assert max(o.seconds for o in outcomes) < capacity.queue_timeout + 5
    assert max(health_seconds) < 2.0, "health checks must get through during overload"
    assert stack.cgroup.oom_kills() == 0

    assert stack.alive() and stack.worker_pids() == [worker], "the worker must not die"
    after = stack.post_api([Upload("after.jpg", PHOTO)])
    assert after.status == 200 and 0.0 <= after.json()["probability"] <= 1.0
    assert stack.get("/readyz").status == 200


def test_overload_503_body_says_when_to_retry(stack: LiveServer) -> None:
    refusals = [text for outcome, text in _burst(stack) if outcome.status == 503]
    assert refusals, f"{CLIENTS} simultaneous uploads must overflow the queue"
    body = json.loads(refusals[0])
    assert body["error"] == "overloaded"
    assert "try again in" in body["message"]
