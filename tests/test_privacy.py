"""No upload touches the disk, no log line holds image bytes or names, nothing is kept.

In-process, every way Python makes a file fails while a request is handled; against the
production-shaped stack, strace watches every file-opening syscall of the gunicorn worker
and the nginx worker during uploads.
"""
from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask, Request
from itsdangerous import URLSafeTimedSerializer
from werkzeug.test import create_environ

from tests import images
from devtools.procs import children
from devtools.server import LiveServer, Upload, multipart
from devtools.stack import serve_stack
from webapp.service import service_of

BIG_UPLOAD_BYTES = 500 * 1024  # Werkzeug's own threshold for spooling a part to disk
NAME = "Jane-Doe-DOB-1970-01-01-left-shoulder.jpg"
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TMPFILE", "O_APPEND", "O_TRUNC")


def _noisy_jpeg(seed: int) -> bytes:
    # Noise defeats compression, so the file is well over Werkzeug's spooling threshold.
    rng = np.random.default_rng(seed)
    base = images.lesion_rgb(1000, 800, seed=seed).astype(np.int16)
    noisy = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    data = images.encode(noisy, ".jpg", quality=97)
    assert len(data) > BIG_UPLOAD_BYTES * 1.2
    return data


def _noisy_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    data = images.encode(rng.integers(0, 256, (500, 500, 3), dtype=np.uint8), ".png")
    assert len(data) > BIG_UPLOAD_BYTES
    return data


def _gif(rgb: np.ndarray) -> bytes:
    from PIL import Image

    stream = io.BytesIO()
    Image.fromarray(rgb).save(stream, "GIF")
    return stream.getvalue()


class DiskGuard:
    """While armed, creating or writing any file through Python raises and is recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[str] = []
        self.armed = False
        real_open, real_os_open = builtins.open, os.open

        def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if self.armed and any(flag in mode for flag in "wax+"):
                self._refuse(f"open({file!r}, {mode!r})")
            return real_open(file, mode, *args, **kwargs)

        def guarded_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if self.armed and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                self._refuse(f"os.open({path!r})")
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(io, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)
        for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp",
                     "mkdtemp"):
            monkeypatch.setattr(tempfile, name, self._refusing(f"tempfile.{name}",
                                                               getattr(tempfile, name)))
        import werkzeug.formparser
        monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile",
                            self._refusing("werkzeug SpooledTemporaryFile",
                                           werkzeug.formparser.SpooledTemporaryFile))

    def _refusing(self, what: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self._refuse(what)
            return real(*args, **kwargs)
        return refuse

    def _refuse(self, what: str) -> None:
        self.attempts.append(what)
        raise PermissionError(f"test guard: {what} during a request")


def _post(app: Flask, guard: DiskGuard, path: str, body: bytes, content_type: str
          ) -> tuple[int, bytes]:
    environ = create_environ(path, method="POST", input_stream=io.BytesIO(body),
                             content_type=content_type, content_length=len(body))
    status: list[str] = []
    guard.armed = True
    try:
        chunks = app(environ, lambda s, h, e=None: status.append(s))  # type: ignore[arg-type]
        payload = b"".join(chunks)
    finally:
        guard.armed = False
    return int(status[0].split()[0]), payload


@pytest.mark.parametrize("data", [_noisy_jpeg(1), _noisy_png(2)], ids=["jpeg", "png"])
@pytest.mark.parametrize("path", ["/api/v1/predict", "/predict"])
def test_large_upload_is_handled_without_creating_a_file(app: Flask, data: bytes, path: str,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    guard = DiskGuard(monkeypatch)
    body, content_type = multipart({}, [Upload(NAME, data)])
    status, payload = _post(app, guard, path, body, content_type)
    assert guard.attempts == [], guard.attempts
    assert status == 200, payload[:300]


def test_disk_guard_catches_werkzeug_spooling(app: Flask,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Without InMemoryRequest, Werkzeug spools this upload to a temporary file: the guard
    # must notice, or the test above proves nothing.
    app.request_class = Request
    guard = DiskGuard(monkeypatch)
    body, content_type = multipart({}, [Upload(NAME, _noisy_jpeg(3))])
    with contextlib.suppress(PermissionError):
        _post(app, guard, "/api/v1/predict", body, content_type)
    assert guard.attempts, "the guard failed to see Werkzeug's temporary file"


def test_app_keeps_nothing_from_uploads(app: Flask) -> None:
    client = app.test_client()
    uploads = [_noisy_jpeg(10 + i) for i in range(8)]
    body = {"image": (io.BytesIO(uploads[0]), NAME)}
    assert client.post("/api/v1/predict", data=body).status_code == 200  # warm caches
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for data in uploads[1:]:
            reply = client.post("/api/v1/predict", data={"image": (io.BytesIO(data), NAME)})
            assert reply.status_code == 200
            assert "Set-Cookie" not in reply.headers
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    retained = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # Seven uploads of over 600 KB each: holding on to any one of them shows up here.
    assert retained < min(len(d) for d in uploads) / 2, retained


def test_form_session_holds_only_the_csrf_token(app: Flask, lesion_jpeg_bytes: bytes) -> None:
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    page = client.get("/")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data)
    assert token is not None
    reply = client.post("/predict", data={"csrf_token": token.group(1).decode(),
                                          "image": (io.BytesIO(lesion_jpeg_bytes), NAME)})
    assert reply.status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None
    # Flask's own cookie format: itsdangerous, HMAC-SHA1, salt "cookie-session".
    serializer = URLSafeTimedSerializer(str(app.secret_key), salt="cookie-session",
                                        signer_kwargs={"key_derivation": "hmac",
                                                       "digest_method": hashlib.sha1})
    assert set(serializer.loads(cookie.value)) == {"csrf_token"}


def test_logs_hold_no_image_bytes_or_names_when_prediction_fails(
        app: Flask, lesion_jpeg_bytes: bytes, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated failure inside the model")

    monkeypatch.setattr(service_of(app).classifier, "run_batch", explode)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answer 500 as in production
    with caplog.at_level("DEBUG"):
        reply = app.test_client().post(
            "/api/v1/predict", data={"image": (io.BytesIO(lesion_jpeg_bytes), NAME)})
    assert reply.status_code == 500
    assert "simulated failure" in caplog.text, "the failure itself must be logged"
    _assert_clean(caplog.text.encode(), [lesion_jpeg_bytes])


def _assert_clean(log: bytes, uploads: list[bytes]) -> None:
    assert NAME.encode() not in log and b"Jane-Doe" not in log
    for data in uploads:
        for start in range(0, len(data) - 24, max(1, len(data) // 50)):
            assert data[start:start + 24] not in log
        assert base64.b64encode(data[:600])[100:140] not in log
        assert repr(data[100:130]).encode()[2:-1] not in log


@pytest.fixture(scope="module")
def private_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("server"), tmp_path_factory.mktemp("empty-tmp")


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, private_dirs: tuple[Path, Path]) -> Iterator[LiveServer]:
    directory, tmp = private_dirs
    yield from serve_stack(tiny_onnx_model, directory,
                           {"TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.mark.slow
def test_real_server_writes_no_file_while_handling_uploads(server: LiveServer,
                                                           private_dirs: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    strace = shutil.which("strace")
    assert strace, "strace is in system-packages.txt; run scripts/install-system-packages.sh"
    # Every format read_header admits: OpenCV spools formats it cannot read from memory
    # (JPEG 2000, for one) to /tmp, so each admitted format must be proven to stay in RAM.
    lesion = images.lesion_rgb(400, 300, seed=34)
    uploads = [_noisy_jpeg(31), _noisy_png(32)] + [images.encode(lesion, ext) for ext in
                                                   (".webp", ".tiff", ".bmp")]
    uploads += [_gif(lesion), _noisy_jpeg(33)[:-4000]]
    session = server.form_session()
    # Every code path runs once before tracing, so lazy imports and template loads are done.
    assert server.post_api([Upload("warm.jpg", uploads[0])]).status == 200
    assert session.post([Upload("warm.jpg", uploads[0])]).status == 200
    (worker,) = server.worker_pids()
    assert server.nginx_pid is not None and server.nginx_prefix is not None
    (nginx_worker,) = children(server.nginx_pid)
    # ONNX Runtime leaves a small session-id file there when the model loads; that is
    # start-up, not a request, and holds no user data.
    tmp_before = sorted(private_dirs[1].iterdir())
    opencv_before = sorted(Path("/tmp").glob("__opencv_temp*"))
    trace = tmp_path / "worker.strace"
    # The worker's children too: images are decoded in processes forked by its decoder
    # fork server (inference/decode_sandbox.py), which -f then follows.
    decoders = children(worker)
    assert decoders, "the worker has no decoder fork server"
    targets = [argument for pid in [worker, *decoders] for argument in ("-p", str(pid))]
    tracer = subprocess.Popen([strace, "-f", "-qq", "-e", "trace=%file,recvfrom",
                               "-o", str(trace), "-p", str(nginx_worker), *targets],
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (trace.exists() and trace.stat().st_size) and time.monotonic() < deadline:
            server.get("/healthz")  # gives strace a syscall to log once attached
            time.sleep(0.1)
        assert trace.exists() and trace.stat().st_size, "strace could not attach"
        statuses = []
        for data in uploads:
            statuses.append(server.post_api([Upload(NAME, data)]).status)
            statuses.append(session.post([Upload(NAME, data)]).status)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=20)
    assert statuses == [200] * 12 + [422, 422]
    calls = trace.read_text().splitlines()
    assert any("recvfrom(" in c for c in calls), "strace saw no traffic"
    writes = [c for c in calls
              if re.search(r"\b(open|openat|openat2|creat)\(", c)
              and any(flag in c for flag in WRITE_FLAGS)]
    created = [c for c in calls if re.search(
        r"\b(creat|mknodat?|rename(at2?)?|linkat?|symlinkat?|unlinkat?|truncate|mkdirat?)\(", c)]
    assert writes == [] and created == [], writes + created
    assert sorted(private_dirs[1].iterdir()) == tmp_before, "nothing new may appear in TMPDIR"
    assert sorted(Path("/tmp").glob("__opencv_temp*")) == opencv_before
    _assert_clean(server.log_path.read_bytes(), uploads)
    assert list((server.nginx_prefix / "client_body").iterdir()) == []
    for log in server.nginx_prefix.parent.glob("nginx*.log"):
        _assert_clean(log.read_bytes(), uploads)
    _assert_clean((server.nginx_prefix / "error.log").read_bytes(), uploads)
