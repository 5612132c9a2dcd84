"""On-host setup: scripts pass shellcheck, rendered configs pass nginx and systemd, and the
nginx site enforces its limits on a real nginx (no app behind it)."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra import rehearsal
from infra.host import render
from infra.host.render import HostConfig, RenderError

REPO = Path(__file__).resolve().parents[1]
SHELL_SCRIPTS = sorted((REPO / "infra").rglob("*.sh"))
SHA = hashlib.sha256(b"model").hexdigest()


def _local_config(**overrides: object) -> HostConfig:
    """Host values pointing at this checkout, so systemd finds the executables it names."""
    values: dict[str, object] = {"model_sha256": SHA, "app_dir": str(REPO), "venv_dir": sys.prefix}
    values.update(overrides)
    return HostConfig(**values)  # type: ignore[arg-type]


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


# --- shellcheck -----------------------------------------------------------------------


def test_there_are_shell_scripts_to_check() -> None:
    assert {p.name for p in SHELL_SCRIPTS} >= {"bootstrap.sh", "verify-model.sh"}


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_passes_shellcheck_and_is_strict(script: Path) -> None:
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout
    assert "set -euo pipefail" in script.read_text(encoding="utf-8")


def test_shellcheck_catches_an_unquoted_variable(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/bin/bash\nrm -rf $1/cache\n", encoding="utf-8")
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SC2086" in result.stdout


# --- rendering ------------------------------------------------------------------------


def test_render_cli_writes_unit_env_and_site(tmp_path: Path) -> None:
    assert render.main(["--out", str(tmp_path), "--model-sha256", SHA]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {
        "melanoma.service",
        "melanoma.env",
        "melanoma-nginx.conf",
    }
    assert not re.search(r"@[A-Z0-9_]+@", (tmp_path / "melanoma-nginx.conf").read_text())


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"model_sha256": "abc"}, "64 lowercase hex"),
        ({"bind": "127.0.0.1:8000; evil"}, "bind"),
        ({"timeout": 120, "proxy_read_timeout": 60}, "proxy_read_timeout"),
        ({"front": "cloudflare"}, "front must be one of"),
    ],
)
def test_render_refuses_values_that_would_break_a_config(
    tmp_path: Path, overrides: dict[str, object], words: str
) -> None:
    with pytest.raises(RenderError, match=words):
        render.render_all(_local_config(**overrides), tmp_path)


@pytest.mark.parametrize(
    ("front", "cidr", "proto"),
    [
        ("", "", "$scheme"),
        ("alb", "10.0.0.0/16", "$http_x_forwarded_proto"),
        ("cloudfront", "10.0.0.0/16", "$http_cloudfront_forwarded_proto"),
        ("cloudfront", "", "$http_cloudfront_forwarded_proto"),
    ],
)
def test_the_app_learns_the_visitors_scheme_from_whatever_terminates_tls(
    tmp_path: Path, front: str, cidr: str, proto: str
) -> None:
    config = _local_config(front=front, trusted_proxy_cidr=cidr)
    site = render.render_all(config, tmp_path)[render.SITE_NAME].read_text()
    assert f"proxy_set_header X-Forwarded-Proto {proto};" in site


def test_render_refuses_an_unknown_placeholder() -> None:
    with pytest.raises(RenderError, match="NOPE"):
        render.render_text("listen @NOPE@;", {"LISTEN": "80"})


def test_nginx_body_limit_equals_the_apps_limit(tmp_path: Path) -> None:
    files = render.render_all(_local_config(), tmp_path)
    site = files[render.SITE_NAME].read_text()
    env = _directives(files[render.ENV_NAME].read_text())
    # Both upload routes carry the app's limit; every other route takes 1k (test_nginx_site).
    upload_limits = re.findall(r"client_max_body_size (\d+);", site)
    assert len(upload_limits) == 2
    assert {int(limit) for limit in upload_limits} == {
        int(env["MELANOMA_MAX_CONTENT_LENGTH"][0])} == {16 * 1024 * 1024}


@pytest.mark.parametrize("instance_type, high, most", [
    ("t3.micro", 600, 750), ("t4g.small", 1624, 1774), ("t3a.medium", 3672, 3822)])
def test_the_units_memory_limit_follows_the_instance_type(
        tmp_path: Path, instance_type: str, high: int, most: int) -> None:
    files = render.render_all(_local_config(instance_type=instance_type), tmp_path)
    unit = _directives(files[render.UNIT_NAME].read_text())
    assert (unit["MemoryHigh"], unit["MemoryMax"]) == ([f"{high}M"], [f"{most}M"])


def test_an_instance_size_without_a_known_memory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="size 'nano' is not one of micro, small, medium"):
        render.render_all(_local_config(instance_type="t3.nano"), tmp_path)


def test_unit_is_hardened_sized_for_one_gib_and_logs_to_the_journal(tmp_path: Path) -> None:
    unit = _directives(render.render_all(_local_config(), tmp_path)[render.UNIT_NAME].read_text())
    assert unit["User"] == ["melanoma"] and unit["Group"] == ["melanoma"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["CapabilityBoundingSet"] == [""]
    mebibytes = {k: int(unit[k][0].rstrip("M")) for k in ("MemoryHigh", "MemoryMax")}
    assert (
        mebibytes["MemoryHigh"] < mebibytes["MemoryMax"] <= 800
    )  # leaves room for the OS on 1 GiB
    assert unit["StandardOutput"] == ["journal"] and unit["StandardError"] == ["journal"]
    assert unit["ExecStartPre"] == [
        f"/bin/bash {REPO}/infra/host/verify-model.sh /opt/melanoma/models/current.onnx {SHA}"
    ]
    assert unit["ExecStart"] == [
        f"{sys.prefix}/bin/gunicorn -c {REPO}/gunicorn.conf.py webapp.wsgi:app"
    ]


# --- systemd-analyze verify --------------------------------------------------------------


def _systemd_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_systemd_analyze_verify_accepts_the_rendered_unit_silently(tmp_path: Path) -> None:
    unit = render.render_all(_local_config(), tmp_path)[render.UNIT_NAME]
    result = _systemd_verify(unit)
    assert result.returncode == 0 and (result.stdout + result.stderr).strip() == "", (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("breakage", ["MemoryMax=lots", "ProtectSytem=strict"])
def test_systemd_analyze_verify_reports_a_broken_unit(tmp_path: Path, breakage: str) -> None:
    unit = render.render_all(_local_config(), tmp_path)[render.UNIT_NAME]
    unit.write_text(unit.read_text().replace("[Service]\n", f"[Service]\n{breakage}\n"))
    result = _systemd_verify(unit)
    assert (result.stdout + result.stderr).strip() != ""


# --- nginx -t ----------------------------------------------------------------------------


@pytest.mark.parametrize("proxy_cidr", ["", "10.0.0.0/16"], ids=["single", "behind-alb"])
def test_nginx_accepts_the_rendered_site_without_warnings(tmp_path: Path, proxy_cidr: str) -> None:
    site = render.render_all(_local_config(trusted_proxy_cidr=proxy_cidr), tmp_path / "etc")[
        render.SITE_NAME
    ]
    rc, output = rehearsal.check_nginx(rehearsal.write_nginx_conf(site, tmp_path / "nginx"))
    assert rc == 0 and "test is successful" in output, output
    assert "[warn]" not in output and "[emerg]" not in output, output


def test_nginx_rejects_a_broken_site(tmp_path: Path) -> None:
    site = render.render_all(_local_config(), tmp_path / "etc")[render.SITE_NAME]
    site.write_text(site.read_text().replace("client_max_body_size", "client_max_body_sise"))
    rc, output = rehearsal.check_nginx(rehearsal.write_nginx_conf(site, tmp_path / "nginx"))
    assert rc != 0 and "client_max_body_sise" in output


# --- the site's behaviour on a real nginx, with nothing listening behind it -----------------


def _request(
    port: int, method: str, path: str, body: bytes | None = None, source: str = "127.0.0.1"
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request(
            method,
            path,
            body=body,
            headers={"Content-Type": "application/octet-stream"} if body else {},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def bare_nginx(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("bare-nginx")
    static = root / "static"
    static.mkdir()
    (static / "probe.txt").write_text("served by nginx\n")
    port = rehearsal.free_port()
    config = _local_config(
        listen=f"127.0.0.1:{port}",
        bind=f"127.0.0.1:{rehearsal.free_port()}",
        static_dir=str(static),
        access_log=str(root / "access.log"),
        predict_rate_per_minute=6,
        predict_burst=2,
    )
    site = render.render_all(config, root / "etc")[render.SITE_NAME]
    with rehearsal.running_nginx(rehearsal.write_nginx_conf(site, root / "nginx"), port):
        yield port


def test_nginx_serves_static_files_itself(bare_nginx: int) -> None:
    assert _request(bare_nginx, "GET", "/static/probe.txt") == (200, b"served by nginx\n")


def test_nginx_proxies_health_to_the_app(bare_nginx: int) -> None:
    # Nothing listens upstream: a 502 shows the request went to the app's address.
    assert _request(bare_nginx, "GET", "/healthz")[0] == 502


def test_nginx_refuses_metrics_to_anyone_but_loopback(bare_nginx: int) -> None:
    assert _request(bare_nginx, "GET", "/metrics", source="127.0.0.2")[0] == 403
    assert _request(bare_nginx, "GET", "/metrics")[0] == 502


def test_nginx_refuses_an_upload_over_the_apps_limit(bare_nginx: int) -> None:
    status, body = _request(
        bare_nginx,
        "POST",
        "/api/v1/predict",
        body=b"\0" * (16 * 1024 * 1024 + 1),
        source="127.0.0.3",
    )
    assert status == 413
    assert json.loads(body)["error"] == "request_entity_too_large"


@pytest.mark.parametrize("path", ["/predict", "/api/v1/predict"])
def test_nginx_rate_limits_the_predict_routes(bare_nginx: int, path: str) -> None:
    # Each path gets its own client address so the two cases do not share a bucket.
    source = "127.0.0.4" if path == "/predict" else "127.0.0.5"
    replies = [_request(bare_nginx, "POST", path, body=b"x", source=source) for _ in range(6)]
    statuses = [status for status, _ in replies]
    assert 429 in statuses and statuses[0] == 502, statuses
    if path.startswith("/api/"):
        refused = next(body for status, body in replies if status == 429)
        assert json.loads(refused)["error"] == "rate_limited"


def test_verify_model_script_accepts_the_right_hash_and_refuses_another(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    script = str(REPO / "infra" / "host" / "verify-model.sh")
    good = subprocess.run(
        ["bash", script, str(model), SHA], capture_output=True, text=True, timeout=30
    )
    bad = subprocess.run(
        ["bash", script, str(model), "0" * 64], capture_output=True, text=True, timeout=30
    )
    assert good.returncode == 0
    assert bad.returncode != 0 and "mismatch" in bad.stderr
