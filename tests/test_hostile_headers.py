"""Headers crafted against the header reader, on every upload route of the shipped stack.

The shipped gunicorn.conf.py in the host unit's memory limit on one CPU, behind the rendered
nginx site. Each crafted file is sent alone and beside good photos, to the single-photo and
patient routes, as API and as form: every answer is a 4xx within 15 s naming the photo where
there are several, the same worker answers afterwards (none was killed), /healthz stays
under 2 s and the whole server tree under 700 MiB.

Before the header reader moved into the sandbox, the TIFF tag memory bomb OOM-killed the
worker on the patient routes (502), the CPU entries held it for seconds per MiB, and the
zero-component JPEG and zero-count TIFF width gave 500.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.server import LiveServer, Reply, Upload
from devtools.stack import serve_stack
from tests import bombs, images
from tests.watch import HEALTH_SECONDS, Watch

pytestmark = pytest.mark.slow

TREE_LIMIT_MIB = 700.0
ANSWER_SECONDS = 15.0
ROUTES = ("api-single", "form-single", "api-patient", "form-patient")


@pytest.fixture(scope="module")
def server(full_demo_model: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    yield from serve_stack(full_demo_model, tmp_path_factory.mktemp("hostile-headers"))


@pytest.fixture(scope="module")
def good_photos() -> list[Upload]:
    return [Upload(f"good-{seed}.jpg", images.encode(images.lesion_rgb(seed=seed), ".jpg"),
                   field="images") for seed in (1, 2)]


def _send(server: LiveServer, route: str, files: list[Upload]) -> Reply:
    single = route.endswith("single")
    if single:
        files = [Upload(f.filename, f.data, f.content_type, "image") for f in files]
    fields = {"tta": "none"}
    if route.startswith("api"):
        path = "/api/v1/predict" if single else "/api/v1/patient"
        return server.post_api(files, fields, timeout=60, path=path)
    return server.form_session().post(files, fields, timeout=60,
                                      path="/predict" if single else "/patient")


def _cases() -> list[tuple[str, str, bool]]:
    cases = []
    for name in sorted(bombs.CRAFTED_HEADERS):
        for route in ROUTES:
            if route != "form-patient":  # the patient form wants two photos at least
                cases.append((name, route, False))
            if route.endswith("patient"):
                cases.append((name, route, True))
    return cases


@pytest.mark.parametrize(("name", "route", "beside_good"), _cases())
def test_crafted_header_is_a_quick_4xx_and_harms_nothing(
        server: LiveServer, good_photos: list[Upload], name: str, route: str,
        beside_good: bool) -> None:
    crafted = Upload(f"{name}.tif", bombs.CRAFTED_HEADERS[name](), "application/octet-stream",
                     "images")
    files = [good_photos[0], crafted, good_photos[1]] if beside_good else [crafted]
    (worker,) = server.worker_pids()
    with Watch(server) as watch:
        reply = _send(server, route, files)
    figures = (f"{name} on {route}{' beside good photos' if beside_good else ''}: "
               f"{reply.status} in {reply.seconds:.1f} s, tree {watch.peak_rss_mib:.0f} MiB, "
               f"slowest /healthz {max(watch.health_seconds, default=0):.2f} s")
    print(figures)
    summary = f"{figures}: {reply.text[:300]}"
    assert 400 <= reply.status < 500, summary
    assert reply.seconds < ANSWER_SECONDS, summary
    assert watch.peak_rss_mib < TREE_LIMIT_MIB, summary
    assert watch.health_statuses and set(watch.health_statuses) == {200}, summary
    assert max(watch.health_seconds) < HEALTH_SECONDS, summary
    if beside_good:
        assert f"{name}.tif" in reply.text, summary
    assert server.worker_pids() == [worker], "a worker was killed: " + summary
    after = _send(server, "api-single", [good_photos[0]])
    assert after.status == 200, f"prediction after {name}: {after.status} {after.text[:200]}"
