"""The production shape, on loopback: what a request meets on the real host.

    client --TLS--> "load balancer" --HTTP--> nginx (rendered site) --> gunicorn
                    (nginx server block,       infra/host/render.py     shipped gunicorn.conf.py
                     self-signed cert,                                  + rendered env file,
                     X-Forwarded-Proto https)                           in a memory cgroup sized
                                                                        like the unit's MemoryMax,
                                                                        pinned to one CPU

nginx and gunicorn run with the values the host gets (HostConfig's defaults, the rendered
melanoma.env and the unit's Environment= lines); a test passes `env` or `host` overrides
only for the one setting it is about. The TLS front exists only where `tls=True`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from devtools.procs import HOST, MemoryCgroup, free_port, parse_size, wait_for_port
from devtools.server import REPO, LiveServer, start_server
from infra.host.render import (ENV_NAME, MAIN_NAME, SITE_NAME, UNIT_NAME, HostConfig,
                               render_all)

CPU = "0"  # the host has one vCPU: gunicorn and nginx share this one
# Stands for the cloud load balancer: terminates TLS and streams the body on (no buffering,
# so nothing it does lands in the host's client_body folder).
_LOAD_BALANCER = """\
server {{
    listen {host}:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_http_version 1.1;
    location / {{
        proxy_pass http://{host}:{site_port};
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto https;
        proxy_read_timeout 120s;
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.path.exists(p)), None)
    if not found:
        raise AssertionError("nginx is not installed: scripts/install-system-packages.sh")
    return found


def host_files(directory: Path, **host: Any) -> dict[str, Path]:
    """The unit, env file, nginx site and nginx's main config, as the host gets them."""
    config = HostConfig(model_sha256="0" * 64, **host)
    return render_all(config, directory, nginx_main=True)


def _nginx_paths(prefix: Path) -> dict[str, str]:
    """Where nginx's main config points, moved into the stack's own folder: everything but
    the limits. As root the workers would drop to 'nobody', who cannot read a private temp
    folder; unprivileged, nginx cannot switch user at all."""
    return {"nginx_user": "root" if os.geteuid() == 0 else "", "nginx_pid": f"{prefix}/nginx.pid",
            "nginx_error_log": f"{prefix}/error.log", "nginx_temp_dir": str(prefix),
            "nginx_include": f"{prefix}/conf.d/*.conf"}


def unit_settings(unit: Path) -> dict[str, str]:
    """`Key=value` lines of the rendered [Service] section (Environment= merged)."""
    values: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            if key == "Environment":
                name, _, setting = value.partition("=")
                values[f"Environment:{name}"] = setting
            else:
                values[key] = value
    return values


def env_file_settings(env_file: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                if line and not line.startswith("#"))


def start_stack(model: Path, directory: Path, env: Mapping[str, str] | None = None,
                tls: bool = False, host: Mapping[str, Any] | None = None,
                timeout: float = 120.0) -> LiveServer:
    """gunicorn in the host's memory limit on one CPU, behind the rendered nginx site."""
    directory.mkdir(parents=True, exist_ok=True)
    app_port, site_port = free_port(), free_port()
    overrides = dict(host or {})
    if tls:
        # Behind the balancer, as on the real host: the site trusts its X-Forwarded-* headers.
        overrides.setdefault("trusted_proxy_cidr", f"{HOST}/32")
    prefix = directory / "nginx"
    files = host_files(directory / "rendered", bind=f"{HOST}:{app_port}",
                       listen=f"{HOST}:{site_port}",
                       static_dir=str(REPO / "webapp" / "static"),
                       access_log=str(directory / "nginx-access.log"),
                       model_cache_dir=str(directory / "model-cache"),
                       **_nginx_paths(prefix), **overrides)
    unit = unit_settings(files[UNIT_NAME])
    shipped = env_file_settings(files[ENV_NAME])
    shipped.update({key.split(":", 1)[1]: value for key, value in unit.items()
                    if key.startswith("Environment:")})
    shipped.pop("MELANOMA_MODEL_PATH")
    shipped.update(env or {})

    cgroup = MemoryCgroup(f"melanoma-stack-{app_port}", parse_size(unit["MemoryMax"]))
    try:
        server = start_server(model, directory, shipped, timeout, port=app_port,
                              prefix=[*cgroup.join_prefix(), "taskset", "-c", CPU])
    except BaseException:
        cgroup.remove()
        raise
    server.cleanups.append(cgroup.remove)
    server.cgroup = cgroup
    try:
        _start_nginx(server, files, prefix, site_port, tls)
    except BaseException:
        server.stop()
        raise
    return server


def serve_stack(model: Path, directory: Path, env: Mapping[str, str] | None = None,
                tls: bool = False, host: Mapping[str, Any] | None = None
                ) -> Iterator[LiveServer]:
    """For fixtures: start the stack, yield the server, and always stop all of it."""
    server = start_stack(model, directory, env, tls, host)
    try:
        yield server
    finally:
        server.stop()


def _start_nginx(server: LiveServer, files: Mapping[str, Path], prefix: Path,
                 site_port: int, tls: bool) -> None:
    """nginx with the rendered main config; the site goes into its conf.d, as on the host."""
    conf_d = prefix / "conf.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    (prefix / "client_body").mkdir(exist_ok=True)
    shutil.copyfile(files[SITE_NAME], conf_d / "melanoma.conf")
    front_port = site_port
    if tls:
        front_port = free_port()
        cert, key = _self_signed(prefix)
        (conf_d / "load-balancer.conf").write_text(_LOAD_BALANCER.format(
            host=HOST, port=front_port, cert=cert, key=key, site_port=site_port))
    conf = files[MAIN_NAME]
    args = [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise AssertionError(f"nginx -t refused the rendered config:\n{check.stderr}")
    process = subprocess.Popen(["taskset", "-c", CPU, *args, "-g", "daemon off;"])

    def stop() -> None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    server.cleanups.append(stop)
    wait_for_port(site_port, 30, process)  # type: ignore[arg-type]
    wait_for_port(front_port, 30, process)  # type: ignore[arg-type]
    server.front_port = front_port
    server.tls = tls
    server.nginx_prefix = prefix
    server.nginx_pid = process.pid  # taskset execs nginx: this is its master
    server.rotate_sources = True


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "lb.crt", directory / "lb.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


