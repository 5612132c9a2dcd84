"""Watching a live server while a request runs: its whole tree's memory and /healthz."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.procs import pss_mib
from devtools.server import LiveServer

HEALTH_SECONDS = 2.0


def tree_pss_mib(root: int) -> float:
    """Memory of a process and all its descendants: their PSS summed (shared pages counted
    once, split among the processes that share them)."""
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        try:
            total += pss_mib(pid)
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except (OSError, AssertionError):
            continue
        pending.extend(int(child) for child in children)
    return total


@dataclass
class Watch:
    """Samples the server's RSS and /healthz latency while a request runs."""

    server: LiveServer
    peak_rss_mib: float = 0.0
    health_seconds: list[float] = field(default_factory=list)
    health_statuses: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample_rss(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_mib = max(self.peak_rss_mib, tree_pss_mib(self.server.master_pid))
            time.sleep(0.02)

    def _probe_health(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.server.get("/healthz", timeout=HEALTH_SECONDS * 3)
                self.health_statuses.append(reply.status)
                self.health_seconds.append(reply.seconds)
            except OSError:
                self.health_statuses.append(0)
                self.health_seconds.append(HEALTH_SECONDS * 3)
            self._stop.wait(0.25)

    def __enter__(self) -> Watch:
        self._threads = [threading.Thread(target=self._sample_rss, daemon=True),
                         threading.Thread(target=self._probe_health, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
