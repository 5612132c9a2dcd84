"""Patient uploads are counted as the work they are, through the shipped stack.

Six people send six-photo patient requests back to back (the attack that once held the
queue: one rate allowance covered six predictions, and requests were refused after ~10 s in
the queue with their work thrown away). With the host's shipped settings:
- the rate limit weighs each request by its photos: an address gets at most its bucket
  (30 photos) plus the refill through, far fewer patient requests than nginx's request
  limit alone would let by;
- a refusal for load (503) comes at once, before any work, never after a wait in the queue;
- everything else is answered with a 2xx or a 429, and /healthz stays quick.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devtools.server import LiveServer, Upload
from devtools.stack import serve_stack
from infra.host.render import HostConfig
from tests import images
from tests.watch import HEALTH_SECONDS, Watch

pytestmark = pytest.mark.slow

PEOPLE = 6
PHOTOS = 6
SECONDS = 20.0
# A refusal for load is decided before any work: well under one prediction's time.
UP_FRONT_SECONDS = 1.0


@pytest.fixture(scope="module")
def stack(full_demo_model: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LiveServer]:
    yield from serve_stack(full_demo_model, tmp_path_factory.mktemp("patient-load"))


def test_patient_requests_are_weighed_by_photos_and_never_dropped_after_work(
        stack: LiveServer) -> None:
    photos = [Upload(f"lesion-{i}.jpg", images.encode(images.lesion_rgb(seed=30 + i), ".jpg"),
                     field="images") for i in range(PHOTOS)]
    replies: dict[int, list[tuple[int, float]]] = {person: [] for person in range(PEOPLE)}
    begin = time.monotonic()

    def person(index: int) -> None:
        while time.monotonic() - begin < SECONDS:
            reply = stack.post_api(photos, {"tta": "none"}, timeout=60,
                                   source=f"127.0.2.{index + 1}", path="/api/v1/patient")
            replies[index].append((reply.status, reply.seconds))
            if reply.status >= 500 and reply.status != 503:
                print(reply.status, reply.text[:300])
            if reply.status == 429:
                time.sleep(0.5)

    with Watch(stack) as watch:
        threads = [threading.Thread(target=person, args=(i,)) for i in range(PEOPLE)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - begin
    statuses = [status for person in replies.values() for status, _ in person]
    summary = {status: statuses.count(status) for status in sorted(set(statuses))}
    print(f"{PEOPLE} people, {elapsed:.0f} s: {summary}; slowest /healthz "
          f"{max(watch.health_seconds, default=0):.2f} s")
    assert set(statuses) <= {200, 429, 503}, summary
    assert summary.get(200, 0) >= PEOPLE, summary
    late = [seconds for person in replies.values() for status, seconds in person
            if status == 503 and seconds > UP_FRONT_SECONDS]
    assert late == [], f"503s after waiting (work thrown away?): {late}"
    rate = HostConfig.__dataclass_fields__["app_rate_per_minute"].default
    assert isinstance(rate, int) and rate > 0
    allowed = int((rate + rate / 60.0 * elapsed) // PHOTOS)
    for index, person_replies in replies.items():
        served = sum(1 for status, _ in person_replies if status == 200)
        assert served <= allowed, f"person {index}: {served} served, allowance {allowed}"
    assert max(watch.health_seconds) < HEALTH_SECONDS


def test_rate_refusal_of_a_large_upload_is_a_429_not_a_reset(stack: LiveServer) -> None:
    """The app refuses an address over its photo allowance before parsing the body; it
    must still read the body, or the unread bytes make the socket reset and nginx turns
    the 429 into a 502 (seen under the load above before it did)."""
    source = "127.0.3.1"
    small = [Upload(f"s{i}.jpg", images.encode(images.lesion_rgb(seed=40 + i), ".jpg"),
                    field="images") for i in range(PHOTOS)]
    noise = np.random.default_rng(3).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    large = [Upload(f"l{i}.jpg", images.encode(noise, ".jpg", quality=95), field="images")
             for i in range(PHOTOS)]
    spent = [stack.post_api(small, {"tta": "none"}, source=source,
                            path="/api/v1/patient").status for _ in range(5)]
    assert spent == [200] * 5
    refused = [stack.post_api(large, {"tta": "none"}, source=source,
                              path="/api/v1/patient") for _ in range(4)]
    assert [reply.status for reply in refused] == [429] * 4, [
        (reply.status, reply.text[:120]) for reply in refused]
    assert all(int(reply.headers["retry-after"]) >= 1 for reply in refused)
