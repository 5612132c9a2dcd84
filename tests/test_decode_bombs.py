"""Resource bombs against a real gunicorn server with the shipped config and the demo model.

Every answer is 2xx or 4xx within 15 s, the whole server (master, worker, any decoder
process) stays under 700 MiB of RSS, /healthz answers under 2 s throughout, and a normal
prediction succeeds right after each bomb.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import bombs, images
from tests.watch import HEALTH_SECONDS, Watch
from devtools.server import LiveServer, Reply, Upload
from devtools.stack import serve_stack

pytestmark = pytest.mark.slow

RSS_LIMIT_MIB = 700.0
ANSWER_SECONDS = 15.0


@pytest.fixture(scope="module")
def bomb_files() -> dict[str, bytes]:
    return {name: make() for name, make in bombs.BOMBS.items()}


@pytest.fixture(scope="module")
def server(full_demo_model: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    yield from serve_stack(full_demo_model, tmp_path_factory.mktemp("bomb-server"))


def _post(server: LiveServer, data: bytes, name: str = "upload.bin") -> Reply:
    return server.post_api([Upload(name, data, "application/octet-stream")], timeout=60)


def _survives(server: LiveServer, data: bytes) -> tuple[Reply, Watch]:
    with Watch(server) as watch:
        reply = _post(server, data)
    return reply, watch


def _assert_contained(reply: Reply, watch: Watch, server: LiveServer) -> None:
    summary = (f"status {reply.status} in {reply.seconds:.1f} s, peak memory (PSS) "
               f"{watch.peak_rss_mib:.0f} MiB, slowest /healthz "
               f"{max(watch.health_seconds, default=0):.2f} s: {reply.text[:300]}")
    print(summary[:summary.index(":")])
    assert 200 <= reply.status < 500, summary
    assert reply.seconds < ANSWER_SECONDS, summary
    assert watch.peak_rss_mib < RSS_LIMIT_MIB, summary
    assert watch.health_statuses and set(watch.health_statuses) == {200}, summary
    assert max(watch.health_seconds) < HEALTH_SECONDS, summary
    if reply.status >= 400:
        assert reply.json()["message"], summary
    after = _post(server, images.encode(images.lesion_rgb(), ".jpg"), "lesion.jpg")
    assert after.status == 200, f"prediction after the bomb: {after.status} {after.text}"


@pytest.mark.parametrize("name", sorted(bombs.BOMBS))
def test_bomb_is_answered_quickly_within_memory(server: LiveServer,
                                                bomb_files: dict[str, bytes],
                                                name: str) -> None:
    reply, watch = _survives(server, bomb_files[name])
    _assert_contained(reply, watch, server)


def test_largest_accepted_png_is_predicted_within_memory(server: LiveServer) -> None:
    # 40 MP of RGB PNG decodes in full (PNG has no reduced decoding): the budget's worst case.
    reply, watch = _survives(server, bombs.png(8000, 5000, color_type=2))
    _assert_contained(reply, watch, server)
    assert reply.status == 200, reply.text


def test_phone_photo_is_predicted_within_memory(server: LiveServer) -> None:
    reply, watch = _survives(server, bombs.large_photo_jpeg())
    _assert_contained(reply, watch, server)
    assert reply.status == 200
    assert reply.json()["image"] == {"width": 4000, "height": 3000}


@pytest.fixture(scope="module")
def large_limit_server(full_demo_model: Path, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[LiveServer]:
    yield from serve_stack(full_demo_model, tmp_path_factory.mktemp("large-limit-server"),
                     {"MELANOMA_MAX_IMAGE_PIXELS": "80000000"})


def test_limit_above_opencv_default_serves_large_photos(large_limit_server: LiveServer) -> None:
    # 55 MP: within an 80 MP limit, above OpenCV's default cap of 50 MP.
    photo = bombs.grey_jpeg(11000, 5000)
    reply, watch = _survives(large_limit_server, photo)
    _assert_contained(reply, watch, large_limit_server)
    assert reply.status == 200, reply.text
    assert reply.json()["image"] == {"width": 11000, "height": 5000}


def test_long8_tiff_width_is_read_and_refused_by_size(server: LiveServer) -> None:
    reply = _post(server, bombs.long8_tiff(width=12000, height=5000))
    assert reply.status == 413, reply.text
    assert "12000x5000" in reply.json()["message"]


def test_decoder_warnings_are_rate_limited_in_the_log(server: LiveServer) -> None:
    before = server.log().count("\n")
    for _ in range(5):
        assert _post(server, bombs.noisy_png(200)).status < 500
    added = server.log().count("\n") - before
    # Five uploads, each with 200 libpng warnings: access-log lines and a few summaries.
    assert added < 20, server.log()[-4000:]
