"""The rendered nginx site in front of the shipped gunicorn: uploads stay in memory, routes
that take no body refuse one, one address cannot hold every connection (many addresses:
test_nginx_trickle.py), a header cannot trickle forever, /healthz cannot recycle the worker,
and the keep-alive outlives the load balancer's."""
from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devtools.server import REPO, LiveServer, Upload
from devtools.stack import host_files, serve_stack
from infra.host.render import SITE_NAME
from tests import images

pytestmark = pytest.mark.slow

ALB_IDLE_TIMEOUT_S = 60  # the load balancer's default idle timeout (infra/templates)
# Far below the shipped 2000 so a health-check flood would recycle the worker within the test.
MAX_REQUESTS = 20


@pytest.fixture(scope="module")
def stack(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LiveServer]:
    # The only override: a small max_requests, so recycling would show within 300 requests.
    yield from serve_stack(tiny_onnx_model, tmp_path_factory.mktemp("nginx-site"),
                           {"MELANOMA_MAX_REQUESTS": str(MAX_REQUESTS)})


def _error_log(stack: LiveServer) -> str:
    assert stack.nginx_prefix is not None
    return (stack.nginx_prefix / "error.log").read_text(errors="replace")


def test_large_upload_is_never_buffered_to_disk_by_nginx(stack: LiveServer) -> None:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (1400, 1800, 3), dtype=np.uint8)  # defeats compression
    photo = images.encode(noise, ".jpg", quality=97)
    assert len(photo) > 3 * 1024 * 1024
    reply = stack.post_api([Upload("big.jpg", photo)])
    assert reply.status == 200, reply.text
    assert stack.nginx_prefix is not None
    assert list((stack.nginx_prefix / "client_body").iterdir()) == []
    # nginx says so itself (at warn level) whenever a body goes to a temporary file.
    assert "buffered to a temporary file" not in _error_log(stack)


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/api/v1/model", "/nowhere"])
def test_post_of_70_to_300_kb_to_a_route_taking_no_body_is_refused_not_502(
        stack: LiveServer, path: str) -> None:
    statuses = []
    for size in range(70_000, 300_001, 46_000):
        reply = stack.request("POST", path, b"a" * size,
                              {"Content-Type": "application/x-www-form-urlencoded"})
        statuses.append(reply.status)
    assert set(statuses) == {413}, statuses


# (route, what each request declares, zone that refuses, status): a page request's small
# body and an upload's large one, both trickled, so each request stays in flight.
_HOLDS = [("/", 500, "melanoma_conn", 429),
          ("/api/v1/predict", 1_000_000, "melanoma_upload_address", 503)]


@pytest.mark.parametrize(("path", "length", "zone", "status"), _HOLDS,
                         ids=["page", "upload"])
def test_one_address_cannot_hold_every_connection(stack: LiveServer, tmp_path: Path,
                                                  path: str, length: int, zone: str,
                                                  status: int) -> None:
    site = host_files(tmp_path)[SITE_NAME].read_text()
    limit = min(int(n) for n in re.findall(rf"limit_conn {zone} (\d+);", site))
    attempts = limit + 8
    held: list[socket.socket] = []
    try:
        refused = 0
        for _ in range(attempts):
            sock = socket.create_connection(("127.0.0.1", stack.client_port), timeout=5)
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         f"image/jpeg\r\nContent-Length: {length}\r\n\r\nabc".encode())
            held.append(sock)
            time.sleep(0.05)
        for sock in held:
            sock.settimeout(0.3)
            try:
                refused += sock.recv(200).startswith(f"HTTP/1.1 {status}".encode())
            except TimeoutError:
                pass
        assert refused == attempts - limit, f"{refused} of {attempts} refused"
        assert f'limiting connections by zone "{zone}"' in _error_log(stack)
        # Another address is still served at once.
        assert stack.get("/healthz", source="127.0.0.2", timeout=5).status == 200
    finally:
        for sock in held:
            sock.close()


def test_a_trickled_header_is_cut_off_within_the_header_timeout(stack: LiveServer) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", stack.client_port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        try:
            while time.monotonic() - started < 40:
                sock.sendall(b"X-a: b\r\n")  # a header line a second: never complete
                time.sleep(1)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert time.monotonic() - started < 12


def test_healthz_floods_do_not_recycle_the_worker(stack: LiveServer) -> None:
    (worker,) = stack.worker_pids()
    for _ in range(300):  # above max_requests plus gunicorn's jitter of 200
        assert stack.get("/healthz", timeout=5).status == 200
    assert stack.worker_pids() == [worker]


def test_keepalive_outlives_the_load_balancers_idle_timeout(tmp_path: Path) -> None:
    site = host_files(tmp_path)[SITE_NAME].read_text()
    server_block = site[site.index("server {"):]
    (timeout,) = re.findall(r"keepalive_timeout\s+(\d+)s;", server_block)
    assert int(timeout) > ALB_IDLE_TIMEOUT_S


def test_nginx_drops_idle_upstream_connections_before_gunicorn_does(tmp_path: Path) -> None:
    """Else nginx may send a request down a connection gunicorn is closing: a 502, which
    nginx does not retry for a POST (seen once under the patient-load test)."""
    site = host_files(tmp_path)[SITE_NAME].read_text()
    upstream = site[site.index("upstream melanoma_app"):site.index("}", site.index("upstream"))]
    (nginx_idle,) = re.findall(r"keepalive_timeout\s+(\d+)s;", upstream)
    (gunicorn_idle,) = re.findall(r"^keepalive = (\d+)$",
                                  (REPO / "gunicorn.conf.py").read_text(), re.M)
    assert int(nginx_idle) < int(gunicorn_idle)


def test_malformed_chunked_body_straight_to_gunicorn_is_not_a_500(stack: LiveServer) -> None:
    for body in (b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc\r\n0\r\n\r\n", b"-1\r\n\r\n",
                 b"3;x\r\nabcXX0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
            sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                         b"chunked\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n"
                         + body)
            status = sock.recv(100).split(b" ", 2)[1]
        assert not status.startswith(b"5"), (body, status)


def test_the_drawn_examples_share_the_predictions_rate_limit(stack: LiveServer) -> None:
    """An example is a whole prediction for a tiny form body: nginx limits it like one."""
    source = "127.0.5.1"
    session = stack.form_session()
    statuses = []
    for _ in range(14):
        body = f"csrf_token={session.token}&example=drawn-benign-looking-1.jpg&tta=none"
        reply = stack.request("POST", "/example", body.encode(),
                              {"Content-Type": "application/x-www-form-urlencoded",
                               "Cookie": session.cookie}, source=source)
        statuses.append(reply.status)
    assert statuses[0] == 200 and 429 in statuses, statuses
