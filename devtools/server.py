"""A real gunicorn server on a free loopback port, and a plain HTTP(S) client for it.

The hostile, overload, soak, privacy and browser tests talk to this, not to Flask's test
client, so gunicorn's own parsing, threads, worker restarts and limits are part of the test;
devtools/stack.py puts the shipped nginx site, a TLS front and the host's limits around it.
Traffic only ever goes to 127.0.0.1 (or another loopback address standing for a client).
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.procs import HOST, MemoryCgroup, children, free_port
from webapp.capacity import Capacity

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class Upload:
    """One file part of a multipart body."""

    filename: str
    data: bytes
    content_type: str = "image/jpeg"
    field: str = "image"


def multipart(fields: Mapping[str, str] = {}, files: Sequence[Upload] = ()) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type, built byte by byte."""
    boundary = "----melanoma-test-" + secrets.token_hex(8)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     .encode() + value.encode() + b"\r\n")
    for upload in files:
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{upload.field}"; '
                f'filename="{upload.filename}"\r\nContent-Type: {upload.content_type}\r\n\r\n')
        parts.append(head.encode("utf-8") + upload.data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class LiveServer:
    """gunicorn at `port`; clients reach it at `client_port` (nginx when a stack is in front)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    front_port: int | None = None
    tls: bool = False
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    # Set by devtools/stack.py: the memory group gunicorn runs in, nginx's working folder.
    cgroup: MemoryCgroup | None = None
    nginx_prefix: Path | None = None
    nginx_pid: int | None = None
    # Behind nginx every request without a `source` comes from a loopback address of its
    # own, as from many people: nginx's per-address limits (tested in test_nginx_site.py)
    # would otherwise refuse a suite's hundreds of uploads from 127.0.0.1.
    rotate_sources: bool = False
    _sources: Iterator[int] = field(default_factory=itertools.count)

    @property
    def client_port(self) -> int:
        return self.front_port or self.port

    @property
    def capacity(self) -> Capacity:
        """The admission numbers this server's workers and gunicorn's threads run with."""
        return Capacity.from_environ(self.env)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.client_port}"

    def connection(self, timeout: float = 60.0, direct: bool = False,
                   source: str | None = None) -> http.client.HTTPConnection:
        """A connection to the front (or to gunicorn itself when `direct`), from `source`."""
        if source is None and self.rotate_sources and not direct:
            number = next(self._sources)
            source = f"127.{100 + number // 62500 % 100}.{number // 250 % 250}.{number % 250 + 1}"
        address = (source, 0) if source else None
        if self.tls and not direct:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the stack's certificate is made per run
            return http.client.HTTPSConnection(HOST, self.client_port, timeout=timeout,
                                               source_address=address, context=context)
        return http.client.HTTPConnection(HOST, self.port if direct else self.client_port,
                                          timeout=timeout, source_address=address)

    def request(self, method: str, path: str, body: bytes = b"",
                headers: Mapping[str, str] | None = None, timeout: float = 60.0,
                direct: bool = False, source: str | None = None) -> Reply:
        started = time.perf_counter()
        connection = self.connection(timeout, direct, source)
        try:
            own_host = any(name.lower() == "host" for name in (headers or {}))
            connection.putrequest(method, path, skip_host=own_host, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            if body or method == "POST":
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders()
            try:
                # In slices: the server may answer (413) and close before reading it all.
                for offset in range(0, len(body), 1 << 20):
                    connection.send(body[offset:offset + (1 << 20)])
            except (BrokenPipeError, ConnectionResetError):
                pass
            response = connection.getresponse()
            data = response.read()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                         data, time.perf_counter() - started)
        finally:
            connection.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post_api(self, files: Sequence[Upload] = (), fields: Mapping[str, str] = {},
                 timeout: float = 60.0, source: str | None = None,
                 path: str = "/api/v1/predict") -> Reply:
        body, content_type = multipart(fields, files)
        return self.request("POST", path, body, {"Content-Type": content_type},
                            timeout=timeout, source=source)

    def form_session(self) -> FormSession:
        """Open the page like a browser: keep its session cookie and CSRF token."""
        page = self.get("/")
        assert page.status == 200, page.status
        cookie = page.headers.get("set-cookie", "").split(";", 1)[0]
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert cookie and token, "the form page must set a session cookie and a CSRF token"
        return FormSession(self, cookie, token.group(1))

    @property
    def master_pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        return children(self.master_pid)

    def wait_for_workers(self, count: int = 1, exclude: Sequence[int] = (),
                         timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = [pid for pid in self.worker_pids() if pid not in exclude]
            if len(workers) >= count:
                return workers
            time.sleep(0.05)
        raise AssertionError(f"gunicorn did not start {count} new worker(s):\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        while self.cleanups:
            self.cleanups.pop()()


@dataclass
class FormSession:
    server: LiveServer
    cookie: str
    token: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def post(self, files: Sequence[Upload] = (), fields: Mapping[str, str] | None = None,
             timeout: float = 60.0, server: LiveServer | None = None,
             path: str = "/predict") -> Reply:
        """Submit the form (`path`: /predict or /patient), to the server it came from or to
        `server` (another host)."""
        body, content_type = multipart({"csrf_token": self.token, **(fields or {})}, files)
        return (server or self.server).request(
            "POST", path, body,
            {"Content-Type": content_type, "Cookie": self.cookie, **self.headers},
            timeout=timeout)


def gunicorn_env(model: Path, port: int, env: Mapping[str, str] | None = None,
                 unset: Sequence[str] = ()) -> dict[str, str]:
    """The environment for gunicorn serving `model` on 127.0.0.1:`port`, less `unset`."""
    settings = {key: value for key, value in os.environ.items()
                if not key.startswith(("MELANOMA_", "PROMETHEUS_")) and key not in unset}
    settings.update({"MELANOMA_MODEL_PATH": str(model),
                     "MELANOMA_SECRET_KEY": secrets.token_hex(32),
                     "MELANOMA_BIND": f"{HOST}:{port}", "PYTHONUNBUFFERED": "1"})
    settings.update(env or {})
    return settings


def start_server(model: Path, directory: Path, env: Mapping[str, str] | None = None,
                 timeout: float = 90.0, prefix: Sequence[str] = (),
                 port: int | None = None, unset: Sequence[str] = ()) -> LiveServer:
    """gunicorn with the repo's gunicorn.conf.py, serving `model`; returns once it is ready.

    `prefix` runs gunicorn under another command (devtools/stack.py: a cgroup and taskset).
    """
    port = port or free_port()
    settings = gunicorn_env(model, port, env, unset)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / f"gunicorn-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([*prefix, sys.executable, "-m", "gunicorn", "-c",
                                    "gunicorn.conf.py"],
                                   cwd=REPO, env=settings, stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(process, port, log_path, settings)
    wait_until_ready(server, timeout)
    return server


def wait_until_ready(server: LiveServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise AssertionError(f"gunicorn exited with {server.process.returncode}:\n"
                                 f"{server.log()}")
        try:
            if server.get("/readyz", timeout=2, direct=True).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"gunicorn was not ready within {timeout} s:\n{server.log()}")


def serve(model: Path, directory: Path, env: Mapping[str, str] | None = None
          ) -> Iterator[LiveServer]:
    """For fixtures: start bare gunicorn, yield, and always stop."""
    server = start_server(model, directory, env)
    try:
        yield server
    finally:
        server.stop()
