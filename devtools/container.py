"""The Dockerfile's image, built and run with podman (no Docker engine needed).

The base is a local Debian bookworm Python (scripts/build-container-base.sh) where no image
registry is reachable; the image is built from this checkout, cached by podman between runs,
and served on a free loopback port through the same `LiveServer` client as bare gunicorn.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.procs import HOST, free_port
from devtools.server import REPO, LiveServer, wait_until_ready

CONTAINERS_CONF = Path(__file__).resolve().with_name("containers.conf")
BASE_IMAGE = "localhost/python:3.11-slim-bookworm"
IMAGE = "localhost/melanoma:test"
# The host's CA bundle goes in as a build secret: pip in the build may meet a TLS-inspecting
# proxy that only the host trusts. Never part of a layer.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the users run: a t2.micro's memory and CPU.
LIMITS = ("--memory", "1g", "--cpus", "1")


def available() -> bool:
    """Whether podman is installed here."""
    return shutil.which("podman") is not None


def podman(*args: str, check: bool = True, timeout: float = 120.0
           ) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` with the tests' containers.conf (runc, ulimits within the host's)."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    return subprocess.run(["podman", *args], env=env, capture_output=True, text=True,
                          check=check, timeout=timeout)


@dataclass(frozen=True)
class Build:
    image: str
    seconds: float
    size_bytes: int


def build_image(model_file: Path | None, image: str = IMAGE, timeout: float = 3600.0) -> Build:
    """Build the Dockerfile from this checkout on the local base: `model_file` (inside the
    build context) by build argument, or the demo trained in the build stage when None."""
    subprocess.run([str(REPO / "scripts" / "build-container-base.sh"), BASE_IMAGE],
                   check=True, timeout=1800,
                   env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)})
    args = ["build", "--format", "docker", "--build-arg", f"BASE={BASE_IMAGE}", "--tag", image]
    if model_file is not None:
        args += ["--build-arg", "MODEL_SOURCE=file",
                 "--build-arg", f"MODEL_FILE={model_file.resolve().relative_to(REPO)}"]
    if CA_BUNDLE.is_file():
        args += ["--secret", f"id=ca,src={CA_BUNDLE}"]
    started = time.perf_counter()
    result = podman(*args, str(REPO), check=False, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"podman build failed:\n{result.stdout[-4000:]}\n{result.stderr}")
    seconds = time.perf_counter() - started
    return Build(image, seconds, int(inspect(image)["Size"]))


def inspect(name: str, kind: str = "image") -> dict[str, Any]:
    """`podman KIND inspect NAME`, parsed."""
    result: list[dict[str, Any]] = json.loads(podman(kind, "inspect", name).stdout)
    return result[0]


@dataclass
class ContainerServer(LiveServer):
    """The image running under `podman run` (its process), reached on `port`."""

    name: str = ""

    def top(self) -> list[dict[str, str]]:
        """Every process in the container, with its user inside and on the host."""
        lines = podman("top", self.name, "pid", "user", "huser", "comm").stdout.splitlines()
        keys = [key.lower() for key in lines[0].split()]
        return [dict(zip(keys, line.split(None, len(keys) - 1), strict=True)) for line in lines[1:]]

    def diff(self) -> list[str]:
        """What the container changed in its image's filesystem (`podman diff`)."""
        return podman("diff", self.name).stdout.splitlines()

    def peak_memory_mib(self) -> float:
        """The most memory the container's cgroup has used (v1, else v2's memory.peak)."""
        read = ("cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes 2>/dev/null"
                " || cat /sys/fs/cgroup/memory.peak")
        return int(podman("exec", self.name, "sh", "-c", read).stdout) / (1 << 20)

    def state(self) -> dict[str, Any]:
        return dict(inspect(self.name, "container")["State"])


def run_container(directory: Path, image: str = IMAGE, env: Mapping[str, str] | None = None,
                  options: Sequence[str] = (), timeout: float = 120.0) -> ContainerServer:
    """`podman run` the image read-only inside LIMITS, as a user would (a secret at run time,
    port 8000 published on a free loopback port); returns once /readyz answers 200."""
    port = free_port()
    name = f"melanoma-test-{port}"
    settings = {"MELANOMA_SECRET_KEY": secrets.token_hex(32), **(env or {})}
    environment = [arg for key, value in settings.items() for arg in ("--env", f"{key}={value}")]
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / f"{name}.log"
    # Docker's meaning of --read-only: no tmpfs on /tmp unless asked for (podman adds some).
    command = ["podman", "run", "--name", name, *LIMITS, "--read-only",
               "--read-only-tmpfs=false", "--publish", f"{HOST}:{port}:8000", *environment,
               *options, image]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)})
    server = ContainerServer(process, port, log_path, settings, name=name)
    server.cleanups.append(lambda: _remove(name))
    try:
        wait_until_ready(server, timeout)
    except AssertionError:
        server.stop()  # an exited container too: it would be left behind
        raise
    return server


def _remove(name: str) -> None:
    podman("rm", "--force", "--time", "5", name, check=False)
