"""Upload bodies trickled at a byte every 2 s from many addresses (issue 21) through the
shipped nginx site and gunicorn: nginx answers the excess at once and keeps connections for
everyone else, so /healthz, pages, static files and other people's predictions still get an
answer while the trickle lasts, and uploads are served again as soon as it stops."""
from __future__ import annotations

import re
import resource
import selectors
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.load import save_report
from devtools.procs import children, rss_mib
from devtools.server import LiveServer, Upload
from devtools.stack import host_files, nginx_binary, serve_stack
from infra.host.render import MAIN_NAME, SITE_NAME, HostConfig, RenderError, render_all
from tests import images

# The finding: 100 addresses x 8 connections (the per-address limit), a byte every 2 s.
ADDRESSES, PER_ADDRESS, INTERVAL_S = 100, 8, 2.0
TRICKLE_S = 14.0  # long enough for several probe rounds, well under a minute in all
PROBE_TIMEOUT_S = 5.0
PHOTO = images.encode(images.lesion_rgb(320, 240, seed=2), ".jpg")
_HEAD = (b"POST /api/v1/predict HTTP/1.1\r\nHost: melanoma.example\r\n"
         b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n")


@pytest.fixture(scope="module")
def stack(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LiveServer]:
    # No override: the site, main config and limits exactly as the host gets them.
    yield from serve_stack(tiny_onnx_model, tmp_path_factory.mktemp("trickle"))


def _allow_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed, "raise `ulimit -n`"


@dataclass
class _Trickle:
    """Upload connections that send their headers, then one body byte per interval; one
    that nginx closes is opened again from the same address, as an attacker would (on the
    next beat)."""

    port: int
    addresses: int
    per_address: int
    answers: Counter[str] = field(default_factory=Counter)  # status, or "closed"
    reopened: int = 0
    _socks: dict[int, socket.socket] = field(default_factory=dict)  # slot -> connection
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> _Trickle:
        _allow_descriptors(self.addresses * self.per_address + 256)
        self._selector = selectors.DefaultSelector()
        for slot in range(self.addresses * self.per_address):
            self._open(slot)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(INTERVAL_S + 10)
        for sock in self._socks.values():
            sock.close()
        self._selector.close()

    def _open(self, slot: int) -> None:
        address = slot // self.per_address
        source = f"127.77.{address // 250}.{address % 250 + 1}"
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=1,
                                            source_address=(source, 0))
            sock.sendall(_HEAD + b"-")
        except OSError:
            self.answers["connect failed"] += 1
            return
        sock.setblocking(False)
        self._socks[slot] = sock
        self._selector.register(sock, selectors.EVENT_READ, slot)

    def _run(self) -> None:
        next_byte = time.monotonic() + INTERVAL_S
        closed: list[int] = []
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock, slot = key.fileobj, key.data
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(64)
                except OSError:
                    data = b""
                self._selector.unregister(sock)
                if data.startswith(b"HTTP/"):
                    # A refused trickler keeps trickling: the worst case for nginx.
                    self.answers[data.split(b" ", 2)[1].decode()] += 1
                else:
                    self.answers["closed"] += 1
                    sock.close()
                    del self._socks[slot]
                    closed.append(slot)
            if time.monotonic() >= next_byte:
                next_byte += INTERVAL_S
                # Reopened on the next beat, not at once: bounded work for this machine.
                self.reopened += len(closed)
                while closed:
                    self._open(closed.pop())
                for sock in list(self._socks.values()):
                    try:
                        sock.send(b"x")
                    except OSError:
                        pass


def _probe(stack: LiveServer, what: str) -> tuple[str, str, float]:
    """One request from a new address: (what, status or error name, seconds)."""
    started = time.perf_counter()
    try:
        if what == "predict":
            reply = stack.post_api([Upload("a.jpg", PHOTO)], timeout=PROBE_TIMEOUT_S)
            answer = str(reply.status)
            if reply.status == 503 and not reply.headers.get("retry-after"):
                answer = "503 without Retry-After"
        else:
            answer = str(stack.get(what, timeout=PROBE_TIMEOUT_S).status)
    except OSError as error:  # a reset or no answer in time
        answer = type(error).__name__
    return what, answer, round(time.perf_counter() - started, 3)


def _probe_while(stack: LiveServer, seconds: float, routes: tuple[str, ...]
                 ) -> list[tuple[str, str, float]]:
    deadline = time.monotonic() + seconds
    probes: list[tuple[str, str, float]] = []
    while time.monotonic() < deadline:
        probes.extend(_probe(stack, route) for route in routes)
        time.sleep(0.3)
    return probes


def _nginx_worker_rss_mib(stack: LiveServer) -> float:
    assert stack.nginx_pid is not None
    (worker,) = children(stack.nginx_pid)
    return rss_mib(worker)


def _upload_caps(tmp_path: Path) -> tuple[int, int]:
    """(uploads in flight per address, uploads in flight in all), as the site ships them."""
    site = host_files(tmp_path)[SITE_NAME].read_text()
    (per_address,) = re.findall(r"limit_conn melanoma_upload_address (\d+);", site)[:1]
    (total,) = re.findall(r"limit_conn melanoma_uploads (\d+);", site)[:1]
    return int(per_address), int(total)


def test_the_main_config_host_and_stack_share_passes_nginx_t_silently(tmp_path: Path) -> None:
    prefix = tmp_path / "nginx"
    (prefix / "conf.d").mkdir(parents=True)
    files = host_files(tmp_path / "etc", nginx_user="", nginx_pid=f"{prefix}/nginx.pid",
                       nginx_error_log=f"{prefix}/error.log", nginx_temp_dir=str(prefix),
                       nginx_include=f"{prefix}/conf.d/*.conf", listen="127.0.0.1:8080")
    (prefix / "conf.d" / "melanoma.conf").write_text(files[SITE_NAME].read_text())
    check = subprocess.run([nginx_binary(), "-p", str(prefix), "-c", str(files[MAIN_NAME]),
                            "-e", str(prefix / "error.log"), "-t"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "[warn]" not in check.stderr, check.stderr
    main = files[MAIN_NAME].read_text()
    (slots,) = re.findall(r"worker_connections (\d+);", main)
    (descriptors,) = re.findall(r"worker_rlimit_nofile (\d+);", main)
    # Room for the finding's 800 trickled connections and as many more for everyone else;
    # a descriptor for each slot's client and upstream socket.
    assert int(slots) >= 2 * ADDRESSES * PER_ADDRESS and int(descriptors) >= 2 * int(slots)


def test_render_refuses_an_upload_budget_one_address_could_fill(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="upload_memory_mib"):
        render_all(HostConfig(model_sha256="0" * 64, upload_memory_mib=32), tmp_path)


@pytest.mark.slow
def test_trickled_uploads_from_100_addresses_leave_health_pages_and_others_served(
        stack: LiveServer, tmp_path: Path) -> None:
    assert stack.post_api([Upload("warm.jpg", PHOTO)]).status == 200
    routes = ("/healthz", "/", "/static/style.css", "/api/v1/model", "predict")
    rss_before = _nginx_worker_rss_mib(stack)
    with _Trickle(stack.client_port, ADDRESSES, PER_ADDRESS) as trickle:
        probes = _probe_while(stack, TRICKLE_S, routes)
        answers, reopened = dict(trickle.answers), trickle.reopened
        rss_during = _nginx_worker_rss_mib(stack)
    after = _probe(stack, "predict")
    assert stack.nginx_prefix is not None
    error_log = (stack.nginx_prefix / "error.log").read_text(errors="replace")
    report = {
        "trickling": ADDRESSES * PER_ADDRESS, "trickle_answers": answers,
        "trickle_reopened": reopened,
        "probes": {route: dict(Counter(a for w, a, _ in probes if w == route))
                   for route in routes},
        "probe_max_s": {route: max(s for w, _, s in probes if w == route) for route in routes},
        "prediction_after": after,
        "nginx_worker_rss_mib": [round(rss_before, 1), round(rss_during, 1)],
        "worker_connections_not_enough": "worker_connections are not enough" in error_log,
    }
    save_report("nginx-trickle", report)

    for what, answer, seconds in probes:
        expected = {"200", "503"} if what == "predict" else {"200"}
        assert answer in expected and seconds < 3.0, (what, answer, seconds, report)
    assert not report["worker_connections_not_enough"], report
    # Everything over the caps is refused at once, not held: the trickle holds at most the
    # upload slots the site allows in all.
    _, total = _upload_caps(tmp_path)
    assert answers.get("503", 0) >= ADDRESSES * PER_ADDRESS - total, report
    assert after[1] == "200", report


@pytest.mark.slow
def test_trickled_uploads_from_a_few_addresses_leave_uploads_served(
        stack: LiveServer, tmp_path: Path) -> None:
    per_address, total = _upload_caps(tmp_path)
    # As many addresses as can trickle without taking every upload slot.
    addresses = (total - 1) // per_address
    assert addresses >= 2, "the total cap must outlast more than one abusive address"
    with _Trickle(stack.client_port, addresses, PER_ADDRESS) as trickle:
        time.sleep(1.0)
        probes = _probe_while(stack, 4.0, ("predict", "/healthz"))
        answers = dict(trickle.answers)
    assert answers == {"503": addresses * (PER_ADDRESS - per_address)}, answers
    assert {answer for _, answer, _ in probes} == {"200"}, probes
