"""The Dockerfile, built and run for real with podman: the image serves the demo (passed by
build argument, as the tests' cached build does) and a mounted model, inside 1 GiB and one
CPU, read-only, as a non-root user, and answers as the host install does."""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from devtools import container
from devtools.container import Build, ContainerServer
from devtools.load import hammer, save_report, summary
from devtools.server import Reply, Upload
from tests import bombs, images

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not container.available(), reason="podman is not installed (.ci/run installs it)")]

PHOTO = images.encode(images.lesion_rgb(1200, 900, seed=11), ".jpg")
# Packages that build models and must never reach the serving image.
BUILD_ONLY = ("torch", "torchvision", "timm", "lightning", "onnx", "sklearn", "resnest")


@pytest.fixture(scope="module")
def build(full_demo_model: Path) -> Build:
    result = container.build_image(full_demo_model)
    save_report("container-build", {"image": result.image, "seconds": round(result.seconds, 1),
                                    "size_mb": round(result.size_bytes / 1e6, 1)})
    return result


@pytest.fixture(scope="module")
def server(build: Build, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ContainerServer]:
    running = container.run_container(tmp_path_factory.mktemp("container"), build.image)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def host(full_demo_model: Path) -> FlaskClient:
    """The same model served by this checkout's own install, to compare answers with."""
    from webapp.app import create_app

    app = create_app({"TESTING": True, "MODEL_PATH": str(full_demo_model),
                      "WTF_CSRF_ENABLED": False})
    return app.test_client()


def _host_predict(host: FlaskClient, data: bytes) -> tuple[int, Any]:
    reply = host.post("/api/v1/predict", data={"image": (io.BytesIO(data), "upload.bin")},
                      content_type="multipart/form-data")
    return reply.status_code, reply.get_json()


def _predict(server: ContainerServer, data: bytes) -> Reply:
    return server.post_api([Upload("upload.bin", data, "application/octet-stream")])


def test_runtime_image_holds_no_secret_and_no_build_packages(build: Build) -> None:
    image = container.inspect(build.image)
    config = image["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["ORT_DISABLE_TELEMETRY"] == "1"
    assert not any(key == "MELANOMA_SECRET_KEY" for key in env)
    assert config["User"] not in ("", "0", "root") and not config["User"].startswith("0:")
    assert any("/readyz" in part for part in image["Healthcheck"]["Test"])
    found = container.podman(
        "run", "--rm", "--entrypoint", "python", build.image, "-c",
        "import importlib.util as u, sys; "
        f"print(','.join(m for m in {BUILD_ONLY!r} if u.find_spec(m)))").stdout.strip()
    assert found == "", f"build-only packages in the runtime image: {found}"


def test_container_prediction_matches_the_host_install(server: ContainerServer,
                                                       host: FlaskClient) -> None:
    reply = _predict(server, PHOTO)
    assert reply.status == 200, reply.text
    status, expected = _host_predict(host, PHOTO)
    assert status == 200
    assert reply.json()["probability"] == pytest.approx(expected["probability"], abs=1e-5)
    assert reply.json()["label"] == expected["label"]


@pytest.mark.parametrize("name", sorted(bombs.BOMBS))
def test_container_answers_a_decode_bomb_as_the_host_does(server: ContainerServer,
                                                          host: FlaskClient, name: str) -> None:
    data = bombs.BOMBS[name]()
    reply = _predict(server, data)
    status, expected = _host_predict(host, data)
    assert reply.status == status and 200 <= status < 500, reply.text
    if status >= 400:
        assert reply.json()["error"] == expected["error"]
    assert server.get("/readyz").status == 200
    assert _predict(server, PHOTO).status == 200, "a prediction right after the bomb"


def test_container_overload_gets_quick_503s_and_recovers(server: ContainerServer) -> None:
    outcomes = hammer(lambda: server.post_api([Upload("x.jpg", PHOTO)], timeout=30),
                      clients=24, seconds=8)
    report = summary(outcomes, 8)
    report["peak_memory_mib"] = round(server.peak_memory_mib(), 1)
    save_report("container-overload", report)
    statuses = {o.status for o in outcomes}
    busy = [o for o in outcomes if o.status == 503]
    assert statuses == {200, 503}, report
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in busy), report
    assert server.get("/readyz").status == 200
    assert _predict(server, PHOTO).status == 200
    assert server.state()["OOMKilled"] is False


def test_container_sends_the_security_headers(server: ContainerServer) -> None:
    for path in ("/", "/readyz", "/api/v1/model"):
        headers = server.get(path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path


def test_container_health_check_passes(server: ContainerServer) -> None:
    result = container.podman("healthcheck", "run", server.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_process_in_the_container_runs_as_root(server: ContainerServer) -> None:
    processes = server.top()
    assert len(processes) >= 3, f"gunicorn's master, its worker and the decoder: {processes}"
    assert all(p["user"] != "root" and p["huser"] != "0" for p in processes), processes


def test_memory_budget_is_the_containers_limit(server: ContainerServer) -> None:
    # 90% of --memory 1g, as under the host's unit; it was unbounded when the cgroup was missed.
    budget = container.podman("exec", server.name, "python", "-c",
                              "from inference import memory; print(memory.budget_bytes())").stdout
    assert int(budget) == int((1 << 30) * 0.9)


def test_container_writes_nothing_to_its_filesystem(server: ContainerServer,
                                                    build: Build) -> None:
    """After every request above (tests run in file order). podman itself mounts /etc's
    hosts, hostname and resolv.conf, so an idle container's diff is the baseline."""
    name = f"{server.name}-idle"
    container.podman("run", "--name", name, "--read-only", "--read-only-tmpfs=false",
                     "--entrypoint", "true", build.image)
    try:
        idle = container.podman("diff", name).stdout.splitlines()
    finally:
        container.podman("rm", "--force", name, check=False)
    assert server.diff() == idle
    # Nor did anything try to (gunicorn's control socket did, under $HOME, until disabled).
    log = server.log()
    assert "Read-only file system" not in log and "Traceback" not in log, log[-3000:]


def test_container_refuses_to_start_without_a_secret(build: Build) -> None:
    result = container.podman("run", "--rm", *container.LIMITS, "--read-only", build.image,
                              check=False, timeout=120)
    assert result.returncode != 0
    assert "MELANOMA_SECRET_KEY" in result.stdout + result.stderr


def _models_folder(tmp_path: Path, model: Path, mode: int) -> Path:
    """A user's models folder holding `model`, with `mode` on the folder."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / model.name).write_bytes(model.read_bytes())
    (folder / model.name).chmod(0o644)
    folder.chmod(mode)
    tmp_path.chmod(0o755)
    return folder


def test_container_serves_a_mounted_model(build: Build, tiny_onnx_model: Path,
                                          tmp_path: Path) -> None:
    folder = _models_folder(tmp_path, tiny_onnx_model, 0o755)
    mounted = container.run_container(
        tmp_path, build.image, env={"MELANOMA_MODEL_PATH": f"/models/{tiny_onnx_model.name}"},
        options=["--volume", f"{folder}:/models:ro"])
    try:
        assert mounted.get("/api/v1/model").json()["name"] == "tiny"
        reply = _predict(mounted, images.encode(images.lesion_rgb(), ".jpg"))
        assert reply.status == 200 and 0.0 <= reply.json()["probability"] <= 1.0
    finally:
        mounted.stop()


def test_unreadable_mounted_model_is_refused_in_one_line(build: Build, tiny_onnx_model: Path,
                                                         tmp_path: Path) -> None:
    """A folder only its owner may read: the container's user may not, and is told so."""
    folder = _models_folder(tmp_path, tiny_onnx_model, 0o700)
    result = container.podman(
        "run", "--rm", *container.LIMITS, "--read-only", "--volume", f"{folder}:/models:ro",
        "--env", "MELANOMA_SECRET_KEY=not-used-here", "--env",
        f"MELANOMA_MODEL_PATH=/models/{tiny_onnx_model.name}", build.image,
        check=False, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "refusing to start: cannot read the model file" in output, output
    assert "Permission denied" in output and "Traceback" not in output, output


def test_docs_run_the_image_with_the_flags_tested_here() -> None:
    text = (container.REPO / "docs" / "container.md").read_text()
    for flag in ("--memory 1g", "--cpus 1", "--read-only", "-e MELANOMA_SECRET_KEY"):
        assert flag in text, flag
