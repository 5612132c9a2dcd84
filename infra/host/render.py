"""Render the host's systemd unit, app environment and nginx site (and, on request, nginx's
main config) from one set of values.

Runs on the host (system python3, standard library only) from bootstrap.sh, and locally
from the tests, which render into a temporary folder and hand the files to
`nginx -t`, `systemd-analyze verify` and a loopback rehearsal.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
# File names the host installs; the unit's name is what `systemctl` knows it by.
UNIT_NAME = "melanoma.service"
ENV_NAME = "melanoma.env"
SITE_NAME = "melanoma-nginx.conf"
# nginx's main config (worker and connection limits, which a site cannot set); installed over
# the distribution's /etc/nginx/nginx.conf, whose default server would also claim port 80.
MAIN_NAME = "nginx.conf"
_MAIN_TEMPLATE = "nginx.conf.in"
_MIB = 1024 * 1024
# Memory of the instance types the templates allow (all burstable: only the size matters).
INSTANCE_MEMORY_MIB = {"micro": 1024, "small": 2048, "medium": 4096}
# What the app's unit leaves to the kernel, sshd/ssm, the log agents and nginx (with its
# upload buffers): 1 GiB less a 750M MemoryMax. MemoryHigh sits this far below MemoryMax.
RESERVED_MIB = 274
HIGH_BELOW_MAX_MIB = 150
# What one connection slot may hold while its header arrives: client_header_buffer_size and
# the four large_client_header_buffers (nginx's defaults, 1 KB and 4 x 8 KB).
_HEADER_BYTES = 1024 + 4 * 8 * 1024
_TEMPLATES = {
    UNIT_NAME: "melanoma.service.in",
    ENV_NAME: "melanoma.env.in",
    SITE_NAME: "nginx-site.conf.in",
}
_PLACEHOLDER = re.compile(r"@([A-Z0-9_]+)@")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FRONTS = {"", "cloudfront", "alb"}


class RenderError(ValueError):
    """A value cannot go into a config file as given."""


@dataclass(frozen=True)
class HostConfig:
    """Everything that differs between the real host and a rehearsal on loopback."""

    model_sha256: str
    app_dir: str = "/opt/melanoma/app"
    venv_dir: str = "/opt/melanoma/venv"
    model_path: str = "/opt/melanoma/models/current.onnx"
    user: str = "melanoma"
    env_file: str = "/etc/melanoma/melanoma.env"
    secret_env_file: str = "/etc/melanoma/secret.env"
    bind: str = "127.0.0.1:8000"
    listen: str = "80"
    workers: int = 1
    timeout: int = 60
    # One number feeds both Flask's MAX_CONTENT_LENGTH and nginx's client_max_body_size.
    max_body_bytes: int = 16 * 1024 * 1024
    intra_op_threads: int = 1
    # systemd's CacheDirectory=melanoma in the unit; elsewhere (a rehearsal) any writable path.
    model_cache_dir: str = "/var/cache/melanoma"
    # nginx limits each client's requests on the predict routes; the app (which reads the
    # client's address from nginx's X-Forwarded-For, MELANOMA_TRUSTED_PROXIES=1) limits its
    # photos, so a patient request of six costs six. 0 turns the app's limit off.
    app_rate_per_minute: int = 30
    predict_rate_per_minute: int = 30
    predict_burst: int = 10
    proxy_read_timeout: int = 75
    static_dir: str = ""
    access_log: str = "syslog:server=unix:/dev/log,tag=nginx_melanoma,nohostname"
    trusted_proxy_cidr: str = ""
    # What terminates TLS in front: "cloudfront", "alb", or "" (nothing; a rehearsal).
    front: str = ""
    # The EC2 type (t3.micro, t4g.small, ...): sizes the unit's MemoryMax and MemoryHigh.
    instance_type: str = "t3.micro"
    memory_swap_max: str = "512M"
    # nginx's main config (MAIN_NAME): Amazon Linux's nginx package and its paths.
    nginx_user: str = "nginx"
    nginx_pid: str = "/run/nginx.pid"
    nginx_error_log: str = "/var/log/nginx/error.log"
    nginx_temp_dir: str = "/var/lib/nginx/tmp"
    nginx_include: str = "/etc/nginx/conf.d/*.conf"
    # Connection slots of nginx's one worker; why so many: templates/nginx.conf.in.
    worker_connections: int = 2048
    # Requests in flight per client address on every route (a browser opens about six).
    requests_per_address: int = 8
    # nginx holds each upload in memory until gunicorn has answered (never in a temp file),
    # so the uploads in flight at once are this budget over max_body_bytes: 8 of 16 MiB.
    # 1 GiB less the app's 750 MiB MemoryMax leaves ~270 MiB for the kernel, sshd/ssm,
    # the log agents and nginx; 128 MiB of bodies is what nginx can take without swapping.
    upload_memory_mib: int = 128
    # Uploads in flight per address: one person uploads one photo (or one patient's) at a
    # time; a few addresses cannot take every upload slot.
    uploads_per_address: int = 2

    def memory_max_mib(self) -> int:
        return unit_memory_max_mib(self.instance_type)

    def resolved_static_dir(self) -> str:
        return self.static_dir or f"{self.app_dir}/webapp/static"


def unit_memory_max_mib(instance_type: str) -> int:
    """The app unit's MemoryMax on `instance_type`: its memory less what the box needs."""
    size = instance_type.rsplit(".", 1)[-1]
    if size not in INSTANCE_MEMORY_MIB:
        raise RenderError(f"instance type {instance_type!r}: size {size!r} is not one of "
                          f"{', '.join(INSTANCE_MEMORY_MIB)}")
    return INSTANCE_MEMORY_MIB[size] - RESERVED_MIB


def _values(config: HostConfig) -> dict[str, str]:
    if not _SHA256.match(config.model_sha256):
        raise RenderError(
            f"model_sha256 must be 64 lowercase hex digits, got {config.model_sha256!r}"
        )
    if config.front not in _FRONTS:
        raise RenderError(f"front must be one of {sorted(_FRONTS)}, got {config.front!r}")
    if config.proxy_read_timeout <= config.timeout:
        # nginx giving up first would answer 504 while the worker still runs the request.
        raise RenderError("proxy_read_timeout must exceed the gunicorn timeout")
    uploads_in_all = config.upload_memory_mib * _MIB // config.max_body_bytes
    if uploads_in_all < 2 * config.uploads_per_address:
        raise RenderError(
            f"upload_memory_mib {config.upload_memory_mib} admits {uploads_in_all} uploads of "
            f"{config.max_body_bytes} bytes at once; at least two addresses' worth "
            f"({2 * config.uploads_per_address}) are needed"
        )
    if 8 * uploads_in_all > config.worker_connections:
        # An upload takes two slots (client and gunicorn); most slots stay for the rest.
        raise RenderError(
            f"worker_connections {config.worker_connections} must be at least 8 x the "
            f"{uploads_in_all} uploads nginx admits at once"
        )
    for field in dataclasses.fields(config):
        value = str(getattr(config, field.name))
        if any(ch in value for ch in "\n;{}") or (value != value.strip()):
            raise RenderError(
                f"{field.name} holds characters that would break a config file: {value!r}"
            )
    values = {f.name.upper(): str(getattr(config, f.name)) for f in dataclasses.fields(config)}
    values["MEMORY_MAX"] = f"{config.memory_max_mib()}M"
    values["MEMORY_HIGH"] = f"{config.memory_max_mib() - HIGH_BELOW_MAX_MIB}M"
    values["STATIC_DIR"] = config.resolved_static_dir().rstrip("/")
    values["UPLOADS_IN_ALL"] = str(uploads_in_all)
    values["WORKER_RLIMIT_NOFILE"] = str(2 * config.worker_connections + 64)
    values["HEADER_MEMORY_MIB"] = str(config.worker_connections * _HEADER_BYTES // _MIB)
    # Only a master started as root can switch user (the stack's nginx may not be root).
    values["NGINX_USER_LINE"] = f"user {config.nginx_user};\n" if config.nginx_user else ""
    if config.trusted_proxy_cidr:
        # Behind the load balancer the client is the last X-Forwarded-For hop; without this
        # every client would share the balancer's address in the rate limit.
        values["REAL_IP"] = (
            f"    set_real_ip_from {config.trusted_proxy_cidr};\n"
            "    real_ip_header X-Forwarded-For;\n"
        )
        values["FORWARDED_PROTO"] = "$http_x_forwarded_proto"
    else:
        values["REAL_IP"] = ""
        values["FORWARDED_PROTO"] = "$scheme"
    if config.front == "cloudfront":
        # CloudFront reaches the origin over HTTP (and the balancer in between rewrites
        # X-Forwarded-Proto to http); only its own header says the visitor used HTTPS.
        # The origin admits CloudFront alone, which sets this header itself.
        values["FORWARDED_PROTO"] = "$http_cloudfront_forwarded_proto"
    return values


def render_text(template: str, values: dict[str, str]) -> str:
    """Fill @NAME@ placeholders; an unknown name is an error, never an empty string."""
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - values.keys())
    if missing:
        raise RenderError(f"no value for placeholder(s): {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def render_all(config: HostConfig, out_dir: Path, nginx_main: bool = False) -> dict[str, Path]:
    """Write the unit, env file and nginx site into out_dir (and nginx's main config when
    `nginx_main`); return name -> path."""
    values = _values(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    templates = {**_TEMPLATES, MAIN_NAME: _MAIN_TEMPLATE} if nginx_main else _TEMPLATES
    for name, template_name in templates.items():
        text = render_text((TEMPLATE_DIR / template_name).read_text(encoding="utf-8"), values)
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written[name] = path
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", required=True, type=Path, help="folder to write the rendered files into"
    )
    parser.add_argument(
        "--nginx-main",
        action="store_true",
        help=f"also write {MAIN_NAME}, nginx's main config (worker and connection limits)",
    )
    for field in dataclasses.fields(HostConfig):
        flag = "--" + field.name.replace("_", "-")
        required = field.default is dataclasses.MISSING
        kind = int if field.type in (int, "int") else str
        parser.add_argument(
            flag,
            type=kind,
            required=required,
            default=None if required else field.default,
            help=f"{field.name} (default: {field.default!r})"
            if not required
            else f"{field.name} (required)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = HostConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(HostConfig)})
    try:
        written = render_all(config, args.out, args.nginx_main)
    except RenderError as exc:
        print(f"render: error: {exc}", file=sys.stderr)
        return 2
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
