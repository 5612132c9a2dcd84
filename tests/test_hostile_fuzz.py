"""Bounded fuzzing of the decode path: any bytes give an RGB image or InvalidImage, never
a crash, another exception, or an image larger than the pixel limit; and a sample of the
same mutations sent through the production-shaped stack gets 2xx or 4xx, never a 5xx."""
from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from devtools.server import LiveServer, Upload
from devtools.stack import serve_stack
from tests import images
from inference.errors import InvalidImage
from inference.image_header import read_header
from inference.preprocess import MIN_IMAGE_SIDE, decode_image

# Small enough that a header claiming more is refused, large enough for the 64x48 seeds.
MAX_PIXELS = 200_000
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _seeds() -> list[bytes]:
    rgb = images.lesion_rgb(64, 48, seed=5)
    seeds = [images.encode(rgb, ext) for ext in (".jpg", ".png", ".webp", ".bmp", ".tiff")]
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    for fmt in ("GIF", "TIFF"):
        stream = io.BytesIO()
        frames[0].save(stream, fmt, save_all=True, append_images=frames[1:])
        seeds.append(stream.getvalue())
    seeds.append(images.encode(rgb.astype(np.uint16) * 257, ".png"))
    seeds.append(images.jpeg_with_exif_orientation(rgb, 8))
    return seeds


SEEDS = _seeds()


def _decode_or_refuse(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except InvalidImage as error:
        assert error.message and 400 <= error.status < 500
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    height, width = image.shape[:2]
    assert min(height, width) >= MIN_IMAGE_SIDE
    assert height * width <= MAX_PIXELS


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        # Headers hold the interesting fields, so most edits land in the first bytes.
        limit = draw(st.sampled_from([64, 512, len(data)]))
        position = draw(st.integers(0, min(limit, len(data)) - 1))
        operation = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        value = draw(st.integers(0, 255))
        if operation == "set":
            data[position] = value
        elif operation == "insert":
            data[position:position] = bytes([value]) * draw(st.integers(1, 16))
        elif operation == "delete":
            del data[position:position + draw(st.integers(1, 16))]
        elif position > 0:
            del data[position:]
        if not data:
            break
    return bytes(data)


@FUZZ
@given(mutated())
def test_decode_survives_mutated_images(data: bytes) -> None:
    _decode_or_refuse(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_decode_survives_random_bytes(data: bytes) -> None:
    _decode_or_refuse(data)


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from([b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00",
                        b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8X"]),
       st.binary(max_size=256))
def test_header_reader_refuses_garbage_after_a_magic_number(magic: bytes, rest: bytes) -> None:
    try:
        header = read_header(magic + rest)
    except InvalidImage:
        return
    assert header.width > 0 and header.height > 0


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_every_fuzz_seed_decodes(seed: int) -> None:
    # The mutations start from valid images, or the fuzz would only test refusals.
    image = decode_image(SEEDS[seed], max_pixels=MAX_PIXELS)
    # The EXIF seed is stored turned, so it decodes upright as 48 wide.
    assert image.shape in ((48, 64, 3), (64, 48, 3))


LIVE_SAMPLES = 60


def _mutate(data: bytes, rng: random.Random) -> bytes:
    mutated = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(min(rng.choice([64, 512, len(mutated)]), len(mutated)))
        if rng.random() < 0.5:
            mutated[position] = rng.randrange(256)
        else:
            del mutated[position:position + rng.randint(1, 16)]
        if len(mutated) < 2:
            break
    return bytes(mutated) or b"\0"


@pytest.fixture(scope="module")
def stack(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LiveServer]:
    yield from serve_stack(tiny_onnx_model, tmp_path_factory.mktemp("fuzz-stack"))


@pytest.mark.slow
def test_mutated_uploads_through_the_stack_never_get_a_5xx(stack: LiveServer) -> None:
    rng = random.Random(20261122)
    (worker,) = stack.worker_pids()
    statuses: dict[int, int] = {}
    for index in range(LIVE_SAMPLES):
        data = _mutate(SEEDS[index % len(SEEDS)], rng)
        reply = stack.post_api([Upload(f"fuzz{index}.bin", data)], timeout=30)
        assert reply.status < 500, (index, reply.status, reply.text[:300])
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
    assert stack.worker_pids() == [worker] and stack.alive()
    assert stack.cgroup is not None and stack.cgroup.oom_kills() == 0
    assert len(statuses) > 1, f"the sample should hold both images and refusals: {statuses}"
