"""What an anonymous client can send or learn through the production-shaped stack (TLS load
balancer, rendered nginx site, shipped gunicorn): no 5xx for any request we can think of
(decoding aside), no model file names, paths or tool versions, a Secure SameSite session
cookie over HTTPS, no echo of the Host header, and a form that posts across hosts."""
from __future__ import annotations

import json
import re
import secrets
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from devtools.server import LiveServer, Upload, multipart
from devtools.stack import serve_stack, start_stack
from tests import images
from inference.model_spec import read_spec_file

pytestmark = pytest.mark.slow

PUBLIC_HOST = "melanoma.example"  # the name users reach the load balancer by
PHOTO = images.encode(images.lesion_rgb(320, 240, seed=2), ".jpg")


@pytest.fixture(scope="module")
def stack(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LiveServer]:
    yield from serve_stack(tiny_onnx_model, tmp_path_factory.mktemp("anonymous"), tls=True)


def test_model_endpoint_tells_no_file_names_paths_or_tool_versions(
        app: Flask, tiny_onnx_model: Path) -> None:
    spec = read_spec_file(tiny_onnx_model)
    assert spec.checkpoint_name and spec.tool_versions  # the full spec does hold them
    body = app.test_client().get("/api/v1/model").get_json()
    text = json.dumps(body)
    assert spec.checkpoint_name not in text
    assert spec.provenance and spec.provenance not in text
    for version in spec.tool_versions.values():
        assert f'"{version}"' not in text, version
    assert not re.search(r'"(/|[A-Za-z]:\\\\)[^"]*"', text), "a path in the model description"
    assert {"tool_versions", "checkpoint_name", "provenance"}.isdisjoint(body)
    # What a client needs to read a prediction stays.
    assert body["labels"] == list(spec.labels) and body["threshold"] == spec.threshold
    assert body["architecture"] == spec.architecture and body["demo"] == spec.demo


def test_session_cookie_is_secure_and_samesite_over_https(stack: LiveServer) -> None:
    cookie = stack.get("/", headers={"Host": PUBLIC_HOST}).headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert "secure" in attributes and "httponly" in attributes, cookie
    assert re.search(r"samesite=lax", cookie, re.I), cookie


@pytest.mark.parametrize("direct", [False, True], ids=["through-nginx", "gunicorn"])
@pytest.mark.parametrize("path", ["//healthz", "/api//model", "/static//style.css"])
def test_redirects_never_echo_the_host_header(stack: LiveServer, direct: bool,
                                              path: str) -> None:
    reply = stack.request("GET", path, headers={"Host": "evil.example"}, direct=direct)
    assert "evil.example" not in json.dumps(dict(reply.headers)) + reply.text
    assert reply.status < 500


def _raw(port: int, request: bytes, tls: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as plain:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock: socket.socket = context.wrap_socket(plain)
        else:
            sock = plain
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def _post(path: str, content_type: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body


_FORM, _FORM_TYPE = multipart({"tta": "none"}, [Upload("a.jpg", PHOTO)])
HOSTILE: dict[str, bytes] = {
    "multipart-without-boundary": _post("/api/v1/predict", "multipart/form-data", b"xx"),
    "multipart-garbage": _post("/api/v1/predict", "multipart/form-data; boundary=b", b"\0" * 99),
    "multipart-unterminated": _post("/api/v1/predict", _FORM_TYPE, _FORM[:-40]),
    "json-body": _post("/api/v1/predict", "application/json", b'{"image": '),
    "unknown-tta": _post("/api/v1/predict", _FORM_TYPE, _FORM.replace(b"none", b"nope")),
    "form-without-csrf": _post("/predict", _FORM_TYPE, _FORM),
    "form-bad-cookie": _post("/predict", _FORM_TYPE, _FORM, "Cookie: session=.eJzz.x.y\r\n"),
    "huge-cookie": f"GET / HTTP/1.1\r\nHost: a\r\nCookie: session={'a' * 6000}\r\n"
                   "Connection: close\r\n\r\n".encode(),
    "bad-utf8-path": b"GET /%ff%fe HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "dotdot-static": b"GET /static/../../etc/passwd HTTP/1.1\r\nHost: a\r\n"
                     b"Connection: close\r\n\r\n",
    "odd-method": b"PROPFIND / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "odd-forwarded": b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: ::::,zz\r\n"
                     b"X-Forwarded-Proto: gopher\r\nConnection: close\r\n\r\n",
    "bad-host": b"GET / HTTP/1.1\r\nHost: [::1\r\nConnection: close\r\n\r\n",
    "expect-continue": _post("/api/v1/predict", _FORM_TYPE, _FORM, "Expect: 100-continue\r\n"),
    "query-flood": ("GET /?" + "&".join(f"a{i}=1" for i in range(900))
                    + " HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").encode(),
    "model-post": _post("/api/v1/model", "text/plain", b"x"),
    "chunked-multipart": (f"POST /api/v1/predict HTTP/1.1\r\nHost: a\r\nContent-Type: "
                          f"{_FORM_TYPE}\r\nTransfer-Encoding: chunked\r\nConnection: close"
                          "\r\n\r\n").encode() + b"10\r\n" + _FORM[:16] + b"\r\nzz\r\n",
}


@pytest.mark.parametrize("front", ["balancer", "gunicorn"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_nothing_an_anonymous_client_sends_gets_a_5xx(stack: LiveServer, name: str,
                                                      front: str) -> None:
    direct = front == "gunicorn"
    answer = _raw(stack.port if direct else stack.client_port, HOSTILE[name], not direct)
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b"closed"
    # A closed connection (nginx refusing a malformed request line) is no 5xx either.
    assert not status.startswith(b"5"), (name, answer[:300])
    assert stack.alive()


def test_a_form_from_one_host_posts_to_another_sharing_the_secret(
        tiny_onnx_model: Path, tmp_path: Path) -> None:
    secret = {"MELANOMA_SECRET_KEY": secrets.token_hex(32)}
    first = start_stack(tiny_onnx_model, tmp_path / "a", secret, tls=True)
    try:
        second = start_stack(tiny_onnx_model, tmp_path / "b", secret, tls=True)
        try:
            # Behind the balancer both hosts see the name users typed, and the browser
            # sends the page's address as Referer (same-origin policy).
            origin = {"Host": PUBLIC_HOST, "Referer": f"https://{PUBLIC_HOST}/"}
            page = first.get("/", headers=origin)
            cookie = page.headers["set-cookie"].split(";", 1)[0]
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token is not None
            body, content_type = multipart({"csrf_token": token.group(1)},
                                           [Upload("a.jpg", PHOTO)])
            reply = second.request("POST", "/predict", body,
                                   {**origin, "Content-Type": content_type, "Cookie": cookie})
            assert reply.status == 200, reply.text[:500]
            assert "Result" in reply.text
        finally:
            second.stop()
    finally:
        first.stop()
