"""The production-shaped harness is what it claims: the host's memory limit and CPU, the
rendered nginx site in front, and a TLS load balancer that says the request was HTTPS."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.procs import parse_size
from devtools.server import LiveServer
from devtools.stack import host_files, serve_stack, unit_settings
from infra.host.render import UNIT_NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LiveServer]:
    yield from serve_stack(tiny_onnx_model, tmp_path_factory.mktemp("harness"), tls=True)


def test_gunicorn_runs_in_the_units_memory_limit_on_one_cpu(stack: LiveServer,
                                                           tmp_path: Path) -> None:
    unit = unit_settings(host_files(tmp_path)[UNIT_NAME])
    assert stack.cgroup is not None
    assert stack.cgroup.limit_bytes == parse_size(unit["MemoryMax"])
    members = {int(pid) for pid in (stack.cgroup.path / "cgroup.procs").read_text().split()}
    assert {stack.master_pid, *stack.worker_pids()} <= members
    for pid in (stack.master_pid, *stack.worker_pids()):
        assert len(os.sched_getaffinity(pid)) == 1


def test_requests_pass_through_nginx_and_the_tls_front(stack: LiveServer) -> None:
    reply = stack.get("/healthz")
    assert reply.status == 200 and stack.url.startswith("https://")
    # Only nginx answers a 16 MB+ API upload with this JSON; gunicorn never sees it.
    big = stack.request("POST", "/api/v1/predict", b"x" * (17 * 1024 * 1024),
                        {"Content-Type": "application/octet-stream"})
    assert big.status == 413 and big.json()["error"] == "request_entity_too_large"
    assert stack.nginx_prefix is not None
    assert "api/v1/predict" in (stack.nginx_prefix.parent / "nginx-access.log").read_text()
