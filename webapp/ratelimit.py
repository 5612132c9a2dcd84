"""A per-client limit on the predict routes: RATELIMIT_PER_MINUTE predictions per address,
0 = off. A patient request costs one per photo: the first before its body is read, the
rest once its photos are counted (`charge`), before any is decoded.

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

from flask import Flask, Response, current_app, request

from inference.errors import ClientError

from webapp.admission import drain_body
from webapp.responses import error_response

LIMITED_ENDPOINTS = frozenset({"views.predict", "api.predict", "views.patient_predict",
                               "api.patient", "views.example", "views.patient_example"})
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

    def acquire(self, client: str, cost: float = 1.0) -> int:
        """Take `cost` tokens for `client`: 0 if allowed, else seconds until they are there
        (nothing is taken then). A cost above the bucket's size is paid from a full bucket,
        so it is refused only while the client has spent recently."""
        now = self._clock()
        cost = min(cost, self.capacity)
        with self._lock:
            tokens, updated = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - updated) * self.refill_per_second)
            allowed = tokens >= cost
            if allowed:
                tokens -= cost
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
        if allowed:
            return 0
        return max(1, math.ceil((cost - tokens) / self.refill_per_second))


def init_app(app: Flask) -> None:
    """Refuse predict requests over the limit with 429 before their body is parsed."""
    per_minute = int(app.config["RATELIMIT_PER_MINUTE"])
    if per_minute <= 0:
        return
    limiter = RateLimiter(per_minute)
    app.extensions["ratelimit"] = limiter

    @app.before_request
    def _limit() -> Response | None:
        if request.endpoint not in LIMITED_ENDPOINTS:
            return None
        wait = limiter.acquire(_client())
        if not wait:
            return None
        drain_body()
        return _refusal(per_minute, wait)


def charge(predictions: int) -> None:
    """Charge the current request for the predictions beyond the one paid on arrival;
    a ClientError (429) when its client has not that many left."""
    limiter: RateLimiter | None = current_app.extensions.get("ratelimit")
    if limiter is None or predictions <= 1:
        return
    wait = limiter.acquire(_client(), predictions - 1)
    if wait:
        raise ClientError(_message(int(limiter.capacity), wait), code="rate_limited",
                          status=429, retry_after=wait)


def _client() -> str:
    return request.remote_addr or "unknown"


def _message(per_minute: int, wait: int) -> str:
    return (f"Too many analyses from your address; the limit is {per_minute} photos a "
            f"minute. Try again in {wait} s.")


def _refusal(per_minute: int, wait: int) -> Response:
    return error_response(429, "rate_limited", _message(per_minute, wait),
                          {"Retry-After": str(wait)})
