"""How many predictions run and wait per worker, and the gunicorn threads that follow.

gunicorn.conf.py and the app both read these numbers from here, so the gate can always fill
before gunicorn runs out of threads: excess uploads meet the gate (503 + Retry-After at
once) instead of a hidden queue inside gunicorn, and health checks always find a thread.
Standard library only: gunicorn.conf.py imports it in the master.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Threads the gate can never take: health checks, scrapes and quick refusals run on them.
SPARE_THREADS = 2


@dataclass(frozen=True)
class Capacity:
    # One prediction at a time on one vCPU; two behind it keep the core busy between them
    # (about 1 s of queueing with the full model) without holding anyone long.
    max_running: int = 1
    max_waiting: int = 2
    # A queued prediction gives up (503) after this long; below gunicorn's timeout.
    queue_timeout: float = 10.0

    @property
    def threads(self) -> int:
        """gunicorn threads per worker: everyone the gate admits, plus the spares."""
        return self.max_running + self.max_waiting + SPARE_THREADS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Capacity:
        """From MELANOMA_MAX_RUNNING, MELANOMA_MAX_WAITING, MELANOMA_QUEUE_TIMEOUT."""
        default = cls()
        return cls(
            max_running=int(environ.get("MELANOMA_MAX_RUNNING", default.max_running)),
            max_waiting=int(environ.get("MELANOMA_MAX_WAITING", default.max_waiting)),
            queue_timeout=float(environ.get("MELANOMA_QUEUE_TIMEOUT", default.queue_timeout)))
