"""A per-client limit on the predict routes: RATELIMIT_PER_MINUTE per address, 0 = off.

nginx already limits predict per address in front of the app; this is the second line for
when the app is reached another way. Buckets live in the worker's memory, so with several
workers a client gets up to that many times the limit. Behind a proxy, set TRUSTED_PROXIES
so the address is the client's, not the proxy's.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from flask import Flask, Response, request

from webapp.responses import error_response

LIMITED_ENDPOINTS = frozenset({"views.predict", "api.predict", "views.patient_predict",
                               "api.patient"})
# Enough for every client of a small site; the oldest are forgotten first past this.
MAX_CLIENTS = 10_000


class RateLimiter:
    """Token buckets: `per_minute` requests a minute per client, in bursts of up to as many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.refill_per_second = per_minute / 60.0
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, client: str) -> int:
        """Take one token for `client`: 0 if allowed, else seconds until one is free."""
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - updated) * self.refill_per_second)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
        if allowed:
            return 0
        return max(1, math.ceil((1.0 - tokens) / self.refill_per_second))


def init_app(app: Flask) -> None:
    """Refuse predict requests over the limit with 429 before their body is read."""
    per_minute = int(app.config["RATELIMIT_PER_MINUTE"])
    if per_minute <= 0:
        return
    limiter = RateLimiter(per_minute)
    app.extensions["ratelimit"] = limiter

    @app.before_request
    def _limit() -> Response | None:
        if request.endpoint not in LIMITED_ENDPOINTS:
            return None
        wait = limiter.acquire(request.remote_addr or "unknown")
        if not wait:
            return None
        return error_response(429, "rate_limited",
                              f"Too many analyses from your address; the limit is {per_minute} "
                              f"a minute. Try again in {wait} s.", {"Retry-After": str(wait)})
