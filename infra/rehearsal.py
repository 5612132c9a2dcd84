"""Run the host's rendered nginx site on this machine, unprivileged ports, own prefix.

Used by the infra tests (`nginx -t` and the loopback rehearsal); needs only an nginx
binary. Nothing here touches the system's nginx configuration or service.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Ports and readiness are shared with the tests and bench (devtools/procs.py).
from devtools.procs import free_port, wait_for_port

__all__ = ["check_nginx", "free_port", "nginx_binary", "running", "running_nginx",
           "wait_for_port", "write_nginx_conf"]

_CONF = """\
{user}pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {site};
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.path.exists(p)), None
    )
    if not found:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
    return found


def write_nginx_conf(site: Path, prefix: Path) -> Path:
    """A minimal nginx.conf whose http block includes site, as conf.d does on the host."""
    prefix.mkdir(parents=True, exist_ok=True)
    # As root the workers would drop to 'nobody', who cannot read a private temp folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(_CONF.format(user=user, prefix=prefix, site=site), encoding="utf-8")
    return conf


def _nginx_args(conf: Path) -> list[str]:
    return [
        nginx_binary(),
        "-p",
        str(conf.parent),
        "-c",
        str(conf),
        "-e",
        str(conf.parent / "error.log"),
    ]


def check_nginx(conf: Path) -> tuple[int, str]:
    """`nginx -t`: exit status and everything it printed."""
    proc = subprocess.run([*_nginx_args(conf), "-t"], capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


@contextmanager
def running(
    args: list[str], port: int, timeout: float = 30.0, **popen: object
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until port accepts connections, stop it on exit."""
    proc = subprocess.Popen(args, **popen)  # type: ignore[call-overload]
    try:
        wait_for_port(port, timeout, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_nginx(conf: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground with conf, until the block ends."""
    with running([*_nginx_args(conf), "-g", "daemon off;"], port) as proc:
        yield proc
