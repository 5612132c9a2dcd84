"""Bound how many predictions run and wait at once, so overload answers 503 instead of OOM."""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from flask import Flask, request

from webapp.capacity import Capacity
from webapp.errors import Overloaded

_DEFAULT = Capacity()
_DRAIN_CHUNK = 256 * 1024


class InferenceGate:
    """`max_running` requests at a time, at most `max_waiting` queued behind them, each
    counted as the predictions it asks for (a patient's photos, one each).

    A request that finds the queue full, or work queued ahead of it that would take longer
    than `wait_timeout` seconds (at the measured seconds a prediction), is refused at once
    with a Retry-After hint rather than piling up in memory. Once admitted, a request runs
    all its predictions in one slot: nothing it has done is thrown away by a timeout.
    """

    def __init__(self, max_running: int = _DEFAULT.max_running,
                 max_waiting: int = _DEFAULT.max_waiting,
                 wait_timeout: float = _DEFAULT.queue_timeout) -> None:
        self._slots = threading.BoundedSemaphore(max_running)
        self._lock = threading.Lock()
        self._waiting = 0
        self._backlog = 0  # predictions admitted and not finished, waiting or running
        self._max_waiting = max_waiting
        self._wait_timeout = wait_timeout
        self._max_running = max_running
        self._recent_seconds = 0.2  # refined by every prediction that runs
        self._running_since: dict[int, float] = {}
        self._next_ticket = 0

    @property
    def full(self) -> bool:
        """No room in the queue: a new prediction would be refused."""
        return self._waiting >= self._max_waiting

    def retry_after(self) -> int:
        return max(1, math.ceil(self._backlog_seconds(self._backlog + self._max_running)))

    def _backlog_seconds(self, predictions: int) -> float:
        return predictions * self._recent_seconds / self._max_running

    @contextmanager
    def admit(self, predictions: int = 1) -> Iterator[None]:
        with self._lock:
            if (self._waiting >= self._max_waiting
                    or self._backlog_seconds(self._backlog) > self._wait_timeout):
                raise Overloaded(self.retry_after())
            self._waiting += 1
            self._backlog += predictions
        try:
            try:
                acquired = self._slots.acquire(timeout=self._wait_timeout)
            finally:
                with self._lock:
                    self._waiting -= 1
            if not acquired:
                raise Overloaded(self.retry_after())
            with self._lock:
                ticket = self._next_ticket
                self._next_ticket += 1
                self._running_since[ticket] = time.monotonic()
            try:
                yield
            finally:
                with self._lock:
                    del self._running_since[ticket]
                self._slots.release()
        finally:
            with self._lock:
                self._backlog -= predictions

    def record(self, seconds: float) -> None:
        """Seconds one prediction took; an exponential average is enough for the estimates."""
        self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * seconds

    def longest_running(self) -> float:
        """Seconds the oldest admitted request has held its slot; 0 when none runs."""
        with self._lock:
            oldest = min(self._running_since.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest


def init_app(app: Flask, gate: InferenceGate, endpoints: frozenset[str]) -> None:
    """Refuse predictions while the gate is full before their body is parsed.

    On one CPU, parsing dozens of uploads only to refuse them would slow the prediction
    running and the refusals themselves. The body is still read and dropped (`drain_body`).
    """
    @app.before_request
    def _refuse_when_full() -> None:
        if request.endpoint in endpoints and gate.full:
            drain_body()
            raise Overloaded(gate.retry_after())


def drain_body() -> None:
    """Read the request's body and drop it, for a refusal answered before the body is
    parsed: a server that answers and closes with unread bytes in the socket sends a reset,
    which can destroy its own answer in flight (nginx then reports 502)."""
    while request.stream.read(_DRAIN_CHUNK):
        pass
