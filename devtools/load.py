"""Closed-loop load on 127.0.0.1: N clients, each sending its next request when answered."""
from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from devtools.procs import percentile
from devtools.server import REPO, Reply

ARTIFACTS = REPO / "test-artifacts"


@dataclass(frozen=True)
class Outcome:
    started: float  # seconds since the run began
    seconds: float
    status: int  # 0: no HTTP answer (connection refused, reset or timed out)
    retry_after: str | None
    error: str | None = None


def hammer(send: Callable[[], Reply], clients: int, seconds: float,
           stop: threading.Event | None = None) -> list[Outcome]:
    """Run `clients` threads calling `send` back to back for `seconds`; every outcome."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    begin = time.perf_counter()
    stop = stop or threading.Event()

    def client() -> None:
        while not stop.is_set() and time.perf_counter() - begin < seconds:
            started = time.perf_counter()
            try:
                reply = send()
                outcome = Outcome(started - begin, reply.seconds, reply.status,
                                  reply.headers.get("retry-after"))
            # OSError covers timeouts and resets; HTTPException a reply cut off mid-body
            # (a worker killed while writing it), which must count, not end the client.
            except (OSError, http.client.HTTPException) as error:
                outcome = Outcome(started - begin, time.perf_counter() - started, 0, None,
                                  type(error).__name__)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    return outcomes


def summary(outcomes: Sequence[Outcome], seconds: float) -> dict[str, object]:
    by_status: dict[str, int] = {}
    for outcome in outcomes:
        by_status[str(outcome.status)] = by_status.get(str(outcome.status), 0) + 1
    ok = [o.seconds for o in outcomes if o.status == 200]
    busy = [o.seconds for o in outcomes if o.status == 503]
    return {
        "requests": len(outcomes), "by_status": by_status,
        "throughput_ok_per_s": round(len(ok) / seconds, 2),
        "ok_latency_s": {"p50": percentile(ok, 0.5), "p95": percentile(ok, 0.95)},
        "busy_latency_s": {"p50": percentile(busy, 0.5), "p95": percentile(busy, 0.95),
                           "max": percentile(busy, 1.0),
                           "mean": round(statistics.fmean(busy), 4) if busy else None},
    }


def save_report(name: str, report: dict[str, object]) -> Path:
    """Write the numbers a run produced under test-artifacts/ and echo them."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, default=lambda o: asdict(o)))
    print(f"\n{name}: {json.dumps(report)}")
    return path
