"""Rehearse the host on loopback: render the configs, check the model's hash as the unit
does, start gunicorn with the unit's command and real nginx in front, and send a real
prediction through nginx."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra import rehearsal
from infra.artifacts import sha256_file
from infra.host import render
from infra.host.render import HostConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Host:
    port: int
    app_port: int
    access_log: Path
    model_cache: Path


def _request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _multipart(field: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _env_file(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )


def _unit_command(unit: Path, key: str) -> list[str]:
    (line,) = [ln for ln in unit.read_text().splitlines() if ln.startswith(f"{key}=")]
    return shlex.split(line.split("=", 1)[1])


def _wait_ready(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = _request(port, "GET", "/readyz")[0]
        if status == 200:
            return
        time.sleep(0.25)
    raise TimeoutError(f"/readyz through nginx still {status} after {timeout} s")


@pytest.fixture(scope="module")
def host(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("rehearsal")
    port, app_port = rehearsal.free_port(), rehearsal.free_port()
    access_log = root / "access.log"
    config = HostConfig(
        model_sha256=sha256_file(tiny_onnx_model),
        app_dir=str(REPO),
        venv_dir=sys.prefix,
        model_path=str(tiny_onnx_model),
        bind=f"127.0.0.1:{app_port}",
        listen=f"127.0.0.1:{port}",
        access_log=str(access_log),
        model_cache_dir=str(root / "cache"),
    )
    files = render.render_all(config, root / "etc")
    unit = files[render.UNIT_NAME]

    # ExecStartPre exactly as systemd would run it: the model must match its shipped hash.
    verify = subprocess.run(
        _unit_command(unit, "ExecStartPre"), capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stderr

    # ExecStart with this interpreter in place of the venv's gunicorn script.
    start = _unit_command(unit, "ExecStart")
    assert start[0] == f"{sys.prefix}/bin/gunicorn"
    env = {
        **os.environ,
        **_env_file(files[render.ENV_NAME]),
        "MELANOMA_SECRET_KEY": secrets.token_hex(16),
    }
    log = (root / "gunicorn.log").open("wb")
    gunicorn = [sys.executable, "-m", "gunicorn", *start[1:]]
    nginx_conf = rehearsal.write_nginx_conf(files[render.SITE_NAME], root / "nginx")
    with (
        rehearsal.running(
            gunicorn, app_port, timeout=60, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        ),
        rehearsal.running_nginx(nginx_conf, port),
    ):
        try:
            _wait_ready(port, timeout=90)
            yield Host(
                port=port, app_port=app_port, access_log=access_log, model_cache=root / "cache"
            )
        finally:
            log.close()


def test_prediction_goes_through_nginx_end_to_end(host: Host, lesion_jpeg_bytes: bytes) -> None:
    body, content_type = _multipart("image", "lesion.jpg", lesion_jpeg_bytes, "image/jpeg")
    status, headers, raw = _request(
        host.port,
        "POST",
        "/api/v1/predict",
        body=body,
        headers={"Content-Type": content_type, "Accept": "application/json"},
    )
    assert status == 200, raw[:500]
    assert headers["content-type"].startswith("application/json")
    assert headers.get("server") == "nginx"  # server_tokens off: no version
    payload = json.loads(raw)
    assert 0.0 <= payload["probability"] <= 1.0
    # The request really passed through nginx, and nginx logged it (in its log phase, after
    # the response went out: the line may land a moment after the client has read it).
    deadline = time.monotonic() + 5
    while "POST /api/v1/predict" not in host.access_log.read_text() and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert "POST /api/v1/predict" in host.access_log.read_text()


def test_health_and_readiness_answer_through_nginx(host: Host) -> None:
    assert _request(host.port, "GET", "/healthz")[0] == 200
    assert _request(host.port, "GET", "/readyz")[0] == 200


def test_the_service_saved_its_optimised_graph_where_the_env_file_says(host: Host) -> None:
    assert [p.suffix for p in host.model_cache.iterdir()] == [".ort"]


def test_static_files_come_from_nginx_not_the_app(host: Host) -> None:
    status, headers, body = _request(host.port, "GET", "/static/style.css")
    assert status == 200 and body == (REPO / "webapp" / "static" / "style.css").read_bytes()
    assert "expires" in headers  # set by the nginx location, not by Flask


def test_metrics_only_for_loopback_through_nginx(host: Host) -> None:
    # From loopback nginx hands /metrics to the app untouched (whatever the app answers);
    # from any other address nginx itself refuses.
    # Status only: counters move between the two scrapes.
    direct = _request(host.app_port, "GET", "/metrics")[0]
    assert direct != 403 and _request(host.port, "GET", "/metrics")[0] == direct
    assert _request(host.port, "GET", "/metrics", source="127.0.0.2")[0] == 403


def test_the_form_page_renders_through_nginx(host: Host) -> None:
    status, headers, body = _request(host.port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<form" in body
