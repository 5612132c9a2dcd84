"""The per-client limit on predict routes: off by default, 429 + Retry-After when on."""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from webapp.app import create_app
from webapp.ratelimit import MAX_CLIENTS, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=6, clock=clock)
    assert [limiter.acquire("a") for _ in range(6)] == [0] * 6
    assert limiter.acquire("a") == 10  # one token every 10 s
    assert limiter.acquire("b") == 0, "clients have separate buckets"
    clock.now += 10
    assert limiter.acquire("a") == 0
    assert limiter.acquire("a") > 0


def test_limiter_forgets_the_oldest_clients_past_its_bound() -> None:
    limiter = RateLimiter(per_minute=1, clock=FakeClock())
    clients = [str(client) for client in range(MAX_CLIENTS + 50)]
    assert all(limiter.acquire(client) == 0 for client in clients)
    # Still remembered, so still limited; forgotten, so served with a fresh bucket.
    assert limiter.acquire(clients[-1]) > 0
    assert limiter.acquire(clients[50]) > 0
    assert limiter.acquire(clients[0]) == 0


def _limited_app(model: Path, per_minute: int, **extra: object) -> Flask:
    return create_app({"TESTING": True, "MODEL_PATH": str(model), "WTF_CSRF_ENABLED": False,
                       "RATELIMIT_PER_MINUTE": per_minute, **extra})


@pytest.fixture
def limited(tiny_onnx_model: Path) -> Iterator[FlaskClient]:
    yield _limited_app(tiny_onnx_model, 3).test_client()


def _predict(client: FlaskClient, image: bytes, path: str = "/api/v1/predict",
             address: str = "192.0.2.1", **headers: str):  # type: ignore[no-untyped-def]
    return client.post(path, data={"image": (io.BytesIO(image), "a.jpg")},
                       environ_base={"REMOTE_ADDR": address}, headers=headers)


def test_api_answers_429_with_retry_after_past_the_limit(limited: FlaskClient,
                                                         lesion_jpeg_bytes: bytes) -> None:
    assert [_predict(limited, lesion_jpeg_bytes).status_code for _ in range(3)] == [200] * 3
    refused = _predict(limited, lesion_jpeg_bytes)
    assert refused.status_code == 429
    assert refused.json["error"] == "rate_limited"
    assert "3 photos a minute" in refused.json["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.headers["Content-Security-Policy"]
    assert _predict(limited, lesion_jpeg_bytes, address="192.0.2.2").status_code == 200


def test_form_answers_429_as_a_page_with_the_reason(limited: FlaskClient,
                                                    lesion_jpeg_bytes: bytes) -> None:
    for _ in range(3):
        _predict(limited, lesion_jpeg_bytes, path="/predict")
    refused = _predict(limited, lesion_jpeg_bytes, path="/predict")
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert b"Too many analyses" in refused.data and b'name="image"' in refused.data


def test_limit_counts_only_predict_routes(limited: FlaskClient,
                                          lesion_jpeg_bytes: bytes) -> None:
    for _ in range(10):
        assert limited.get("/", environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code == 200
        assert limited.get("/healthz").status_code == 200
    assert _predict(limited, lesion_jpeg_bytes).status_code == 200


def test_limit_is_off_by_default(app: Flask, lesion_jpeg_bytes: bytes) -> None:
    assert app.config["RATELIMIT_PER_MINUTE"] == 0 and "ratelimit" not in app.extensions
    client = app.test_client()
    assert all(_predict(client, lesion_jpeg_bytes).status_code == 200 for _ in range(8))


def test_forwarded_for_is_ignored_unless_a_proxy_is_trusted(tiny_onnx_model: Path,
                                                            lesion_jpeg_bytes: bytes) -> None:
    direct = _limited_app(tiny_onnx_model, 1).test_client()
    assert _predict(direct, lesion_jpeg_bytes, X_Forwarded_For="198.51.100.1").status_code == 200
    # A client cannot escape its bucket by inventing a forwarded address.
    assert _predict(direct, lesion_jpeg_bytes, X_Forwarded_For="198.51.100.2").status_code == 429

    proxied = _limited_app(tiny_onnx_model, 1, TRUSTED_PROXIES=1).test_client()
    for client_address in ("198.51.100.1", "198.51.100.2"):
        reply = _predict(proxied, lesion_jpeg_bytes, address="127.0.0.1",
                         X_Forwarded_For=client_address)
        assert reply.status_code == 200, "behind nginx each client has its own bucket"
    assert _predict(proxied, lesion_jpeg_bytes, address="127.0.0.1",
                    X_Forwarded_For="198.51.100.1").status_code == 429
